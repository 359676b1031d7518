//! What the soak watches for leaks: a process's resident memory and open
//! file descriptors, the tracefs instances of our processes, the session's
//! bpffs pins.

use std::{fs, path::Path};

/// Tracefs instances live here.
pub const INSTANCES: &str = "/sys/kernel/tracing/instances";

/// One process's footprint.
#[derive(Debug, Default, Clone, Copy)]
pub struct Proc {
    /// VmRSS, KiB (0: gone).
    pub rss_kb: u64,
    /// Entries in /proc/PID/fd.
    pub fds: usize,
}

/// The footprint of `pid` now.
pub fn process(pid: u32) -> Proc {
    let rss_kb = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    Proc { rss_kb, fds }
}

/// Instances (ours: made by one of `pids`, all of them). The project names
/// each `PREFIX-PID-N` (`tracefs::instance`).
pub fn instances(pids: &[u32]) -> (usize, usize) {
    let Ok(dir) = fs::read_dir(INSTANCES) else {
        return (0, 0);
    };
    let names: Vec<String> = dir
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let ours = names
        .iter()
        .filter(|n| instance_pid(n).is_some_and(|p| pids.contains(&p)));
    (ours.count(), names.len())
}

fn instance_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse().ok()
}

/// What each open fd of `pid` is, numbers blanked (`socket:[N]`), for
/// telling which kind leaked.
pub fn fd_kinds(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut kinds: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|t| {
            t.to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_digit() { 'N' } else { c })
                .collect::<String>()
        })
        .collect();
    kinds.sort();
    kinds
}

/// `after` less `before`, as multisets: what is open now that was not.
pub fn fd_growth(before: &[String], after: &[String]) -> Vec<String> {
    let mut left = before.to_vec();
    after
        .iter()
        .filter(|k| match left.iter().position(|b| b == *k) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

/// Entries under `dir` (recursively; 0 when it does not exist).
pub fn pins(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            1 + if path.is_dir() { pins(&path) } else { 0 }
        })
        .sum()
}
