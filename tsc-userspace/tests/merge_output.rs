//! Merge and output on real pages: a private `x86-tsc` instance records
//! trace markers written from a thread hopping between CPUs and execs of
//! `/bin/true`; every CPU's pages go through the merger as separate streams
//! and out through both writers. The timeline must hold every event once,
//! in TSC order, with the markers in the order they were written.

mod common;

use std::{collections::BTreeSet, io::Write, process::Command};

use bytes::Bytes;
use tsc_userspace::{
    merge::{EventData, MergeConfig, MergeItem, Merger, SourceInfo, SourceKind, Sources},
    output::{ClockMode, EventWriter, FlushPolicy, JsonWriter, TextWriter, WriteContext},
    tracefs::{Instance, InstanceOptions, Page},
};

const MARKERS: usize = 400;
const EXECS: usize = 20;

/// Runs the workload and returns every CPU's pages, in read order.
fn record(instance: &Instance) -> Vec<(u32, Vec<Bytes>)> {
    let cpus = instance.cpus().unwrap();
    let mut marker = instance.trace_marker().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..MARKERS {
                common::cpu::on_cpu(cpus[i % cpus.len()], || {
                    marker.write_marker(&format!("tsc-marker {i}")).unwrap();
                    if i % (MARKERS / EXECS) == 0 {
                        assert!(Command::new("/bin/true").status().unwrap().success());
                    }
                });
            }
        });
    });
    instance.set_tracing_on(false).unwrap();
    cpus.iter()
        .map(|&cpu| {
            let mut pipe = instance.open_pipe(cpu).unwrap();
            let mut pages = Vec::new();
            while let Some(page) = pipe.read_page().unwrap() {
                pages.push(page);
            }
            (cpu, pages)
        })
        .collect()
}

#[test]
fn real_pages_merge_into_one_ordered_timeline() {
    if !common::privileged("real_pages_merge_into_one_ordered_timeline") {
        return;
    }
    let mut opts = InstanceOptions::new("tsc-test-merge");
    opts.buffer_percent = Some(0);
    opts.events = vec![
        "sched:sched_process_exec".parse().unwrap(),
        "sched:sched_switch".parse().unwrap(),
    ];
    let instance = Instance::create(&opts).unwrap();
    let layout = instance.page_layout().unwrap();
    let formats = std::sync::Arc::new(instance.format_set().unwrap());
    let per_cpu = record(&instance);

    let mut sources = Sources::new();
    let host = sources
        .add(SourceInfo {
            kind: SourceKind::Host,
            name: "host".into(),
            formats,
            kernel_release: None,
        })
        .unwrap();
    // A window that never expires: only the watermarks order.
    let mut merger = Merger::new(MergeConfig::new(u64::MAX));
    let mut json = JsonWriter::new(Vec::new(), FlushPolicy::Batch);
    let mut text = TextWriter::new(Vec::new(), ClockMode::Tsc, FlushPolicy::Batch);
    let clock = |tsc: u64| tsc;
    let mut write = |sources: &mut Sources, item: MergeItem| {
        sources.learn_comms(&item);
        let ctx = WriteContext {
            sources,
            clock: &clock,
            boottime: None,
        };
        json.write(&ctx, &item)?;
        text.write(&ctx, &item)
    };
    // Feed the CPUs' pages round-robin, one page per stream per batch, as a
    // session reading every CPU would.
    let (mut pushed, mut cpus_with_events) = (0usize, BTreeSet::new());
    let rounds = per_cpu.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    for round in 0..rounds {
        for (cpu, pages) in &per_cpu {
            let Some(page) = pages.get(round) else {
                merger.close_stream(host, *cpu);
                continue;
            };
            for raw in Page::parse(&layout, page).unwrap().events() {
                let raw = raw.unwrap();
                let data = EventData::from_page(page, raw.data).expect("record inside its page");
                assert!(
                    merger
                        .push(MergeItem::host(host, *cpu, raw.ts, data))
                        .is_none()
                );
                pushed += 1;
                cpus_with_events.insert(*cpu);
            }
        }
        merger
            .pop_ready(0, |item| write(&mut sources, item))
            .unwrap();
    }
    merger.close_source(host);
    merger.flush_all(|item| write(&mut sources, item)).unwrap();
    json.flush().unwrap();
    text.flush().unwrap();

    let stats = merger.stats();
    assert_eq!(stats.total.emitted as usize, pushed);
    assert_eq!(
        (stats.total.late, stats.total.forced, stats.total.reordered),
        (0, 0, 0)
    );
    assert!(
        cpus_with_events.len() >= 2.min(per_cpu.len()),
        "{cpus_with_events:?}"
    );

    let lines: Vec<serde_json::Value> = String::from_utf8(json.get_ref().clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), pushed, "one object per event");
    let tscs: Vec<u64> = lines
        .iter()
        .map(|l| l["host_tsc"].as_u64().unwrap())
        .collect();
    assert!(tscs.is_sorted(), "the timeline is in TSC order");
    let markers: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] == "ftrace:print")
        .map(|l| l["fields"]["buf"].as_str().unwrap().trim_end().to_owned())
        .collect();
    let expected: Vec<String> = (0..MARKERS).map(|i| format!("tsc-marker {i}")).collect();
    assert_eq!(markers, expected, "every marker once, in the order written");
    let marker_cpus: BTreeSet<u64> = lines
        .iter()
        .filter(|l| l["event"] == "ftrace:print")
        .map(|l| l["cpu"].as_u64().unwrap())
        .collect();
    assert_eq!(marker_cpus.len(), per_cpu.len(), "markers on every CPU");
    let execs = lines
        .iter()
        .filter(|l| l["event"] == "sched:sched_process_exec")
        .filter(|l| l["fields"]["filename"] == "/bin/true")
        .count();
    assert_eq!(execs, EXECS);
    // Names learnt from sched_switch: the exec'd child is called `true`.
    assert!(lines.iter().any(|l| l["comm"] == "true"));

    let text = String::from_utf8(text.get_ref().clone()).unwrap();
    assert_eq!(text.lines().count(), pushed);
    let mut last = 0;
    for (i, line) in text
        .lines()
        .filter(|l| l.contains(" ftrace:print: "))
        .enumerate()
    {
        assert!(line.starts_with("host:"));
        assert!(line.contains(&format!(" buf=tsc-marker {i}\\n")), "{line}");
        let ts: u64 = line
            .split("] ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|t| t.parse().ok())
            .unwrap();
        assert!(ts >= last);
        last = ts;
    }
    std::io::stderr()
        .write_all(format!("merged {pushed} real events from {} CPUs\n", per_cpu.len()).as_bytes())
        .unwrap();
}
