//! Appending to a journal: one frame per record, flushed and synced per
//! batch, rotated by size.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::{
    JournalError, JournalOptions,
    frame::{self, HEADER_LEN},
    reader::{self, Skipped},
    record::JournalRecord,
    rotated,
};

/// Appends records to the journal at a path.
pub struct JournalWriter {
    options: JournalOptions,
    file: File,
    size: u64,
    buf: Vec<u8>,
}

impl JournalWriter {
    /// Opens (or creates) the journal. A torn tail left by a writer that
    /// was killed mid-record is cut off first (and returned), so new
    /// records never follow a partial one; a file that is not a journal
    /// is refused, never overwritten.
    pub fn open(options: JournalOptions) -> Result<(Self, Option<Skipped>), JournalError> {
        let options = options.bounded();
        let path = options.path.clone();
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let existing = match fs::read(&path) {
            Ok(data) => Some(data),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        lock(&file).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => JournalError::Locked(path.clone()),
            _ => io(e),
        })?;
        let (size, torn) = match existing {
            Some(data) if data.len() >= HEADER_LEN => {
                let decoded = reader::decode(&data).map_err(|e| e.in_file(&path))?;
                match decoded.torn_tail {
                    Some(t) => {
                        file.set_len(t.offset).map_err(io)?;
                        (t.offset, Some(t))
                    }
                    None => (data.len() as u64, None),
                }
            }
            Some(data) => {
                // Empty, or a torn header: begin again (anything else is
                // not ours).
                reader::decode(&data).map_err(|e| e.in_file(&path))?;
                let torn = (!data.is_empty()).then_some(Skipped {
                    offset: 0,
                    bytes: data.len() as u64,
                });
                file.set_len(0).map_err(io)?;
                (0, torn)
            }
            None => (0, None),
        };
        let mut writer = Self {
            options,
            file,
            size,
            buf: Vec::new(),
        };
        if writer.size == 0 {
            writer.start_file().map_err(io)?;
        }
        Ok((writer, torn))
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.options.path
    }

    /// Appends `records`, rotating before a record that would take the
    /// file past its size, then flushes them to the disk: after a crash
    /// the batch is there whole, or its tail is torn and skipped on read.
    pub fn append(&mut self, records: &[JournalRecord]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write_batch(records)
            .map_err(|source| JournalError::Io {
                path: self.options.path.clone(),
                source,
            })
    }

    fn write_batch(&mut self, records: &[JournalRecord]) -> io::Result<()> {
        let mut payload = Vec::new();
        self.buf.clear();
        for record in records {
            payload.clear();
            record.encode(&mut payload);
            let start = self.buf.len();
            frame::put(&payload, &mut self.buf);
            let n = (self.buf.len() - start) as u64;
            if self.size + start as u64 + n > self.options.max_file_bytes
                && self.size + start as u64 > HEADER_LEN as u64
            {
                let frame = self.buf.split_off(start);
                self.write_buf()?;
                self.rotate()?;
                self.buf = frame;
            }
        }
        self.write_buf()?;
        self.file.sync_data()
    }

    fn write_buf(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.size += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// `PATH.K-1` goes, `PATH.i` becomes `PATH.i+1`, `PATH` becomes
    /// `PATH.1`, and a new `PATH` starts.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let path = &self.options.path.clone();
        let keep = self.options.keep_files;
        remove_if_there(&rotated::nth(path, keep - 1))?;
        for i in (1..keep - 1).rev() {
            rename_if_there(&rotated::nth(path, i), &rotated::nth(path, i + 1))?;
        }
        fs::rename(path, rotated::nth(path, 1))?;
        self.file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        lock(&self.file)?;
        self.size = 0;
        self.start_file()?;
        tracing::debug!("rotated the offset journal {}", path.display());
        Ok(())
    }

    fn start_file(&mut self) -> io::Result<()> {
        let header = frame::header();
        self.file.write_all(&header)?;
        self.size = header.len() as u64;
        self.file.sync_data()
    }
}

fn remove_if_there(path: &PathBuf) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_there(from: &PathBuf, to: &PathBuf) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One writer per journal: an exclusive advisory lock, held while the
/// file is open (released by the kernel when the process dies).
fn lock(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
