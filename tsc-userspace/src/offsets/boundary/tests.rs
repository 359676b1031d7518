//! Recorded sequences of write/exit/entry events, run through the kernel
//! programs' own decision code (`tsc_common::vcpu_state`) to produce the
//! records they would push, then through the record -> boundary conversion.

use std::collections::HashMap;

use tsc_common::{
    record::{EntryRecord, OffsetRecord, VcpuKey, kind},
    vcpu_state::VcpuState,
};

use super::*;

const KEY: VcpuKey = VcpuKey {
    tgid: 42,
    vcpu_id: 3,
};

/// What the kernel sees, in order.
#[derive(Clone, Copy, Debug)]
enum Event {
    /// `kvm_write_tsc_offset` at t with the new offset.
    Write(u64, i64),
    /// `kvm_exit` at t.
    Exit(u64),
    /// `kvm_entry` at t, the vCPU holding (l1 offset, l1 ratio).
    Entry(u64, i64, u64),
}

/// The three programs over one vCPU, with the same state transitions they
/// make on the map (`VCPU_STATE`, `OFFSETS`' seq).
#[derive(Default)]
struct Kernel {
    state: HashMap<VcpuKey, VcpuState>,
    seq: HashMap<VcpuKey, u64>,
}

impl Kernel {
    fn run(&mut self, key: VcpuKey, events: &[Event]) -> Vec<Record> {
        events.iter().filter_map(|e| self.step(key, *e)).collect()
    }

    fn step(&mut self, key: VcpuKey, event: Event) -> Option<Record> {
        match event {
            Event::Write(at, next) => {
                let seq = self.seq.entry(key).or_default();
                *seq += 1;
                let seq = *seq;
                let last_exit_ns = match self.state.get_mut(&key) {
                    Some(s) => {
                        s.on_change(seq);
                        s.last_exit_ns
                    }
                    None => {
                        self.state.insert(key, VcpuState::changed(seq));
                        0
                    }
                };
                Some(Record::Write(OffsetRecord {
                    kind: kind::WRITE_TSC_OFFSET,
                    tgid: key.tgid,
                    pid: key.tgid,
                    vcpu_id: key.vcpu_id,
                    seq,
                    prev: 0,
                    next: next as u64,
                    ktime_ns: at,
                    last_exit_ns,
                }))
            }
            Event::Exit(at) => {
                self.state
                    .entry(key)
                    .and_modify(|s| s.on_exit(at))
                    .or_insert(VcpuState::exited(at));
                None
            }
            Event::Entry(at, offset, ratio) => {
                let state = self.state.entry(key).or_insert(VcpuState::UNSEEN);
                let report = state.entry()?;
                state.mark_reported(&report);
                Some(Record::Entry(EntryRecord {
                    kind: kind::ENTRY_AFTER_CHANGE,
                    tgid: key.tgid,
                    pid: key.tgid + 1,
                    vcpu_id: key.vcpu_id,
                    seq: report.seq,
                    prev_reported: report.prev_reported,
                    l1_tsc_offset: offset as u64,
                    l1_tsc_scaling_ratio: ratio,
                    tsc_offset: offset as u64,
                    tsc_scaling_ratio: ratio,
                    last_exit_ns: report.last_exit_ns,
                    entry_ns: at,
                }))
            }
        }
    }
}

fn edges(events: &[Event]) -> Vec<Boundary> {
    let records = Kernel::default().run(KEY, events);
    let mut tracker = BoundaryTracker::default();
    records
        .iter()
        .map(|r| {
            // Through the bytes, as the ring buffer hands them over.
            let bytes = match r {
                Record::Write(w) => bytes_of(w),
                Record::Entry(e) => bytes_of(e),
            };
            let parsed = Record::parse(&bytes).expect("a record the kernel pushes parses");
            assert_eq!(&parsed, r);
            tracker.apply(parsed.key(), &parsed.boundary())
        })
        .collect()
}

fn bytes_of<T>(value: &T) -> Vec<u8> {
    // SAFETY: the records are repr(C) integers without padding.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

const UNITY: u64 = 1 << 48;

#[test]
fn creation_then_run_gives_one_exact_edge_at_the_first_entry() {
    use Event::*;
    let got = edges(&[
        Write(100, -5000), // KVM_CREATE_VCPU
        Entry(200, -5000, UNITY),
        Exit(210),
        Entry(220, -5000, UNITY), // common path: nothing
        Exit(230),
    ]);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(
        (got[0].old_end_ns, got[0].new_start_ns, got[0].exact),
        (Some(100), 100, false),
        "the change alone: provisional at the change"
    );
    assert_eq!(
        got[1],
        Boundary {
            seq: 1,
            old_end_ns: Some(100),
            new_start_ns: 200,
            requested: Some(-5000),
            effective: Some(-5000),
            ratio: Some(UNITY),
            exact: false, // no exit before the vCPU's first entry
        }
    );
}

#[test]
fn change_while_running_ends_at_last_exit_and_starts_at_next_entry() {
    use Event::*;
    let got = edges(&[
        Entry(10, 0, UNITY), // discovered
        Exit(20),
        Entry(30, 0, UNITY),
        Exit(40), // the last exit before the change
        Write(50, -777),
        Write(60, -888), // two changes while out of the guest
        Entry(70, -888, UNITY),
        Exit(80),
        Entry(90, -888, UNITY),
    ]);
    let discovered = got[0];
    assert_eq!(
        (
            discovered.seq,
            discovered.old_end_ns,
            discovered.new_start_ns
        ),
        (0, None, 10)
    );
    assert!(discovered.exact && discovered.requested.is_none());
    assert_eq!(
        (got[1].old_end_ns, got[1].new_start_ns, got[1].requested),
        (Some(40), 50, Some(-777))
    );
    assert_eq!(
        (got[2].old_end_ns, got[2].new_start_ns, got[2].requested),
        (Some(40), 60, Some(-888))
    );
    assert_eq!(
        got[3],
        Boundary {
            seq: 2,
            old_end_ns: Some(40),
            new_start_ns: 70,
            requested: Some(-888),
            effective: Some(-888),
            ratio: Some(UNITY),
            exact: true,
        }
    );
    assert_eq!(got.len(), 4, "no record on the common path: {got:#?}");
}

#[test]
fn pvm_like_host_without_entries_keeps_change_edges() {
    use Event::*;
    // kvm_entry/kvm_exit never fire (FACTS.md): the change is the boundary.
    let got = edges(&[Write(5, -1), Write(9, -2)]);
    assert_eq!(
        got.iter()
            .map(|e| (e.old_end_ns, e.new_start_ns, e.exact))
            .collect::<Vec<_>>(),
        [(Some(5), 5, false), (Some(9), 9, false)]
    );
}

#[test]
fn effective_offset_from_the_struct_wins_over_the_request() {
    use Event::*;
    // A hypervisor that ignores the request (PVM zeroes it): the entry
    // carries what the vCPU holds.
    let got = edges(&[Exit(1), Write(2, -1234), Entry(3, 0, UNITY)]);
    let last = got.last().unwrap();
    assert_eq!((last.requested, last.effective), (Some(-1234), Some(0)));
    assert_eq!(
        (last.old_end_ns, last.new_start_ns, last.exact),
        (Some(1), 3, true)
    );
}

#[test]
fn boundary_carries_reason_and_unknown_exit() {
    let entry = Record::Entry(EntryRecord {
        kind: kind::ENTRY_AFTER_CHANGE,
        seq: 0,
        prev_reported: VcpuState::NEVER,
        entry_ns: 9,
        ..Default::default()
    });
    assert!(matches!(
        entry.boundary(),
        BoundaryRecord::Entry {
            first_seen: true,
            last_exit_ns: None,
            at_ns: 9,
            ..
        }
    ));
}

#[test]
fn malformed_or_unknown_records_do_not_parse() {
    let mut bytes = bytes_of(&OffsetRecord {
        kind: kind::WRITE_TSC_OFFSET,
        ..Default::default()
    });
    assert!(Record::parse(&bytes).is_some());
    assert!(Record::parse(&bytes[..bytes.len() - 1]).is_none());
    bytes[0] = 99;
    assert!(Record::parse(&bytes).is_none());
    // An entry-sized buffer with the write kind is not a write.
    let mut entry = bytes_of(&EntryRecord::default());
    entry[0] = kind::WRITE_TSC_OFFSET as u8;
    assert!(Record::parse(&entry).is_none());
    assert!(Record::parse(&[]).is_none());
}

#[test]
fn scaling_only_when_the_host_scales_and_the_ratio_is_not_unity() {
    assert_eq!(scaling(UNITY, Some(48)), None);
    assert_eq!(scaling(3 << 47, None), None);
    assert_eq!(
        scaling(3 << 47, Some(48)),
        Some(Scaling {
            ratio: 3 << 47,
            frac_bits: 48
        })
    );
}
