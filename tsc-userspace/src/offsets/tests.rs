use super::*;

fn proc(pid: u32, start_time: u64) -> ProcessId {
    ProcessId { pid, start_time }
}

fn change(seq: u64, offset: i64, prev: i64) -> Update {
    Update {
        pid: 10,
        vcpu_id: 0,
        change: Change {
            seq,
            offset,
            prev,
            ktime_ns: seq * 100,
            source: OffsetSource::Tracepoint,
        },
    }
}

#[test]
fn first_change_adds_the_vcpu_then_changes_follow_in_order() {
    let mut map = OffsetMap::new(8);
    map.ensure_vm(proc(10, 1), "qemu");
    let added = map.apply(change(1, -1000, 0)).unwrap();
    assert_eq!(
        (added.event, added.offset, added.seq),
        (EventKind::VcpuAdded, Some(-1000), Some(1))
    );
    let changed = map.apply(change(2, -2000, -1000)).unwrap();
    assert_eq!(
        (changed.event, changed.offset, changed.prev),
        (EventKind::Change, Some(-2000), Some(-1000))
    );
    let v = map.vcpu(10, 0).unwrap();
    assert_eq!((v.changes, v.seq, v.history.len()), (2, 2, 2));
}

#[test]
fn stale_or_repeated_sequence_numbers_are_ignored() {
    let mut map = OffsetMap::new(8);
    map.ensure_vm(proc(10, 1), "qemu");
    map.apply(change(1, -1, 0));
    map.apply(change(3, -3, -1));
    assert!(
        map.apply(change(3, -3, -1)).is_none(),
        "a change seen twice is applied once"
    );
    assert!(
        map.apply(change(2, -2, -1)).is_none(),
        "an older change does not roll back"
    );
    assert_eq!(map.vcpu(10, 0).unwrap().offset, -3);
}

#[test]
fn history_is_bounded_and_keeps_the_newest() {
    let mut map = OffsetMap::new(3);
    map.ensure_vm(proc(10, 1), "qemu");
    for seq in 1..=10 {
        map.apply(change(seq, -(seq as i64), 0));
    }
    let v = map.vcpu(10, 0).unwrap();
    assert_eq!(
        v.history.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [8, 9, 10]
    );
    assert_eq!(v.changes, 10);
}

#[test]
fn change_without_vm_is_refused() {
    let mut map = OffsetMap::new(3);
    assert!(map.apply(change(1, -1, 0)).is_none());
}

#[test]
fn effective_offset_differs_warns_once_per_vm_and_wins_for_conversion() {
    let mut map = OffsetMap::new(3);
    map.ensure_vm(proc(10, 1), "vmm");
    map.apply(change(1, -500, 0));
    map.apply(Update {
        vcpu_id: 1,
        ..change(1, -500, 0)
    });
    assert!(
        map.set_effective(10, 0, 0, None),
        "first mismatch in the VM warns"
    );
    assert!(
        !map.set_effective(10, 1, 0, None),
        "second mismatch in the same VM does not"
    );
    let v = map.vcpu(10, 0).unwrap();
    assert!(v.offset_not_applied());
    assert_eq!((v.offset, v.offset_in_force()), (-500, 0));
}

#[test]
fn a_change_forgets_the_old_readback() {
    let mut map = OffsetMap::new(3);
    map.ensure_vm(proc(10, 1), "vmm");
    map.apply(change(1, -5, 0));
    map.set_effective(10, 0, -5, None);
    map.apply(change(2, -6, -5));
    assert_eq!(map.vcpu(10, 0).unwrap().effective_offset, None);
}

#[test]
fn reused_pid_replaces_the_old_vm_with_an_exit() {
    let mut map = OffsetMap::new(3);
    map.ensure_vm(proc(10, 1), "old");
    map.apply(change(1, -5, 0));
    assert!(
        map.ensure_vm(proc(10, 1), "old").is_none(),
        "same process: nothing happens"
    );
    let exit = map.ensure_vm(proc(10, 2), "new").unwrap();
    assert_eq!(
        (exit.event, exit.comm.as_str(), exit.start_time),
        (EventKind::VmExit, "old", 1)
    );
    assert!(map.vcpu(10, 0).is_none(), "the new process starts empty");
}

#[test]
fn bootstrap_then_snapshot_lists_every_vcpu_in_order() {
    let mut map = OffsetMap::new(3);
    map.ensure_vm(proc(20, 1), "b");
    map.ensure_vm(proc(10, 1), "a");
    let scaling = Scaling {
        ratio: 3 << 47,
        frac_bits: 48,
    };
    assert!(map.bootstrap_vcpu(20, 4, -7, Some(scaling)).is_some());
    assert!(
        map.bootstrap_vcpu(20, 4, -7, None).is_none(),
        "known vCPU is not added twice"
    );
    map.bootstrap_vcpu(10, 1, -1, None);
    map.bootstrap_vcpu(20, 0, -9, None);
    let rows: Vec<_> = map
        .snapshot()
        .iter()
        .map(|e| (e.pid, e.vcpu.unwrap(), e.offset.unwrap()))
        .collect();
    assert_eq!(rows, [(10, 1, -1), (20, 0, -9), (20, 4, -7)]);
    let row = &map.snapshot()[2];
    assert_eq!(
        (row.ratio, row.frac_bits, row.source),
        (Some(3 << 47), Some(48), Some(OffsetSource::Debugfs))
    );
}

#[test]
fn vm_exit_removes_every_row() {
    let mut map = OffsetMap::new(3);
    map.ensure_vm(proc(10, 1), "a");
    map.apply(change(1, -5, 0));
    let exit = map.remove_vm(10).unwrap();
    assert_eq!((exit.event, exit.vcpu), (EventKind::VmExit, None));
    assert!(map.snapshot().is_empty());
    assert!(map.remove_vm(10).is_none());
}

#[test]
fn json_names_match_the_documented_interface() {
    let mut map = OffsetMap::new(3);
    map.ensure_vm(proc(10, 1), "a");
    let e = map.apply(change(1, i64::MIN, 0)).unwrap();
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v["event"], "vcpu-added");
    assert_eq!(v["offset"], i64::MIN);
    assert_eq!(v["source"], "tracepoint");
    assert!(v["effective_offset"].is_null() && v["ratio"].is_null() && v["frac_bits"].is_null());
    for key in ["pid", "comm", "vcpu", "seq"] {
        assert!(!v[key].is_null(), "{key} missing");
    }
}

#[test]
fn entry_discovers_unknown_vcpus_and_corrects_known_ones() {
    let mut map = OffsetMap::new(8);
    map.ensure_vm(proc(10, 1), "qemu");
    assert_eq!(map.entered(11, 0, 5, None), None, "unknown VM");
    let (added, warn) = map.entered(10, 7, -300, None).unwrap();
    assert_eq!(
        (
            added.event,
            added.vcpu,
            added.offset,
            added.effective_offset,
            added.source,
            warn
        ),
        (
            EventKind::VcpuAdded,
            Some(7),
            Some(-300),
            Some(-300),
            Some(OffsetSource::Btf),
            false
        )
    );
    map.apply(change(1, -1000, 0)).unwrap();
    let (entry, warn) = map.entered(10, 0, 0, None).unwrap();
    assert_eq!(
        (entry.event, entry.offset, entry.effective_offset, warn),
        (EventKind::Entry, Some(-1000), Some(0), true),
        "the request stays, the struct's value is the effective one, and the VM is warned about once"
    );
    let (_, again) = map.entered(10, 0, 0, None).unwrap();
    assert!(!again);
    assert_eq!(map.vcpu(10, 0).unwrap().offset_in_force(), 0);
}
