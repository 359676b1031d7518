//! Epoch handling end to end: a replayed sequence of offset events (as the
//! monitor emits them) through [`Vms`] and guest placement. On these
//! machines `kvm_entry`/`kvm_exit` never fire and offsets are not applied,
//! so the sequences are replayed rather than produced live. The clock is a
//! fixed one: no calibration, nothing read from the machine.

mod restore;
mod session;

use super::{guest::place, vms::Vms};
use crate::{
    Flags,
    clock::{Clock, Sample},
    offsets::{EventKind, OffsetEvent, OffsetSource},
    timeline::StreamCursor,
};

/// A fixed 1 GHz clock: TSC tick t is t ns (anchored at 0).
pub(super) fn clock() -> Clock {
    Clock::fixed(
        Sample {
            tsc: 0,
            ns: 0,
            width: 0,
        },
        1_000_000,
    )
}

fn no_cmdline(_: u32) -> Vec<String> {
    Vec::new()
}

/// Applies `event` received at host TSC 0 (every replayed change carries its
/// own boundary).
fn apply(vms: &mut Vms, event: &OffsetEvent, clock: &Clock) {
    vms.apply(event, clock, 0, &no_cmdline);
}

const PID: u32 = 4_194_400; // above any pid_max: no procfs lookups succeed

/// An event of vCPU 0 of VM [`PID`].
fn event(
    kind: EventKind,
    seq: u64,
    offset: i64,
    effective: Option<i64>,
    at_ns: Option<u64>,
) -> OffsetEvent {
    OffsetEvent {
        event: kind,
        pid: PID,
        start_time: 1,
        comm: "vmm".into(),
        vcpu: Some(0),
        offset: Some(offset),
        effective_offset: effective,
        ratio: None,
        frac_bits: None,
        source: Some(OffsetSource::Tracepoint),
        seq: Some(seq),
        prev: None,
        changes: Some(seq),
        new_start_ns: at_ns,
        old_end_ns: at_ns,
        boundary_uncertain: false,
    }
}

/// Host TSC -> guest TSC under `offset`.
fn guest(host: u64, offset: i64) -> u64 {
    host.wrapping_add(offset as u64)
}

#[test]
fn guest_events_take_the_offset_in_force_when_they_happened() {
    let clock = clock();
    let base = clock.ns_to_tsc(1_000_000_000_000);
    let at = |tsc: u64| clock.tsc_to_ns(tsc);
    let (t1, t2) = (base + 10_000_000, base + 20_000_000);
    let mut vms = Vms::default();
    apply(
        &mut vms,
        &event(EventKind::Snapshot, 0, -1000, Some(-1000), None),
        &clock,
    );
    apply(
        &mut vms,
        &event(EventKind::Change, 1, -5000, Some(-5000), Some(at(t1))),
        &clock,
    );
    apply(
        &mut vms,
        &event(
            EventKind::Change,
            2,
            7_000_000_000,
            Some(7_000_000_000),
            Some(at(t2)),
        ),
        &clock,
    );
    let vm = vms.get(PID).expect("VM known");
    let timeline = &vm.vcpus[&0];
    assert_eq!(timeline.epochs().len(), 3);

    let mut cursor = StreamCursor::default();
    // One event in each epoch, in order: each maps back to its host time.
    for (host, offset, epoch) in [
        (base + 5_000_000, -1000, 0),
        (t1 + 5_000_000, -5000, 1),
        (t2 + 5, 7_000_000_000, 2),
    ] {
        let (got, seq, flags) = place(Some(timeline), None, &mut cursor, guest(host, offset));
        // Change positions go through ns and back: exact to the TSC tick
        // of the clock's resolution, so compare the host TSC exactly only
        // away from the boundaries, which these are.
        assert_eq!(
            (got, seq, flags),
            (host, Some(epoch), Flags::NONE),
            "event at host {host}"
        );
    }
}

#[test]
fn a_guest_writing_its_tsc_back_is_resolved_by_stream_order() {
    // The case raised on the KVM list in 2012: the guest sets its TSC to 0
    // three times, so guest timestamps 1, 2, 3 happen in each epoch.
    let clock = clock();
    let base = clock.ns_to_tsc(2_000_000_000_000);
    let starts = [base, base + 1_000_000, base + 2_000_000];
    let mut vms = Vms::default();
    for (i, &start) in starts.iter().enumerate() {
        let offset = -(start as i64);
        apply(
            &mut vms,
            &event(
                EventKind::Change,
                i as u64 + 1,
                offset,
                Some(offset),
                Some(clock.tsc_to_ns(start)),
            ),
            &clock,
        );
    }
    let timeline = &vms.get(PID).unwrap().vcpus[&0];
    let mut cursor = StreamCursor::default();
    let mut placed = Vec::new();
    for start in starts {
        for g in [100u64, 200, 300] {
            // The offset is exactly -start; the epoch's recorded start went
            // through nanoseconds and back and may differ by a tick, so the
            // conversion is checked against the offset.
            let (host, seq, flags) = place(Some(timeline), None, &mut cursor, g);
            placed.push((
                seq,
                host.wrapping_sub(start),
                flags.contains(Flags::RESOLVED_BY_ORDER),
            ));
        }
    }
    let epochs: Vec<Option<u64>> = placed.iter().map(|p| p.0).collect();
    assert_eq!(
        epochs,
        [
            Some(0),
            Some(0),
            Some(0),
            Some(1),
            Some(1),
            Some(1),
            Some(2),
            Some(2),
            Some(2)
        ]
    );
    assert!(
        placed.iter().all(|p| [100, 200, 300].contains(&p.1)),
        "each maps into its own epoch: {placed:?}"
    );
    assert!(
        placed[3].2 && placed[6].2,
        "the ambiguous ones say how they were resolved: {placed:?}"
    );
}

#[test]
fn unknown_vcpu_is_flagged_outside_never_dropped() {
    let mut cursor = StreamCursor::default();
    let params = tsc_common::tsc::TscParams::unscaled((-50i64) as u64);
    let (host, epoch, flags) = place(None, Some(&params), &mut cursor, 1_000);
    assert_eq!(
        (host, epoch),
        (1_050, None),
        "the VM's current conversion is the best guess"
    );
    assert!(flags.contains(Flags::OUTSIDE_EPOCH));
}

#[test]
fn a_superseded_readback_keeps_the_held_offset_on_a_hypervisor_that_ignores_offsets() {
    let clock = clock();
    let base = clock.ns_to_tsc(3_000_000_000_000);
    let mut vms = Vms::default();
    // PVM: asked -5000, the vCPU holds 0; the next change's read-back was
    // superseded (null): it must not be converted with the asked offset.
    apply(
        &mut vms,
        &event(
            EventKind::Change,
            1,
            -5000,
            Some(0),
            Some(clock.tsc_to_ns(base)),
        ),
        &clock,
    );
    apply(
        &mut vms,
        &event(
            EventKind::Change,
            2,
            -9000,
            None,
            Some(clock.tsc_to_ns(base + 1_000_000)),
        ),
        &clock,
    );
    let vm = vms.get(PID).unwrap();
    assert!(vm.not_applied);
    assert_eq!(vm.current[&0].offset(), 0, "what the vCPU holds, not -9000");
}
