//! The offset journal across a session killed with SIGKILL, for real: a
//! real VM's offsets change (`KVM_SET_DEVICE_ATTR`) under `tsc-tracer host
//! --journal P`; the session is killed; the VM changes again and a second
//! VM exits while nothing watches; a new session on the same journal
//! restores the history of the VM still alive and drops the one gone.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use tsc_userspace::{
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
        let mut process = Command::new(BINARY)
            .args([
                "host",
                "--listen",
                "tcp:127.0.0.1:0",
                "-o",
                "/dev/null",
                "--journal",
            ])
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
