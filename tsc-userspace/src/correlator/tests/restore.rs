//! A restarted session: the epoch history journaled by the one before it
//! comes back through [`Correlator::restore`], so guest events from before
//! the restart (an agent's backlog) convert with the epochs they belong to.

use std::sync::Arc;

use super::{clock, guest};
use crate::{
    Flags,
    correlator::{Correlator, CorrelatorConfig, HostTraceInfo, guest::place},
    demo as toy,
    offsets::{
        EventKind, OffsetEvent, OffsetSource,
        journal::{Boundary, JournalOptions, JournalRecord, JournalWriter, Restore, reader},
    },
    process::ProcessId,
    timeline::{Epoch, StreamCursor},
    tracefs::{FormatSet, PageLayout},
};

const PID: u32 = 4_194_401;

fn correlator() -> Correlator {
    let host = HostTraceInfo {
        name: "host".into(),
        layout: PageLayout::parse(toy::HEADER_PAGE).expect("the toy header page parses"),
        formats: Arc::new(FormatSet::new()),
        cpus: vec![0],
    };
    Correlator::new(CorrelatorConfig::default(), clock(), host).expect("a correlator")
}

fn event(seq: u64, offset: i64, at: u64) -> OffsetEvent {
    OffsetEvent {
        event: if seq == 0 {
            EventKind::Snapshot
        } else {
            EventKind::Change
        },
        pid: PID,
        start_time: 42,
        comm: "vmm".into(),
        vcpu: Some(0),
        offset: Some(offset),
        effective_offset: Some(offset),
        ratio: None,
        frac_bits: None,
        source: Some(OffsetSource::Tracepoint),
        seq: Some(seq),
        prev: None,
        changes: Some(seq),
        new_start_ns: (seq > 0).then_some(at),
        old_end_ns: (seq > 0).then_some(at),
        boundary_uncertain: false,
    }
}

/// What the session does with each batch: journal it at the boundary the
/// correlator places it at, then apply it.
fn live(c: &mut Correlator, journal: &mut Vec<JournalRecord>, events: &[OffsetEvent], now: u64) {
    for e in events {
        journal.push(JournalRecord {
            event: e.clone(),
            boundary: Boundary::of(e, c.clock(), now),
        });
    }
    c.offsets(events, now, &|_| Vec::new());
}

fn epochs(c: &Correlator) -> Vec<Epoch> {
    c.vms().get(PID).expect("VM known").vcpus[&0]
        .epochs()
        .copied()
        .collect()
}

/// Places guest TSCs of one stream, in order.
fn convert(c: &Correlator, guests: &[u64]) -> Vec<(u64, Option<u64>, Flags)> {
    let vm = c.vms().get(PID).expect("VM known");
    let mut cursor = StreamCursor::default();
    guests
        .iter()
        .map(|&g| place(vm.vcpus.get(&0), vm.current.get(&0), &mut cursor, g))
        .collect()
}

/// The session before the restart: a snapshot, then the guest sets its TSC
/// to 0 three times (the 2012 rewind: the epochs overlap in guest time).
fn first_session(journal: &mut Vec<JournalRecord>) -> Correlator {
    let mut c = correlator();
    live(&mut c, journal, &[event(0, 10_000_000, 0)], 500);
    for (i, start) in [1_000_000u64, 2_000_000, 3_000_000].into_iter().enumerate() {
        live(
            &mut c,
            journal,
            &[event(i as u64 + 1, -(start as i64), start)],
            start + 700,
        );
    }
    c
}

/// Guest TSCs 100, 200, 300 in each rewound epoch, in stream order.
const BACKLOG: [u64; 9] = [100, 200, 300, 100, 200, 300, 100, 200, 300];

#[test]
fn a_restored_history_converts_the_backlog_with_its_old_epochs() {
    let mut journal = Vec::new();
    let before = first_session(&mut journal);
    let want = convert(&before, &BACKLOG);
    let hosts: Vec<u64> = want.iter().map(|w| w.0).collect();
    assert_eq!(
        hosts,
        [
            1_000_100, 1_000_200, 1_000_300, 2_000_100, 2_000_200, 2_000_300, 3_000_100, 3_000_200,
            3_000_300
        ]
    );
    assert!(want[3].2.contains(Flags::RESOLVED_BY_ORDER));

    // Through a real journal file, then restart.
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::at(dir.path().join("offsets.journal"));
    let (mut writer, _) = JournalWriter::open(options.clone()).unwrap();
    writer.append(&journal).unwrap();
    drop(writer);
    let read = reader::read(&options.path, options.max_file_bytes).unwrap();
    let restore = Restore::of(read.records(), |id: ProcessId| id.start_time == 42);
    assert_eq!((restore.alive.len(), restore.gone), (1, 0));

    let mut after = correlator();
    assert_eq!(after.restore(&restore.records, &|_| Vec::new()), 4);
    // The live snapshot of the restarted session: the vCPU still holds the
    // last offset, so no epoch is added.
    after.offsets(&[event(0, -3_000_000, 0)], 9_000_000, &|_| Vec::new());
    assert_eq!(epochs(&after), epochs(&before));
    assert_eq!(convert(&after, &BACKLOG), want);

    // Without the journal, the backlog could only use today's offset.
    let mut fresh = correlator();
    fresh.offsets(&[event(0, -3_000_000, 0)], 9_000_000, &|_| Vec::new());
    let lost = convert(&fresh, &BACKLOG);
    assert_ne!(lost, want);
    assert!(lost.iter().all(|l| l.0 >= 3_000_000));
}

#[test]
fn a_change_made_while_no_session_ran_starts_an_epoch_at_the_restart() {
    let mut journal = Vec::new();
    let before = first_session(&mut journal);
    let mut after = correlator();
    after.restore(&journal, &|_| Vec::new());
    // The VM changed its offset while the session was down.
    after.offsets(&[event(0, -8_000_000, 0)], 9_000_000, &|_| Vec::new());
    let mut want = epochs(&before);
    want.last_mut().unwrap().host_end = Some(9_000_000);
    let got = epochs(&after);
    assert_eq!(got[..4], want[..]);
    assert_eq!(got[4].host_start, Some(9_000_000));
    assert_eq!(got[4].params.offset(), (-8_000_000i64) as u64);
    // Events from before the restart still convert with their epochs.
    assert_eq!(
        convert(&after, &BACKLOG[..3]),
        convert(&before, &BACKLOG[..3])
    );
    // One after it (a guest TSC no older epoch explains), with the new
    // offset.
    let g = guest(15_000_000, -8_000_000);
    assert_eq!(convert(&after, &[g])[0], (15_000_000, Some(4), Flags::NONE));
}
