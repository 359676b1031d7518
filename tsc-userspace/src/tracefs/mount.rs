//! Finding tracefs (or mounting it), and what the top level offers read-only.

use std::{
    collections::HashMap,
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use super::TracefsError;

/// Where tracefs lives when the kernel mounts it itself.
pub const DEFAULT_TRACEFS: &str = "/sys/kernel/tracing";

/// A tracefs mount. Only ever read from here: changes happen in instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Tracefs rooted at `root` (tests, or a mount found elsewhere).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Finds the mounted tracefs from `/proc/self/mounts`: a `tracefs` mount
    /// (preferring `/sys/kernel/tracing`), else `tracing/` in a debugfs mount.
    pub fn find() -> Result<Self, TracefsError> {
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map_err(|e| TracefsError::io("/proc/self/mounts", e))?;
        find_in_mounts(&mounts)
            .map(Self::at)
            .ok_or(TracefsError::NotMounted)
    }

    /// Finds tracefs, mounting it at `/sys/kernel/tracing` when it is not
    /// mounted anywhere (which needs root).
    pub fn find_or_mount() -> Result<Self, TracefsError> {
        match Self::find() {
            Err(TracefsError::NotMounted) => Self::mount(),
            found => found,
        }
    }

    fn mount() -> Result<Self, TracefsError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(TracefsError::NotRoot);
        }
        tracing::info!("tracefs is not mounted; mounting it on {DEFAULT_TRACEFS}");
        nix::mount::mount(
            Some("tracefs"),
            DEFAULT_TRACEFS,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| TracefsError::io(DEFAULT_TRACEFS, io::Error::from(e)))?;
        Ok(Self::at(DEFAULT_TRACEFS))
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding instances.
    pub fn instances_dir(&self) -> PathBuf {
        self.root.join("instances")
    }

    /// Text of `events/header_page`.
    pub fn header_page(&self) -> Result<String, TracefsError> {
        self.read("events/header_page")
    }

    /// Text of `events/header_event`.
    pub fn header_event(&self) -> Result<String, TracefsError> {
        self.read("events/header_event")
    }

    /// Text of `events/SYSTEM/NAME/format`.
    pub fn event_format(&self, system: &str, name: &str) -> Result<String, TracefsError> {
        self.read(&format!("events/{system}/{name}/format"))
    }

    /// Whether `events/SYSTEM/NAME` exists.
    pub fn has_event(&self, system: &str, name: &str) -> bool {
        self.root.join("events").join(system).join(name).is_dir()
    }

    /// The kernel's pid -> command name cache (`saved_cmdlines`).
    pub fn saved_cmdlines(&self) -> Result<HashMap<i32, String>, TracefsError> {
        self.read("saved_cmdlines")
            .map(|t| parse_saved_cmdlines(&t))
    }

    pub(crate) fn read(&self, rel: &str) -> Result<String, TracefsError> {
        read_text(&self.root.join(rel))
    }
}

/// Reads a tracefs text file. Some (`events/header_page`, `header_event`)
/// answer only a read at offset 0 and report end of file after it, so the
/// first read must be big enough for all of it: `fs::read_to_string` starts
/// with a 32-byte probe and would get a truncated text.
pub(crate) fn read_text(path: &Path) -> Result<String, TracefsError> {
    const CHUNK: usize = 64 * 1024;
    let err = |e| TracefsError::io(path, e);
    let mut file = fs::File::open(path).map_err(err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0;
    loop {
        if buf.len() - len < CHUNK / 2 {
            buf.resize(buf.len() + CHUNK, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// The tracefs directory named by a `/proc/self/mounts` table.
pub fn find_in_mounts(mounts: &str) -> Option<PathBuf> {
    let entries: Vec<(String, &str)> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, ty) = (f.next()?, f.next()?, f.next()?);
            Some((unescape(at), ty))
        })
        .collect();
    let tracefs = |want: &str| {
        entries
            .iter()
            .find(|(at, ty)| *ty == "tracefs" && at == want)
    };
    if let Some((at, _)) = tracefs(DEFAULT_TRACEFS) {
        return Some(PathBuf::from(at));
    }
    if let Some((at, _)) = entries.iter().find(|(_, ty)| *ty == "tracefs") {
        return Some(PathBuf::from(at));
    }
    entries
        .iter()
        .filter(|(_, ty)| *ty == "debugfs")
        .map(|(at, _)| Path::new(at).join("tracing"))
        .find(|p| p.join("events").is_dir())
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `saved_cmdlines` (`PID COMM` lines; a comm may contain spaces).
pub fn parse_saved_cmdlines(text: &str) -> HashMap<i32, String> {
    text.lines()
        .filter_map(|l| {
            let (pid, comm) = l.split_once(' ')?;
            Some((pid.trim().parse().ok()?, comm.to_string()))
        })
        .collect()
}

/// Parses a kernel CPU list (`0-3,5,7-8`), as in `/sys/devices/system/cpu/online`.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_prefer_sys_kernel_tracing_then_any_tracefs_then_debugfs() {
        let both =
            "tracefs /mnt/t\\040x tracefs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw 0 0\n";
        assert_eq!(find_in_mounts(both), Some(PathBuf::from(DEFAULT_TRACEFS)));
        let other = "sysfs /sys sysfs rw 0 0\ntracefs /mnt/t\\040x tracefs rw 0 0\n";
        assert_eq!(find_in_mounts(other), Some(PathBuf::from("/mnt/t x")));
        assert_eq!(find_in_mounts("sysfs /sys sysfs rw 0 0\n"), None);
    }

    #[test]
    fn cmdlines_and_cpu_lists_parse() {
        let map = parse_saved_cmdlines("12 bash\n15 rcu_preempt\n7 kworker/0:1 x\nbad\n");
        assert_eq!(map.get(&12).map(String::as_str), Some("bash"));
        assert_eq!(map.get(&7).map(String::as_str), Some("kworker/0:1 x"));
        assert_eq!(map.len(), 3);
        assert_eq!(
            parse_cpu_list("0-3,5,7-8\n"),
            Some(vec![0, 1, 2, 3, 5, 7, 8])
        );
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
