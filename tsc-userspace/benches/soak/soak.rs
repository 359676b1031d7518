//! The soak and churn run, shared by the bench (`benches/soak/main.rs`,
//! minutes at 20k events/s) and its short version in `cargo xtask test`
//! (`tests/soak.rs`, which includes this file by path).
//!
//! # What runs
//! - The session: the real `tsc-tracer host` (no journal, its offsets map
//!   pinned in a directory of its own, `--status-secs 1`), text timeline to
//!   a pipe the soak reads.
//! - Two VMs like this machine (a vCPU per APIC id), one per agent, bound
//!   by `--vm PID=NAME`.
//! - Agent `soaka`: lives the whole run, connected through a relay that
//!   cuts its connection every `cut_every`; it reconnects by itself.
//! - Agent `soakb`: connected straight to the session, stopped (SIGTERM:
//!   flush, Bye) and replaced by a new one every `restart_every`.
//! - Each agent streams from its private tracefs instance: a feed writes
//!   numbered markers into its `trace_marker` (half the rate each; the
//!   feed is detached while its agent is replaced, so nothing is sent then).
//! - Churn: a new real KVM VM every `vm_every` (three alive at once), each
//!   getting vCPUs hot-plugged and offsets set while it lives.
//! - A hostile peer every `hostile_every`: garbage, a bad Hello, a
//!   half-open connection, by turns.
//!
//! # What is measured
//! Every `sample_every`: RSS and fds of the session and the agents, our
//! tracefs instances (named with our processes' pids), the session's pins,
//! its own counters (its `status:` line), markers sent and seen. At the
//! end: every marker sent is checked to have come out exactly once; a
//! missing one counts as reported loss only within what the session
//! reported lost, and those missing around a cut connection are counted
//! apart (pages in flight when a connection breaks have no acknowledgement
//! to bring them back).

#[path = "../e2e/agent.rs"]
pub mod agent;
#[path = "churn.rs"]
pub mod churn;
#[path = "feed.rs"]
pub mod feed;
#[path = "hostile.rs"]
pub mod hostile;
#[path = "../e2e/load.rs"]
#[allow(dead_code)]
pub mod load;
#[path = "../e2e/measure.rs"]
#[allow(dead_code)]
pub mod measure;
#[path = "probe.rs"]
pub mod probe;
#[path = "relay.rs"]
pub mod relay;
#[path = "report.rs"]
pub mod report;
#[path = "session.rs"]
pub mod session;
#[path = "tally.rs"]
pub mod tally;

use std::{
    collections::BTreeSet,
    fs::File,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use agent::{AgentArgs, AgentGuard};
use feed::Feed;
use probe::Proc;
use session::{Session, Status};
use tally::Missing;

/// Agent `soakb`'s markers are numbered from here (`soaka`'s from 0).
pub const B_BASE: u64 = 1 << 40;

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct Config {
    pub duration: Duration,
    pub sample_every: Duration,
    /// Markers per second, both agents together.
    pub rate: u64,
    pub vm_every: Duration,
    pub restart_every: Duration,
    pub cut_every: Duration,
    pub hostile_every: Duration,
    /// Where the logs go.
    pub dir: PathBuf,
}

impl Config {
    /// The bench's settings for `minutes`.
    pub fn minutes(minutes: u64, dir: PathBuf) -> Self {
        Self {
            duration: Duration::from_secs(minutes * 60),
            sample_every: Duration::from_secs(60),
            rate: 20_000,
            vm_every: Duration::from_secs(3),
            restart_every: Duration::from_secs(20),
            cut_every: Duration::from_secs(20),
            hostile_every: Duration::from_secs(1),
            dir,
        }
    }
}

/// One look at everything.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub at: Duration,
    pub session: Proc,
    pub agent_a: Proc,
    pub agent_b: Proc,
    /// Tracefs instances of our processes, and of anyone.
    pub instances: usize,
    pub instances_all: usize,
    pub pins: usize,
    /// The session's counters.
    pub status: Status,
    /// Markers sent, seen in the timeline, seen twice.
    pub sent: u64,
    pub seen: u64,
    pub duplicates: u64,
}

/// How one agent's markers came out.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub sent: u64,
    pub seen: u64,
    pub missing: Missing,
    pub failed_writes: u64,
    /// The first few runs of missing numbers, relative to `base`.
    pub gaps: Vec<(u64, u64)>,
    /// Where the feed stood at each restart or cut, relative to `base`.
    pub churned_at: Vec<u64>,
}

/// What a run did and found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    /// With both agents connected, before any churn.
    pub start: Sample,
    /// With both agents connected, after the churn stopped and settled.
    pub end: Sample,
    pub a: Delivery,
    pub b: Delivery,
    pub duplicates: u64,
    /// Marker numbers seen that were never sent.
    pub phantoms: u64,
    pub ended: session::Ended,
    pub churn: churn::ChurnCounts,
    pub hostile: hostile::HostileCounts,
    pub restarts: u64,
    pub cuts: u64,
    /// Reconnections the relay saw (agent `soaka`).
    pub reconnects: u64,
    /// The session's fds open at the end that were not at the start.
    pub session_fd_growth: Vec<String>,
    /// After every process of ours exited: instances and pins left behind.
    pub instances_left: usize,
    pub pins_left: usize,
}

struct Agents {
    a: AgentGuard,
    b: AgentGuard,
    /// Every agent pid so far (their instances are ours).
    pids: BTreeSet<u32>,
    log: File,
}

impl Agents {
    fn spawn(&mut self, port: u16, name: &str, retry: u32) -> AgentGuard {
        let agent = agent::spawn(AgentArgs {
            port,
            name,
            buffer_kb: 0,
            retry,
            flush_ms: None,
            stderr: Stdio::from(self.log.try_clone().expect("agent log")),
        });
        self.pids.insert(agent.pid());
        agent
    }
}

/// Runs the soak; `on_sample` sees each sample as it is taken.
pub fn run(config: &Config, mut on_sample: impl FnMut(&Sample)) -> Outcome {
    let vm_a = agent::vm_like_this_machine();
    let vm_b = agent::vm_like_this_machine();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/tsc-soak-{}", std::process::id()));
    let session = Session::start(
        &[(vm_a.pid(), "soaka"), (vm_b.pid(), "soakb")],
        &pin_dir.join("offsets"),
        &config.dir.join("session.log"),
    );
    let relay = relay::Relay::start(session.port);
    let mut agents = Agents {
        a: AgentGuard(None),
        b: AgentGuard(None),
        pids: BTreeSet::new(),
        log: File::create(config.dir.join("agents.log")).expect("agent log"),
    };
    agents.a = agents.spawn(relay.port, "soaka", 1_000_000);
    agents.b = agents.spawn(session.port, "soakb", 5);
    let mut feed_a = Feed::start("soak-feed-a", 0, config.rate / 2);
    let mut feed_b = Feed::start("soak-feed-b", B_BASE, config.rate / 2);
    // Markers go in once the agent is bound: before, its instance is being
    // set up (a new trace clock clears it, a resize refuses writes).
    wait_until("both agents bound", Duration::from_secs(60), || {
        session.bound("soaka") == 1 && session.bound("soakb") == 1
    });
    feed_a.attach(&load::agent_marker(agents.a.pid()));
    feed_b.attach(&load::agent_marker(agents.b.pid()));
    wait_until("both agents counted", Duration::from_secs(60), || {
        session.status().get("agents") == Some(&2)
    });

    let look = |t0: Instant, agents: &Agents, feeds: [&Feed; 2]| {
        let pids: Vec<u32> = agents.pids.iter().copied().chain([session.pid()]).collect();
        let (instances, instances_all) = probe::instances(&pids);
        let (seen, duplicates) = session.markers();
        Sample {
            at: t0.elapsed(),
            session: probe::process(session.pid()),
            agent_a: probe::process(agents.a.pid()),
            agent_b: probe::process(agents.b.pid()),
            instances,
            instances_all,
            pins: probe::pins(&pin_dir),
            status: session.status(),
            sent: feeds.iter().map(|f| f.sent()).sum(),
            seen,
            duplicates,
        }
    };
    // The baseline once the session has settled: markers of both agents
    // out, and its fd count steady for a second.
    wait_until(
        "markers of both agents out",
        Duration::from_secs(60),
        || {
            let t = session.tally();
            t.seen_in(0, B_BASE) > 0 && t.seen_in(B_BASE, u64::MAX) > 0
        },
    );
    wait_for_steady_fds(session.pid());
    let t0 = Instant::now();
    let start = look(t0, &agents, [&feed_a, &feed_b]);
    let start_fds = probe::fd_kinds(session.pid());
    let churn = churn::Churn::start(config.vm_every);
    let hostile = hostile::Hostile::start(session.port, config.hostile_every);
    let mut samples = vec![start.clone()];
    on_sample(&start);
    let (mut restarts, mut cuts) = (0u64, 0u64);
    let mut cut_windows: Vec<(u64, u64)> = Vec::new();
    let (mut cut_at, mut restart_at) = (Vec::new(), Vec::new());
    let mut open_window: Option<(u64, u64)> = None;
    let mut next_sample = config.sample_every;
    let mut next_restart = config.restart_every;
    // Cuts fall between restarts.
    let mut next_cut = config.cut_every / 2;
    while t0.elapsed() < config.duration {
        std::thread::sleep(Duration::from_millis(100));
        let now = t0.elapsed();
        // A cut's window closes once the agent is back (a new connection).
        if let Some((from, accepted)) = open_window
            && relay.accepted() > accepted
        {
            // Pages shipped just after the reconnection still held
            // markers sent while it was away: a second's worth more.
            cut_windows.push((from, feed_a.next() + config.rate / 2));
            open_window = None;
        }
        if now >= next_cut && open_window.is_none() {
            // Markers up to two seconds old may still be in flight.
            let from = feed_a.next().saturating_sub(config.rate);
            open_window = Some((from, relay.accepted()));
            relay.cut();
            cut_at.push(feed_a.sent());
            cuts += 1;
            next_cut += config.cut_every;
        }
        if now >= next_restart {
            feed_b.detach();
            restart_at.push(feed_b.sent());
            agent::stop(&mut agents.b);
            agents.b = agents.spawn(session.port, "soakb", 5);
            restarts += 1;
            wait_until("the new agent bound", Duration::from_secs(60), || {
                session.bound("soakb") == restarts + 1
            });
            feed_b.attach(&load::agent_marker(agents.b.pid()));
            next_restart += config.restart_every;
        }
        if now >= next_sample {
            let s = look(t0, &agents, [&feed_a, &feed_b]);
            on_sample(&s);
            samples.push(s);
            next_sample += config.sample_every;
        }
    }
    let churn = churn.finish();
    let hostile = hostile.finish();
    if let Some((from, _)) = open_window {
        wait_until(
            "agent soaka back after a cut",
            Duration::from_secs(30),
            || session.status().get("agents") == Some(&2),
        );
        cut_windows.push((from, feed_a.next() + config.rate / 2));
    }
    // The quiet end: same agents connected, no churn VMs, no hostile peers.
    let end = wait_for_settled(&start, || look(t0, &agents, [&feed_a, &feed_b]));
    on_sample(&end);
    let session_fd_growth = probe::fd_growth(&start_fds, &probe::fd_kinds(session.pid()));

    feed_a.stop();
    feed_b.stop();
    agent::stop(&mut agents.a);
    agent::stop(&mut agents.b);
    // Each agent has said Bye once the session counts none: only then is
    // everything they sent in (a session told to stop drops what its
    // connections have not read yet).
    wait_until("the agents to leave", Duration::from_secs(60), || {
        session.status().get("agents") == Some(&0)
    });
    let reconnects = relay.accepted().saturating_sub(1);
    drop(relay);
    let session_pid = session.pid();
    let ended = session.stop();
    let _ = (vm_a.quit(), vm_b.quit());
    let pids: Vec<u32> = agents.pids.iter().copied().chain([session_pid]).collect();
    let delivery = |feed: &Feed, windows: &[(u64, u64)], churned_at: Vec<u64>| Delivery {
        sent: feed.sent(),
        gaps: ended
            .tally
            .gaps(feed.base, feed.next(), 5)
            .into_iter()
            .map(|(s, e)| (s - feed.base, e - feed.base))
            .collect(),
        churned_at,
        seen: ended.tally.seen_in(feed.base, feed.next()),
        missing: ended.tally.missing(feed.base, feed.next(), windows),
        failed_writes: feed.failed(),
    };
    let a = delivery(&feed_a, &cut_windows, cut_at);
    let b = delivery(&feed_b, &[], restart_at);
    Outcome {
        samples,
        start,
        end,
        phantoms: ended.tally.seen - a.seen - b.seen,
        duplicates: ended.tally.duplicates,
        a,
        b,
        churn,
        hostile,
        restarts,
        cuts,
        reconnects,
        session_fd_growth,
        instances_left: probe::instances(&pids).0,
        pins_left: probe::pins(&pin_dir),
        ended,
    }
}

/// Waits (up to 30 s) until the session's and agents' fds and our
/// instances are back to `start`'s, and returns the last look either way.
fn wait_for_settled(start: &Sample, mut look: impl FnMut() -> Sample) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = look();
        let settled = s.session.fds == start.session.fds
            && s.instances == start.instances
            && s.status.get("agents") == Some(&2);
        if settled || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (up to 20 s) until `pid`'s fd count stays the same for a second.
fn wait_for_steady_fds(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut last, mut same) = (probe::process(pid).fds, 0);
    while same < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = probe::process(pid).fds;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
}

fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
