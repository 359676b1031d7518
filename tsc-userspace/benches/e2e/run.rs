//! One run: session, relay, agent and workload; then the peer on the same
//! events.

use std::{
    process::Stdio,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use tsc_userspace::session::Summary;

use crate::{Config, agent, guest, load, measure::Percentiles, output, peer, relay, session};

/// Everything one run measured.
pub struct Run {
    pub label: String,
    pub burst: bool,
    pub sent: load::Sent,
    pub summary: Summary,
    pub session_cpu: f64,
    pub agent_cpu: f64,
    pub relay_cpu: f64,
    /// Markers found in the output, and in what reached the session.
    pub markers_out: u64,
    pub markers_arrived: u64,
    pub host_lines: u64,
    pub guest_lines: u64,
    pub out_of_order: u64,
    pub created_to_output: Percentiles,
    pub arrived_to_output: Percentiles,
    pub created_to_arrived: Percentiles,
    /// Markers/s between the 10th and 90th percentile of output time.
    pub sustained: f64,
    /// First send to last marker output, seconds.
    pub end_to_end_seconds: f64,
    /// Host events the peer's recording holds.
    pub peer_host_events: u64,
    pub peer: Option<peer::Report>,
}

/// What one run does.
pub struct Workload {
    pub label: String,
    /// Markers to write.
    pub count: u64,
    /// Per second; `None`: back to back.
    pub rate: Option<u64>,
    /// The agent's `--buffer-kb` (0: its default).
    pub agent_buffer_kb: u32,
    /// Stop the agent as soon as the workload is done, so it ships what
    /// its ring buffer holds at once: the session sets the pace.
    pub burst: bool,
}

/// Runs one workload.
pub fn run(config: &Config, vm: u32, workload: &Workload) -> Run {
    let Workload {
        label,
        count,
        rate,
        agent_buffer_kb,
        burst,
    } = workload;
    let (label, count, rate) = (label.clone(), *count, *rate);
    eprintln!("e2e: {label}: {count} markers ...");
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("timeline.txt");
    let recorder = peer::HostRecorder::start(&config.host_events, config.host_buffer_kb);
    let session = session::start(
        vm,
        &config.host_events,
        config.window,
        config.format,
        &out_path,
    );
    let relay = relay::Relay::start(session.addr);
    let mut agent = agent::spawn(agent::AgentArgs {
        port: relay.port,
        name: "vm1",
        buffer_kb: *agent_buffer_kb,
        retry: 5,
        flush_ms: crate::flush_ms(),
        stderr: Stdio::inherit(),
    });
    let agent_pid = agent.pid();
    wait_for(
        || relay.acked.load(Ordering::Acquire),
        "the agent to be bound",
    );
    let marker = load::agent_marker(agent_pid);

    let session_cpu0 = session.cpu_seconds();
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let sent = std::thread::Builder::new()
        .name("e2e-load".into())
        .spawn(move || load::run(&marker, cpu, count, rate))
        .expect("spawning the workload")
        .join()
        .expect("the workload panicked");
    // Long enough for the agent's periodic flush (1 s), the host's lag and
    // the window to let every event out the way they normally go.
    let settle = config.window + Duration::from_millis(2500);
    if !burst {
        std::thread::sleep(settle);
    }
    let agent_cpu = agent::stop(&mut agent);
    if *burst {
        std::thread::sleep(settle);
    }
    let writes = session.writes.clone();
    let tsc_hz = session.tsc_hz;
    let ended = session.stop();
    let capture = relay.finish();
    let host = recorder.finish();

    let guest = guest::decode(&capture, count);
    let out = output::read(&out_path, &writes, count, config.format);
    let peer = config.peer.then(|| {
        let (host_dat, guest_dat) = (dir.path().join("host.dat"), dir.path().join("guest.dat"));
        peer::write_dat(&host.dat, &host_dat);
        peer::write_dat(&peer::guest_dat(&guest), &guest_dat);
        let report = dir.path().join("report.txt");
        peer::report(&host_dat, &guest_dat, tsc_hz, 0, &report)
    });
    if config.keep {
        eprintln!("e2e: {label}: files kept in {}", dir.keep().display());
    }
    let mut result = Run {
        label,
        burst: *burst,
        sent,
        summary: ended.summary,
        session_cpu: ended.cpu_seconds - session_cpu0,
        agent_cpu,
        relay_cpu: capture.cpu_seconds,
        markers_out: 0,
        markers_arrived: 0,
        host_lines: out.host_lines,
        guest_lines: out.guest_lines,
        out_of_order: out.out_of_order,
        created_to_output: Percentiles::default(),
        arrived_to_output: Percentiles::default(),
        created_to_arrived: Percentiles::default(),
        sustained: 0.0,
        end_to_end_seconds: 0.0,
        peer_host_events: host.events,
        peer,
    };
    result.latencies(&guest, &out);
    result
}

impl Run {
    fn latencies(&mut self, guest: &guest::Guest, out: &output::Output) {
        let (mut c2o, mut a2o, mut c2a, mut outs) = (vec![], vec![], vec![], vec![]);
        for (arrived, written) in guest.markers.iter().zip(&out.written) {
            let Some((send, arrival)) = *arrived else {
                continue;
            };
            c2a.push(arrival.saturating_sub(send));
            if let Some(written) = *written {
                a2o.push(written.saturating_sub(arrival));
                c2o.push(written.saturating_sub(send));
                outs.push(written);
            }
        }
        self.markers_arrived = c2a.len() as u64;
        self.markers_out = outs.len() as u64;
        self.created_to_output = Percentiles::of(&mut c2o);
        self.arrived_to_output = Percentiles::of(&mut a2o);
        self.created_to_arrived = Percentiles::of(&mut c2a);
        outs.sort_unstable();
        if let (Some(&last), n) = (outs.last(), outs.len())
            && n >= 10
        {
            let (lo, hi) = (outs[n / 10], outs[n * 9 / 10]);
            self.sustained = (n * 8 / 10) as f64 / ((hi - lo).max(1) as f64 / 1e9);
            self.end_to_end_seconds = (last - self.sent.first_ns) as f64 / 1e9;
        }
    }
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
