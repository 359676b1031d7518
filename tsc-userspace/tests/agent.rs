//! The real agent on this machine's real tracefs, delivering to an
//! in-process ingest over TCP: exact counts, field values and per-CPU
//! timestamp order.

mod common;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::Resource;
use tokio::sync::oneshot;
use tsc_userspace::{
    agent::{Agent, AgentConfig, AgentReport},
    ingest::{Ingest, IngestConfig, IngestItem, SockAddr},
    tracefs::Value,
    wire::Endpoint,
};

const MARKERS: usize = 3000;

// These tests fork (children, the agent binary). A fork in one test's
// thread copies another test's open tracefs files into the child until it
// execs, and an instance cannot be removed (EBUSY) while any of its files
// is open anywhere: so they run one at a time, each holding its
// `common::take_turn(Resource::Tracing)`.

const EXECS: usize = 20;

async fn ingest() -> (Ingest, Endpoint) {
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let ingest = Ingest::bind(&[listen], IngestConfig::default())
        .await
        .unwrap();
    let SockAddr::Tcp(addr) = ingest.local_addrs()[0] else {
        panic!("not tcp")
    };
    let endpoint = Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: addr.port(),
    };
    (ingest, endpoint)
}

fn true_path() -> PathBuf {
    ["/usr/bin/true", "/bin/true"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("a `true` binary")
}

/// Runs `true` `EXECS` times; returns the children's pids.
fn exec_children() -> HashSet<i32> {
    (0..EXECS)
        .map(|_| {
            let mut child = Command::new(true_path()).spawn().unwrap();
            let pid = child.id() as i32;
            assert!(child.wait().unwrap().success());
            pid
        })
        .collect()
}

/// Exactly one exec event per child, with the right pid and file name.
fn check_execs(c: &Collected, children: &HashSet<i32>) {
    let exe = true_path().to_string_lossy().into_owned();
    let ours: Vec<_> = c.execs.iter().filter(|e| children.contains(&e.0)).collect();
    assert_eq!(ours.len(), EXECS, "one exec event per child: {ours:?}");
    let pids: HashSet<i32> = ours.iter().map(|e| e.0).collect();
    assert_eq!(&pids, children);
    for (pid, common_pid, name) in ours {
        assert_eq!(*common_pid, Some(*pid), "common_pid is the execing child");
        assert_eq!(name, &exe);
    }
}

#[derive(Default)]
struct Collected {
    markers: Vec<usize>,
    /// (pid, common_pid, filename) of every exec seen.
    execs: Vec<(i32, Option<i32>, String)>,
    /// Last timestamp seen per CPU, and whether any went backwards.
    last_tsc: HashMap<u32, u64>,
    backwards: Vec<(u32, u64, u64)>,
    events: usize,
    bye: Option<String>,
    /// Highest watermark per CPU so far (Drained), and the events that
    /// came below their CPU's.
    marks: HashMap<u32, u64>,
    below_mark: Vec<(u32, u64, u64)>,
}

fn collect(c: &mut Collected, item: &IngestItem) {
    match item {
        IngestItem::Events(page) => {
            for ev in page.events() {
                c.events += 1;
                let last = c.last_tsc.entry(ev.cpu).or_insert(0);
                if ev.tsc < *last {
                    c.backwards.push((ev.cpu, *last, ev.tsc));
                }
                *last = ev.tsc;
                if let Some(&mark) = c.marks.get(&ev.cpu)
                    && ev.tsc < mark
                {
                    c.below_mark.push((ev.cpu, mark, ev.tsc));
                }
                let fields = ev.fields().expect("every event id is in the Hello");
                match ev.name() {
                    Some(("ftrace", "print")) => {
                        let buf = fields.get("buf").unwrap().unwrap();
                        let text = buf.as_str_lossy().unwrap();
                        if let Some(n) = text.trim_end().strip_prefix("tsc-agent-test ") {
                            c.markers.push(n.parse().unwrap());
                        }
                    }
                    Some(("sched", "sched_process_exec")) => {
                        let pid = fields.get("pid").unwrap().unwrap().as_i64().unwrap() as i32;
                        let Some(Ok(Value::Str(name))) = fields.get("filename") else {
                            panic!("filename is a string");
                        };
                        let name = String::from_utf8_lossy(name).into_owned();
                        c.execs.push((pid, ev.pid, name));
                    }
                    _ => {}
                }
            }
        }
        IngestItem::Drained { cpu, guest_tsc, .. } => {
            let mark = c.marks.entry(*cpu).or_insert(0);
            assert!(*guest_tsc > *mark, "watermarks only advance");
            *mark = *guest_tsc;
        }
        IngestItem::BadPage { error, .. } => panic!("bad page: {error}"),
        IngestItem::Closed { outcome, .. } => {
            c.bye = Some(outcome.as_ref().map_err(|e| e.to_string()).unwrap().clone());
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_delivers_a_known_workload_decoded() {
    if !common::privileged("the_agent_delivers_a_known_workload_decoded") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let (mut ingest, endpoint) = ingest().await;
    let config = AgentConfig {
        events: vec!["sched:sched_process_exec".parse().unwrap()],
        retry: 0,
        keepalive: Duration::from_millis(200),
        buffer_size_kb: Some(4096),
        ..AgentConfig::new(endpoint)
    };
    let agent = Agent::start(config).unwrap();
    let instance_dir = agent.instance().path().to_owned();
    let mut marker = agent.instance().trace_marker().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    let workload = tokio::task::spawn_blocking(move || {
        for n in 0..MARKERS {
            marker.write_marker(&format!("tsc-agent-test {n}")).unwrap();
        }
        exec_children()
    });
    let mut c = Collected::default();
    let mut infos = Vec::new();
    let mut samples = 0;
    let children = loop {
        let item = tokio::time::timeout(Duration::from_secs(20), ingest.next_item())
            .await
            .unwrap()
            .unwrap();
        if let IngestItem::Connected(info) = &item {
            infos.push(info.clone());
        }
        collect(&mut c, &item);
        if workload.is_finished() {
            break workload.await.unwrap();
        }
    };
    // Let a keep-alive go by after the workload, then stop: the rest comes
    // by the flush.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while samples == 0 {
        let item = tokio::time::timeout_at(deadline, ingest.next_item())
            .await
            .expect("keep-alives carry TSC samples: none came within 20 s")
            .unwrap();
        samples += matches!(item, IngestItem::TscSample { .. }) as usize;
        collect(&mut c, &item);
    }
    stop.send(()).unwrap();
    while c.bye.is_none() {
        let item = tokio::time::timeout(Duration::from_secs(20), ingest.next_item())
            .await
            .unwrap()
            .unwrap();
        samples += matches!(item, IngestItem::TscSample { .. }) as usize;
        collect(&mut c, &item);
    }
    let report: AgentReport = run.await.unwrap().unwrap();

    assert_eq!(c.bye.as_deref(), Some("agent stopping"));
    assert_eq!(report.connections, 1);
    assert!(report.pages > 0);
    assert!(
        c.backwards.is_empty(),
        "timestamps went back: {:?}",
        c.backwards
    );
    let markers: BTreeSet<usize> = c.markers.iter().copied().collect();
    assert_eq!(c.markers.len(), MARKERS, "each marker exactly once");
    assert_eq!(markers, (0..MARKERS).collect(), "every marker arrives");
    check_execs(&c, &children);
    assert!(samples >= 1, "keep-alives carry TSC samples");
    // Every CPU's watermark came, and held: an event below its CPU's
    // watermark is one whose writing outlasted the margin, which a
    // watermark sent before its pages would make of nearly every event.
    let online = std::thread::available_parallelism().unwrap().get();
    assert_eq!(c.marks.len(), online, "a watermark for every CPU");
    assert!(
        c.below_mark.len() * 100 <= c.events,
        "{} of {} events below their CPU's watermark: {:?}",
        c.below_mark.len(),
        c.events,
        &c.below_mark[..c.below_mark.len().min(5)]
    );

    let info = &infos[0];
    assert_eq!(info.hello.trace_clock, "x86-tsc");
    assert_eq!(info.hello.version, tsc_userspace::wire::VERSION);
    assert_eq!(info.hello.cpus.len(), online);
    assert!(!info.hello.samples.is_empty());
    assert!(info.host_tsc_at_hello >= info.hello.samples[0].tsc_after);
    assert!(!instance_dir.exists(), "the agent removed its instance");
}

#[test]
fn the_binary_stops_cleanly_on_sigterm() {
    if !common::privileged("the_binary_stops_cleanly_on_sigterm") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut ingest, endpoint) = ingest().await;
        let mut agent = Command::new(env!("CARGO_BIN_EXE_tsc-tracer"))
            .args(["agent", "--connect", &endpoint.to_string(), "--events"])
            .arg("sched:sched_process_exec")
            .args(["--name", "sigterm-test", "--retry", "0"])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let item = tokio::time::timeout(Duration::from_secs(20), ingest.next_item())
            .await
            .unwrap()
            .unwrap();
        let IngestItem::Connected(info) = item else {
            panic!("{item:?}")
        };
        assert_eq!(info.hello.agent_name, "sigterm-test");
        let children = tokio::task::spawn_blocking(exec_children).await.unwrap();
        let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let mut c = Collected::default();
        while c.bye.is_none() {
            let item = tokio::time::timeout(Duration::from_secs(20), ingest.next_item())
                .await
                .unwrap()
                .unwrap();
            collect(&mut c, &item);
        }
        let status = tokio::task::spawn_blocking(move || agent.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "exit status {status}");
        // The flush on SIGTERM delivers everything.
        check_execs(&c, &children);
        let prefix = format!("tsc-agent-{}-", pid.as_raw());
        let left: Vec<_> = std::fs::read_dir("/sys/kernel/tracing/instances")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "instance left behind: {left:?}");
    });
}

#[test]
fn retry_zero_fails_at_once_with_a_clear_message() {
    if !common::privileged("retry_zero_fails_at_once_with_a_clear_message") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_tsc-tracer"))
        .args([
            "agent",
            "--connect",
            &format!("tcp:127.0.0.1:{port}"),
            "--retry",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("connection refused by tcp:127.0.0.1:{port}")),
        "{stderr}"
    );
}

async fn next(ingest: &mut Ingest) -> IngestItem {
    tokio::time::timeout(Duration::from_secs(20), ingest.next_item())
        .await
        .unwrap()
        .unwrap()
}

/// The next item that is not a watermark (they come every flush period).
async fn next_not_drained(ingest: &mut Ingest) -> IngestItem {
    loop {
        match next(ingest).await {
            IngestItem::Drained { .. } => {}
            item => return item,
        }
    }
}

/// A TCP relay to `to` whose current connection the test can cut while
/// the relay keeps listening.
async fn relay(to: Endpoint) -> (Endpoint, tokio::sync::mpsc::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, mut cuts) = tokio::sync::mpsc::channel::<()>(4);
    let Endpoint::Tcp { port: to_port, .. } = to else {
        panic!("tcp only")
    };
    tokio::spawn(async move {
        loop {
            let (mut agent, _) = listener.accept().await.unwrap();
            let mut host = tokio::net::TcpStream::connect(("127.0.0.1", to_port))
                .await
                .unwrap();
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut agent, &mut host) => {}
                _ = cuts.recv() => {}
            }
        }
    });
    let endpoint = Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    (endpoint, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_when_the_connection_breaks() {
    if !common::privileged("the_agent_reconnects_when_the_connection_breaks") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let (mut ingest, host) = ingest().await;
    let (endpoint, cut) = relay(host).await;
    let config = AgentConfig {
        events: vec!["sched:sched_process_exec".parse().unwrap()],
        retry: 3,
        flush: Duration::from_millis(50),
        ..AgentConfig::new(endpoint)
    };
    let agent = Agent::start(config).unwrap();
    let mut marker = agent.instance().trace_marker().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let IngestItem::Connected(first) = next(&mut ingest).await else {
        panic!("no first connection")
    };
    // Cut only once the agent streams (it has the HelloAck).
    marker.write_marker("tsc-agent-test 1").unwrap();
    let mut c = Collected::default();
    while c.markers.is_empty() {
        collect(&mut c, &next(&mut ingest).await);
    }
    cut.send(()).await.unwrap();
    // Pages sent before the cut (execs anywhere on this machine) may still
    // come first; the connection's end is the next thing it reports.
    let (conn, outcome) = loop {
        match next(&mut ingest).await {
            IngestItem::Closed { conn, outcome, .. } => break (conn, outcome),
            item @ IngestItem::Connected(_) => {
                panic!("the first connection does not close: {item:?}")
            }
            item => collect(&mut c, &item),
        }
    };
    assert_eq!(conn, first.id);
    assert!(outcome.is_err(), "cut, not a Bye");
    let IngestItem::Connected(second) = next_not_drained(&mut ingest).await else {
        panic!("no reconnection")
    };
    assert_ne!(second.id, first.id);
    marker.write_marker("tsc-agent-test 7").unwrap();
    while c.markers.len() < 2 {
        let item = next(&mut ingest).await;
        collect(&mut c, &item);
    }
    assert_eq!(c.markers, vec![1, 7]);
    stop.send(()).unwrap();
    while c.bye.is_none() {
        let item = next(&mut ingest).await;
        collect(&mut c, &item);
    }
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.connections, 2);
}

/// A host that speaks only version 1, as tsc-tracer did before version 2:
/// it refuses a version 2 Hello the way that build did, and the agent
/// offers version 1 at once and then sends it nothing of version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_falls_back_to_a_version_1_host() {
    if !common::privileged("the_agent_falls_back_to_a_version_1_host") {
        return;
    }
    use futures::{SinkExt, StreamExt};
    use tokio_util::codec::{FramedRead, FramedWrite};
    use tsc_userspace::wire::{Frame, FrameCodec, HelloAck};

    let _turn = common::take_turn(Resource::Tracing);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: listener.local_addr().unwrap().port(),
    };
    let config = AgentConfig {
        events: vec!["sched:sched_process_exec".parse().unwrap()],
        retry: 0,
        ..AgentConfig::new(endpoint)
    };
    let agent = Agent::start(config).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let mut versions = Vec::new();
    let mut frames = Vec::new();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let (rd, wr) = stream.into_split();
        let mut rx = FramedRead::new(rd, FrameCodec::default());
        let mut tx = FramedWrite::new(wr, FrameCodec::default());
        let Some(Ok(Frame::Hello(hello))) = rx.next().await else {
            panic!("no Hello")
        };
        versions.push(hello.version);
        if hello.version != 1 {
            let reason = format!(
                "unsupported protocol version {} (this build speaks 1)",
                hello.version
            );
            tx.send(Frame::Reject(reason)).await.unwrap();
            continue;
        }
        let ack = HelloAck {
            connection_id: 1,
            max_body: tsc_userspace::wire::DEFAULT_MAX_BODY,
        };
        tx.send(Frame::HelloAck(ack)).await.unwrap();
        // Long enough for many timer reads of every CPU.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.send(()).unwrap();
        while let Some(frame) = rx.next().await {
            let frame = frame.unwrap();
            let bye = matches!(frame, Frame::Bye(_));
            frames.push(frame.frame_type().name());
            if bye {
                break;
            }
        }
        break;
    }
    run.await.unwrap().unwrap();
    assert_eq!(versions, vec![tsc_userspace::wire::VERSION, 1]);
    assert_eq!(frames.last(), Some(&"Bye"));
    assert!(!frames.contains(&"Drained"), "{frames:?}");
}
