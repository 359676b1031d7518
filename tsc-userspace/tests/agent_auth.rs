//! The real agent and the real binaries with keys: a keyed agent streams
//! to a keyed host while agents with a wrong key, with none, or a keyed
//! agent against a key-less host are refused, each saying why on both
//! sides; an agent started before its host connects once the host is up;
//! and the host refuses a listener beyond loopback without a key.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, mpsc},
    time::Duration,
};

use common::Resource;
use tokio::sync::oneshot;
use tsc_userspace::{
    agent::{Agent, AgentConfig},
    auth::SharedKey,
    ingest::{Ingest, IngestConfig, IngestItem, SockAddr},
    wire::Endpoint,
};

const TRACER: &str = env!("CARGO_BIN_EXE_tsc-tracer");
const AGENT: &str = env!("CARGO_BIN_EXE_tsc-agent");
const MARKERS: usize = 500;
const WAIT: Duration = Duration::from_secs(30);

/// A key file of `hex` (mode 600, as the tools require).
fn key_file(dir: &Path, name: &str, hex: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{hex}").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

async fn ingest(key: Option<SharedKey>) -> (Ingest, Endpoint) {
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let config = IngestConfig {
        key: key.map(Arc::new),
        ..IngestConfig::default()
    };
    let ingest = Ingest::bind(&[listen], config).await.unwrap();
    let SockAddr::Tcp(addr) = ingest.local_addrs()[0] else {
        panic!("not tcp")
    };
    let endpoint = Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: addr.port(),
    };
    (ingest, endpoint)
}

/// `tsc-agent --connect ENDPOINT --retry 0 ARGS`, to its end: exit code
/// and stderr.
async fn agent_binary(endpoint: Endpoint, args: Vec<String>) -> (Option<i32>, String) {
    let endpoint = endpoint.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(AGENT)
            .args(["--connect", &endpoint, "--retry", "0"])
            .args(["--events", "sched:sched_process_exec"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn marker_numbers(item: &IngestItem) -> Vec<usize> {
    let IngestItem::Events(page) = item else {
        return Vec::new();
    };
    page.events()
        .filter(|ev| ev.name() == Some(("ftrace", "print")))
        .filter_map(|ev| {
            let fields = ev.fields()?;
            let buf = fields.get("buf")?.ok()?;
            let text = buf.as_str_lossy()?;
            text.trim_end().strip_prefix("auth-test ")?.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_agents_with_the_host_s_key_are_served() {
    if !common::privileged("only_agents_with_the_host_s_key_are_served") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let dir = tempfile::tempdir().unwrap();
    let right = key_file(dir.path(), "right", &"5a".repeat(32));
    let wrong = key_file(dir.path(), "wrong", &"a5".repeat(32));
    let key = SharedKey::from_file(&right).unwrap();
    let (mut ingest, endpoint) = ingest(Some(key.clone())).await;

    let config = AgentConfig {
        events: vec!["sched:sched_process_exec".parse().unwrap()],
        name: Some("keyed".into()),
        retry: 0,
        key: Some(Arc::new(key)),
        flush: Duration::from_millis(50),
        ..AgentConfig::new(endpoint.clone())
    };
    let agent = Agent::start(config).unwrap();
    let mut marker = agent.instance().trace_marker().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    // The refused binaries run while the keyed agent streams.
    let wrong_key = tokio::spawn(agent_binary(
        endpoint.clone(),
        vec!["--key-file".into(), wrong.display().to_string()],
    ));
    let no_key = tokio::spawn(agent_binary(endpoint.clone(), Vec::new()));
    let writer = tokio::task::spawn_blocking(move || {
        for i in 0..MARKERS {
            marker.write_marker(&format!("auth-test {i}")).unwrap();
        }
    });

    let mut markers = Vec::new();
    let mut refusals = Vec::new();
    let mut connected = Vec::new();
    let mut stop = Some(stop);
    let mut bye = None;
    while bye.is_none() {
        let item = tokio::time::timeout(WAIT, ingest.next_item())
            .await
            .expect("the ingest goes on")
            .unwrap();
        markers.extend(marker_numbers(&item));
        match &item {
            IngestItem::Connected(info) => connected.push(info.hello.agent_name.clone()),
            IngestItem::Closed {
                outcome: Err(e), ..
            } => refusals.push(e.to_string()),
            IngestItem::Closed { outcome: Ok(r), .. } => bye = Some(r.clone()),
            _ => {}
        }
        if markers.len() >= MARKERS && refusals.len() >= 2 {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
        }
    }
    writer.await.unwrap();
    run.await.unwrap().expect("the keyed agent ends cleanly");
    assert_eq!(bye.as_deref(), Some("agent stopping"));
    assert_eq!(connected, ["keyed"], "only the keyed agent is served");
    assert_eq!(
        markers,
        (0..MARKERS).collect::<Vec<_>>(),
        "every marker, once"
    );

    let (code, stderr) = wrong_key.await.unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "refused this agent: authentication failed: the agent's proof does not match"
        ),
        "{stderr}"
    );
    let (code, stderr) = no_key.await.unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "this host requires agents to prove a shared key: start the agent with --key-file"
        ),
        "{stderr}"
    );
    refusals.sort();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(
        refusals[0].starts_with("not authenticated: authentication failed"),
        "{refusals:?}"
    );
    assert!(
        refusals[1].starts_with("not authenticated: the agent did not answer the key challenge"),
        "{refusals:?}"
    );
}

/// A keyed agent requires the host to prove the key too: a host without
/// one is refused by the agent, which says so to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_agent_refuses_a_host_without_the_key() {
    if !common::privileged("a_keyed_agent_refuses_a_host_without_the_key") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", &"11".repeat(32));
    let (mut ingest, endpoint) = ingest(None).await;
    let agent = tokio::spawn(agent_binary(
        endpoint.clone(),
        vec!["--key-file".into(), key.display().to_string()],
    ));
    let said = loop {
        let item = tokio::time::timeout(WAIT, ingest.next_item())
            .await
            .unwrap()
            .unwrap();
        if let IngestItem::Closed { outcome, .. } = item {
            break outcome.expect("the agent says Bye");
        }
    };
    assert!(
        said.contains("has a key (--key-file) but the host asked for none"),
        "{said}"
    );
    let (code, stderr) = agent.await.unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the host asked for none"), "{stderr}");
}

/// With the default retry an agent waits for a host that is not up yet
/// and connects as soon as it is (no sleeps: the test waits for the
/// agent's log of a failed attempt, then starts the host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_before_its_host_connects_once_the_host_is_up() {
    if !common::privileged("an_agent_started_before_its_host_connects_once_the_host_is_up") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    // A port nobody listens on yet: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut agent = Command::new(AGENT)
        .args(["--connect", &format!("tcp:127.0.0.1:{port}")])
        .args(["--events", "sched:sched_process_exec", "--name", "early"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, log) = mpsc::channel::<String>();
    let stderr = agent.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[agent] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut until = |what: &str| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = log
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the agent never said {what:?}: {lines:#?}"));
            let found = line.contains(what);
            lines.push(line);
            if found {
                return lines.clone();
            }
        }
    };
    let said = until("retrying in");
    assert!(
        said.last().unwrap().contains("retrying until stopped"),
        "{said:?}"
    );
    let listen: Endpoint = format!("tcp:127.0.0.1:{port}").parse().unwrap();
    let mut ingest = Ingest::bind(&[listen], IngestConfig::default())
        .await
        .unwrap();
    let item = tokio::time::timeout(WAIT, ingest.next_item())
        .await
        .expect("the agent connects once the host is up")
        .unwrap();
    let IngestItem::Connected(info) = item else {
        panic!("{item:?}")
    };
    assert_eq!(info.hello.agent_name, "early");
    let reached = until("reached tcp:127.0.0.1");
    assert!(
        reached.last().unwrap().contains("failed attempts"),
        "{reached:?}"
    );
    let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    loop {
        let item = tokio::time::timeout(WAIT, ingest.next_item())
            .await
            .unwrap()
            .unwrap();
        if let IngestItem::Closed { outcome, .. } = item {
            assert_eq!(outcome.unwrap(), "agent stopping");
            break;
        }
    }
    let status = tokio::task::spawn_blocking(move || agent.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

/// `tsc-tracer host` refuses a listener beyond loopback without a key, and
/// a key file others can read, each before anything starts, with the fix.
#[test]
fn the_host_refuses_an_open_listener_without_a_key_and_an_open_key_file() {
    let out = Command::new(TRACER)
        .args([
            "host",
            "--listen",
            "tcp:0.0.0.0:0",
            "--no-journal",
            "-o",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on tcp:0.0.0.0:0 without a key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--key-file PATH") && stderr.contains("--insecure"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", &"22".repeat(32));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    for cmd in [
        vec![
            "host",
            "--listen",
            "tcp:0.0.0.0:0",
            "--no-journal",
            "--key-file",
        ],
        vec!["agent", "--connect", "tcp:127.0.0.1:9", "--key-file"],
    ] {
        let out = Command::new(TRACER).args(&cmd).arg(&key).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {stderr}");
        assert!(
            stderr.contains("is accessible by group or others (mode 0644)")
                && stderr.contains("chmod 600"),
            "{cmd:?}: {stderr}"
        );
    }
}
