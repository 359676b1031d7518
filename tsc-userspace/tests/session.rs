//! The live session end to end, with real VMs on /dev/kvm, the real eBPF
//! programs and real tracefs.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{Resource, SharedBuf};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tsc_userspace::{
    Flags,
    demo::{self, DemoAgent, Observer, Placements, Reading, ToyGuest},
    ingest::SockAddr,
    output::{self, ClockMode, FlushPolicy, OutputFormat},
    session::{Session, SessionOptions, VmSpec},
    vmm,
    wire::Endpoint,
};

fn options(pid: u32, name: &str) -> SessionOptions {
    SessionOptions {
        listen: vec![Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        }],
        vms: vec![VmSpec {
            pid,
            name: Some(name.into()),
        }],
        window: Duration::from_millis(200),
        status_line: false,
        ..SessionOptions::default()
    }
}

fn tcp(addrs: &[SockAddr]) -> Endpoint {
    let addr = addrs
        .iter()
        .find_map(|a| match a {
            SockAddr::Tcp(a) => Some(*a),
            SockAddr::Vsock { .. } => None,
        })
        .unwrap();
    Endpoint::Tcp {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

/// Takes `per_vcpu` readings on each vCPU without stalling the runtime.
fn take(guest: &mut ToyGuest, per_vcpu: u64) -> Vec<Reading> {
    tokio::task::block_in_place(|| guest.run(per_vcpu).unwrap())
}

/// vCPU ids are sparse on purpose: guest CPU 1 is vCPU 2, and only the
/// Hello's APIC map says so.
const VCPUS: [u32; 2] = [0, 2];
/// The offsets asked for, per vCPU: far larger than any KVM_RUN bracket.
const OFFSETS: [i64; 2] = [-123_456_789, 987_654_321];
/// Rounds of readings after the session has seen the offsets, and readings
/// per vCPU per round (150 24-byte events fill more than one page).
const ROUNDS: usize = 3;
const PER_VCPU: u64 = 150;
/// How long the session may take to see the offset changes (PVM), and
/// the pause between probes meanwhile.
const PROBING: Duration = Duration::from_secs(20);
const PROBE_PAUSE: Duration = Duration::from_millis(100);

/// Test 1: a real guest's rdtsc readings, sent through the wire into a
/// session, come out at host times inside the host rdtsc bracket around
/// the KVM_RUN that produced them; on PVM only because the session used the
/// effective offset (0) and not the one the tracepoint reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_readings_land_inside_their_kvm_run() {
    if !common::privileged("guest_readings_land_inside_their_kvm_run") {
        return;
    }
    // Its session pins the offsets map at the default path.
    let _turn = common::take_turn(Resource::Tracing);
    let pvm = vmm::is_pvm();
    let mut guest = ToyGuest::new(&VCPUS).unwrap();
    let pid = std::process::id();
    let session = Session::start(options(pid, "t1")).await.unwrap();
    let endpoint = tcp(session.local_addrs());
    let out = SharedBuf::default();
    let placements = Placements::default();
    let json = output::writer(
        OutputFormat::Json,
        ClockMode::Tsc,
        FlushPolicy::Batch,
        out.clone(),
    );
    let mut writer = Observer::new(json, placements.clone());
    let stop = CancellationToken::new();
    let run = session.run(&mut writer, stop.clone().cancelled_owned());
    let drive = async {
        let mut agent = DemoAgent::connect(&endpoint, demo::hello("t1", &VCPUS))
            .await
            .unwrap();
        for (&vcpu, &offset) in VCPUS.iter().zip(&OFFSETS) {
            let readback = guest.set_offset(vcpu, offset).unwrap();
            assert_eq!(readback, if pvm { 0 } else { offset }, "vCPU {vcpu}");
        }
        let mut readings = Vec::new();
        if pvm {
            // Probe until the session has seen the offset changes (it reads
            // each back from debugfs): from then on every event is flagged.
            let deadline = Instant::now() + PROBING;
            loop {
                let probe = take(&mut guest, 1);
                agent.send(&probe).await.unwrap();
                readings.extend(probe);
                assert!(
                    placements
                        .wait_for(readings.len(), Duration::from_secs(10))
                        .await,
                    "probe reading {} never came out of the session",
                    readings.len()
                );
                let last = placements.snapshot();
                if last[last.len() - VCPUS.len()..]
                    .iter()
                    .all(|p| p.flags.contains(Flags::OFFSET_NOT_APPLIED))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "after {} probes per vCPU in {PROBING:?} the session still did not flag \
                     the last of every vCPU offset-not-applied: it never saw the offset changes",
                    readings.len() / VCPUS.len()
                );
                // One probe per vCPU every PROBE_PAUSE, not thousands while
                // the session reads the changes back.
                tokio::time::sleep(PROBE_PAUSE).await;
            }
        }
        let probes = readings.len();
        for _ in 0..ROUNDS {
            let round = take(&mut guest, PER_VCPU);
            agent.send(&round).await.unwrap();
            readings.extend(round);
        }
        agent.bye().await.unwrap();
        let all_out = placements
            .wait_for(readings.len(), Duration::from_secs(20))
            .await;
        stop.cancel();
        (readings, probes, all_out)
    };
    let (summary, (readings, probes, all_out)) = tokio::join!(run, drive);
    let summary = summary.unwrap();
    assert!(
        all_out,
        "{} of {} came out",
        placements.count(),
        readings.len()
    );
    assert_eq!(
        readings.len(),
        probes + ROUNDS * PER_VCPU as usize * VCPUS.len()
    );
    assert_eq!(summary.guest_events, readings.len() as u64);

    let guest_lines: Vec<Value> = out
        .json_lines()
        .into_iter()
        .filter(|l| l["source"] == "guest")
        .collect();
    assert_eq!(
        guest_lines.len(),
        readings.len(),
        "every reading exactly once"
    );
    let mut by_seq: HashMap<u64, &Value> = HashMap::new();
    for line in &guest_lines {
        let seq = line["fields"]["seq"].as_u64().unwrap();
        assert!(by_seq.insert(seq, line).is_none(), "seq {seq} twice");
    }
    let asked: HashMap<u32, i64> = VCPUS.iter().copied().zip(OFFSETS).collect();
    for (i, r) in readings.iter().enumerate() {
        let line = by_seq[&u64::from(r.seq)];
        let host_tsc = line["host_tsc"].as_u64().unwrap();
        let cpu = VCPUS.iter().position(|&v| v == r.vcpu).unwrap() as u64;
        assert_eq!(line["event"], "tsc_demo:rdtsc");
        assert_eq!(
            (line["vm"].as_str(), line["vm_pid"].as_u64()),
            (Some("t1"), Some(u64::from(pid)))
        );
        assert_eq!(
            (line["cpu"].as_u64(), line["vcpu"].as_u64()),
            (Some(cpu), Some(u64::from(r.vcpu)))
        );
        assert_eq!(line["guest_tsc"].as_u64(), Some(r.guest_tsc));
        assert!(
            r.bracket.contains(host_tsc),
            "reading {} of vCPU {}: host_tsc {host_tsc} outside its KVM_RUN [{}, {}]",
            r.seq,
            r.vcpu,
            r.bracket.before,
            r.bracket.after
        );
        let trusted = r.guest_tsc.wrapping_sub(asked[&r.vcpu] as u64);
        let flags: Vec<&str> = line["flags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if pvm {
            assert!(
                !r.bracket.contains(trusted),
                "the test would pass even if the session trusted the tracepoint"
            );
            if i >= probes - VCPUS.len() {
                assert!(
                    flags.contains(&"offset-not-applied"),
                    "seq {}: {flags:?}",
                    r.seq
                );
            }
        } else {
            assert_eq!(host_tsc, trusted, "VMX/SVM apply the offset asked for");
        }
    }
}

/// KVM names a VM's debugfs directory after the thread that created it;
/// the session must still find the VM under its process (what `--vm PID`
/// names). Tests run on threads that are not their process's main thread.
#[test]
fn a_vm_made_on_a_thread_is_found_under_its_process() {
    if !common::privileged("a_vm_made_on_a_thread_is_found_under_its_process") {
        return;
    }
    let pid = std::process::id();
    let tid = nix::unistd::gettid().as_raw() as u32;
    assert_ne!(pid, tid, "the test harness runs tests on their own threads");
    let _guest = ToyGuest::new(&[0]).unwrap();
    let vms = tsc_userspace::kvm::Debugfs::default().vms().unwrap();
    let ours: Vec<_> = vms
        .iter()
        .filter(|vm| vm.path.to_string_lossy().contains(&format!("/{tid}-")))
        .collect();
    assert_eq!(ours.len(), 1, "{vms:?}");
    assert_eq!(ours[0].pid, pid);
}
