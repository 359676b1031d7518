//! End to end through loopback TCP: the real agent -> the session -> a file,
//! and the same events merged by `trace-cmd report` as the peer figure,
//! measured in the same run.
//!
//! Needs root (tracefs, eBPF, /dev/kvm); prints a loud SKIPPED without it.
//! Run: `cargo bench -p tsc-userspace --bench e2e`.
//!
//! # What runs
//! - A real VM (`tsc-tracer vmm`, a vCPU per APIC id of this machine)
//!   whose pid the session binds the agent to (`--vm PID=vm1`): the agent
//!   runs on this machine, so a private tracefs instance of the host stands
//!   in for the guest's kernel, and its CPUs map to the VM's vCPUs by APIC
//!   id as a guest's would.
//! - The session, in this process on threads of its own, as `tsc-tracer
//!   host` runs it: text output to a file, batch flush, the reorder window
//!   of `E2E_WINDOW_MS`, and host events (`E2E_HOST_EVENTS`, default the
//!   busy `sched:sched_switch`) from its own host instance, so two sources
//!   merge.
//! - The real `tsc-tracer agent` process, connected over loopback TCP
//!   through a relay in this process (below).
//! - A workload thread writing `trace_marker` into the agent's instance,
//!   pinned to the last CPU (so the guest's events form one busy stream and
//!   the figures do not depend on where the scheduler puts it). Each marker
//!   is `e2e:SEQ:SEND_NS`, SEND_NS being CLOCK_MONOTONIC just before its
//!   write(2).
//!
//! # Three runs, each with its own session and agent
//! - paced: `E2E_RATE` markers/s for `E2E_SECS`, the agent's defaults.
//!   The latency figures come from here.
//! - full speed: `E2E_EVENTS` back to back, the agent's defaults. Shows
//!   what the agent carries and what it loses (counted by the kernel and
//!   reported by the session).
//! - burst: the same, with an agent ring buffer large enough to hold all
//!   of it, and the agent stopped as soon as the workload ends: it ships
//!   the whole backlog at once, so the session sets the pace. Its
//!   throughput is the session's; its latency would only measure the
//!   bench's timing, so it is not printed.
//!
//! # How latency is measured
//! Every timestamp is CLOCK_MONOTONIC on this machine, so they subtract.
//! - Created: SEND_NS in the marker's own text.
//! - Arrived: the relay between agent and session copies each read from
//!   the agent to the session's socket and notes when that write returned.
//!   Decoding the copied stream afterwards gives each page frame's end in
//!   the stream, hence when the session's socket held the whole frame.
//!   The relay adds one loopback hop (tens of µs) to "created -> output".
//! - Output: the session writes into a file wrapper that notes, per
//!   write(2), the bytes written so far and when it returned (one clock
//!   read per batch, nothing per event). Reading the file back gives each
//!   marker line's offset, hence the write that put it in the file.
//!
//! So "created -> output" is what a user tailing the file sees, including
//! the agent's page batching; "arrived -> output" is the session alone
//! (decode, epoch lookup, merge window, formatting, write). Both include
//! the reorder window by design: an event is written once every stream's
//! watermark passed it or the window expired.
//!
//! # How throughput is measured
//! - Sustained events/s: markers between the 10th and 90th percentile of
//!   output time, over that time. End to end: all markers over first send
//!   to last output (this includes the window the last events wait).
//! - Session CPU: CPU time of the session's threads (named
//!   `e2e-session`) from the workload's start to the session's end, idle
//!   ticks included; events per session CPU-second is the rate one core
//!   could sustain. On a shared 2-core machine this is the steadier figure.
//! - Agent CPU: its whole life (rusage at exit); relay CPU: its threads.
//!
//! # The peer figure
//! The guest's pages exactly as the session received them (from the
//! relay's copy) and a recording of the same host events over the same
//! interval (a second private instance, read out only at the end) are
//! written as two trace.dat files; `trace-cmd report --ts2secs HZ -t -i
//! host.dat -i guest.dat --ts-offset 0` merges them into text in a file
//! and is timed (wall and CPU). The offset is 0 because the "guest" is this
//! host, whose x86-tsc timestamps are the host TSC. trace-cmd works offline
//! on finished files, so its events/s is a throughput ceiling; the fair
//! comparison with the live session is events per CPU-second.
//!
//! # Sizes (environment)
//! `E2E_RATE` (5000), `E2E_SECS` (5), `E2E_EVENTS` (500000),
//! `E2E_WINDOW_MS` (1000, the CLI default), `E2E_HOST_EVENTS`
//! (sched:sched_switch), `E2E_AGENT_BUFFER_KB` (0: the agent's default,
//! the kernel's size; the burst run sizes its own), `E2E_HOST_BUFFER_KB`
//! (32768, the host recording per CPU), `E2E_KEEP=1` keeps the files
//! (timeline.txt, host.dat, guest.dat, report.txt) and prints where.
//! `E2E_RECORD=DIR` also records each run's session into `DIR/runN`
//! (`--record`), to measure what recording costs. `E2E_FLUSH_MS=N` reads
//! every CPU's buffer every N ms on both sides (the agent's and the host's
//! `--flush-ms`; default theirs, 10): `E2E_FLUSH_MS=1` is the low-latency
//! setting the README documents. `E2E_RUNS` (all: `paced,full,burst`) picks
//! the runs; `E2E_FORMAT` (`text`, or `json`) the session's output format.

mod agent;
mod guest;
mod load;
mod measure;
mod output;
mod peer;
mod relay;
mod report;
mod run;
mod session;

use std::time::Duration;

use run::Workload;
use tsc_userspace::{output::OutputFormat, tracefs::EventName};

/// The bench's knobs, from the environment.
pub struct Config {
    pub rate: u64,
    pub secs: u64,
    pub events: u64,
    pub window: Duration,
    pub host_events: Vec<EventName>,
    pub agent_buffer_kb: u32,
    pub host_buffer_kb: u32,
    pub keep: bool,
    pub peer: bool,
    /// Which runs (`paced`, `full`, `burst`).
    pub runs: Vec<String>,
    /// The session's output format.
    pub format: OutputFormat,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a valid value")),
        Err(_) => default,
    }
}

/// `E2E_FLUSH_MS`, when set: the agent's and the host's flush period.
pub fn flush_ms() -> Option<u64> {
    std::env::var("E2E_FLUSH_MS").ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("E2E_FLUSH_MS={v}: not a number"))
    })
}

impl Config {
    fn from_env() -> Self {
        let host_events: String = env("E2E_HOST_EVENTS", "sched:sched_switch".to_owned());
        Self {
            rate: env("E2E_RATE", 5_000),
            secs: env("E2E_SECS", 5),
            events: env("E2E_EVENTS", 500_000),
            window: Duration::from_millis(env("E2E_WINDOW_MS", 1000)),
            host_events: host_events
                .split(',')
                .map(|e| e.parse().expect("E2E_HOST_EVENTS: SYSTEM:NAME,..."))
                .collect(),
            agent_buffer_kb: env("E2E_AGENT_BUFFER_KB", 0),
            host_buffer_kb: env("E2E_HOST_BUFFER_KB", 32768),
            keep: env("E2E_KEEP", 0) != 0,
            peer: which::which("trace-cmd").is_ok(),
            runs: env("E2E_RUNS", "paced,full,burst".to_owned())
                .split(',')
                .map(str::to_owned)
                .collect(),
            format: match env("E2E_FORMAT", "text".to_owned()).as_str() {
                "text" => OutputFormat::Text,
                "json" => OutputFormat::Json,
                other => panic!("E2E_FORMAT={other}: text or json"),
            },
        }
    }
}

impl Config {
    fn workloads(&self) -> Vec<Workload> {
        let all = [
            Workload {
                label: format!("paced {}/s", self.rate),
                count: self.rate * self.secs,
                rate: Some(self.rate),
                agent_buffer_kb: self.agent_buffer_kb,
                burst: false,
            },
            Workload {
                label: "full speed".into(),
                count: self.events,
                rate: None,
                agent_buffer_kb: self.agent_buffer_kb,
                burst: false,
            },
            Workload {
                label: "burst".into(),
                count: self.events,
                rate: None,
                // Holds the whole burst below the 50% wake-up mark (a
                // marker takes about 48 bytes of ring buffer).
                agent_buffer_kb: (self.events * 48 * 2 / 1024 + 1024) as u32,
                burst: true,
            },
        ];
        let keys = ["paced", "full", "burst"];
        all.into_iter()
            .zip(keys)
            .filter(|(_, key)| self.runs.iter().any(|r| r == key))
            .map(|(w, _)| w)
            .collect()
    }
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("\n*** e2e: SKIPPED: needs root (tracefs, eBPF, /dev/kvm) ***\n");
        return;
    }
    let config = Config::from_env();
    if !config.peer {
        eprintln!(
            "\n*** e2e: trace-cmd is not installed (apt-get install trace-cmd): \
             the peer figure is SKIPPED ***\n"
        );
    }
    let vm = agent::vm_like_this_machine();
    report::machine();
    let runs: Vec<run::Run> = config
        .workloads()
        .iter()
        .map(|w| run::run(&config, vm.pid(), w))
        .collect();
    report::table(&config, &runs);
    let _ = vm.quit();
}
