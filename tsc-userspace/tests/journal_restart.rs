//! The offset journal across a session killed with SIGKILL, for real: a
//! real VM's offsets change (`KVM_SET_DEVICE_ATTR`) under `tsc-tracer host
//! --journal P`; the session is killed; the VM changes again and a second
//! VM exits while nothing watches; a new session on the same journal
//! restores the history of the VM still alive and drops the one gone.
//! And with a real agent streaming through it all: the agent outlasts the
//! kill by itself, and every marker that comes out of either session is
//! placed with the offset in force when it was written.

mod common;

#[allow(dead_code)]
#[path = "../benches/e2e/agent.rs"]
mod agent;
#[allow(dead_code)]
#[path = "../benches/e2e/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../benches/e2e/measure.rs"]
mod measure;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use tsc_userspace::{
    agent::sysinfo,
    offsets::{EventKind, journal::reader},
    vmm::Child,
};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");
const WAIT: Duration = Duration::from_secs(60);
const OFFSETS: [i64; 3] = [-111_111, 222_222_222, -333_333_333_333];

/// `tsc-tracer host --journal P` with its log lines.
struct Host {
    process: std::process::Child,
    log: Receiver<String>,
}

impl Host {
    /// Starts it and returns once it is running, with the lines it logged
    /// until then.
    fn start(journal: &Path) -> (Self, Vec<String>) {
        Self::start_with(journal, &["--listen", "tcp:127.0.0.1:0", "-o", "/dev/null"])
    }

    /// Starts it with `args` besides the journal.
    fn start_with(journal: &Path, args: &[&str]) -> (Self, Vec<String>) {
        let mut process = Command::new(BINARY)
            .arg("host")
            .args(args)
            .arg("--journal")
            .arg(journal)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tsc-tracer host");
        let stderr = process.stderr.take().expect("stderr");
        let (tx, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[host] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut host = Self { process, log };
        let lines = host.until("agents connect with");
        (host, lines)
    }

    fn until(&mut self, what: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(what) => {
                    lines.push(line);
                    return lines;
                }
                Ok(line) => lines.push(line),
                Err(_) => panic!("the session never said {what:?}; said {lines:#?}"),
            }
        }
    }

    fn kill_9(mut self) {
        self.process.kill().expect("SIGKILL to our own child");
        self.process.wait().expect("wait");
    }

    fn interrupt(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.process.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
        self.process.wait().expect("wait");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Offsets KVM was asked for, in the changes the journal holds for `pid`.
fn journaled_changes(journal: &Path, pid: u32) -> Vec<i64> {
    let contents = reader::read(journal, u64::MAX).expect("the journal reads");
    contents
        .records()
        .filter(|r| r.event.pid == pid && r.event.event == EventKind::Change)
        .filter_map(|r| r.event.offset)
        .collect()
}

fn number_after(line: &str, word: &str) -> usize {
    line.split(word)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {word:?} in {line:?}"))
}

#[test]
fn a_killed_sessions_journal_gives_the_next_one_the_history_of_the_vms_still_running() {
    if !common::privileged("journal_restart") {
        return;
    }
    // Its sessions pin the offsets map at the default path.
    let _turn = common::take_turn(common::Resource::Tracing);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("offsets.journal");
    let mut vm = Child::spawn(BINARY).expect("spawn tsc-tracer vmm");
    vm.vm().unwrap();
    vm.vcpu(0).unwrap();
    let mut gone = Child::spawn(BINARY).expect("spawn tsc-tracer vmm");
    gone.vm().unwrap();
    gone.vcpu(0).unwrap();
    let gone_pid = gone.pid();

    let (host, _) = Host::start(&journal);
    for offset in OFFSETS {
        vm.offset(0, offset).unwrap();
    }
    // Each change is on disk once its batch is written: wait for all.
    let deadline = Instant::now() + WAIT;
    while !journaled_changes(&journal, vm.pid()).ends_with(&OFFSETS) {
        assert!(
            Instant::now() < deadline,
            "the changes never reached the journal"
        );
        thread::sleep(Duration::from_millis(20));
    }
    host.kill_9();
    let records_of = |pid: u32| {
        reader::read(&journal, u64::MAX)
            .unwrap()
            .records()
            .filter(|r| r.event.pid == pid)
            .count()
    };
    let ours = records_of(vm.pid());

    // While no session runs: one more change, and a VM goes.
    vm.offset(0, 444).unwrap();
    gone.quit().unwrap();

    let (host, lines) = Host::start(&journal);
    let restored = lines
        .iter()
        .find(|l| l.contains("restored"))
        .unwrap_or_else(|| panic!("no restore line in {lines:#?}"));
    let records = number_after(restored, "restored ");
    let dropped = number_after(restored, "dropped ");
    assert!(
        records >= ours && ours > OFFSETS.len(),
        "restored {records} records; the live VM alone has {ours}: {restored}"
    );
    assert!(dropped >= 1, "the VM that exited is dropped: {restored}");
    host.interrupt();

    // The journal now holds both sessions: the changes from before the
    // kill, then the restarted session's snapshot; the gone VM's history
    // is still on disk (convert --journal can use it) but was not restored.
    let changes = journaled_changes(&journal, vm.pid());
    assert!(changes.ends_with(&OFFSETS), "{changes:?}");
    assert!(records_of(gone_pid) > 0);
    assert!(
        records_of(vm.pid()) > ours,
        "the new session journals its snapshot"
    );
    let out = Command::new(BINARY)
        .args(["convert", "--journal"])
        .arg(&journal)
        .args(["--vm", &vm.pid().to_string(), "--vcpu", "0", "1000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    vm.quit().unwrap();
}

/// The marker texts this test writes start with this; the rest is `SEQ`.
const TAG: &str = "rt:";
/// Markers written in each phase.
const PER_PHASE: u64 = 200;

/// One marker: the host TSC just before and just after its write(2), and
/// the offset KVM reported in force for the writer's vCPU meanwhile.
#[derive(Debug, Clone, Copy)]
struct Written {
    before: u64,
    after: u64,
    effective: i64,
}

/// Writes markers `seqs` into the agent's instance, each bracketed by the
/// host TSC: the agent runs on this host, so its "guest" TSC is the host's
/// and the session must give back exactly `tsc - effective`.
fn write_markers(marker: &Path, seqs: std::ops::Range<u64>, effective: i64) -> Vec<Written> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(marker)
        .expect("the agent's trace_marker");
    seqs.map(|seq| {
        let text = format!("{TAG}{seq}");
        let before = tsc_userspace::wire::rdtsc();
        file.write_all(text.as_bytes()).expect("writing a marker");
        let after = tsc_userspace::wire::rdtsc();
        // Paced, so the agent streams while offsets change and the
        // session dies, rather than after.
        thread::sleep(Duration::from_micros(200));
        Written {
            before,
            after,
            effective,
        }
    })
    .collect()
}

/// Sets every vCPU's offset to `offset`; the offset KVM reports in force.
fn change_offsets(vm: &mut Child, vcpus: &[u32], offset: i64) -> i64 {
    let mut effective = None;
    for &vcpu in vcpus {
        let now = vm.offset(vcpu, offset).expect("KVM_SET_DEVICE_ATTR");
        assert!(effective.is_none_or(|e| e == now), "vCPUs differ");
        effective = Some(now);
    }
    effective.expect("a vCPU")
}

/// The markers in a JSON-lines output: seq -> (host TSC, flags).
fn markers_in(path: &Path) -> Vec<(u64, u64, Vec<String>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["source"] == "guest")
        .filter_map(|v| {
            let buf = v["fields"]["buf"].as_str()?;
            let seq = buf.strip_prefix(TAG)?.trim_end().parse().ok()?;
            let flags = v["flags"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Some((seq, v["host_tsc"].as_u64()?, flags))
        })
        .collect()
}

/// A loopback port nothing listens on now, for both sessions to use.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn an_agent_streams_through_a_killed_session_and_every_marker_keeps_its_epoch() {
    if !common::privileged("journal_restart_with_an_agent") {
        return;
    }
    let _turn = common::take_turn(common::Resource::Tracing);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("offsets.journal");
    let outs = [dir.path().join("out1.json"), dir.path().join("out2.json")];
    let mut vm = agent::vm_like_this_machine();
    let vcpus: Vec<u32> =
        sysinfo::parse_apic_ids(&std::fs::read_to_string("/proc/cpuinfo").unwrap())
            .into_values()
            .collect();
    let port = free_port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let bind = format!("{}=rt", vm.pid());
    let args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = ["--listen", &listen, "--vm", &bind, "--format", "json"]
            .map(str::to_owned)
            .to_vec();
        a.extend(["--window-ms".into(), "200".into(), "-o".into()]);
        a.push(out.display().to_string());
        a
    };
    let start = |out: &Path| {
        let a = args(out);
        Host::start_with(&journal, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (mut host, _) = start(&outs[0]);
    // The real agent with its default retry: until stopped.
    let mut agent = agent::AgentGuard(Some(
        Command::new(BINARY)
            .args(["agent", "--connect", &listen, "--name", "rt"])
            .args(["--events", "sched:sched_process_exec"])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the agent"),
    ));
    let marker = load::agent_marker(agent.pid());
    // Its instance records once the agent is served (a marker written
    // before fails with EBADF).
    host.until("is agent");
    let mut written = Vec::new();
    let mut phase = |vm: &mut Child, n: u64, offset: i64| {
        let effective = change_offsets(vm, &vcpus, offset);
        let seqs = n * PER_PHASE..(n + 1) * PER_PHASE;
        written.extend(write_markers(&marker, seqs, effective));
    };

    phase(&mut vm, 0, OFFSETS[0]);
    common::wait_until("the first markers out of the first session", WAIT, || {
        (markers_in(&outs[0]).len() as u64 >= PER_PHASE / 2).then_some(())
    });
    phase(&mut vm, 1, OFFSETS[1]);
    host.kill_9();
    // No session: the agent keeps reading and queues what it reads.
    phase(&mut vm, 2, OFFSETS[2]);
    let (mut host, lines) = start(&outs[1]);
    // The agent comes back by itself (its backoff is at most 5 s).
    host.until("is agent");
    let restored = lines
        .iter()
        .find(|l| l.contains("restored"))
        .unwrap_or_else(|| panic!("no restore line in {lines:#?}"));
    assert!(number_after(restored, "restored ") > 0, "{restored}");
    phase(&mut vm, 3, 555_555);
    let total = 4 * PER_PHASE;
    agent::stop(&mut agent);
    common::wait_until("the last marker out of the second session", WAIT, || {
        markers_in(&outs[1])
            .iter()
            .any(|m| m.0 == total - 1)
            .then_some(())
    });
    host.interrupt();

    let mut seen = std::collections::HashMap::new();
    for (file, out) in outs.iter().enumerate() {
        for (seq, host_tsc, flags) in markers_in(out) {
            assert!(
                seen.insert(seq, (file, host_tsc, flags)).is_none(),
                "marker {seq} came out twice"
            );
        }
    }
    let mut missing = Vec::new();
    for (seq, w) in (0..total).zip(&written) {
        let Some((file, host_tsc, flags)) = seen.get(&seq) else {
            missing.push(seq);
            continue;
        };
        let lo = w.before.wrapping_sub(w.effective as u64);
        let hi = w.after.wrapping_sub(w.effective as u64);
        assert!(
            (lo..=hi).contains(host_tsc),
            "marker {seq} (session {}): host_tsc {host_tsc} outside [{lo}, {hi}], the write's \
             bracket under the offset in force ({}); flags {flags:?}",
            file + 1,
            w.effective
        );
    }
    // What the killed session had read but not yet written is gone with
    // it (the protocol has no acknowledgements): only markers written
    // around the kill may be missing. Everything the agent read after it,
    // queued while no session ran, reached the second session.
    assert!(
        missing
            .iter()
            .all(|s| (PER_PHASE..2 * PER_PHASE).contains(s)),
        "missing outside the kill's phase: {missing:?}"
    );
    assert!(
        (0..PER_PHASE).all(|s| seen.get(&s).is_some_and(|m| m.0 == 0)),
        "the first phase came out of the first session"
    );
    eprintln!(
        "{} of {total} markers out ({} missing, all written around the kill)",
        seen.len(),
        missing.len()
    );
    vm.quit().unwrap();
}
