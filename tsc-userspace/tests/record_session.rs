//! `--record` in a live session: a real VM in a child process, the real
//! agent (this machine's kernel stands in for a guest's), the real kernel
//! programs, and the recording read back with the real `trace-cmd` 3.1.6.

mod common;

use common::session;

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use tokio::{io::AsyncWriteExt, net::TcpStream, sync::oneshot, task::JoinHandle};
use tsc_userspace::{
    agent::{Agent, AgentConfig, AgentError, AgentReport},
    demo::{self, DemoAgent},
    record::{Recorder, RecordingMeta, spill},
    session::{Session, VmSpec},
    tracefs::{Page, PageLayout},
    vmm::Child,
    wire::Endpoint,
};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");

/// Sessions use tracefs and the kernel programs: one at a time.
fn ready(test: &str) -> bool {
    if !common::privileged(test) {
        return false;
    }
    common::require_tool("trace-cmd");
    true
}

/// A session bound to `vm` as `name`, recording into `dir`.
async fn start_session(vm: u32, name: &str, dir: &Path) -> session::Running {
    let vms = vec![VmSpec {
        pid: vm,
        name: Some(name.into()),
    }];
    let mut session = Session::start(session::options(vms))
        .await
        .expect("session starts");
    session.record_into(Recorder::create(dir, false).unwrap());
    session::run(session)
}

fn agent_config(endpoint: &Endpoint, name: &str, events: &[&str]) -> AgentConfig {
    let mut config = AgentConfig::new(endpoint.clone());
    config.events = events.iter().map(|e| e.parse().unwrap()).collect();
    config.name = Some(name.into());
    config.retry = 0;
    config.flush = Duration::from_millis(100);
    config
}

type AgentTask = JoinHandle<Result<AgentReport, AgentError>>;

/// An agent writing `n` markers tagged `tag`.
async fn agent_with_markers(
    config: AgentConfig,
    tag: &str,
    n: usize,
) -> (oneshot::Sender<()>, AgentTask) {
    let agent = Agent::start(config).expect("agent starts");
    let mut marker = agent.instance().trace_marker().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    for i in 0..n {
        marker.write_marker(&format!("{tag} {i}")).unwrap();
    }
    (stop, task)
}

fn vm_child() -> Child {
    let mut child = Child::spawn(BINARY).unwrap();
    child.vm().unwrap();
    child.vcpu(0).unwrap();
    child
}

/// One event of `trace-cmd report -t -i A -i B`: file, CPU, event name, ns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Line {
    ts: u64,
    file: String,
    cpu: u32,
    name: String,
}

fn report(dir: &Path, files: &[&str]) -> Vec<Line> {
    let mut args = vec!["report", "-t"];
    for f in files {
        args.extend(["-i", f]);
    }
    let text = common::trace_cmd(&args, dir);
    text.lines()
        .filter_map(|l| {
            let (file, rest) = l.split_once(": ")?;
            let (_, rest) = rest.split_once('[')?;
            let (cpu, rest) = rest.split_once(']')?;
            let (ts, rest) = rest.trim_start().split_once(": ")?;
            let (s, ns) = ts.split_once('.')?;
            let name = rest.split(':').next()?.trim().to_string();
            Some(Line {
                ts: s.parse::<u64>().ok()? * 1_000_000_000 + ns.parse::<u64>().ok()?,
                file: file.trim().to_string(),
                cpu: cpu.trim().parse().ok()?,
                name,
            })
        })
        .collect()
}

/// Test 1: one run, live JSON and a recording; trace-cmd lists exactly the
/// JSON's events, in its order, each at one linear function of host_tsc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_holds_exactly_the_live_timeline() {
    if !ready("recording_holds_exactly_the_live_timeline") {
        return;
    }
    let _turn = common::take_turn(common::Resource::Tracing);
    let dir = tempfile::tempdir().unwrap();
    let mut child = vm_child();
    let session = start_session(child.pid(), "g1", dir.path()).await;
    let config = agent_config(
        &session.endpoint,
        "a1",
        &["sched:sched_switch", "sched:sched_wakeup"],
    );
    let (stop_agent, agent) = agent_with_markers(config, "rec", 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = tokio::task::spawn_blocking(move || {
        child.rdtsc(0, 20).unwrap();
        child
    });
    let child = run.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_agent.send(());
    agent.await.unwrap().expect("agent ends cleanly");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, events) = session.finish().await;
    drop(child);

    let meta = RecordingMeta::load(dir.path()).unwrap();
    assert_eq!(meta.guests.len(), 1);
    let guest_file = meta.guests[0].file.clone();
    assert_eq!(guest_file, "g1-a1.dat");
    let clock = meta.tsc2nsec.expect("the session's clock is recorded");
    let mut ours: Vec<Line> = events
        .iter()
        .map(|e| Line {
            ts: clock
                .ns(e["host_tsc"].as_u64().unwrap())
                .wrapping_add_signed(meta.offset_ns),
            file: if e["source"] == "host" {
                "host.dat".into()
            } else {
                guest_file.clone()
            },
            cpu: e["cpu"].as_u64().unwrap() as u32,
            name: e["event"]
                .as_str()
                .unwrap()
                .split(':')
                .nth(1)
                .unwrap()
                .to_string(),
        })
        .collect();
    let in_order: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["flags"]
                .as_array()
                .is_none_or(|f| !f.iter().any(|x| x == "late"))
        })
        .collect();
    assert!(
        in_order
            .windows(2)
            .all(|w| w[0]["host_tsc"].as_u64() <= w[1]["host_tsc"].as_u64())
    );
    let theirs = report(dir.path(), &["host.dat", &guest_file]);
    assert!(
        ours.iter().any(|l| l.name == "kvm_userspace_exit"),
        "host kvm events recorded"
    );
    assert!(
        ours.iter().any(|l| l.name == "sched_switch"),
        "guest sched events recorded"
    );
    assert_eq!(ours.iter().filter(|l| l.name == "print").count(), 300);
    // trace-cmd merges by time: the same order, up to events at the same
    // nanosecond, whose order neither side defines.
    let back = theirs.windows(2).position(|w| w[0].ts > w[1].ts);
    assert_eq!(
        back,
        None,
        "{:?}",
        back.map(|i| &theirs[i.saturating_sub(3)..(i + 3).min(theirs.len())])
    );
    ours.sort();
    let mut theirs_sorted = theirs.clone();
    theirs_sorted.sort();
    assert_eq!(
        ours.len(),
        theirs_sorted.len(),
        "as many events in the recording as in the JSON"
    );
    let first_diff = ours.iter().zip(&theirs_sorted).position(|(a, b)| a != b);
    assert_eq!(
        first_diff,
        None,
        "ours {:?} vs theirs {:?}",
        first_diff.map(|i| &ours[i]),
        first_diff.map(|i| &theirs_sorted[i])
    );
    for f in ["host.dat", guest_file.as_str()] {
        common::trace_cmd(&["report", "--check-events", "-i", f], dir.path());
    }
    let offsets = std::fs::read_to_string(dir.path().join("offsets.jsonl")).unwrap();
    for line in offsets.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v.get("event").is_some() && v.get("pid").is_some(), "{line}");
    }
    assert!(
        std::fs::read_to_string(dir.path().join("README"))
            .unwrap()
            .contains("trace-cmd report -i host.dat -i g1-a1.dat")
    );
}

/// Markers (`print` events whose text starts with `tag`) in a stream's
/// spill files.
fn spilled_markers(dir: &Path, stream: &str, header_page: &str, tag: &str) -> usize {
    let layout = PageLayout::parse(header_page).unwrap();
    let sdir = dir.join(stream);
    let mut n = 0;
    for cpu in 0..64 {
        for page in spill::read_pages(&spill::cpu_file(&sdir, cpu), layout.page_size()) {
            let page = page.unwrap();
            let Ok(p) = Page::parse(&layout, &page) else {
                continue;
            };
            n += p
                .events()
                .filter_map(Result::ok)
                .filter(|e| e.data.windows(tag.len()).any(|w| w == tag.as_bytes()))
                .count();
        }
    }
    n
}

/// Test 5: kill -9 the session while it records; `record-finish` assembles
/// files trace-cmd opens, holding every event of every page spilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_is_assembled_by_record_finish() {
    if !ready("a_killed_session_is_assembled_by_record_finish") {
        return;
    }
    let _turn = common::take_turn(common::Resource::Tracing);
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let child = vm_child();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut host = Command::new(BINARY)
        // Never the system's journal (/var/lib/tsc-tracer) from a test.
        .args(["host", "--no-journal", "--format", "none", "--listen"])
        .arg(format!("tcp:127.0.0.1:{port}"))
        .arg("--vm")
        .arg(format!("{}=k9", child.pid()))
        .arg("--record")
        .arg(&rec)
        .spawn()
        .unwrap();
    let endpoint = Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    // The session listens once its metadata has the host stream.
    let meta = wait_for(Duration::from_secs(30), || {
        RecordingMeta::load(&rec).ok().filter(|m| m.host.is_some())
    })
    .await
    .expect("the session starts recording");
    let mut config = agent_config(&endpoint, "a9", &["sched:sched_process_exec"]);
    config.retry = 3;
    let (stop_agent, agent) = agent_with_markers(config, "killed", 400).await;
    let header_page = meta.host.unwrap().header_page;
    let guest_dir = wait_for(Duration::from_secs(30), || {
        let m = RecordingMeta::load(&rec).ok()?;
        let g = m.guests.first()?.stream.dir.clone();
        (spilled_markers(&rec, &g, &header_page, "killed") == 400).then_some(g)
    })
    .await
    .expect("every marker spilled");
    // The Perfetto trace is written live, as the merge releases events.
    let perfetto = rec.join(tsc_userspace::record::PERFETTO_FILE);
    let before_kill = wait_for(Duration::from_secs(30), || {
        Some(common::perfetto_packets(&perfetto)).filter(|&n| n > 1)
    })
    .await
    .expect("the recording's Perfetto trace gets its first events");
    // kill -9: the process we started, by its pid.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    host.wait().unwrap();
    let _ = stop_agent.send(());
    agent.abort();
    assert!(
        !rec.join("host.dat").exists(),
        "nothing assembled before the kill"
    );
    // What the killed session left of it still decodes.
    assert!(common::perfetto_packets(&perfetto) >= before_kill);
    let status = Command::new(BINARY)
        .arg("record-finish")
        .arg(&rec)
        .status()
        .unwrap();
    assert!(status.success());
    let meta = RecordingMeta::load(&rec).unwrap();
    let guest_file = meta.guests[0].file.clone();
    for f in ["host.dat", guest_file.as_str()] {
        common::trace_cmd(&["report", "--check-events", "-i", f], &rec);
    }
    let text = common::trace_cmd(&["report", "-i", &guest_file], &rec);
    let in_report = text.lines().filter(|l| l.contains("killed ")).count();
    assert_eq!(
        in_report,
        spilled_markers(&rec, &guest_dir, &header_page, "killed")
    );
    assert_eq!(in_report, 400);
    drop(child);
}

async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Test 6: hostile agents (garbage, a Hello with formats a reader would
/// choke on) beside a good one: the good guest's file is complete and
/// every file reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_agents_do_not_spoil_the_recording() {
    if !ready("hostile_agents_do_not_spoil_the_recording") {
        return;
    }
    let _turn = common::take_turn(common::Resource::Tracing);
    let dir = tempfile::tempdir().unwrap();
    let child = vm_child();
    let session = start_session(child.pid(), "good", dir.path()).await;
    let Endpoint::Tcp { port, .. } = session.endpoint.clone() else {
        unreachable!()
    };
    let mut garbage = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    // Formats a reader chokes on: an event whose name is not its format's,
    // and a header_page claiming a page size its pages do not have.
    let mut bad = demo::hello("bad", &[0]);
    bad.events[0].name = "not the format's name".into();
    let bad_names = DemoAgent::connect(&session.endpoint, bad).await;
    let mut big = demo::hello("big", &[0]);
    big.page_size *= 2;
    let bad_size = DemoAgent::connect(&session.endpoint, big).await;
    let config = agent_config(&session.endpoint, "a", &["sched:sched_process_exec"]);
    let (stop, agent) = agent_with_markers(config, "survivor", 1000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    agent.await.unwrap().expect("the good agent is unaffected");
    drop((bad_names, bad_size, garbage));
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.finish().await;
    drop(child);

    let meta = RecordingMeta::load(dir.path()).unwrap();
    let files: Vec<&str> = meta.guests.iter().map(|g| g.file.as_str()).collect();
    assert_eq!(files, vec!["good-a.dat"], "only the good guest is recorded");
    common::trace_cmd(&["report", "--check-events", "-i", "host.dat"], dir.path());
    common::trace_cmd(
        &["report", "--check-events", "-i", "good-a.dat"],
        dir.path(),
    );
    let text = common::trace_cmd(&["report", "-i", "good-a.dat"], dir.path());
    assert_eq!(
        text.lines().filter(|l| l.contains("survivor ")).count(),
        1000
    );
}
