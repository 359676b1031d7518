//! `tsc-tracer convert --journal`, the real binary, on journals written
//! by the library's writer: the epoch in force for each guest TSC, flags as
//! the live timeline sets them, the 2012 rewind, a torn tail and a damaged
//! record.

use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use tsc_userspace::offsets::{
    EventKind, OffsetEvent, OffsetSource,
    journal::{Boundary, JournalOptions, JournalRecord, JournalWriter},
};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");
const PID: u32 = 4_194_402;

fn record(pid: u32, comm: &str, seq: u64, offset: i64, effective: i64, at: u64) -> JournalRecord {
    JournalRecord {
        event: OffsetEvent {
            event: if seq == 0 {
                EventKind::Snapshot
            } else {
                EventKind::Change
            },
            pid,
            start_time: 99,
            comm: comm.into(),
            vcpu: Some(0),
            offset: Some(offset),
            effective_offset: Some(effective),
            ratio: None,
            frac_bits: None,
            source: Some(OffsetSource::Tracepoint),
            seq: Some(seq),
            prev: None,
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

/// A VM whose guest set its TSC to 0 three times (the 2012 rewind: the
/// epochs overlap in guest time), and a VM whose hypervisor ignored the
/// offset asked for.
fn rewind_journal(path: &Path) {
    let mut records = vec![record(PID, "vmm-a", 0, 10_000_000, 10_000_000, 500)];
    for (i, start) in [1_000_000u64, 2_000_000, 3_000_000].into_iter().enumerate() {
        let offset = -(start as i64);
        records.push(record(PID, "vmm-a", i as u64 + 1, offset, offset, start));
    }
    records.push(record(PID + 1, "pvm", 1, -5000, 0, 100));
    let (mut w, _) = JournalWriter::open(JournalOptions::at(path)).unwrap();
    w.append(&records).unwrap();
}

fn convert(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BINARY)
        .arg("convert")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// (host TSC, epoch) of each line.
fn placed(lines: &[String]) -> Vec<(u64, String)> {
    lines
        .iter()
        .map(|l| {
            let mut words = l.split_whitespace();
            let host = words.next().unwrap().parse().unwrap();
            (host, words.next().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn a_rewound_guests_backlog_converts_with_the_epoch_each_value_was_taken_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offsets.journal");
    rewind_journal(&path);
    let p = path.to_str().unwrap();
    let backlog = "100\n200\n300\n100\n200\n300\n100\n200\n300\n";
    let out = lines(&convert(
        &["--journal", p, "--vm", "vmm-a", "--vcpu", "0"],
        backlog,
    ));
    let mut want = Vec::new();
    for (epoch, start) in [(1, 1_000_000u64), (2, 2_000_000), (3, 3_000_000)] {
        for g in [100, 200, 300] {
            want.push((start + g, format!("epoch={epoch}")));
        }
    }
    assert_eq!(placed(&out), want, "{out:?}");
    assert!(
        out[3].contains("resolved-by-order") && out[6].contains("resolved-by-order"),
        "the first value after each rewind says how it was placed: {out:?}"
    );
    // The same VM by pid, values as --guest-tsc and arguments.
    let pid = PID.to_string();
    let out = lines(&convert(
        &[
            "--journal",
            p,
            "--vm",
            &pid,
            "--vcpu",
            "0",
            "--guest-tsc",
            "0x64",
            "200",
        ],
        "",
    ));
    assert_eq!(
        placed(&out),
        [
            (1_000_100, "epoch=1".to_owned()),
            (1_000_200, "epoch=1".to_owned())
        ]
    );
}

#[test]
fn flags_say_what_is_uncertain_as_the_live_timeline_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offsets.journal");
    rewind_journal(&path);
    let p = path.to_str().unwrap();
    // The hypervisor ignored the offset: the held one (0) is used, flagged.
    let out = lines(&convert(
        &["--journal", p, "--vm", "pvm", "--vcpu", "0"],
        "7000\n",
    ));
    assert_eq!(out, ["7000 epoch=0 [offset-not-applied]"]);
    // A vCPU the journal never saw: the VM's latest offset, flagged.
    let out = lines(&convert(
        &["--journal", p, "--vm", "vmm-a", "--vcpu", "5"],
        "100\n",
    ));
    assert_eq!(out, ["3000100 epoch=- [outside-epoch]"]);
    // An unknown VM is an error that says so.
    let out = convert(&["--journal", p, "--vm", "nosuch", "--vcpu", "0"], "1\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VM nosuch"));
}

#[test]
fn a_torn_tail_and_a_damaged_record_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offsets.journal");
    rewind_journal(&path);
    let mut data = std::fs::read(&path).unwrap();
    let whole = data.len();
    // A writer killed mid-record: the first 30 bytes of a copy of the
    // last frame.
    let last_frame = data[whole - 135..].to_vec();
    assert_eq!(
        &last_frame[..4],
        b"TSCR",
        "a frame of comm 'pvm' is 135 bytes"
    );
    data.extend_from_slice(&last_frame[..30]);
    std::fs::write(&path, &data).unwrap();
    let p = path.to_str().unwrap();
    let out = convert(&["--journal", p, "--vm", "vmm-a", "--vcpu", "0"], "100\n");
    assert_eq!(placed(&lines(&out))[0].0, 1_000_100);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("torn tail of 30 bytes"), "{stderr}");

    // Damage the third epoch's record (the second change): its epoch is
    // gone, the records after it are kept, and the log says so.
    let (frame_len, first) = (12 + 125, 16);
    let second_change = first + 2 * frame_len;
    data[second_change + 40] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let out = convert(&["--journal", p, "--vm", "vmm-a", "--vcpu", "0"], "100\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipped 1 damaged stretch"), "{stderr}");
    assert_eq!(placed(&lines(&out)), [(1_000_100, "epoch=1".to_owned())]);
}
