//! Agent loss: the real `tsc-tracer agent` process, with its default
//! options, streams to an in-process ingest over loopback TCP while a
//! thread pinned to one CPU writes markers into the agent's instance's
//! `trace_marker`. Counts what arrived and what the kernel reported lost
//! (Lost frames, per CPU).
//!
//! Two workloads:
//! - burst: `BURST_EVENTS` (500000) markers back to back, `BURST_RUNS` (2)
//!   times;
//! - sustained: for each rate of `BURST_RATES` (events/s, comma-separated;
//!   none by default), that rate for `BURST_SECS` (5) seconds, paced every
//!   millisecond: where loss begins.
//!
//! `BURST_AGENT_ARGS` adds agent options (space-separated); `AGENT_BIN`
//! runs another build of `tsc-tracer` (before and after a change). Needs root
//! (tracefs). Run: `cargo bench -p tsc-userspace --bench agent_burst`.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tsc_userspace::{
    ingest::{Ingest, IngestConfig, IngestItem, SockAddr},
    wire::Endpoint,
};

/// Marker text; what the count looks for.
const PAYLOAD: &[u8] = b"burst:0123456789:0123456789012345";

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("agent_burst: needs root (tracefs); skipped");
        return;
    }
    let events: u64 = env("BURST_EVENTS", 500_000);
    let runs: u32 = env("BURST_RUNS", 2);
    let secs: u64 = env("BURST_SECS", 5);
    let rates: String = env("BURST_RATES", String::new());
    let extra: String = env("BURST_AGENT_ARGS", String::new());
    let extra: Vec<String> = extra.split_whitespace().map(str::to_owned).collect();
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for run in 1..=runs {
            let label = format!("burst {events} back to back, run {run}");
            measure(&label, &extra, cpu, Load::Burst(events)).await;
        }
        for rate in rates
            .split(',')
            .filter_map(|r| r.trim().parse::<u64>().ok())
        {
            let label = format!("sustained {rate}/s for {secs} s");
            measure(&label, &extra, cpu, Load::Rate(rate, secs)).await;
        }
    });
}

#[derive(Clone, Copy)]
enum Load {
    Burst(u64),
    Rate(u64, u64),
}

fn marker_of(agent: &Child) -> fs::File {
    let prefix = format!("tsc-agent-{}-", agent.id());
    let dir = fs::read_dir("/sys/kernel/tracing/instances")
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .expect("the agent's instance");
    fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("trace_marker"))
        .unwrap()
}

fn pin_to(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays in it
    // for cpu < CPU_SETSIZE; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Writes the load; returns (markers written, seconds it took).
fn write_markers(mut marker: fs::File, cpu: usize, load: Load) -> (u64, f64) {
    pin_to(cpu);
    let start = Instant::now();
    let mut written = 0u64;
    match load {
        Load::Burst(n) => {
            while written < n {
                marker.write_all(PAYLOAD).unwrap();
                written += 1;
            }
        }
        Load::Rate(rate, secs) => {
            let total = rate * secs;
            while written < total {
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                while written < due {
                    marker.write_all(PAYLOAD).unwrap();
                    written += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    (written, start.elapsed().as_secs_f64())
}

#[derive(Default)]
struct Tally {
    received: u64,
    lost: BTreeMap<u32, u64>,
    bad: u64,
}

impl Tally {
    fn add(&mut self, item: &IngestItem) {
        match item {
            IngestItem::Lost { cpu, total, .. } => {
                self.lost.insert(*cpu, *total);
            }
            IngestItem::BadPage { .. } => self.bad += 1,
            IngestItem::Events(page) => {
                self.received += page
                    .events()
                    .filter(|e| e.name() == Some(("ftrace", "print")))
                    .filter(|e| e.data.windows(6).any(|w| w == b"burst:"))
                    .count() as u64;
            }
            _ => {}
        }
    }
}

async fn measure(label: &str, extra: &[String], cpu: usize, load: Load) {
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let mut ingest = Ingest::bind(&[listen], IngestConfig::default())
        .await
        .unwrap();
    let SockAddr::Tcp(addr) = ingest.local_addrs()[0] else {
        unreachable!()
    };
    let bin = std::env::var("AGENT_BIN").unwrap_or(env!("CARGO_BIN_EXE_tsc-tracer").into());
    let agent = Command::new(bin)
        .args(["-q", "agent", "--connect"])
        .arg(format!("tcp:127.0.0.1:{}", addr.port()))
        .args(extra)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut tally = Tally::default();
    while !matches!(ingest.next_item().await, Some(IngestItem::Connected(_))) {}
    let marker = marker_of(&agent);
    let writer = std::thread::spawn(move || write_markers(marker, cpu, load));
    while !writer.is_finished() {
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(20), ingest.next_item()).await
        {
            tally.add(&item);
        }
    }
    let (written, took) = writer.join().unwrap();
    // Let the agent catch up before it is told to stop (a stopping agent
    // turns recording off and drains: nothing written is left unread).
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(20), ingest.next_item()).await
        {
            tally.add(&item);
        }
    }
    let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ingest.next_item()).await {
            Ok(Some(IngestItem::Closed { .. })) | Ok(None) | Err(_) => break,
            Ok(Some(item)) => tally.add(&item),
        }
    }
    let mut agent = agent;
    let status = agent.wait().unwrap();
    let lost: u64 = tally.lost.values().sum();
    let missing = written - tally.received.min(written);
    println!(
        "agent_burst: {label}: written {written} on cpu {cpu} at {:.0}/s; received {}; \
         missing {missing} ({:.1}%); kernel-reported lost {lost} {:?}; bad pages {}; agent {status}",
        written as f64 / took,
        tally.received,
        100.0 * missing as f64 / written as f64,
        tally.lost,
        tally.bad,
    );
}
