use std::{fs, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;

use super::*;
use crate::{
    merge::{EventData, SourceInfo, SourceKind, Sources},
    tracefs::FormatSet,
};

fn host_sources() -> Sources {
    let mut sources = Sources::new();
    sources
        .add(SourceInfo {
            kind: SourceKind::Host,
            name: "host".into(),
            formats: Arc::new(FormatSet::new()),
            kernel_release: None,
        })
        .unwrap();
    sources
}

/// Writes events 1..=n (host TSC = the number), flushing every `batch`.
fn write_events(w: &mut dyn EventWriter, n: u64, batch: u64) {
    let sources = host_sources();
    let to_ns = |t: u64| t;
    let ctx = WriteContext {
        sources: &sources,
        clock: &to_ns,
        boottime: None,
    };
    let source = crate::merge::SourceId(0);
    for i in 1..=n {
        let data = EventData::from_bytes(Bytes::from(vec![0u8; 8 + (i % 5) as usize]));
        w.write(&ctx, &MergeItem::host(source, 0, i, data)).unwrap();
        if i % batch == 0 {
            w.flush().unwrap();
        }
    }
    w.flush().unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The host TSC of a JSON line.
fn tsc(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["host_tsc"].as_u64().unwrap()
}

#[test]
fn pieces_by_size_are_whole_json_and_the_kept_ones_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("out.json");
    let policy = RotatePolicy::new(Some(600), None, Some(3)).unwrap();
    let mut w = Rotating::new(
        &base,
        policy,
        OutputFormat::Json,
        ClockMode::Tsc,
        FlushPolicy::Batch,
    )
    .unwrap();
    write_events(&mut w, 100, 4);
    let stats = w.stats().clone();
    drop(w);
    let pieces = Pieces::new(&base, PieceKind::File);
    let kept = pieces.existing().unwrap();
    assert!(stats.opened >= 5, "{stats:?}");
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(stats.deleted, stats.opened - 3);
    // The kept pieces are the newest, in order, each whole JSON lines, and
    // together with the deleted ones hold every event once.
    let tscs: Vec<u64> = kept
        .iter()
        .flat_map(|&n| lines(&pieces.path(n)))
        .map(|l| tsc(&l))
        .collect();
    let first = 100 - tscs.len() as u64 + 1;
    assert_eq!(tscs, (first..=100).collect::<Vec<_>>());
    assert_eq!(stats.deleted_events + tscs.len() as u64, 100);
    // A piece ends with the first event that takes it to the size.
    for &n in &kept[..2] {
        let len = fs::metadata(pieces.path(n)).unwrap().len() as usize;
        let last = lines(&pieces.path(n)).last().unwrap().len() + 1;
        assert!(len >= 600 && len - last < 600, "piece {n} is {len} bytes");
    }
}

/// The pieces of `base` in order, each as its bytes.
fn piece_files(base: &Path) -> Vec<Vec<u8>> {
    let pieces = Pieces::new(base, PieceKind::File);
    let kept = pieces.existing().unwrap();
    kept.iter()
        .map(|&n| fs::read(pieces.path(n)).unwrap())
        .collect()
}

/// Writes `n` events as `format` into pieces of `size` bytes, flushing
/// only at the end, and returns the pieces' bytes in order.
fn pieces_flushed_once(name: &str, format: OutputFormat, size: u64, n: u64) -> Vec<Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join(name);
    let policy = RotatePolicy::new(Some(size), None, Some(0)).unwrap();
    let mut w = Rotating::new(&base, policy, format, ClockMode::Ns, FlushPolicy::Batch).unwrap();
    write_events(&mut w, n, u64::MAX);
    drop(w);
    piece_files(&base)
}

/// Bytes held back by the writer (a batch not yet flushed) count: with one
/// flush at the very end, JSON pieces still end at their size.
#[test]
fn a_piece_ends_at_its_size_however_seldom_the_session_flushes() {
    let files = pieces_flushed_once("out.json", OutputFormat::Json, 2000, 300);
    assert!(files.len() >= 10, "{} pieces", files.len());
    for f in &files[..files.len() - 1] {
        let text = std::str::from_utf8(f).unwrap();
        let last = text.lines().last().unwrap().len() + 1;
        assert!(
            f.len() >= 2000 && f.len() - last < 2000,
            "{} bytes",
            f.len()
        );
    }
}

/// Perfetto holds events in bundles until a flush; their encoded size
/// counts, so a piece ends within an event and a bundle's framing of its
/// size.
#[test]
fn perfetto_pieces_end_at_their_size_however_seldom_the_session_flushes() {
    let files = pieces_flushed_once("t.perfetto-trace", OutputFormat::Perfetto, 1500, 400);
    assert!(files.len() >= 4, "{} pieces", files.len());
    // An event here is a generic one of a few dozen bytes; a bundle's
    // framing (packet key, length, sequence id, cpu) is under 16.
    for f in &files[..files.len() - 1] {
        assert!((1500..1500 + 100).contains(&f.len()), "{} bytes", f.len());
    }
}

#[test]
fn text_pieces_start_afresh_and_a_new_run_continues_the_numbering() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("out.txt");
    fs::write(tmp.path().join("out.txt.0007"), "an earlier run's\n").unwrap();
    let policy = RotatePolicy::new(None, Some(Duration::ZERO), Some(0)).unwrap();
    let mut w = Rotating::new(
        &base,
        policy,
        OutputFormat::Text,
        ClockMode::Tsc,
        FlushPolicy::Batch,
    )
    .unwrap();
    // Age zero: every event is due at once, so each piece holds one.
    write_events(&mut w, 3, 1);
    drop(w);
    let pieces = Pieces::new(&base, PieceKind::File);
    assert_eq!(pieces.existing().unwrap(), vec![7, 8, 9, 10]);
    for (n, tsc) in [(8, 1), (9, 2), (10, 3)] {
        let l = lines(&pieces.path(n));
        assert_eq!(l.len(), 1);
        assert!(l[0].contains(&format!(" {tsc}: (+0) ")), "{l:?}");
    }
}

#[test]
fn each_perfetto_piece_starts_with_the_host_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("t.perfetto-trace");
    let policy = RotatePolicy::new(Some(1), None, Some(0)).unwrap();
    let mut w = Rotating::new(
        &base,
        policy,
        OutputFormat::Perfetto,
        ClockMode::Ns,
        FlushPolicy::Batch,
    )
    .unwrap();
    write_events(&mut w, 6, 2);
    drop(w);
    let files = piece_files(&base);
    assert_eq!(files.len(), 6, "a byte's size: one piece per event");
    // Field 1 (a TracePacket), its length, then the SystemInfo packet: the
    // same first packet in every piece.
    let first_packet = |f: &[u8]| {
        assert_eq!(f[0], 0x0a);
        let (mut len, mut i) = (0usize, 1);
        loop {
            len |= usize::from(f[i] & 0x7f) << (7 * (i - 1));
            i += 1;
            if f[i - 1] & 0x80 == 0 {
                break;
            }
        }
        f[..i + len].to_vec()
    };
    let head = first_packet(&files[0]);
    for f in &files {
        assert_eq!(first_packet(f), head);
        assert!(f.len() > head.len(), "events follow");
    }
}

#[test]
fn a_follower_moves_with_the_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let signal = PieceSignal::default();
    let dir = tmp.path().to_path_buf();
    let mut w = Rotating::following(
        signal.clone(),
        move |n| dir.join(format!("{n:04}.json")),
        OutputFormat::Json,
        ClockMode::Tsc,
        FlushPolicy::Batch,
    );
    signal.set(1);
    write_events(&mut w, 2, 1);
    signal.set(2);
    write_events(&mut w, 3, 1);
    drop(w);
    assert_eq!(lines(&tmp.path().join("0001.json")).len(), 2);
    assert_eq!(lines(&tmp.path().join("0002.json")).len(), 3);
}
