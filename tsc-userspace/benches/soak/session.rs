//! The session under test: the real `tsc-tracer host` as a child process
//! (so its memory and descriptors are its own), its timeline read from a
//! pipe and its markers tallied, its `status:` lines (`--status-secs`) and
//! final `done:` line parsed from its log.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{agent::BINARY, load, tally::Tally};

/// The session's counters from its latest `status:` line (`key=value`).
pub type Status = BTreeMap<String, u64>;

/// A running `tsc-tracer host`.
pub struct Session {
    /// Where agents connect.
    pub port: u16,
    child: Option<Child>,
    status: Arc<Mutex<Status>>,
    done: Arc<Mutex<Option<Vec<u64>>>>,
    tally: Arc<Mutex<Tally>>,
    bound: Arc<Mutex<BTreeMap<String, u64>>>,
    threads: Vec<JoinHandle<()>>,
}

/// How the session ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Its last `status:` counters (logged as it stopped).
    pub status: Status,
    /// The numbers of its `done:` line: guest events, host events,
    /// written, late, forced, lost guest, lost host.
    pub done: Option<Vec<u64>>,
    /// Markers in its timeline.
    pub tally: Tally,
    /// Its exit status was success.
    pub success: bool,
}

impl Session {
    /// `tsc-tracer host --no-journal --listen tcp:127.0.0.1:0 --vm PID=NAME..
    /// --pin-path PIN --status-secs 1`, text timeline to a pipe, log to
    /// `log`.
    pub fn start(vms: &[(u32, &str)], pin: &Path, log: &Path) -> Self {
        let mut cmd = Command::new(BINARY);
        cmd.args(["host", "--no-journal", "--listen", "tcp:127.0.0.1:0"])
            .arg("--pin-path")
            .arg(pin)
            .args(["--status-secs", "1"]);
        for (pid, name) in vms {
            cmd.args(["--vm", &format!("{pid}={name}")]);
        }
        // The heap profile behind session/memory.rs (see main.rs).
        if let Ok(out) = std::env::var("SOAK_HEAPTRACK") {
            cmd.env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so")
                .env("DUMP_HEAPTRACK_OUTPUT", out);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tsc-tracer host");
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let status = Arc::new(Mutex::new(Status::new()));
        let done = Arc::new(Mutex::new(None));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (port_tx, port_rx) = mpsc::channel();
        let log = File::create(log).expect("creating the session log");
        let bound = Arc::new(Mutex::new(BTreeMap::new()));
        let logged = Logged {
            port: port_tx,
            status: status.clone(),
            done: done.clone(),
            bound: bound.clone(),
        };
        let err = std::thread::spawn(move || read_log(stderr.expect("stderr"), log, &logged));
        let t = tally.clone();
        let out = std::thread::spawn(move || read_timeline(stdout.expect("stdout"), &t));
        let port = port_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the session did not start listening (see its log)");
        Self {
            port,
            child: Some(child),
            status,
            done,
            tally,
            bound,
            threads: vec![err, out],
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its counters as last logged.
    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock").clone()
    }

    /// How many agents named `name` it has bound so far (its log says
    /// `agent N "NAME" (...) traces VM ...`).
    pub fn bound(&self, name: &str) -> u64 {
        let bound = self.bound.lock().expect("bound lock");
        bound.get(name).copied().unwrap_or(0)
    }

    /// A copy of its tally so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().expect("tally lock").clone()
    }

    /// Markers seen in its timeline so far: (seen, duplicates).
    pub fn markers(&self) -> (u64, u64) {
        let t = self.tally.lock().expect("tally lock");
        (t.seen, t.duplicates)
    }

    /// SIGTERM (it flushes everything held), then waits for it.
    pub fn stop(mut self) -> Ended {
        let mut child = self.child.take().expect("running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let success = child.wait().is_ok_and(|s| s.success());
        for t in self.threads.drain(..) {
            t.join().expect("a session reader panicked");
        }
        Ended {
            status: self.status(),
            done: self.done.lock().expect("done lock").clone(),
            tally: self.tally.lock().expect("tally lock").clone(),
            success,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where the log reader puts what it learns.
struct Logged {
    port: mpsc::Sender<u16>,
    status: Arc<Mutex<Status>>,
    done: Arc<Mutex<Option<Vec<u64>>>>,
    bound: Arc<Mutex<BTreeMap<String, u64>>>,
}

fn read_log(stderr: impl std::io::Read, mut log: File, to: &Logged) {
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let _ = writeln!(log, "{line}");
        if let Some(rest) = line.split("--connect tcp:").nth(1) {
            let p = rest
                .split_whitespace()
                .next()
                .and_then(|a| a.rsplit(':').next());
            if let Some(p) = p.and_then(|p| p.parse().ok()) {
                let _ = to.port.send(p);
            }
        } else if let Some(rest) = line.split("status: ").nth(1) {
            let parsed: Status = rest
                .split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect();
            *to.status.lock().expect("status lock") = parsed;
        } else if let Some(rest) = line.split("done: ").nth(1) {
            let numbers = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            *to.done.lock().expect("done lock") = Some(numbers);
        } else if line.contains(") traces VM ")
            && let Some(name) = line.split('"').nth(1)
        {
            *to.bound
                .lock()
                .expect("bound lock")
                .entry(name.to_owned())
                .or_default() += 1;
        }
    }
}

/// Tallies every marker line (`... buf=e2e:SEQ:NS`).
fn read_timeline(stdout: impl std::io::Read, tally: &Mutex<Tally>) {
    const KEY: &[u8] = b"buf=";
    let mut reader = BufReader::with_capacity(1 << 20, stdout);
    let mut line = Vec::with_capacity(512);
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        if let Some(at) = load::find(&line, KEY) {
            let text = &line[at + KEY.len()..];
            if text.starts_with(load::TAG)
                && let Some((seq, _)) = load::parse(&text[load::TAG.len()..])
            {
                tally.lock().expect("tally lock").insert(seq);
            }
        }
        line.clear();
    }
}
