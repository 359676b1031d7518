//! The Perfetto writer against the official schema: real tracefs records
//! (scheduler, task and trace_marker events of a private `x86-tsc`
//! instance) as the host's, and again as two guests' whose timestamps are
//! replayed through offset histories (the 2012 rewind; a scaled vCPU), merged
//! and written by the Perfetto and JSON writers. `perfetto_check.py` decodes
//! the trace with the PyPI `perfetto` package's `perfetto_trace_pb2` and
//! checks it event by event against the JSON lines.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use tsc_common::tsc::TscParams;
use tsc_userspace::{
    Flags,
    clock::Clock,
    merge::{EventData, MergeConfig, MergeItem, Merger, SourceId, SourceInfo, SourceKind, Sources},
    output::{EventWriter, FlushPolicy, JsonWriter, PerfettoWriter, WriteContext},
    timeline::{OffsetChange, StreamCursor, VcpuTimeline},
    tracefs::{FormatSet, Instance, InstanceOptions, Page},
};

fn check_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perfetto_check.py")
}

/// Runs the checker; its JSON answer, or its complaint.
fn run_check(py: &Path, args: &[&Path]) -> Result<serde_json::Value, String> {
    let out = Command::new(py)
        .arg(check_py())
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

const EVENTS: [&str; 9] = [
    "sched:sched_switch",
    "sched:sched_waking",
    "sched:sched_wakeup",
    "sched:sched_wakeup_new",
    "sched:sched_process_exit",
    "sched:sched_process_free",
    "sched:sched_process_exec",
    "task:task_newtask",
    "task:task_rename",
];

/// Real records: children forked, exec'd and reaped, a thread renamed,
/// atrace-style markers. Every CPU's records in order, with their CPU.
fn record() -> (Arc<FormatSet>, Vec<(u32, u64, EventData)>) {
    let mut opts = InstanceOptions::new("tsc-test-perfetto");
    opts.buffer_size_kb = Some(512);
    opts.events = EVENTS.iter().map(|e| e.parse().unwrap()).collect();
    let instance = Instance::create(&opts).unwrap();
    let layout = instance.page_layout().unwrap();
    let formats = Arc::new(instance.format_set().unwrap());
    let mut marker = instance.trace_marker().unwrap();
    let pid = std::process::id();
    for i in 0..5 {
        marker
            .write_marker(&format!("B|{pid}|run true {i}"))
            .unwrap();
        assert!(Command::new("/bin/true").status().unwrap().success());
        marker.write_marker(&format!("E|{pid}")).unwrap();
    }
    std::thread::Builder::new()
        .spawn(|| {
            // SAFETY: PR_SET_NAME reads a NUL-terminated string of <= 16 bytes.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"tsc-renamed".as_ptr()) };
        })
        .unwrap()
        .join()
        .unwrap();
    // A reaped task is freed after an RCU grace period: wait for it.
    let freed = (0..500).any(|_| {
        let seen = instance
            .read("trace")
            .unwrap()
            .contains("sched_process_free");
        if !seen {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        seen
    });
    assert!(freed, "no sched_process_free within 5 s");
    instance.set_tracing_on(false).unwrap();
    let mut records = Vec::new();
    for cpu in instance.cpus().unwrap() {
        let mut pipe = instance.open_pipe(cpu).unwrap();
        while let Some(page) = pipe.read_page().unwrap() {
            for raw in Page::parse(&layout, &page).unwrap().events() {
                let raw = raw.unwrap();
                let data = EventData::from_page(&page, raw.data).unwrap();
                records.push((cpu, raw.ts, data));
            }
        }
    }
    (formats, records)
}

fn source(
    sources: &mut Sources,
    kind: SourceKind,
    formats: &Arc<FormatSet>,
    release: Option<&str>,
) -> SourceId {
    sources
        .add(SourceInfo {
            kind,
            name: "test".into(),
            formats: formats.clone(),
            kernel_release: release.map(str::to_owned),
        })
        .unwrap()
}

fn guest_kind(name: &str, pid: u32) -> SourceKind {
    SourceKind::Guest {
        vm_name: name.into(),
        vm_pid: pid,
    }
}

/// Places guest TSC `g` as the session does (`session/guest.rs`): by the
/// vCPU's timeline, else outside any epoch.
fn place(timeline: &VcpuTimeline, cursor: &mut StreamCursor, g: u64) -> (u64, Option<u64>, Flags) {
    match timeline.assign(cursor, g) {
        Ok(a) => (a.host, Some(a.epoch), a.flags),
        Err(_) => (g, None, Flags::OUTSIDE_EPOCH),
    }
}

fn guest_item(
    source: SourceId,
    cpu: u32,
    g: u64,
    placed: (u64, Option<u64>, Flags),
    data: EventData,
) -> MergeItem {
    MergeItem {
        host_tsc: placed.0,
        source,
        cpu,
        vcpu: Some(cpu),
        guest_tsc: Some(g),
        epoch: placed.1,
        flags: placed.2,
        data,
    }
}

/// The 2012 rewind: the guest sets its TSC to 0 three times, a third of the
/// records apart, so the same guest TSCs recur in each epoch and the
/// stream's order picks the epoch. PVM-like: the offset is not applied.
/// One record is stamped before any epoch.
fn rewind(source: SourceId, records: &[(u32, u64, EventData)]) -> Vec<MergeItem> {
    let third = records.len().div_ceil(3).max(1);
    let base = records.iter().map(|r| r.1).min().unwrap();
    let starts: Vec<u64> = (0..3).map(|k| base + k as u64 * 50_000_000).collect();
    let mut timeline = VcpuTimeline::default();
    for &start in &starts {
        let params = TscParams::unscaled((start as i64).wrapping_neg() as u64);
        timeline
            .offset_change(OffsetChange {
                new_start: start,
                params,
                old_end: None,
            })
            .unwrap();
    }
    let mut cursors: BTreeMap<u32, StreamCursor> = BTreeMap::new();
    let mut items = Vec::new();
    for (i, (cpu, _, data)) in records.iter().enumerate() {
        let g = 1_000 + (i % third) as u64 * 997;
        let mut placed = place(&timeline, cursors.entry(*cpu).or_default(), g);
        placed.2.insert(Flags::OFFSET_NOT_APPLIED);
        items.push(guest_item(source, *cpu, g, placed, data.clone()));
    }
    let (cpu, _, data) = &records[0];
    let g = u64::MAX - 1_000; // before the first epoch
    let placed = place(&timeline, &mut StreamCursor::default(), g);
    assert!(placed.2.contains(Flags::OUTSIDE_EPOCH));
    items.push(guest_item(
        source,
        *cpu,
        g,
        (base - 1_001, None, placed.2),
        data.clone(),
    ));
    items
}

/// A vCPU whose TSC runs 1.5 times the host's, from an offset.
fn scaled(source: SourceId, records: &[(u32, u64, EventData)]) -> Vec<MergeItem> {
    let params = TscParams::new(12_345_678, 3 << 47, 48).unwrap();
    let first = records.iter().map(|r| r.1).min().unwrap();
    let mut timeline = VcpuTimeline::default();
    timeline
        .offset_change(OffsetChange {
            new_start: first - 1,
            params,
            old_end: None,
        })
        .unwrap();
    let mut cursors: BTreeMap<u32, StreamCursor> = BTreeMap::new();
    records
        .iter()
        .map(|(cpu, ts, data)| {
            let g = params.guest_from_host(*ts);
            let placed = place(&timeline, cursors.entry(*cpu).or_default(), g);
            assert_eq!(placed.2, Flags::NONE);
            guest_item(source, *cpu, g, placed, data.clone())
        })
        .collect()
}

/// The JSON and Perfetto writers, fed the same items with the same context.
struct Both<'a> {
    json: JsonWriter<Vec<u8>>,
    perfetto: PerfettoWriter<fs::File>,
    ctx: WriteContext<'a>,
}

impl Both<'_> {
    fn write(&mut self, item: MergeItem) -> std::io::Result<()> {
        self.json.write(&self.ctx, &item)?;
        self.perfetto.write(&self.ctx, &item)
    }

    fn flush(&mut self) {
        self.json.flush().unwrap();
        self.perfetto.flush().unwrap();
    }
}

/// Writes `items` (in push order) through the merge to both writers,
/// flushing after every `batch` pushed; returns the JSON lines and the
/// trace's length after each flush.
fn write_both(
    sources: &Sources,
    clock: &Clock,
    items: Vec<MergeItem>,
    batch: usize,
    trace: &Path,
) -> (Vec<u8>, Vec<u64>) {
    let to_ns = |tsc| clock.tsc_to_ns(tsc);
    let to_boot = |tsc| clock.tsc_to_boottime_ns(tsc);
    let mut both = Both {
        json: JsonWriter::new(Vec::new(), FlushPolicy::Batch),
        perfetto: PerfettoWriter::new(fs::File::create(trace).unwrap(), FlushPolicy::Batch),
        ctx: WriteContext {
            sources,
            clock: &to_ns,
            boottime: Some(&to_boot),
        },
    };
    let mut merger = Merger::new(MergeConfig::new(u64::MAX));
    let mut sizes = Vec::new();
    for chunk in items.chunks(batch) {
        for item in chunk {
            if let Some(now) = merger.push(item.clone()) {
                both.write(now).unwrap();
            }
        }
        merger.pop_ready(0, |item| both.write(item)).unwrap();
        both.flush();
        sizes.push(fs::metadata(trace).unwrap().len());
    }
    merger.flush_all(|item| both.write(item)).unwrap();
    both.flush();
    (both.json.get_ref().clone(), sizes)
}

/// JSON lines with each event's BOOTTIME ns added.
fn with_boot_ns(json: &[u8], clock: &Clock) -> String {
    let mut out = String::new();
    for line in String::from_utf8(json.to_vec()).unwrap().lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let tsc = v["host_tsc"].as_u64().unwrap();
        v["boot_ns"] = clock.tsc_to_boottime_ns(tsc).into();
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

/// The end of every whole `Trace.packet` field in `bytes`.
fn packet_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert_eq!(bytes[at], 0x0a, "field 1, length-delimited");
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        loop {
            let b = bytes[i];
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        at = i + len;
        ends.push(at);
    }
    ends
}

#[test]
fn replayed_histories_decode_with_the_official_schema() {
    if !common::privileged("replayed_histories_decode_with_the_official_schema") {
        return;
    }
    let py = common::perfetto_python();
    let clock = Clock::calibrate().unwrap();
    let (formats, records) = record();
    assert!(records.len() > 20, "{} records", records.len());

    let mut sources = Sources::new();
    let host = source(&mut sources, SourceKind::Host, &formats, None);
    let rewound = source(
        &mut sources,
        guest_kind("vm-rewind", 4_194_401),
        &formats,
        Some("6.1.0-rewind"),
    );
    let scaled_src = source(
        &mut sources,
        guest_kind("vm-scaled", 4_194_402),
        &formats,
        Some("6.12.0-scaled"),
    );
    let mut items: Vec<MergeItem> = records
        .iter()
        .map(|(cpu, ts, data)| MergeItem::host(host, *cpu, *ts, data.clone()))
        .collect();
    for item in &items {
        sources.learn_comms(item);
    }
    items.extend(rewind(rewound, &records));
    items.extend(scaled(scaled_src, &records));
    // Pushed in host time order, as a session reading all streams would
    // (stable: each stream keeps its own order).
    items.sort_by_key(|i| i.host_tsc);
    // Late: a host event older than everything written, after the rest.
    let (cpu, _, data) = &records[0];
    let stale = MergeItem::host(host, *cpu, items[0].host_tsc - 1, data.clone());
    items.push(stale);

    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.perfetto-trace");
    let (json, sizes) = write_both(&sources, &clock, items.clone(), 256, &trace);
    let jsonl = dir.path().join("events.jsonl");
    fs::write(&jsonl, with_boot_ns(&json, &clock)).unwrap();
    let releases = r#"{"vm-rewind": "6.1.0-rewind", "vm-scaled": "6.12.0-scaled"}"#;

    let summary = run_check(
        &py,
        &[Path::new("check"), &trace, &jsonl, Path::new(releases)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!("{summary}");
    assert_eq!(summary["events"].as_u64().unwrap() as usize, items.len());
    for typed in [
        "sched:sched_switch",
        "sched:sched_wakeup_new",
        "task:task_newtask",
        "sched:sched_process_exit",
        "sched:sched_process_free",
        "ftrace:print",
    ] {
        assert!(
            summary["typed"][typed].as_u64().unwrap_or(0) > 0,
            "no {typed}: {summary}"
        );
    }
    assert!(
        summary["typed"]["task:task_rename"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    // Every rewound event is flagged offset-not-applied, the ambiguous ones
    // resolved-by-order; one is outside any epoch, one late; nothing else.
    let flags = &summary["flags"];
    let n = |flag: &str| flags[flag].as_u64().unwrap_or(0) as usize;
    assert_eq!(n("offset-not-applied"), records.len(), "{summary}");
    assert!(n("resolved-by-order") >= records.len() / 2, "{summary}");
    assert_eq!((n("outside-epoch"), n("late")), (1, 1), "{summary}");
    assert_eq!(
        summary["flagged"].as_u64().unwrap() as usize,
        records.len() + 2
    );

    // A killed session: what was on disk after each flush decodes whole,
    // and a file cut inside a packet decodes up to its last whole packet.
    let bytes = fs::read(&trace).unwrap();
    let ends = packet_ends(&bytes);
    assert_eq!(ends.last().copied(), Some(bytes.len()));
    let cut = dir.path().join("cut.perfetto-trace");
    for &size in sizes.iter().take(3) {
        assert!(
            ends.contains(&(size as usize)),
            "a flush ends inside a packet"
        );
        fs::write(&cut, &bytes[..size as usize]).unwrap();
        let count = run_check(&py, &[Path::new("count"), &cut]).unwrap();
        let whole = ends.iter().filter(|&&e| e <= size as usize).count();
        assert_eq!(count["packets"].as_u64().unwrap() as usize, whole);
    }
    let mid = ends[ends.len() / 2] - 5;
    fs::write(&cut, &bytes[..mid]).unwrap();
    assert!(
        run_check(&py, &[Path::new("count"), &cut]).is_err(),
        "a torn packet is not a whole one"
    );
    let whole: Vec<usize> = ends.iter().copied().filter(|&e| e <= mid).collect();
    let mut f = fs::File::create(&cut).unwrap();
    f.write_all(&bytes[..*whole.last().unwrap()]).unwrap();
    drop(f);
    let count = run_check(&py, &[Path::new("count"), &cut]).unwrap();
    assert_eq!(count["packets"].as_u64().unwrap() as usize, whole.len());
}
