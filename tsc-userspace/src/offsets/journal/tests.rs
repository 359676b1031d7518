use super::{
    frame::{self, HEADER_LEN},
    reader::{self, Skipped},
    *,
};
use crate::offsets::OffsetSource;

pub(crate) fn record(pid: u32, vcpu: u32, seq: u64, offset: i64, at: u64) -> JournalRecord {
    JournalRecord {
        event: OffsetEvent {
            event: if seq == 0 {
                EventKind::Snapshot
            } else {
                EventKind::Change
            },
            pid,
            start_time: 77,
            comm: "qemu-system-x86".into(),
            vcpu: Some(vcpu),
            offset: Some(offset),
            effective_offset: Some(offset),
            ratio: None,
            frac_bits: None,
            source: Some(OffsetSource::Tracepoint),
            seq: Some(seq),
            prev: Some(-1),
            changes: Some(seq),
            new_start_ns: (seq > 0).then_some(at),
            old_end_ns: None,
            boundary_uncertain: false,
        },
        boundary: Boundary {
            start_tsc: at,
            start_ns: at,
            prev_end_tsc: None,
        },
    }
}

fn file_of(records: &[JournalRecord]) -> (Vec<u8>, Vec<usize>) {
    let mut data = frame::header().to_vec();
    let mut ends = Vec::new();
    let mut payload = Vec::new();
    for r in records {
        payload.clear();
        r.encode(&mut payload);
        frame::put(&payload, &mut data);
        ends.push(data.len());
    }
    (data, ends)
}

fn some_records() -> Vec<JournalRecord> {
    (0..5)
        .map(|i| {
            record(
                100 + i as u32 % 2,
                i as u32 % 3,
                i,
                -(i as i64) * 1000,
                10 + i,
            )
        })
        .collect()
}

#[test]
fn every_field_round_trips_including_extremes() {
    let mut all = record(u32::MAX, u32::MAX, u64::MAX, i64::MIN, u64::MAX);
    all.event.event = EventKind::Entry;
    all.event.effective_offset = Some(i64::MAX);
    all.event.ratio = Some(u64::MAX);
    all.event.frac_bits = Some(48);
    all.event.source = Some(OffsetSource::Btf);
    all.event.old_end_ns = Some(1);
    all.event.boundary_uncertain = true;
    all.boundary.prev_end_tsc = Some(0);
    all.event.comm = "é".repeat(40); // 80 bytes: cut to 64 on a char boundary
    let mut none = record(1, 0, 0, 0, 0);
    none.event = OffsetEvent {
        vcpu: None,
        offset: None,
        effective_offset: None,
        source: None,
        seq: None,
        prev: None,
        changes: None,
        new_start_ns: None,
        comm: String::new(),
        event: EventKind::VmExit,
        ..none.event
    };
    for r in [all, none] {
        let mut payload = Vec::new();
        r.encode(&mut payload);
        let back = JournalRecord::decode(&payload).unwrap();
        let mut want = r.clone();
        want.event.comm.truncate(64);
        assert_eq!(back, want);
    }
}

#[test]
fn a_whole_file_reads_back_in_order() {
    let records = some_records();
    let (data, _) = file_of(&records);
    let d = reader::decode(&data).unwrap();
    assert_eq!(d.records, records);
    assert_eq!((d.skipped.len(), d.undecodable, d.torn_tail), (0, 0, None));
}

#[test]
fn a_torn_tail_at_every_byte_of_the_last_record_is_skipped_and_reported() {
    let records = some_records();
    let (data, ends) = file_of(&records);
    let last_start = ends[ends.len() - 2];
    for cut in last_start + 1..data.len() {
        let d = reader::decode(&data[..cut]).unwrap();
        assert_eq!(d.records, records[..4], "cut at {cut}");
        assert_eq!(
            d.torn_tail,
            Some(Skipped {
                offset: last_start as u64,
                bytes: (cut - last_start) as u64
            }),
            "cut at {cut}"
        );
        assert!(d.skipped.is_empty());
    }
    // A torn header is an empty journal with a torn tail, not an error.
    for cut in 1..HEADER_LEN {
        let d = reader::decode(&data[..cut]).unwrap();
        assert!(d.records.is_empty());
        assert_eq!(d.torn_tail.map(|t| t.bytes), Some(cut as u64));
    }
}

#[test]
fn a_bad_checksum_in_the_middle_skips_that_record_only_and_counts_it() {
    let records = some_records();
    let (mut data, ends) = file_of(&records);
    // Flip a payload byte of the third record.
    data[ends[1] + 20] ^= 0x40;
    let d = reader::decode(&data).unwrap();
    let want: Vec<_> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(d.records, want);
    assert_eq!(
        d.skipped,
        [Skipped {
            offset: ends[1] as u64,
            bytes: (ends[2] - ends[1]) as u64
        }]
    );
    assert_eq!(d.torn_tail, None);
    // A broken length resynchronises the same way.
    let (mut data, ends) = file_of(&records);
    data[ends[0] + 5] = 0xff;
    let d = reader::decode(&data).unwrap();
    assert_eq!(d.records.len(), 4);
    assert_eq!(d.skipped.len(), 1);
}

#[test]
fn other_files_are_refused_not_read() {
    assert!(matches!(
        reader::decode(b"hello world, not a journal"),
        Err(JournalError::NotAJournal)
    ));
    let mut data = frame::header().to_vec();
    data[8] = 9;
    assert!(matches!(
        reader::decode(&data),
        Err(JournalError::Version(9))
    ));
    assert_eq!(reader::decode(&[]).unwrap(), Decoded::default());
}

fn options(dir: &tempfile::TempDir, max: u64, keep: u32) -> JournalOptions {
    JournalOptions {
        path: dir.path().join("sub/offsets.journal"),
        max_file_bytes: max,
        keep_files: keep,
    }
}

#[test]
fn the_writer_appends_across_reopens_and_cuts_a_torn_tail_first() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(&dir, 1 << 20, 4);
    let records = some_records();
    let (mut w, torn) = JournalWriter::open(opts.clone()).unwrap();
    assert_eq!(torn, None);
    w.append(&records[..3]).unwrap();
    drop(w);
    // A writer killed mid-record: half a frame at the end.
    let mut payload = Vec::new();
    records[3].encode(&mut payload);
    let mut half = Vec::new();
    frame::put(&payload, &mut half);
    let len = std::fs::metadata(&opts.path).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&opts.path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &half[..half.len() / 2]))
        .unwrap();
    let (mut w, torn) = JournalWriter::open(opts.clone()).unwrap();
    assert_eq!(
        torn,
        Some(Skipped {
            offset: len,
            bytes: (half.len() / 2) as u64
        })
    );
    w.append(&records[3..]).unwrap();
    let contents = reader::read(&opts.path, opts.max_file_bytes).unwrap();
    assert_eq!(contents.records().cloned().collect::<Vec<_>>(), records);
    assert_eq!(contents.counts(), (5, 0, 0, 0));
}

#[test]
fn the_writer_refuses_a_file_that_is_not_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(&dir, 1 << 20, 4);
    std::fs::create_dir_all(opts.path.parent().unwrap()).unwrap();
    std::fs::write(&opts.path, b"precious data that is not ours").unwrap();
    assert!(JournalWriter::open(opts.clone()).is_err());
    assert_eq!(
        std::fs::read(&opts.path).unwrap(),
        b"precious data that is not ours"
    );
}

#[test]
fn rotation_keeps_at_most_k_files_of_at_most_m_bytes_and_the_newest_records() {
    let dir = tempfile::tempdir().unwrap();
    let (max, keep) = (MIN_FILE_BYTES, 3);
    let opts = options(&dir, max, keep);
    let (mut w, _) = JournalWriter::open(opts.clone()).unwrap();
    let records: Vec<_> = (1..=400).map(|i| record(7, 0, i, i as i64, i)).collect();
    for batch in records.chunks(7) {
        w.append(batch).unwrap();
    }
    let dir_files: Vec<_> = std::fs::read_dir(opts.path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(dir_files.len(), keep as usize, "{dir_files:?}");
    let total: u64 = dir_files
        .iter()
        .map(|e| {
            let len = e.metadata().unwrap().len();
            assert!(len <= max, "{:?} is {len} bytes", e.path());
            len
        })
        .sum();
    assert!(total <= opts.max_total_bytes());
    let contents = reader::read(&opts.path, max).unwrap();
    let seqs: Vec<u64> = contents.records().map(|r| r.event.seq.unwrap()).collect();
    // The newest records, contiguous, ending with the last one written.
    assert_eq!(seqs.last(), Some(&400));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(seqs.len() > 2 * 20, "{} records kept", seqs.len());
}

#[test]
fn restore_keeps_the_vms_alive_and_drops_gone_and_reused_pids() {
    let mut records = vec![record(10, 0, 1, -5, 1), record(11, 0, 1, -6, 2)];
    // Pid 12: an older process that exited, then a new one with that pid.
    let mut old = record(12, 0, 1, -7, 3);
    old.event.start_time = 5;
    let mut exit = old.clone();
    exit.event.event = EventKind::VmExit;
    exit.event.vcpu = None;
    records.extend([old, exit, record(12, 1, 1, -8, 4)]);
    // Pid 13 is alive, but its exit is journaled: it is another process now.
    let mut ended = record(13, 0, 1, -9, 5);
    let mut ended_exit = ended.clone();
    ended_exit.event.event = EventKind::VmExit;
    ended.event.start_time = 77;
    records.extend([ended, ended_exit]);
    let alive = |id: ProcessId| id.start_time == 77 && id.pid != 11;
    let restore = Restore::of(&records, alive);
    let pids: Vec<u32> = restore.records.iter().map(|r| r.event.pid).collect();
    assert_eq!(pids, [10, 12]);
    assert_eq!(restore.records[1].event.vcpu, Some(1));
    assert_eq!(restore.alive.len(), 2);
    assert_eq!(restore.gone, 3); // 11, 12 (start 5), 13
    assert_eq!(restore.vcpus(), 2);
}

/// Seeds of the fuzz target, written from the format table in the module
/// doc by a separate (Python) encoder: the doc is enough to write a journal.
#[test]
fn files_written_from_the_documented_format_read() {
    let seeds = "../../../../fuzz/seeds/journal_decode";
    let whole = reader::decode(include_bytes!(
        "../../../../fuzz/seeds/journal_decode/whole"
    ))
    .unwrap();
    assert_eq!(whole.records.len(), 4, "{seeds}: {whole:?}");
    assert_eq!((whole.skipped.len(), whole.torn_tail), (0, None));
    let r = &whole.records[2].event;
    assert_eq!(
        (
            r.offset,
            r.effective_offset,
            r.ratio,
            r.frac_bits,
            r.boundary_uncertain
        ),
        (Some(-2_000_000), Some(0), Some(1 << 48), Some(48), true)
    );
    assert_eq!(whole.records[3].event.event, EventKind::Entry);
    let torn = reader::decode(include_bytes!(
        "../../../../fuzz/seeds/journal_decode/torn_tail"
    ))
    .unwrap();
    assert_eq!((torn.records.len(), torn.torn_tail.is_some()), (3, true));
    let damaged = reader::decode(include_bytes!(
        "../../../../fuzz/seeds/journal_decode/damaged_middle"
    ))
    .unwrap();
    assert_eq!((damaged.records.len(), damaged.skipped.len()), (3, 1));
    let exit = reader::decode(include_bytes!(
        "../../../../fuzz/seeds/journal_decode/vm_exit"
    ))
    .unwrap();
    assert_eq!(exit.records[0].event.event, EventKind::VmExit);
    assert_eq!(exit.records[0].event.vcpu, None);
}
