//! What procfs says about a process: identity that survives pid reuse.

use std::{fs, io, path::PathBuf};

/// Errors reading a process's procfs entries.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The process does not exist (or exited while we read it).
    #[error("process {0} does not exist")]
    Gone(u32),
    /// procfs answered with something we cannot parse.
    #[error("cannot parse /proc/{pid}/stat: {why}")]
    Malformed {
        /// The process.
        pid: u32,
        /// What was wrong.
        why: &'static str,
    },
    /// Any other I/O error.
    #[error("reading /proc/{pid}: {source}")]
    Io {
        /// The process.
        pid: u32,
        /// The underlying error.
        source: io::Error,
    },
}

/// A process, named so that a reused pid is a different process: the pid and
/// its start time (clock ticks after boot, `/proc/PID/stat` field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ProcessId {
    /// Thread-group id.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcessId {
    /// Reads the identity of the live process `pid`.
    pub fn of(pid: u32) -> Result<Self, ProcessError> {
        let stat = read(pid, "stat")?;
        Ok(Self {
            pid,
            start_time: start_time(pid, &stat)?,
        })
    }

    /// True while this very process (not a successor with the same pid) runs.
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_ok_and(|now| now == *self)
    }
}

/// The process's `comm` (at most 15 bytes, as the kernel keeps it).
pub fn comm(pid: u32) -> Result<String, ProcessError> {
    Ok(read(pid, "comm")?.trim_end_matches('\n').to_owned())
}

/// The thread-group id (process id) of thread `tid`.
pub fn tgid(tid: u32) -> Result<u32, ProcessError> {
    let status = read(tid, "status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(ProcessError::Malformed {
            pid: tid,
            why: "no Tgid line in status",
        })
}

/// The process's command line, arguments separated by NULs in procfs.
pub fn cmdline(pid: u32) -> Result<Vec<String>, ProcessError> {
    let raw = read(pid, "cmdline")?;
    Ok(raw
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

fn read(pid: u32, file: &str) -> Result<String, ProcessError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    match fs::read(&path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e)
            if matches!(e.kind(), io::ErrorKind::NotFound)
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            Err(ProcessError::Gone(pid))
        }
        Err(source) => Err(ProcessError::Io { pid, source }),
    }
}

/// Field 22 of `stat`. `comm` (field 2) may hold spaces and parentheses, so
/// count from the last ')'.
fn start_time(pid: u32, stat: &str) -> Result<u64, ProcessError> {
    let malformed = |why| ProcessError::Malformed { pid, why };
    let rest = stat
        .rsplit_once(')')
        .ok_or(malformed("no ')' after comm"))?
        .1;
    // rest starts at field 3 (state); field 22 is the 20th after it.
    rest.split_whitespace()
        .nth(19)
        .ok_or(malformed("fewer than 22 fields"))?
        .parse()
        .map_err(|_| malformed("start time is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_hostile_comm() {
        let stat = "42 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 20";
        assert_eq!(start_time(42, stat).unwrap(), 777);
    }

    #[test]
    fn short_stat_is_an_error() {
        assert!(matches!(
            start_time(1, "1 (x) S 1 2"),
            Err(ProcessError::Malformed { .. })
        ));
    }

    #[test]
    fn own_process_is_alive_and_unknown_one_is_not() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let older_twin = ProcessId {
            start_time: me.start_time.wrapping_sub(1),
            ..me
        };
        assert!(
            !older_twin.is_alive(),
            "same pid, other start time must not be alive"
        );
        assert!(matches!(
            ProcessId::of(u32::MAX),
            Err(ProcessError::Gone(_))
        ));
    }
}
