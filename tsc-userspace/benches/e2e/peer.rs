//! The peer figure: the same guest pages and a recording of the same host
//! events written as two trace.dat files, merged by `trace-cmd report`.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use bytes::Bytes;
use tsc_userspace::tracefs::{
    EventName, Instance, InstanceOptions, Page, PageLayout, tracedat::TraceDat,
};

use crate::{guest::Guest, measure::children_cpu_seconds};

/// A private instance recording the same host events as the session's,
/// over the same interval; read out only at the end, so it adds no reader
/// to the run. Its buffer must hold the whole run (events lost to
/// overwriting are reported).
pub struct HostRecorder {
    instance: Instance,
}

/// The host recording, read out.
pub struct HostPages {
    pub dat: TraceDat,
    pub events: u64,
}

impl HostRecorder {
    pub fn start(events: &[EventName], buffer_kb: u32) -> Self {
        let mut options = InstanceOptions::new("tsc-e2e-bench-host");
        options.events = events.to_vec();
        options.buffer_size_kb = Some(buffer_kb);
        let instance = Instance::create(&options).expect("creating the host recording instance");
        Self { instance }
    }

    /// Stops recording and reads every page out.
    pub fn finish(self) -> HostPages {
        let instance = &self.instance;
        instance.set_tracing_on(false).expect("tracing_on");
        let layout = instance.page_layout().expect("page layout");
        let mut cpus = Vec::new();
        let mut events = 0;
        for cpu in instance.cpus().expect("cpus") {
            let mut pipe = instance.open_pipe(cpu).expect("trace_pipe_raw");
            let mut pages = Vec::new();
            while let Some(page) = pipe.read_page().expect("reading a page") {
                events += count(&layout, &page);
                pages.push(page);
            }
            cpus.resize(cpu as usize + 1, Vec::new());
            cpus[cpu as usize] = pages;
        }
        let mut systems: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for event in instance.events() {
            let format = instance.event_format(event).expect("format");
            systems
                .entry(event.system.clone())
                .or_default()
                .push(format);
        }
        let root = instance.tracefs().root().to_owned();
        let dat = TraceDat {
            page_size: instance.page_size().expect("page size"),
            header_page: instance.header_page().expect("header_page"),
            header_event: instance.header_event().expect("header_event"),
            ftrace_formats: Vec::new(),
            systems: systems.into_iter().collect(),
            cmdlines: fs::read_to_string(root.join("saved_cmdlines")).unwrap_or_default(),
            cpus,
        };
        HostPages { dat, events }
    }
}

fn count(layout: &PageLayout, page: &[u8]) -> u64 {
    Page::parse(layout, page).map_or(0, |p| p.events().filter(Result::is_ok).count() as u64)
}

/// The guest's pages as the session received them, as a trace.dat.
pub fn guest_dat(guest: &Guest) -> TraceDat {
    let hello = guest.hello.as_ref().expect("the agent's Hello");
    let mut ftrace = Vec::new();
    let mut systems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in &hello.events {
        match event.system.as_str() {
            "ftrace" => ftrace.push(event.format.clone()),
            system => systems
                .entry(system.to_owned())
                .or_default()
                .push(event.format.clone()),
        }
    }
    let ncpus = hello.cpus.iter().map(|c| c.cpu + 1).max().unwrap_or(1);
    let mut cpus: Vec<Vec<Bytes>> = vec![Vec::new(); ncpus as usize];
    for (cpu, page) in &guest.pages {
        cpus[*cpu as usize].push(page.clone());
    }
    TraceDat {
        page_size: hello.page_size as usize,
        header_page: hello.header_page.clone(),
        header_event: hello.header_event.clone(),
        ftrace_formats: ftrace,
        systems: systems.into_iter().collect(),
        cmdlines: guest.cmdlines.clone(),
        cpus,
    }
}

/// What `trace-cmd report` took.
pub struct Report {
    pub lines: u64,
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
}

/// Runs `trace-cmd report` on both files, as one timeline with the guest's
/// timestamps shifted by `guest_offset` and TSC ticks shown as seconds
/// (`--ts2secs`: the conversion our output does too), text to `out`.
pub fn report(host: &Path, guest: &Path, tsc_hz: u64, guest_offset: i64, out: &Path) -> Report {
    let file = File::create(out).expect("creating the report file");
    let cpu_before = children_cpu_seconds();
    let start = Instant::now();
    let status = Command::new("trace-cmd")
        .arg("report")
        .args(["--ts2secs", &tsc_hz.to_string(), "-t"])
        .arg("-i")
        .arg(host)
        .arg("-i")
        .arg(guest)
        .args(["--ts-offset", &guest_offset.to_string()])
        .stdout(file)
        .stderr(Stdio::inherit())
        .status()
        .expect("running trace-cmd report");
    let wall_seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = children_cpu_seconds() - cpu_before;
    assert!(status.success(), "trace-cmd report failed: {status}");
    let lines = BufReader::new(File::open(out).expect("the report"))
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("] "))
        .count() as u64;
    Report {
        lines,
        wall_seconds,
        cpu_seconds,
    }
}

/// Writes a trace.dat.
pub fn write_dat(dat: &TraceDat, path: &Path) {
    let file = File::create(path).expect("creating a trace.dat");
    dat.write_to(std::io::BufWriter::new(file))
        .expect("writing a trace.dat");
}
