//! The tracefs module against this machine's real tracefs: a known workload
//! in a private `x86-tsc` instance decodes to exactly what was done, and
//! `trace-cmd report` reads the same pages the same way.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    process::Command,
};

use bytes::Bytes;
use common::Resource;
use tsc_userspace::tracefs::{
    EventName, Instance, InstanceOptions, LostEvents, Page, PageLayout, TraceMarker, Tracefs,
    TracefsError, cleanup_live_instances, tracedat::TraceDat,
};

// Tests share the registry of live instances (one calls
// `cleanup_live_instances`) and one checks that no `PREFIX` instance is
// left in tracefs, whichever process made it: each holds
// `common::take_turn(Resource::Tracing)`, so they run one at a time under
// cargo test and cargo-nextest alike.

const PREFIX: &str = "tsc-test-tracefs";
const TRUE: &str = "/bin/true";

fn options(events: &[&str]) -> InstanceOptions {
    let mut opts = InstanceOptions::new(PREFIX);
    opts.buffer_percent = Some(0);
    opts.events = events.iter().map(|e| e.parse().unwrap()).collect();
    opts
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// What the workload did and what the instance recorded meanwhile.
struct Recorded {
    pages: Vec<(u32, Bytes)>,
    tsc_before: u64,
    tsc_after: u64,
    children: Vec<i32>,
    marker_tid: i32,
}

/// Reads every CPU's pipe in its own task while `markers` writes go to the
/// instance's trace_marker and `execs` children exec `/bin/true`; then stops
/// tracing and flushes what is left.
async fn record(instance: &Instance, markers: usize, execs: usize) -> Recorded {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for cpu in instance.cpus().unwrap() {
        let mut pipe = instance.open_pipe(cpu).unwrap().into_async().unwrap();
        let mut stopped = stopped.clone();
        readers.push(tokio::spawn(async move {
            let mut pages = Vec::new();
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    page = pipe.next_page() => pages.push((cpu, page.unwrap())),
                }
            }
            while let Some(page) = pipe.try_read_page().unwrap() {
                pages.push((cpu, page));
            }
            pages
        }));
    }
    let mut marker = instance.trace_marker().unwrap();
    let tsc_before = rdtsc();
    let marker_tid = nix::unistd::gettid().as_raw();
    let mut children = Vec::new();
    for i in 0..markers.max(execs) {
        if i < markers {
            write_marker(&mut marker, i);
        }
        if i < execs {
            let mut child = Command::new(TRUE).spawn().unwrap();
            children.push(child.id() as i32);
            assert!(child.wait().unwrap().success());
        }
    }
    let tsc_after = rdtsc();
    instance.set_tracing_on(false).unwrap();
    stop.send(true).unwrap();
    let mut pages = Vec::new();
    for reader in readers {
        pages.extend(reader.await.unwrap());
    }
    Recorded {
        pages,
        tsc_before,
        tsc_after,
        children,
        marker_tid,
    }
}

fn write_marker(marker: &mut TraceMarker, i: usize) {
    marker.write_marker(&format!("tsc-marker {i}")).unwrap();
}

/// One decoded event, in a form both decoders can produce.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Decoded {
    cpu: u32,
    ts: u64,
    name: String,
    pid: i32,
    fields: BTreeMap<String, String>,
}

/// Decodes pages with our decoder, checking time stamps never go backwards
/// on a CPU and that nothing was lost.
fn decode(instance: &Instance, pages: &[(u32, Bytes)]) -> Vec<Decoded> {
    let layout = instance.page_layout().unwrap();
    let formats = instance.format_set().unwrap();
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for (cpu, bytes) in pages {
        assert_eq!(bytes.len(), layout.page_size(), "a read returns one page");
        let page = Page::parse(&layout, bytes).unwrap();
        assert_eq!(
            page.lost_events(),
            LostEvents::None,
            "cpu {cpu} lost events"
        );
        for raw in page.events() {
            let raw = raw.unwrap();
            let prev = last.insert(*cpu, raw.ts).unwrap_or(0);
            assert!(raw.ts >= prev, "cpu {cpu}: {} after {prev}", raw.ts);
            let event = formats.event(raw.data).unwrap();
            let fields = event
                .fields()
                .map(|(f, v)| (f.name().to_string(), v.unwrap().to_string()))
                .collect();
            out.push(Decoded {
                cpu: *cpu,
                ts: raw.ts,
                name: event.format.name.clone(),
                pid: event.pid().unwrap(),
                fields,
            });
        }
    }
    out
}

#[test]
fn markers_and_execs_decode_exactly() {
    if !common::privileged("markers_and_execs_decode_exactly") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    const MARKERS: usize = 500;
    const EXECS: usize = 25;
    let instance = Instance::create(&options(&["sched:sched_process_exec"])).unwrap();
    assert!(instance.read("trace_clock").unwrap().contains("[x86-tsc]"));
    let rec = runtime().block_on(record(&instance, MARKERS, EXECS));
    let events = decode(&instance, &rec.pages);

    let mut seen = HashSet::new();
    for e in events.iter().filter(|e| e.name == "print") {
        let buf = &e.fields["buf"];
        let i: usize = buf
            .strip_prefix("tsc-marker ")
            .and_then(|s| s.strip_suffix('\n'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected marker text {buf:?}"));
        assert!(seen.insert(i), "marker {i} twice");
        assert_eq!(e.pid, rec.marker_tid);
    }
    assert_eq!(seen, (0..MARKERS).collect(), "every marker exactly once");

    let children: HashSet<i32> = rec.children.iter().copied().collect();
    let execs: Vec<&Decoded> = events
        .iter()
        .filter(|e| e.name == "sched_process_exec")
        .filter(|e| children.contains(&e.fields["pid"].parse().unwrap()))
        .collect();
    assert_eq!(execs.len(), EXECS, "one exec per child");
    for e in &execs {
        assert_eq!(e.fields["filename"], TRUE);
        assert_eq!(e.fields["pid"], e.fields["old_pid"]);
        assert_eq!(e.pid.to_string(), e.fields["pid"]);
    }
    // x86-tsc time stamps are TSC values: ours lie between the two readings
    // taken around the workload.
    for e in events
        .iter()
        .filter(|e| e.name == "print" || execs.contains(e))
    {
        assert!(
            (rec.tsc_before..=rec.tsc_after).contains(&e.ts),
            "{} outside [{}, {}]",
            e.ts,
            rec.tsc_before,
            rec.tsc_after
        );
    }
}

/// Writes recorded pages as a trace.dat v6 that trace-cmd can read.
fn trace_dat(instance: &Instance, pages: &[(u32, Bytes)], path: &Path) {
    let tracefs = instance.tracefs();
    let ncpus = pages.iter().map(|(c, _)| c + 1).max().unwrap_or(1);
    let mut cpus = vec![Vec::new(); ncpus as usize];
    for (cpu, page) in pages {
        cpus[*cpu as usize].push(page.clone());
    }
    let mut systems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in instance.events() {
        systems
            .entry(event.system.clone())
            .or_default()
            .push(instance.event_format(event).unwrap());
    }
    let dat = TraceDat {
        page_size: instance.page_size().unwrap(),
        header_page: instance.header_page().unwrap(),
        header_event: instance.header_event().unwrap(),
        ftrace_formats: vec![
            instance
                .event_format(&EventName::new("ftrace", "print"))
                .unwrap(),
        ],
        systems: systems.into_iter().collect(),
        cmdlines: std::fs::read_to_string(tracefs.root().join("saved_cmdlines")).unwrap(),
        cpus,
    };
    dat.write_to(std::fs::File::create(path).unwrap()).unwrap();
}

/// Parses `trace-cmd report -t -R` lines: `COMM-PID [CPU] SEC.NSEC: NAME: F=V F=V`,
/// splitting fields at the names the event's format gives.
fn parse_report(text: &str, instance: &Instance) -> Vec<Decoded> {
    let formats = instance.format_set().unwrap();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.contains("] ")) {
        let (task, rest) = line.split_once('[').unwrap_or_else(|| bad(line));
        let pid = task.trim().rsplit_once('-').unwrap_or_else(|| bad(line)).1;
        let pid = pid.parse().unwrap_or_else(|_| bad(line));
        let (cpu, rest) = rest.split_once("] ").unwrap();
        let (ts, rest) = rest.trim_start().split_once(": ").unwrap();
        let (sec, nsec) = ts.split_once('.').unwrap();
        assert_eq!(nsec.len(), 9, "report -t prints nanoseconds: {line}");
        let ts = sec.parse::<u64>().unwrap() * 1_000_000_000 + nsec.parse::<u64>().unwrap();
        let (name, mut rest) = rest.split_once(':').unwrap();
        let format = formats.iter().find(|f| f.name == name).unwrap();
        let names: Vec<&str> = format.own_fields().map(|f| f.name()).collect();
        let mut fields = BTreeMap::new();
        for (i, field) in names.iter().enumerate() {
            let start = rest.find(&format!("{field}=")).unwrap() + field.len() + 1;
            let end = names
                .get(i + 1)
                .and_then(|next| rest[start..].find(&format!(" {next}=")))
                .map_or(rest.len(), |e| start + e);
            fields.insert(field.to_string(), normalize(&rest[start..end]));
            rest = &rest[end..];
        }
        out.push(Decoded {
            cpu: cpu.parse().unwrap(),
            ts,
            name: name.to_string(),
            pid,
            fields,
        });
    }
    out
}

fn bad<T>(line: &str) -> T {
    panic!("unexpected report line {line:?}")
}

/// Numbers in decimal whatever their base, text without the trailing
/// newline trace-cmd drops.
fn normalize(value: &str) -> String {
    let value = value.trim_end_matches('\n').trim_start();
    let number = match value.strip_prefix("0x") {
        Some(hex) => i128::from_str_radix(hex, 16).ok(),
        None => value.parse::<i128>().ok(),
    };
    number.map_or_else(|| value.trim_end().to_string(), |n| n.to_string())
}

#[test]
fn trace_cmd_report_reads_the_same_pages_the_same_way() {
    if !common::privileged("trace_cmd_report_reads_the_same_pages_the_same_way") {
        return;
    }
    let trace_cmd = common::require_tool("trace-cmd");
    let _turn = common::take_turn(Resource::Tracing);
    let events = [
        "sched:sched_process_exec",
        "sched:sched_switch",
        "sched:sched_wakeup",
    ];
    let instance = Instance::create(&options(&events)).unwrap();
    let rec = runtime().block_on(record(&instance, 300, 10));
    let mut ours = decode(&instance, &rec.pages);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trace.dat");
    trace_dat(&instance, &rec.pages, &file);

    // trace-cmd report only reads the file; it touches no tracefs.
    let out = Command::new(&trace_cmd)
        .args(["report", "-t", "-R", "-i"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut theirs = parse_report(&String::from_utf8_lossy(&out.stdout), &instance);
    for e in &mut ours {
        for v in e.fields.values_mut() {
            *v = normalize(v);
        }
    }
    ours.sort();
    theirs.sort();
    assert!(ours.len() >= 310, "{} events", ours.len());
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b);
    }
    let names: HashSet<&str> = ours.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains("sched_switch") && names.contains("print"));
}

fn ours_left(tracefs: &Tracefs) -> Vec<String> {
    std::fs::read_dir(tracefs.instances_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PREFIX))
        .collect()
}

#[test]
fn instances_are_removed_on_every_way_out() {
    if !common::privileged("instances_are_removed_on_every_way_out") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let tracefs = Tracefs::find().unwrap();

    // An unknown event is refused by name before anything is created.
    let err = Instance::create(&options(&["sched:no_such_event"])).unwrap_err();
    assert!(matches!(err, TracefsError::UnknownEvent(_)));
    assert!(err.to_string().contains("sched:no_such_event"), "{err}");
    // A clock the kernel lacks: the half-made instance is removed.
    let mut bad_clock = options(&[]);
    bad_clock.clock = "no-such-clock".into();
    let err = Instance::create(&bad_clock).unwrap_err();
    assert!(matches!(err, TracefsError::Clock { .. }), "{err}");
    assert!(
        err.to_string().contains("x86-tsc"),
        "lists what exists: {err}"
    );
    assert_eq!(ours_left(&tracefs), Vec::<String>::new());

    // Dropped while a pipe and the marker are open: removed with the last one.
    let instance = Instance::create(&options(&["sched:sched_switch"])).unwrap();
    let path = instance.path().to_path_buf();
    assert!(
        instance
            .name()
            .starts_with(&format!("{PREFIX}-{}-", std::process::id()))
    );
    let pipe = instance.open_pipe(0).unwrap();
    let marker = instance.trace_marker().unwrap();
    drop(instance);
    assert!(path.exists());
    drop(pipe);
    assert!(path.exists());
    drop(marker);
    assert!(!path.exists());

    // The no-unwind path: stops and removes what is live; Drop then finds
    // nothing to do.
    let instance = Instance::create(&options(&[])).unwrap();
    assert_eq!(cleanup_live_instances(), 0);
    assert!(!instance.path().exists());
    drop(instance);

    // What a killed process left is removed by the next create.
    let mut child = Command::new(TRUE).spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = tracefs.instances_dir().join(format!("{PREFIX}-{dead}-0"));
    std::fs::create_dir(&stale).unwrap();
    let instance = Instance::create(&options(&[])).unwrap();
    assert!(!stale.exists());
    drop(instance);
    assert_eq!(ours_left(&tracefs), Vec::<String>::new());
}

#[test]
fn accessors_describe_the_instance() {
    if !common::privileged("accessors_describe_the_instance") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let mut opts = options(&["sched:sched_switch"]);
    opts.buffer_size_kb = Some(256);
    let instance = Instance::create(&opts).unwrap();
    // The kernel rounds up to whole pages of 4080 data bytes.
    let kb: u32 = instance
        .read("buffer_size_kb")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((256..272).contains(&kb), "{kb}");
    assert_eq!(instance.read("buffer_percent").unwrap().trim(), "0");
    assert_eq!(
        instance
            .read("events/sched/sched_switch/enable")
            .unwrap()
            .trim(),
        "1"
    );
    let layout = instance.page_layout().unwrap();
    assert_eq!(layout, PageLayout::x86_64(4096));
    assert_eq!(instance.page_size().unwrap(), 4096);
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let cpus = instance.cpus().unwrap();
    assert_eq!(Some(cpus), tsc_userspace::tracefs::parse_cpu_list(&online));
    let formats = instance.format_set().unwrap();
    assert_eq!(formats.len(), 2);
    assert!(formats.find("sched", "sched_switch").is_some());
    assert!(formats.find("ftrace", "print").is_some());
    // saved_cmdlines is the kernel's pid -> comm cache.
    let comms = instance.tracefs().saved_cmdlines().unwrap();
    assert!(!comms.is_empty());
}
