//! The offset journal: every offset event and epoch boundary of every VM,
//! appended to disk as it happens, so that a restarted session gets the
//! epoch history of the VMs still alive back, and a guest trace can be
//! converted after the fact (`tsc-tracer convert --journal`).
//!
//! Written by `tsc-tracer host` and `tsc-tracer offsets --follow` (default
//! [`DEFAULT_PATH`], `--journal PATH`, `--no-journal`): one record per
//! [`OffsetEvent`] the kernel side reports (snapshot rows at start
//! included), with the host TSC and ns of the boundary the session placed
//! it at ([`Boundary`]).
//!
//! # Files
//! `PATH` is being written; on reaching `--journal-max-bytes` it becomes
//! `PATH.1`, `PATH.1` becomes `PATH.2`, ..., and `PATH.K-1` is deleted
//! (`--journal-keep K`, at least 2): the journal never holds more than K
//! files of at most that size. History older than the oldest kept file is
//! gone (a restored vCPU then starts from the first change still kept).
//!
//! # Format (all integers little-endian)
//! A file is a 16-byte header, `"TSCJRNL\0"`, `u32` version (1), `u32` 0,
//! then frames. A frame is `"TSCR"`, `u32` payload length (at most
//! [`record::MAX_PAYLOAD`]), `u32` CRC32 (IEEE, as `crc32fast` and zlib
//! compute it) of the 4 length bytes and the payload, then the payload:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | payload version (1) |
//! | 1 | kind: 0 snapshot, 1 change, 2 vcpu-added, 3 vm-exit, 4 entry |
//! | 2 | which optional fields are present, bit 0 upwards: vcpu, offset, effective_offset, ratio, frac_bits, seq, prev, changes, new_start_ns, old_end_ns, prev_end_tsc |
//! | 1 | source: 0 none, 1 tracepoint, 2 debugfs, 3 map, 4 btf |
//! | 1 | flags: bit 0 boundary_uncertain |
//! | 2 | comm length (at most 64) |
//! | 4, 4 | pid, vcpu |
//! | 8 x 4 | start_time, offset, effective_offset, ratio |
//! | 4, 4 | frac_bits, reserved (0) |
//! | 8 x 5 | seq, prev, changes, new_start_ns, old_end_ns |
//! | 8 x 3 | boundary host TSC, boundary ns, prev_end_tsc |
//! | n | comm (UTF-8) |
//!
//! An absent field is written as 0 and must read as 0. Offsets are two's
//! complement.
//!
//! # Crashes and damage
//! Each batch of events is written and `fdatasync`ed together. A writer
//! killed mid-record leaves a torn tail: the reader skips it and says so,
//! and the next writer cuts it off before appending. A damaged stretch in
//! the middle (a bad checksum, a bad length) is skipped and counted, and
//! reading goes on at the next frame whose checksum holds: the records
//! after it are intact, and losing one change is better than losing the
//! rest of the history (the log says how much was skipped). A frame whose
//! checksum holds but whose payload does not decode is skipped and
//! counted too. A file that does not start with the header is refused.

pub mod frame;
pub mod live;
pub mod reader;
pub mod record;
mod rotated;
pub mod writer;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

pub use live::LiveJournal;
pub use reader::{Contents, Decoded, Skipped};
pub use record::{Boundary, JournalRecord};
pub use writer::JournalWriter;

use super::{EventKind, OffsetEvent};
use crate::process::ProcessId;

/// Where the journal is written unless `--journal` says otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/tsc-tracer/offsets.journal";
/// Default size at which the journal rotates.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 20;
/// Default number of files kept (the one written included).
pub const DEFAULT_KEEP_FILES: u32 = 8;
/// The smallest file size accepted (a few records).
pub const MIN_FILE_BYTES: u64 = 4096;

/// Where and how big.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// The file being written.
    pub path: PathBuf,
    /// Size at which it rotates.
    pub max_file_bytes: u64,
    /// Files kept, the one written included.
    pub keep_files: u32,
}

impl JournalOptions {
    /// The defaults at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            keep_files: DEFAULT_KEEP_FILES,
        }
    }

    /// The same, with sizes no smaller than the format needs.
    fn bounded(mut self) -> Self {
        self.max_file_bytes = self.max_file_bytes.max(MIN_FILE_BYTES);
        self.keep_files = self.keep_files.max(2);
        self
    }

    /// The most disk the journal takes.
    pub fn max_total_bytes(&self) -> u64 {
        let b = self.clone().bounded();
        b.max_file_bytes.saturating_mul(u64::from(b.keep_files))
    }
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing a file failed.
    #[error("offset journal {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the journal header.
    #[error("not an offset journal (no TSCJRNL header)")]
    NotAJournal,
    /// A journal of a version this build does not read.
    #[error("offset journal version {0}; this build reads version 1")]
    Version(u32),
    /// Another process writes this journal.
    #[error("offset journal {}: another session is writing it", .0.display())]
    Locked(PathBuf),
    /// One of the above, in a named file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: Box<JournalError>,
    },
}

impl JournalError {
    fn in_file(self, path: &Path) -> Self {
        match self {
            e @ (Self::Io { .. } | Self::InFile { .. } | Self::Locked(_)) => e,
            e => Self::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        }
    }
}

/// The part of a journal a restarted session takes back.
#[derive(Debug, Default)]
pub struct Restore {
    /// Records of the VMs still alive, in the order written.
    pub records: Vec<JournalRecord>,
    /// VMs still alive (same pid and start time).
    pub alive: BTreeSet<ProcessId>,
    /// VMs in the journal that are gone.
    pub gone: usize,
}

impl Restore {
    /// Keeps the records of the VMs `is_alive` says still run: a pid whose
    /// start time differs is another process (pid reuse), and a VM that
    /// exited, even one whose pid runs again, is dropped.
    pub fn of<'a>(
        records: impl IntoIterator<Item = &'a JournalRecord>,
        is_alive: impl Fn(ProcessId) -> bool,
    ) -> Self {
        let mut alive: BTreeMap<ProcessId, bool> = BTreeMap::new();
        let mut kept = Vec::new();
        for record in records {
            let id = identity(&record.event);
            let live = *alive
                .entry(id)
                .or_insert_with(|| id.start_time != 0 && is_alive(id));
            if record.event.event == EventKind::VmExit {
                alive.insert(id, false);
            }
            if live {
                kept.push(record.clone());
            }
        }
        let restore_ids: BTreeSet<ProcessId> = alive
            .iter()
            .filter(|(_, live)| **live)
            .map(|(id, _)| *id)
            .collect();
        // A VM whose exit is journaled is gone even when its exit record
        // came after records already kept.
        kept.retain(|r| restore_ids.contains(&identity(&r.event)));
        Self {
            gone: alive.len() - restore_ids.len(),
            alive: restore_ids,
            records: kept,
        }
    }

    /// vCPUs with at least one record.
    pub fn vcpus(&self) -> usize {
        let set: BTreeSet<(u32, u32)> = self
            .records
            .iter()
            .filter_map(|r| Some((r.event.pid, r.event.vcpu?)))
            .collect();
        set.len()
    }
}

fn identity(event: &OffsetEvent) -> ProcessId {
    ProcessId {
        pid: event.pid,
        start_time: event.start_time,
    }
}

#[cfg(test)]
mod tests;
