//! Rotation (`--rotate-size`, `--rotate-keep`) of the live output and of a
//! recording, and the flight recorder (`--flight-recorder`, SIGUSR1 via
//! `tsc-tracer dump`), in the real `tsc-tracer host`: a real VM in a child
//! process, the real agent (this machine's kernel stands in for a guest's),
//! the real kernel programs; the pieces and dumps read back with the real
//! trace-cmd and Perfetto's own Python decoder.

mod common;

use std::{
    collections::BTreeSet,
    io::Read,
    path::{Path, PathBuf},
    process::{Child as Process, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};
use tsc_userspace::{
    agent::{Agent, AgentConfig, AgentError, AgentReport},
    output::rotate::{PieceKind, Pieces},
    record::{PERFETTO_FILE, RecordingMeta},
    vmm::Child,
    wire::Endpoint,
};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");
const WAIT: Duration = Duration::from_secs(60);

fn ready(test: &str) -> bool {
    if !common::privileged(test) {
        return false;
    }
    common::require_tool("trace-cmd");
    common::perfetto_python();
    true
}

fn vm_child() -> Child {
    let mut child = Child::spawn(BINARY).unwrap();
    child.vm().unwrap();
    child.vcpu(0).unwrap();
    child
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `tsc-tracer host` we started, its stderr collected.
struct Host {
    process: Process,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    endpoint: Endpoint,
}

impl Host {
    async fn start(vm: u32, name: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let mut process = Command::new(BINARY)
            .args(["host", "--no-journal", "--window-ms", "300", "--listen"])
            .arg(format!("tcp:127.0.0.1:{port}"))
            .arg("--vm")
            .arg(format!("{vm}={name}"))
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = process.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let host = Self {
            process,
            log,
            reader: Some(reader),
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port,
            },
        };
        host.wait_log("the session listens", "agents connect with")
            .await;
        host
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for `needle` in the log.
    async fn wait_log(&self, what: &str, needle: &str) {
        self.wait(what, || self.log().contains(needle).then_some(()))
            .await;
    }

    /// Polls `probe` until it says yes; a timeout shows the session's log.
    async fn wait<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(found) = probe() {
                return found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waited {WAIT:?}, but never: {what}; the session's log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.process.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// SIGINT, then its exit and whole log.
    fn stop(mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGINT);
        let status = self.process.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let log = self.log();
        assert!(status.success(), "the session failed: {log}");
        log
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A failed test: do not leave the session running.
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

type AgentTask = JoinHandle<Result<AgentReport, AgentError>>;

/// An agent writing markers `TAG 0` .. `TAG n-1`.
async fn agent_with_markers(
    endpoint: &Endpoint,
    tag: &str,
    n: usize,
) -> (oneshot::Sender<()>, AgentTask) {
    let mut config = AgentConfig::new(endpoint.clone());
    config.events = vec!["sched:sched_process_exec".parse().unwrap()];
    config.name = Some("a".into());
    config.retry = 0;
    config.flush = Duration::from_millis(100);
    let agent = Agent::start(config).expect("agent starts");
    let mut marker = agent.instance().trace_marker().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    // On one CPU: pieces and the flight recorder's window hold pages in
    // the order they arrive, which across CPUs is not the order in time;
    // on one, the newest pages hold the newest markers.
    common::cpu::on_cpu(0, || {
        for i in 0..n {
            marker.write_marker(&format!("{tag} {i}")).unwrap();
        }
    });
    (stop, task)
}

/// The number of a marker `TAG N` in a JSON line's `buf`, if it is one.
fn json_marker(line: &Value, tag: &str) -> Option<u64> {
    let buf = line["fields"]["buf"].as_str()?;
    buf.trim().strip_prefix(tag)?.trim().parse().ok()
}

/// `N` of every `TAG N` in a trace-cmd report's text.
fn report_markers(text: &str, tag: &str) -> Vec<u64> {
    let needle = format!("{tag} ");
    text.lines()
        .filter_map(|l| {
            let at = l.find(&needle)?;
            l[at + needle.len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// From the session's last log line: events written (late ones are
/// counted among those "written in order" too: the guest and host events).
fn written(log: &str) -> u64 {
    let done = log
        .lines()
        .rfind(|l| l.contains("done: "))
        .expect("a summary");
    let head = &done[..done.find(" written in order").expect("the count written")];
    head.split_whitespace().last().unwrap().parse().unwrap()
}

/// Events in the pieces the session deleted, from its log.
fn deleted_events(log: &str) -> (usize, u64) {
    let counts: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("deleted ")? + 8..];
            let (_, rest) = rest.split_once(" (")?;
            rest.split_once(" events)")?.0.parse().ok()
        })
        .collect();
    (counts.len(), counts.iter().sum())
}

fn pieces(base: &Path, kind: PieceKind) -> (Pieces, Vec<u64>) {
    let p = Pieces::new(base, kind);
    let n = p.existing().unwrap();
    (p, n)
}

/// Size rotation of a JSON output and of a recording, 4 pieces kept: at
/// least 3 pieces each, at most 4 left, each opens on its own, and the
/// kept JSON pieces plus the deleted ones hold every event the session
/// wrote, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_by_size_each_open_and_lose_nothing() {
    if !ready("pieces_by_size_each_open_and_lose_nothing") {
        return;
    }
    let _turn = common::take_turn(common::Resource::Tracing);
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live.json");
    let rec = tmp.path().join("rec");
    let mut child = vm_child();
    let host = Host::start(
        child.pid(),
        "r1",
        &[
            "--format",
            "json",
            "-o",
            live.to_str().unwrap(),
            "--record",
            rec.to_str().unwrap(),
            "--rotate-size",
            "32K",
            "--rotate-keep",
            "4",
        ],
    )
    .await;
    const MARKERS: u64 = 5000;
    // Host events (vCPU exits) first, then the markers: the newest events
    // are markers, so the last one stays in a kept piece.
    let run = tokio::task::spawn_blocking(move || {
        child.rdtsc(0, 200).unwrap();
        child
    });
    let child = run.await.unwrap();
    let (stop_agent, agent) = agent_with_markers(&host.endpoint, "rot", MARKERS as usize).await;
    host.wait("the last marker is written", || {
        // In any piece: later events may have started another one.
        let (p, kept) = pieces(&live, PieceKind::File);
        kept.iter()
            .filter_map(|&n| std::fs::read_to_string(p.path(n)).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .collect::<Vec<_>>()
            })
            .any(|v| json_marker(&v, "rot") == Some(MARKERS - 1))
            .then_some(())
    })
    .await;
    let _ = stop_agent.send(());
    agent.await.unwrap().expect("agent ends cleanly");
    let log = host.stop();
    drop(child);

    // The live output's pieces.
    let (p, kept) = pieces(&live, PieceKind::File);
    assert!(!live.exists(), "only pieces, no FILE");
    assert_eq!(kept.len(), 4, "{kept:?}\n{log}");
    let (deleted, deleted_events) = deleted_events(&log);
    assert!(deleted + kept.len() >= 3, "at least 3 pieces");
    assert_eq!(
        kept,
        ((deleted as u64 + 1)..=(deleted as u64 + 4)).collect::<Vec<_>>()
    );
    let mut lines = 0u64;
    let mut markers = Vec::new();
    for &n in &kept {
        let text = std::fs::read_to_string(p.path(n)).unwrap();
        for l in text.lines() {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("piece {n}: {e}: {l}"));
            markers.extend(json_marker(&v, "rot"));
            lines += 1;
        }
    }
    assert_eq!(
        lines + deleted_events,
        written(&log),
        "every event written once, in a kept or a deleted piece"
    );
    let unique: BTreeSet<u64> = markers.iter().copied().collect();
    assert_eq!(unique.len(), markers.len(), "no marker twice");
    let first = *unique.first().unwrap();
    assert_eq!(
        unique.into_iter().collect::<Vec<_>>(),
        (first..MARKERS).collect::<Vec<_>>(),
        "the kept pieces hold the newest markers, none missing"
    );

    // The recording's pieces: each a recording trace-cmd and Perfetto open.
    let (rp, rkept) = pieces(&rec, PieceKind::Dir);
    assert!(rkept.len() <= 4 && !rkept.is_empty(), "{rkept:?}");
    assert!(*rkept.last().unwrap() >= 3, "at least 3 pieces: {rkept:?}");
    let mut guest_markers = Vec::new();
    for &n in &rkept {
        let dir = rp.path(n);
        let meta = RecordingMeta::load(&dir).unwrap();
        let mut args = vec!["report", "-i", "host.dat"];
        for g in &meta.guests {
            args.extend(["-i", g.file.as_str()]);
        }
        let text = common::trace_cmd(&args, &dir);
        guest_markers.extend(report_markers(&text, "rot"));
        common::trace_cmd(&["report", "--check-events", "-i", "host.dat"], &dir);
        let perfetto = dir.join(PERFETTO_FILE);
        if perfetto.exists() {
            common::perfetto_packets(&perfetto);
        }
    }
    let unique: BTreeSet<u64> = guest_markers.iter().copied().collect();
    assert_eq!(unique.len(), guest_markers.len(), "no page in two pieces");
    let first = *unique.first().unwrap();
    assert_eq!(
        unique.into_iter().collect::<Vec<_>>(),
        (first..MARKERS).collect::<Vec<_>>(),
        "the kept pieces hold the newest markers, none missing"
    );
    eprintln!("recording pieces kept: {rkept:?}; JSON pieces kept {kept:?}, {deleted} deleted");
    let last_perfetto = rp.path(*rkept.last().unwrap()).join(PERFETTO_FILE);
    assert!(common::perfetto_packets(&last_perfetto) > 1);
}

/// The flight recorder: after SIGUSR1 (`tsc-tracer dump`) its dump is a
/// recording trace-cmd opens, holding the newest markers and no more than
/// the size; the session goes on and dumps again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flight_recorder_dumps_the_newest_window_on_sigusr1() {
    if !ready("the_flight_recorder_dumps_the_newest_window_on_sigusr1") {
        return;
    }
    let _turn = common::take_turn(common::Resource::Tracing);
    let tmp = tempfile::tempdir().unwrap();
    let flight = tmp.path().join("flight");
    let live = tmp.path().join("live.json");
    let child = vm_child();
    const LIMIT: u64 = 64 * 1024;
    let host = Host::start(
        child.pid(),
        "f1",
        &[
            "--format",
            "json",
            "-o",
            live.to_str().unwrap(),
            "--flight-recorder",
            "64K",
            "--flight-dir",
            flight.to_str().unwrap(),
        ],
    )
    .await;
    const MARKERS: u64 = 4000;
    let (stop_agent, agent) = agent_with_markers(&host.endpoint, "fl", MARKERS as usize).await;
    let live_has = |tag: &'static str, n: u64| {
        let live = live.clone();
        move || {
            let text = std::fs::read_to_string(&live).ok()?;
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| json_marker(&v, tag) == Some(n))
                .then_some(())
        }
    };
    host.wait("the last marker is written", live_has("fl", MARKERS - 1))
        .await;

    let status = Command::new(BINARY)
        .args(["dump", &host.process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let first = wait_dump(&flight, 1).await;
    let text = common::trace_cmd(
        &["report", "-i", "host.dat", "-i", &guest_file(&first)],
        &first,
    );
    let held = report_markers(&text, "fl");
    assert!(!held.is_empty());
    assert!(
        (held.len() as u64) < MARKERS,
        "bounded: {} markers",
        held.len()
    );
    let sorted: BTreeSet<u64> = held.iter().copied().collect();
    let lowest = *sorted.first().unwrap();
    assert_eq!(
        sorted.into_iter().collect::<Vec<_>>(),
        (lowest..MARKERS).collect::<Vec<_>>(),
        "the newest markers, none missing"
    );
    let spilled = dir_bytes(&first.join("spill"));
    // Whole pages, as read: the spill holds exactly what was counted.
    assert!(spilled <= LIMIT, "{spilled} bytes of pages in the dump");
    common::trace_cmd(
        &["report", "--check-events", "-i", &guest_file(&first)],
        &first,
    );

    // It goes on: more markers, another dump (kill -USR1 this time).
    let (stop2, agent2) = {
        let _ = stop_agent.send(());
        agent.await.unwrap().expect("agent ends cleanly");
        agent_with_markers(&host.endpoint, "after", 10).await
    };
    host.wait("the later markers are written", live_has("after", 9))
        .await;
    host.signal(nix::sys::signal::Signal::SIGUSR1);
    let second = wait_dump(&flight, 2).await;
    let text = common::trace_cmd(&["report", "-i", &guest_file(&second)], &second);
    assert_eq!(report_markers(&text, "after"), (0..10).collect::<Vec<_>>());
    let _ = stop2.send(());
    agent2.await.unwrap().expect("agent ends cleanly");
    let log = host.stop();
    assert!(log.contains("flight recorder: writing the last"), "{log}");
    drop(child);
}

/// The guest file of a recording (the last connection's).
fn guest_file(dir: &Path) -> String {
    let meta = RecordingMeta::load(dir).unwrap();
    meta.guests
        .last()
        .expect("a guest in the dump")
        .file
        .clone()
}

/// Waits for the `n`-th dump in `dir` to be complete (its README is
/// written last).
async fn wait_dump(dir: &Path, n: usize) -> PathBuf {
    common::wait_for("a complete dump", WAIT, || {
        let mut dumps: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with("flight-"))
            })
            .collect();
        dumps.sort();
        (dumps.len() >= n && dumps.iter().all(|d| d.join("README").exists()))
            .then(|| dumps.pop())
            .flatten()
    })
    .await
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&e.path())
        } else if e.file_name().to_string_lossy().ends_with(".pages") {
            meta.len()
        } else {
            0
        };
    }
    total
}

/// A Perfetto output cut by size: every piece decodes on its own with
/// Perfetto's schema, and none is left out (all kept: `--rotate-keep 0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perfetto_pieces_each_decode() {
    if !ready("perfetto_pieces_each_decode") {
        return;
    }
    let _turn = common::take_turn(common::Resource::Tracing);
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live.perfetto-trace");
    let child = vm_child();
    let host = Host::start(
        child.pid(),
        "p1",
        &[
            "--format",
            "perfetto",
            "-o",
            live.to_str().unwrap(),
            "--rotate-size",
            "16K",
            "--rotate-keep",
            "0",
        ],
    )
    .await;
    let (stop_agent, agent) = agent_with_markers(&host.endpoint, "pf", 3000).await;
    host.wait_log("a third piece", "live.perfetto-trace.0003")
        .await;
    let _ = stop_agent.send(());
    agent.await.unwrap().expect("agent ends cleanly");
    let log = host.stop();
    drop(child);
    let (p, kept) = pieces(&live, PieceKind::File);
    assert!(kept.len() >= 3, "{kept:?}");
    assert_eq!(
        kept,
        (1..=kept.len() as u64).collect::<Vec<_>>(),
        "none deleted"
    );
    for n in kept {
        assert!(common::perfetto_packets(&p.path(n)) > 1, "piece {n}: {log}");
    }
}
