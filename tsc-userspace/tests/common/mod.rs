//! Shared helpers for the integration tests: who may run, which tools they
//! need, taking turns on system resources, and waiting for a condition.
// Each test binary uses its own part of these.
#![allow(dead_code, unused_imports)]

mod privilege;
pub mod session;
mod shared_buf;

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};

pub mod cpu;

pub use privilege::{REQUIRE_PRIVILEGED, privileged, root};
pub use shared_buf::SharedBuf;

/// The path of a program the tests need (`cargo xtask setup` installs them
/// all); a test without it fails rather than skips. Looks in `PATH` and in
/// the sbin directories a normal user's `PATH` lacks (Debian puts bpftool in
/// /usr/sbin).
#[track_caller]
pub fn require_tool(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file());
    match found {
        Some(found) => found,
        None => panic!(
            "{program} is not installed: run `cargo xtask setup` (it installs the tools the tests use)"
        ),
    }
}

/// System resources that tests take turns on.
#[derive(Clone, Copy, Debug)]
pub enum Resource {
    /// Tracefs and the kernel side: instances that tests list or count
    /// (every `tsc-test-tracefs-*` must be gone at the end of a test),
    /// sessions and agents whose figures must be their own, and the
    /// default pin path of the offsets map.
    Tracing,
}

impl Resource {
    fn lock_file(self) -> PathBuf {
        let name = match self {
            Self::Tracing => "tracing",
        };
        std::env::temp_dir().join(format!("tsc-tracer-tests-{name}.lock"))
    }
}

/// Holds `resource` for as long as it lives.
pub struct Turn(#[allow(dead_code)] Flock<File>);

/// Waits for `resource` and holds it until the returned [`Turn`] drops
/// (also on panic). An exclusive `flock` on a file, so that the turn holds
/// across threads of one test binary and across processes alike: cargo
/// test runs a binary's tests on threads, cargo-nextest runs each test in a
/// process of its own. The kernel releases it if the process dies.
pub fn take_turn(resource: Resource) -> Turn {
    let path = resource.lock_file();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening the lock file {}: {e}", path.display()));
    // flock locks the open file description: each call opens the file anew,
    // so two threads of one process exclude each other too.
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", path.display()));
    Turn(lock)
}

/// How often a waiting test looks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` until it returns `Some`, for at most `within`; then
/// panics saying that `what` never happened.
#[track_caller]
pub fn wait_until<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "waited {within:?}, but never: {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] for async tests: sleeps on the runtime between looks.
pub async fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "waited {within:?}, but never: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Removes a tracefs instance directory the test made by hand. Right after
/// use the kernel can still see it busy (EBUSY) for a moment: retries until
/// it is gone, and says so loudly if it never goes (a test's Drop must not
/// panic).
pub fn remove_instance_dir(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("removing {}: {e}; retrying", path.display());
            }
            Err(e) => {
                eprintln!(
                    "*** left {} behind ({e}): remove it by hand",
                    path.display()
                );
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Python with the PyPI `perfetto` and `protobuf` packages, in the venv
/// `cargo xtask setup` makes.
#[track_caller]
pub fn perfetto_python() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let py = Path::new(&home).join(".local/share/tsc-tracer/venv/bin/python3");
    assert!(
        py.exists(),
        "{} is missing: run `cargo xtask setup`",
        py.display()
    );
    py
}

/// How many packets a Perfetto trace has, decoded with the official schema
/// (`tests/perfetto_check.py count`); fails when it does not decode.
#[track_caller]
pub fn perfetto_packets(trace: &Path) -> u64 {
    let out = std::process::Command::new(perfetto_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perfetto_check.py"))
        .arg("count")
        .arg(trace)
        .output()
        .expect("running perfetto_check.py");
    assert!(
        out.status.success(),
        "{} does not decode: {}",
        trace.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("perfetto_check.py answers JSON");
    answer["packets"].as_u64().expect("a packet count")
}

/// `trace-cmd ARGS` run in `dir`; its stdout, or a failure with its stderr.
#[track_caller]
pub fn trace_cmd(args: &[&str], dir: &Path) -> String {
    let out = std::process::Command::new("trace-cmd")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running trace-cmd");
    assert!(
        out.status.success(),
        "trace-cmd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
