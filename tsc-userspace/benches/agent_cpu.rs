//! Agent overhead: CPU time of the real `tsc-tracer agent` process while
//! it forwards K events/s (trace_marker writes into its instance) to an
//! in-process ingest, reported as CPU per 100k events/s.
//!
//! The agent runs with its default options (only its events are narrowed
//! to one that stays quiet, so the markers are what it carries).
//! `AGENT_BIN` runs another build of `tsc-tracer` (to compare before and
//! after a change).
//!
//! Needs root (tracefs). Run: `cargo bench -p tsc-userspace --bench agent_cpu`.

use std::{
    fs,
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tsc_userspace::{
    ingest::{Ingest, IngestConfig, IngestItem, SockAddr},
    wire::Endpoint,
};

/// Event rates measured, per second.
const RATES: [u64; 3] = [10_000, 50_000, 100_000];
/// How long each rate runs.
const WINDOW: Duration = Duration::from_secs(4);

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("agent_cpu: needs root (tracefs); skipped");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for rate in RATES {
            measure(rate).await;
        }
    });
}

/// CPU time of every thread of a process, in seconds, from
/// `/proc/PID/task/*/schedstat` (nanoseconds on CPU; finer than the 10 ms
/// ticks of utime/stime).
fn cpu_seconds(pid: u32) -> f64 {
    let ns: u64 = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
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

/// Writes `rate` markers per second for `WINDOW`, paced every millisecond.
fn write_markers(mut marker: fs::File, rate: u64) -> u64 {
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed() < WINDOW {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while written < due {
            marker
                .write_all(b"agent-cpu-bench payload 0123456789")
                .unwrap();
            written += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    written
}

async fn measure(rate: u64) {
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let mut ingest = Ingest::bind(&[listen], IngestConfig::default())
        .await
        .unwrap();
    let SockAddr::Tcp(addr) = ingest.local_addrs()[0] else {
        unreachable!()
    };
    let bin = std::env::var("AGENT_BIN").unwrap_or(env!("CARGO_BIN_EXE_tsc-tracer").into());
    let agent = Command::new(bin)
        .args([
            "-q",
            "agent",
            "--connect",
            &format!("tcp:127.0.0.1:{}", addr.port()),
        ])
        .args(["--events", "sched:sched_process_exec"])
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut received = 0u64;
    while !matches!(ingest.next_item().await, Some(IngestItem::Connected(_))) {}
    let marker = marker_of(&agent);
    let pid = agent.id();
    let cpu_before = cpu_seconds(pid);
    let wall = Instant::now();
    let writer = std::thread::spawn(move || write_markers(marker, rate));
    while !writer.is_finished() {
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(50), ingest.next_item()).await
        {
            received += count(&item);
        }
    }
    let written = writer.join().unwrap();
    let elapsed = wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ingest.next_item()).await {
            Ok(Some(IngestItem::Closed { .. })) | Ok(None) | Err(_) => break,
            Ok(Some(item)) => received += count(&item),
        }
    }
    let mut agent = agent;
    let status = agent.wait().unwrap();
    let achieved = written as f64 / elapsed;
    let cpu_pct = 100.0 * cpu / elapsed;
    println!(
        "agent_cpu: {rate:>6} events/s asked, {achieved:>8.0}/s written, {received} of {written} \
         received; agent CPU {cpu_pct:.2}% of one core = {:.2}% per 100k events/s (exit {status})",
        cpu_pct * 100_000.0 / achieved
    );
}

fn count(item: &IngestItem) -> u64 {
    match item {
        IngestItem::Lost { new, cpu, .. } => {
            println!("agent_cpu: kernel lost {new} events on cpu {cpu}");
            0
        }
        IngestItem::BadPage { error, .. } => {
            println!("agent_cpu: bad page {error}");
            0
        }
        IngestItem::Events(page) => page
            .events()
            .filter(|e| e.name() == Some(("ftrace", "print")))
            .count() as u64,
        _ => 0,
    }
}
