//! `tsc-tracer offsets` and the monitor against the real kernel: real VMs in
//! child processes (one VM each), real offset ioctls, the real eBPF program.
mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use core::arch::x86_64::_rdtsc;
use serde_json::Value;
use tsc_userspace::{
    ebpf::LoadOptions,
    kvm::Debugfs,
    offsets::{
        EventKind, OffsetSource,
        monitor::{Monitor, MonitorOptions},
    },
    vmm::{self, Child, MSR_IA32_TSC},
};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");
const WAIT: Duration = Duration::from_secs(10);

/// A unique pin path so parallel tests and a user's session don't collide.
fn pin_path(tag: &str) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/tsc-tracer-test-{}-{tag}/offsets",
        std::process::id()
    ))
}

/// `tsc-tracer offsets --follow --json` as a child, its stdout parsed.
struct Follower {
    process: std::process::Child,
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Follower {
    fn start(pin: &PathBuf) -> Self {
        let mut process = Command::new(BINARY)
            // Never the system's journal (/var/lib/tsc-tracer) from a test.
            .args([
                "offsets",
                "--follow",
                "--no-journal",
                "--json",
                "--pin-path",
            ])
            .arg(pin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tsc-tracer offsets --follow");
        let stdout = process.stdout.take().expect("stdout");
        let stderr = process.stderr.take().expect("stderr");
        // The session says "following" once its snapshot is out: from then on
        // every change reaches it as an event.
        let (ready_tx, ready) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[follower] {line}");
                if line.contains("following offset changes") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        ready
            .recv_timeout(WAIT)
            .expect("the follower never said it was following");
        Self {
            process,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until `n` events of process `pid` have been printed; returns them.
    fn events_of(&mut self, pid: u32, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mine: Vec<Value> = self
                .seen
                .iter()
                .filter(|e| e["pid"] == pid)
                .cloned()
                .collect();
            if mine.len() >= n {
                return mine;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => panic!("timed out waiting for {n} events of pid {pid}; have {mine:#?}"),
            }
        }
    }

    /// SIGINT, then the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.process.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT to our own child");
        self.process.wait().expect("wait")
    }
}

impl Drop for Follower {
    /// A failed test still lets the session clean up (unpin) with SIGINT,
    /// and kills it only if it does not stop.
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.process.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            for _ in 0..50 {
                if let Ok(Some(_)) = self.process.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

fn vmm() -> Child {
    Child::spawn(BINARY).expect("spawn tsc-tracer vmm")
}

/// What the vCPU should hold after KVM was asked for `asked`: on PVM nothing
/// is applied (it zeroes the offset after the tracepoint: see
/// `vmm::is_pvm`), elsewhere the offset is.
fn expected_effective(asked: i64) -> i64 {
    if vmm::is_pvm() { 0 } else { asked }
}

fn summary(e: &Value) -> (String, u64, i64, u64) {
    (
        e["event"].as_str().unwrap().to_owned(),
        e["vcpu"].as_u64().unwrap(),
        e["offset"].as_i64().unwrap(),
        e["seq"].as_u64().unwrap(),
    )
}

#[test]
fn follow_shows_every_change_in_order_then_the_exit() {
    if !common::privileged("follow_shows_every_change_in_order_then_the_exit") {
        return;
    }
    // A VM started before the tracer.
    let mut early = vmm();
    early.vm().unwrap();
    early.vcpu(0).unwrap();
    early.vcpu(2).unwrap();
    early.offset(0, -1000).unwrap();

    let pin = pin_path("follow");
    let mut follower = Follower::start(&pin);
    let snapshot = follower.events_of(early.pid(), 2);
    for (row, vcpu) in snapshot.iter().zip([0, 2]) {
        let held = Debugfs::default()
            .vcpu(early.pid(), vcpu)
            .unwrap()
            .tsc_offset;
        assert_eq!(row["event"], "snapshot");
        assert_eq!(row["vcpu"], vcpu);
        assert_eq!(row["source"], "debugfs");
        assert_eq!(
            row["effective_offset"], held,
            "snapshot shows what the vCPU holds"
        );
        assert_eq!(row["comm"], "tsc-tracer");
    }

    // A VM created, changed, hot-plugged and killed while we follow. Each
    // step waits for its event so that the read-back of the effective offset
    // can be attributed to it (a later change would supersede it).
    let mut vm = vmm();
    let pid = vm.pid();
    vm.vm().unwrap();
    vm.vcpu(0).unwrap();
    follower.events_of(pid, 1);
    vm.vcpu(1).unwrap();
    follower.events_of(pid, 2);
    vm.offset(0, -5000).unwrap();
    follower.events_of(pid, 3);
    vm.offset(1, -6000).unwrap();
    follower.events_of(pid, 4);
    let before = unsafe { _rdtsc() };
    vm.msr(0, MSR_IA32_TSC, 1_000_000).unwrap();
    let after = unsafe { _rdtsc() };
    follower.events_of(pid, 5);
    vm.vcpu(7).unwrap();
    follower.events_of(pid, 6);
    vm.offset(7, -7777).unwrap();
    follower.events_of(pid, 7);
    early.offset(0, -2222).unwrap();
    drop(vm);

    let events = follower.events_of(pid, 8);
    let kinds: Vec<_> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "vcpu-added",
            "vcpu-added",
            "change",
            "change",
            "change",
            "vcpu-added",
            "change",
            "vm-exit"
        ]
    );
    let created = events[0]["offset"].as_i64().unwrap();
    assert_eq!(
        events[1]["offset"], created,
        "vCPUs created together share the offset"
    );
    assert_eq!(summary(&events[2]), ("change".into(), 0, -5000, 2));
    // `prev` is what the vCPU held, not what was asked.
    assert_eq!(
        events[2]["prev"].as_i64(),
        Some(expected_effective(created))
    );
    assert_eq!(summary(&events[3]), ("change".into(), 1, -6000, 2));
    let msr = summary(&events[4]);
    assert_eq!((msr.1, msr.3), (0, 3));
    // IA32_TSC := 1e6 at host TSC t gives offset 1e6 - t, t within our bracket.
    let (lo, hi) = (
        1_000_000i64.wrapping_sub(after as i64),
        1_000_000i64.wrapping_sub(before as i64),
    );
    assert!(
        (lo..=hi).contains(&msr.2),
        "MSR offset {} not in [{lo}, {hi}]",
        msr.2
    );
    assert_eq!(
        summary(&events[5]),
        ("vcpu-added".into(), 7, msr.2, 1),
        "hot-plugged vCPU gets the VM's offset"
    );
    assert_eq!(summary(&events[6]), ("change".into(), 7, -7777, 2));
    for e in &events[..7] {
        assert_eq!(e["source"], "tracepoint");
        let asked = e["offset"].as_i64().unwrap();
        assert_eq!(
            e["effective_offset"],
            expected_effective(asked),
            "read back for {e}"
        );
        assert!(
            e["ratio"].is_null() && e["frac_bits"].is_null(),
            "no TSC scaling on this host"
        );
    }
    assert_eq!(events[7]["vcpu"], Value::Null);

    let early_change = follower.events_of(early.pid(), 3).pop().unwrap();
    assert_eq!(
        (
            early_change["event"].as_str(),
            early_change["vcpu"].as_u64(),
            early_change["offset"].as_i64()
        ),
        (Some("change"), Some(0), Some(-2222)),
        "a VM from before the tracer is followed too"
    );

    assert!(pin.exists(), "the offsets map is pinned while following");
    let status = follower.interrupt();
    assert!(status.success(), "SIGINT is a clean exit: {status}");
    assert!(!pin.exists(), "the pin is removed at exit");
}

#[test]
fn another_process_reads_the_requested_offsets_from_the_pin() {
    if !common::privileged("another_process_reads_the_requested_offsets_from_the_pin") {
        return;
    }
    let pin = pin_path("reader");
    let mut follower = Follower::start(&pin);
    let mut vm = vmm();
    vm.vm().unwrap();
    vm.vcpu(3).unwrap();
    vm.offset(3, -424242).unwrap();
    follower.events_of(vm.pid(), 2);

    let out = Command::new(BINARY)
        .args(["offsets", "--json", "--pin-path"])
        .arg(&pin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = rows
        .iter()
        .find(|r| r["pid"] == vm.pid())
        .expect("our VM in the one-shot table");
    assert_eq!(row["event"], "snapshot");
    assert_eq!(
        row["offset"], -424242,
        "requested offset comes from the pinned map"
    );
    assert_eq!(row["source"], "map");
    assert_eq!(row["effective_offset"], expected_effective(-424242));
    assert_eq!(row["seq"], 2);
    assert!(follower.interrupt().success());

    let text = Command::new(BINARY)
        .args(["offsets", "--pin-path"])
        .arg(&pin)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.starts_with("EVENT") || text.starts_with('#'), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains(&format!(" {} ", vm.pid())))
        .expect("our VM in the text table");
    assert!(line.contains("snapshot") && line.contains(" 3 "), "{line}");
}

#[test]
fn ring_buffer_overflow_is_repaired_from_the_kernel_map() {
    if !common::privileged("ring_buffer_overflow_is_repaired_from_the_kernel_map") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = MonitorOptions {
            // One page holds about 70 records.
            load: LoadOptions {
                pin_path: None,
                ringbuf_bytes: 4096,
                ..LoadOptions::default()
            },
            ..MonitorOptions::default()
        };
        let mut monitor = Monitor::start(options).unwrap();
        let mut vm = vmm();
        vm.vm().unwrap();
        vm.vcpu(0).unwrap();
        const WRITES: i64 = 400;
        for i in 1..=WRITES {
            vm.offset(0, -i).unwrap();
        }
        // Nothing was read while the VMM wrote: the ring buffer overflowed.
        let mut last = None;
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let events = tokio::time::timeout(Duration::from_secs(2), monitor.next()).await;
            let Ok(events) = events else { break };
            for e in events.unwrap().into_iter().filter(|e| e.pid == vm.pid()) {
                last = Some(e);
            }
            if last.as_ref().is_some_and(|e| e.offset == Some(-WRITES)) {
                break;
            }
        }
        let counters = monitor.counters().unwrap();
        assert!(
            counters.ringbuf_full > 0,
            "the test must overflow the ring buffer: {counters:?}"
        );
        let last = last.expect("events of our VM");
        assert_eq!(
            last.offset,
            Some(-WRITES),
            "the newest offset is known despite the overflow"
        );
        assert_eq!(last.source, Some(OffsetSource::Map));
        assert_eq!(last.event, EventKind::Change);
        let v = monitor.map().vcpu(vm.pid(), 0).unwrap();
        assert_eq!(
            (v.offset, v.seq),
            (-WRITES, WRITES as u64 + 1),
            "creation plus every write"
        );
    });
}
