//! Per-CPU spill files: each page appended as it arrives, padded to the
//! page size, so a file is already the CPU data a trace.dat holds and a
//! crash loses at most what was not yet written.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

/// The spill file of `cpu` in a stream directory.
pub fn cpu_file(dir: &Path, cpu: u32) -> PathBuf {
    dir.join(format!("cpu{cpu}.pages"))
}

/// One stream's open spill files.
#[derive(Debug)]
pub struct SpillStream {
    dir: PathBuf,
    page_size: usize,
    files: BTreeMap<u32, File>,
    zeros: Vec<u8>,
}

impl SpillStream {
    /// Creates the stream's directory (its parent must exist: a recording
    /// directory removed under the session is not silently made again).
    pub fn create(dir: PathBuf, page_size: usize) -> io::Result<Self> {
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        Ok(Self {
            dir,
            page_size,
            files: BTreeMap::new(),
            zeros: vec![0; page_size],
        })
    }

    /// Appends one page of `cpu` (the caller checked it fits a page).
    pub fn append(&mut self, cpu: u32, page: &[u8]) -> io::Result<()> {
        let file = match self.files.entry(cpu) {
            std::collections::btree_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(cpu_file(&self.dir, cpu))?,
            ),
        };
        let pad = self.page_size.saturating_sub(page.len());
        // One write per page: a kill leaves at most one partial page, which
        // assembly cuts off.
        let mut buf = Vec::with_capacity(self.page_size);
        buf.extend_from_slice(page);
        buf.extend_from_slice(&self.zeros[..pad]);
        file.write_all(&buf)
    }
}

/// The whole pages in a spill file (0 when there is none).
pub fn spilled_len(path: &Path, page_size: u64) -> u64 {
    let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    len / page_size.max(1) * page_size.max(1)
}

/// Reads the whole pages of a spill file, one at a time.
pub fn read_pages(path: &Path, page_size: usize) -> impl Iterator<Item = io::Result<Vec<u8>>> {
    let file = File::open(path);
    let mut left = spilled_len(path, page_size as u64) / page_size.max(1) as u64;
    let mut file = file.ok();
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let f = file.as_mut()?;
        let mut page = vec![0; page_size];
        Some(f.read_exact(&mut page).map(|()| page))
    })
}
