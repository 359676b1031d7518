//! The live session with real agents (this machine's kernel stands in for a
//! guest's), real VMs in child processes and the real kernel programs.
mod common;

use std::time::Duration;

use common::{
    Resource,
    session::{self, Running},
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};
use tsc_userspace::{
    agent::{Agent, AgentConfig, AgentError},
    clock::read_tsc,
    session::{Session, VmSpec},
    vmm::Child,
    wire::Endpoint,
};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");

/// How long a session may take to write out what a test waits for.
const WAIT: Duration = Duration::from_secs(30);

async fn start_session(vms: Vec<VmSpec>) -> Running {
    session::run(
        Session::start(session::options(vms))
            .await
            .expect("session starts"),
    )
}

fn agent_config(endpoint: &Endpoint, name: &str) -> AgentConfig {
    let mut config = AgentConfig::new(endpoint.clone());
    // Markers (ftrace:print) are recorded whatever is enabled; one quiet
    // event keeps the instance from tracing much else.
    config.events = vec!["sched:sched_process_exec".parse().unwrap()];
    config.name = Some(name.into());
    config.retry = 0;
    config.flush = Duration::from_millis(100);
    config
}

/// Starts an agent, writes `n` markers tagged `tag` into its instance, and
/// returns the running agent's task plus its stop switch.
async fn agent_with_markers(
    endpoint: &Endpoint,
    name: &str,
    tag: &str,
    n: usize,
) -> (
    oneshot::Sender<()>,
    JoinHandle<Result<tsc_userspace::agent::AgentReport, AgentError>>,
) {
    let agent = Agent::start(agent_config(endpoint, name)).expect("agent starts");
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

fn vm(child: &mut Child, vcpus: &[u32]) {
    child.vm().unwrap();
    for &v in vcpus {
        child.vcpu(v).unwrap();
    }
}

/// A VM with one vCPU in a child process, and a session bound to it as `name`.
async fn one_vm_session(name: &str) -> (Child, Running) {
    let mut child = Child::spawn(BINARY).unwrap();
    vm(&mut child, &[0]);
    let spec = VmSpec {
        pid: child.pid(),
        name: Some(name.into()),
    };
    let session = start_session(vec![spec]).await;
    (child, session)
}

fn of_event<'a>(events: &'a [Value], name: &str) -> impl Iterator<Item = &'a Value> {
    events.iter().filter(move |e| e["event"] == name)
}

fn markers<'a>(events: &'a [Value], tag: &str) -> Vec<&'a Value> {
    of_event(events, "ftrace:print")
        .filter(|e| {
            e["fields"]["buf"]
                .as_str()
                .is_some_and(|b| b.starts_with(&format!("{tag} ")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_bound_with_vm_merges_host_and_guest_events_in_order() {
    if !common::privileged("agent_bound_with_vm_merges_host_and_guest_events_in_order") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let (mut child, session) = one_vm_session("g1").await;
    const MARKERS: usize = 500;
    let before = read_tsc();
    let (stop_agent, agent) =
        agent_with_markers(&session.endpoint, "g1", "session-test", MARKERS).await;
    let after = read_tsc();
    // The host traces the VM's threads from the agent's binding on: its
    // markers out of the session show that binding.
    session
        .wait_for(
            &format!("all {MARKERS} markers of the agent bound to g1 written out"),
            WAIT,
            |e| markers(e, "session-test").len() >= MARKERS,
        )
        .await;
    // The guest program's MMIO exits are kvm_userspace_exit events of the
    // VM's vCPU thread on the host.
    const READINGS: u64 = 20;
    let run = tokio::task::spawn_blocking(move || {
        let run = child.rdtsc(0, READINGS).unwrap();
        (child, run)
    });
    let (child, run) = run.await.unwrap();
    session
        .wait_for(
            &format!("more than {READINGS} kvm_userspace_exit events written out"),
            WAIT,
            |e| of_event(e, "kvm:kvm_userspace_exit").count() as u64 > READINGS,
        )
        .await;
    let _ = stop_agent.send(());
    agent.await.unwrap().expect("agent ends cleanly");
    // Everything checked below is out already; `finish` writes what is held.
    let (summary, events) = session.finish().await;

    let guest = markers(&events, "session-test");
    assert_eq!(guest.len(), MARKERS, "every guest event exactly once");
    for (i, e) in guest.iter().enumerate() {
        assert_eq!(e["source"], "guest");
        assert_eq!(e["vm"], "g1");
        assert_eq!(e["vm_pid"], child.pid());
        assert_eq!(
            e["fields"]["buf"].as_str().unwrap().trim_end(),
            format!("session-test {i}")
        );
        let host = e["host_tsc"].as_u64().unwrap();
        // On this host the "guest" is the host itself: offset 0 in effect.
        assert!(
            (before..=after).contains(&host),
            "marker {i} at {host} outside [{before}, {after}]"
        );
    }
    let exits: Vec<&Value> = of_event(&events, "kvm:kvm_userspace_exit").collect();
    assert!(
        exits.len() as u64 > READINGS,
        "one userspace exit per reported reading, plus the final one: {} for {READINGS}",
        exits.len()
    );
    for e in &exits {
        assert_eq!(e["source"], "host");
        let t = e["host_tsc"].as_u64().unwrap();
        assert!(
            (run.host_before..=run.host_after).contains(&t),
            "exit at {t} outside the KVM_RUN bracket"
        );
    }
    let tscs: Vec<u64> = events
        .iter()
        .filter(|e| !flagged(e, "late"))
        .map(|e| e["host_tsc"].as_u64().unwrap())
        .collect();
    assert!(
        tscs.windows(2).all(|w| w[0] <= w[1]),
        "the timeline is ordered by host time"
    );
    assert_eq!(
        summary.late as usize,
        events.iter().filter(|e| flagged(e, "late")).count()
    );
    assert_eq!(
        summary.emitted as usize,
        events.len(),
        "the summary counts what was written"
    );
    drop(child);
}

fn flagged(e: &Value, flag: &str) -> bool {
    e["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_two_vms_no_cross_talk_and_an_ambiguous_agent_is_refused() {
    if !common::privileged("two_agents_two_vms_no_cross_talk_and_an_ambiguous_agent_is_refused") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let (mut a, mut b) = (Child::spawn(BINARY).unwrap(), Child::spawn(BINARY).unwrap());
    vm(&mut a, &[0]);
    vm(&mut b, &[0, 1]);
    let specs = vec![
        VmSpec {
            pid: a.pid(),
            name: Some("alpha".into()),
        },
        VmSpec {
            pid: b.pid(),
            name: Some("beta".into()),
        },
    ];
    let session = start_session(specs).await;
    let (stop_a, agent_a) = agent_with_markers(&session.endpoint, "alpha", "from-alpha", 200).await;
    let (stop_b, agent_b) = agent_with_markers(&session.endpoint, "beta", "from-beta", 300).await;
    session
        .wait_for(
            "200 markers of alpha and 300 of beta written out",
            WAIT,
            |e| markers(e, "from-alpha").len() >= 200 && markers(e, "from-beta").len() >= 300,
        )
        .await;
    let _ = (stop_a.send(()), stop_b.send(()));
    agent_a.await.unwrap().unwrap();
    agent_b.await.unwrap().unwrap();
    let (_, events) = session.finish().await;
    let (from_a, from_b) = (
        markers(&events, "from-alpha"),
        markers(&events, "from-beta"),
    );
    assert_eq!((from_a.len(), from_b.len()), (200, 300));
    assert!(
        from_a
            .iter()
            .all(|e| e["vm"] == "alpha" && e["vm_pid"] == a.pid()),
        "alpha's events are alpha's"
    );
    assert!(
        from_b
            .iter()
            .all(|e| e["vm"] == "beta" && e["vm_pid"] == b.pid()),
        "beta's events are beta's"
    );

    // Without --vm, on a host where both VMs' offsets explain the agent's
    // TSC readings (PVM: all VMs hold offset 0), the agent is refused.
    if tsc_userspace::vmm::is_pvm() {
        let session = start_session(Vec::new()).await;
        let agent = Agent::start(agent_config(&session.endpoint, "who")).unwrap();
        let result = agent.run(std::future::pending()).await;
        let err = result
            .expect_err("an ambiguous agent is refused")
            .to_string();
        assert!(err.contains("--vm"), "the refusal asks for --vm: {err}");
        assert!(
            err.contains(&a.pid().to_string()) && err.contains(&b.pid().to_string()),
            "{err}"
        );
        session.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_agents_end_their_own_connection_and_the_good_one_is_complete() {
    if !common::privileged("hostile_agents_end_their_own_connection_and_the_good_one_is_complete") {
        return;
    }
    let _turn = common::take_turn(Resource::Tracing);
    let (child, session) = one_vm_session("good").await;
    let Endpoint::Tcp { port, .. } = session.endpoint else {
        unreachable!()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut hostile = Vec::new();
    // Garbage, an oversize length, a header then silence-and-close mid-frame,
    // and a slow sender dribbling a valid-looking header.
    for bytes in [
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        [0xffu8, 0xff, 0xff, 0x7f, 1, 0, 0, 0].to_vec(),
        [200u8, 0, 0, 0, 1, 0, 0, 0, b'T', b'S'].to_vec(),
    ] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        hostile.push(s);
    }
    let slow = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            for b in [64u8, 0, 0, 0, 1, 0, 0, 0] {
                if s.write_all(&[b]).await.is_err() {
                    break;
                }
                // The slowness is the hostility under test, not a wait.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let (stop, agent) = agent_with_markers(&session.endpoint, "good", "survivor", 1000).await;
    drop(hostile.pop()); // disconnect mid-frame
    // The session ends the garbage and the oversize connections itself.
    for (what, mut s) in ["garbage", "oversize"].into_iter().zip(hostile) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the session never ended the {what} connection"
        );
    }
    session
        .wait_for("the good agent's 1000 markers written out", WAIT, |e| {
            markers(e, "survivor").len() >= 1000
        })
        .await;
    let _ = stop.send(());
    agent.await.unwrap().expect("the good agent is unaffected");
    slow.await.unwrap();
    let (_, events) = session.finish().await;
    let good = markers(&events, "survivor");
    assert_eq!(good.len(), 1000, "the good agent's events all arrive");
    assert!(good.iter().all(|e| e["vm"] == "good"));
    drop(child);
}
