//! The instances this process has live, so that the ways out that do not run
//! destructors can still remove them, and removal of instances left behind.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use super::{Tracefs, TracefsError, instance::write_file};

/// Instance directories this process created and has not removed yet.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) fn register(path: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    live.push(path.to_path_buf());
}

pub(crate) fn unregister(path: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    live.retain(|p| p != path);
}

/// Stops recording in an instance, disables its events and removes it.
/// Removing fails with EBUSY while any of its files is open.
pub(crate) fn remove_instance(path: &Path) -> Result<(), TracefsError> {
    if !path.exists() {
        return Ok(());
    }
    // Best effort: rmdir disables everything anyway; these make the instance
    // cost nothing even when rmdir is refused.
    let _ = write_file(&path.join("tracing_on"), "0");
    let _ = write_file(&path.join("events/enable"), "0");
    // A child forked by any thread of this process holds copies of the
    // instance's descriptors until it execs: EBUSY for a moment. Retry
    // briefly rather than leave the instance behind.
    let mut tries = 0;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < RMDIR_TRIES => {
                tries += 1;
                std::thread::sleep(RMDIR_PAUSE);
            }
            Err(e) => return Err(TracefsError::io(path, e)),
        }
    }
}

/// How often, and how far apart, an EBUSY rmdir is retried (1 s in all).
const RMDIR_TRIES: u32 = 50;
const RMDIR_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Stops and removes every instance this process still has; returns how many
/// could not be removed (their files are still open: they stay stopped and
/// empty, and the next [`super::Instance::create`] with the same prefix
/// removes them once this process is gone).
///
/// For the ways out that run no destructors: `panic = "abort"`,
/// `std::process::exit`, a signal handler that exits. Do not call it while
/// the process goes on tracing: it stops every instance.
pub fn cleanup_live_instances() -> usize {
    let paths: Vec<PathBuf> = LIVE.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut left = 0;
    for path in paths {
        match remove_instance(&path) {
            Ok(()) => unregister(&path),
            Err(e) => {
                left += 1;
                tracing::warn!("{e}: stopped it, will be removed by the next run");
            }
        }
    }
    left
}

/// Makes a panic stop and remove this process's instances (after the
/// previous hook has reported the panic). Install it only in binaries whose
/// panics end the process (`panic = "abort"`, or a main that does not catch
/// them): a panic in one tokio task would otherwise stop tracing for all.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        cleanup_live_instances();
    }));
}

/// Removes instances named `PREFIX-PID-N` whose process is gone: what a
/// killed run (SIGKILL) left. Never touches other names or live processes.
pub(crate) fn remove_stale(tracefs: &Tracefs, prefix: &str) {
    let Ok(entries) = fs::read_dir(tracefs.instances_dir()) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| stale_pid(n, prefix)) else {
            continue;
        };
        if pid == own || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match remove_instance(&entry.path()) {
            Ok(()) => tracing::warn!(
                "removed trace instance {} left by process {pid}, which is gone",
                entry.path().display()
            ),
            Err(e) => tracing::warn!("could not remove a stale trace instance: {e}"),
        }
    }
}

/// The pid in `PREFIX-PID-N`, when `name` has exactly that shape.
fn stale_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::stale_pid;

    #[test]
    fn only_exact_prefix_pid_counter_names_are_candidates() {
        assert_eq!(stale_pid("tsc-agent-123-4", "tsc-agent"), Some(123));
        assert_eq!(stale_pid("tsc-agent-123", "tsc-agent"), None);
        assert_eq!(stale_pid("tsc-agent-x-4", "tsc-agent"), None);
        assert_eq!(stale_pid("tsc-agentx-1-4", "tsc-agent"), None);
        assert_eq!(stale_pid("tsc-agent-1-4-5", "tsc-agent"), None);
        assert_eq!(stale_pid("other-1-2", "tsc-agent"), None);
    }
}
