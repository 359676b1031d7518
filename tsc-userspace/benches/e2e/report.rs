//! Printing the figures.

use std::fs;

use crate::{Config, run::Run};

/// The machine the figures are from.
pub fn machine() {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "e2e: machine: {cpus} CPUs ({model}), load average {} at start",
        load.join(" ")
    );
}

/// Every figure of every run.
pub fn table(config: &Config, runs: &[Run]) {
    println!(
        "e2e: window {} ms, output {:?}, host events {}",
        config.window.as_millis(),
        config.format,
        config
            .host_events
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    for run in runs {
        counts(run);
        if !run.burst {
            latency(run);
        }
        throughput(run);
    }
}

fn counts(run: &Run) {
    let s = &run.summary;
    println!(
        "\ne2e: [{}] {} markers sent in {:.2} s; {} reached the session, {} in the output \
         (+{} other guest lines, {} host lines; {} out of order)",
        run.label,
        run.sent.count,
        (run.sent.last_ns - run.sent.first_ns) as f64 / 1e9,
        run.markers_arrived,
        run.markers_out,
        run.guest_lines.saturating_sub(run.markers_out),
        run.host_lines,
        run.out_of_order
    );
    println!(
        "e2e: [{}] session: {} guest + {} host events; {} in order, {} late, {} by window \
         expiry, {} over the held bound; lost {} guest / {} host",
        run.label,
        s.guest_events,
        s.host_events,
        s.emitted,
        s.late,
        s.forced,
        s.overflowed,
        s.guest_lost,
        s.host_lost
    );
}

fn latency(run: &Run) {
    println!(
        "e2e: [{}] latency created -> output  {}",
        run.label, run.created_to_output
    );
    println!(
        "e2e: [{}] latency arrived -> output  {}",
        run.label, run.arrived_to_output
    );
    println!(
        "e2e: [{}] latency created -> arrived {}",
        run.label, run.created_to_arrived
    );
}

fn throughput(run: &Run) {
    let events = (run.summary.guest_events + run.summary.host_events) as f64;
    println!(
        "e2e: [{}] markers/s sustained (p10-p90 of output time) {:.0}; end to end {:.0} \
         ({} markers, first send to last output {:.2} s)",
        run.label,
        run.sustained,
        run.markers_out as f64 / run.end_to_end_seconds.max(1e-9),
        run.markers_out,
        run.end_to_end_seconds
    );
    println!(
        "e2e: [{}] CPU: session {:.3} s ({:.2} µs/event), agent {:.3} s (whole life), relay {:.3} s",
        run.label,
        run.session_cpu,
        run.session_cpu * 1e6 / events.max(1.0),
        run.agent_cpu,
        run.relay_cpu
    );
    let Some(peer) = &run.peer else {
        println!(
            "e2e: [{}] trace-cmd report: SKIPPED (not installed)",
            run.label
        );
        return;
    };
    let ours_cpu = events / run.session_cpu.max(1e-9);
    let theirs_wall = peer.lines as f64 / peer.wall_seconds.max(1e-9);
    let theirs_cpu = peer.lines as f64 / peer.cpu_seconds.max(1e-9);
    println!(
        "e2e: [{}]                    events   wall s  events/s(wall)  CPU s  events/CPU-s",
        run.label
    );
    println!(
        "e2e: [{}] tsc-tracer host  {:>9} {:>8.2} {:>15.0} {:>6.2} {:>13.0}   (live: first send to last output)",
        run.label,
        events,
        run.end_to_end_seconds,
        events / run.end_to_end_seconds.max(1e-9),
        run.session_cpu,
        ours_cpu
    );
    println!(
        "e2e: [{}] trace-cmd report {:>9} {:>8.2} {:>15.0} {:>6.2} {:>13.0}   (offline; {} host events recorded)",
        run.label,
        peer.lines,
        peer.wall_seconds,
        theirs_wall,
        peer.cpu_seconds,
        theirs_cpu,
        run.peer_host_events
    );
    println!(
        "e2e: [{}] ratio ours/trace-cmd: events per CPU-second {:.2}x",
        run.label,
        ours_cpu / theirs_cpu.max(1e-9)
    );
}
