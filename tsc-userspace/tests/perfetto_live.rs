//! A live session with a real VM (a child process on /dev/kvm), the real
//! kernel programs and the real agent (this machine's kernel standing in for
//! the guest's), written as a Perfetto trace and as JSON lines at once;
//! `perfetto_check.py` decodes the trace with the official schema and checks
//! it against the JSON, event by event.
mod common;

use std::{
    collections::HashMap,
    fs,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::oneshot;
use tsc_userspace::{
    agent::{Agent, AgentConfig},
    ingest::SockAddr,
    merge::MergeItem,
    output::{EventWriter, FlushPolicy, JsonWriter, PerfettoWriter, WriteContext},
    session::{Session, SessionOptions, VmSpec},
    vmm::Child,
    wire::Endpoint,
};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");

/// Both writers, and the BOOTTIME each item was written at (by host TSC).
struct Tee {
    json: JsonWriter<Vec<u8>>,
    perfetto: PerfettoWriter<fs::File>,
    boot: Arc<Mutex<HashMap<u64, u64>>>,
    json_out: Arc<Mutex<Vec<u8>>>,
}

impl EventWriter for Tee {
    fn write(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) -> std::io::Result<()> {
        let boot = ctx.boottime.expect("the session gives BOOTTIME");
        self.boot
            .lock()
            .unwrap()
            .insert(item.host_tsc, boot.tsc_to_ns(item.host_tsc));
        self.json.write(ctx, item)?;
        self.perfetto.write(ctx, item)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.json.flush()?;
        *self.json_out.lock().unwrap() = self.json.get_ref().clone();
        self.perfetto.flush()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_vm_and_agent_open_as_two_machines() {
    if !common::privileged("a_live_vm_and_agent_open_as_two_machines") {
        return;
    }
    let py = common::perfetto_python();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("live.perfetto-trace");

    let mut child = Child::spawn(BINARY).unwrap();
    child.vm().unwrap();
    child.vcpu(0).unwrap();
    let options = SessionOptions {
        listen: vec!["tcp:127.0.0.1:0".parse().unwrap()],
        vms: vec![VmSpec {
            pid: child.pid(),
            name: Some("g1".into()),
        }],
        window: Duration::from_millis(300),
        load: tsc_userspace::ebpf::LoadOptions {
            pin_path: None,
            ..Default::default()
        },
        ..SessionOptions::default()
    };
    let session = Session::start(options).await.expect("session starts");
    let SockAddr::Tcp(addr) = session.local_addrs()[0] else {
        panic!("tcp listener")
    };
    let endpoint = Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: addr.port(),
    };
    let boot = Arc::new(Mutex::new(HashMap::new()));
    let json_out = Arc::new(Mutex::new(Vec::new()));
    let mut tee = Tee {
        json: JsonWriter::new(Vec::new(), FlushPolicy::Batch),
        perfetto: PerfettoWriter::new(fs::File::create(&trace).unwrap(), FlushPolicy::Batch),
        boot: boot.clone(),
        json_out: json_out.clone(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let session = tokio::spawn(async move {
        let summary = session
            .run(&mut tee, async {
                let _ = stopped.await;
            })
            .await
            .expect("session runs");
        drop(tee);
        summary
    });

    // The agent traces the scheduler too: typed events on the guest machine.
    let mut config = AgentConfig::new(endpoint);
    config.events = [
        "sched:sched_switch",
        "sched:sched_waking",
        "sched:sched_process_exec",
    ]
    .iter()
    .map(|e| e.parse().unwrap())
    .collect();
    config.name = Some("g1".into());
    config.retry = 0;
    config.flush = Duration::from_millis(100);
    let agent = Agent::start(config).expect("agent starts");
    let mut marker = agent.instance().trace_marker().unwrap();
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(agent.run(async {
        let _ = agent_stopped.await;
    }));
    for i in 0..50 {
        marker.write_marker(&format!("B|1|live {i}")).unwrap();
        marker.write_marker("E|1").unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The guest program's MMIO exits: kvm events of the vCPU thread on the host.
    let run = tokio::task::spawn_blocking(move || {
        child.rdtsc(0, 20).unwrap();
        child
    });
    let child = run.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_agent.send(());
    agent.await.unwrap().expect("agent ends cleanly");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(());
    let summary = session.await.unwrap();
    assert!(
        summary.guest_events > 100 && summary.host_events > 20,
        "{summary:?}"
    );

    // The JSON lines with the BOOTTIME each event was written at.
    let boot = boot.lock().unwrap();
    let json = String::from_utf8(json_out.lock().unwrap().clone()).unwrap();
    let mut lines = String::new();
    for line in json.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let tsc = v["host_tsc"].as_u64().unwrap();
        v["boot_ns"] = boot[&tsc].into();
        lines.push_str(&v.to_string());
        lines.push('\n');
    }
    let jsonl = dir.path().join("live.jsonl");
    fs::write(&jsonl, &lines).unwrap();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let release = release.trim();
    let guests = serde_json::json!({ "g1": release }).to_string();
    let out = Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perfetto_check.py"))
        .args([
            "check".as_ref(),
            trace.as_os_str(),
            jsonl.as_os_str(),
            guests.as_ref(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{summary}");
    assert_eq!(
        summary["events"].as_u64().unwrap() as usize,
        json.lines().count()
    );
    assert!(
        summary["typed"]["sched:sched_switch"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert!(
        summary["typed"]["ftrace:print"].as_u64().unwrap() >= 100,
        "{summary}"
    );
    // The VM's vCPU thread is named on the host, under the VMM process.
    let pid = child.pid();
    let vcpu = summary["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t[0] == "host" && t[3] == "g1 vCPU 0")
        .unwrap_or_else(|| panic!("no vCPU thread named: {summary}"));
    assert_eq!(vcpu[2], pid, "{vcpu}");
    let threads = tsc_userspace::kvm::Debugfs::default().vcpu_threads(pid);
    assert_eq!(threads.len(), 1);
    assert!(threads[0].1 > 0);
    assert_eq!(
        vcpu[1], threads[0].1,
        "the thread KVM runs vCPU 0 on: {vcpu}"
    );
    drop(child);
}
