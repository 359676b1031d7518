//! Reading a journal: a parser of files anyone may have corrupted. It
//! never panics and allocates only for records that passed their checks.

use std::{
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use super::{
    JournalError,
    frame::{self, At, FILE_MAGIC, FILE_VERSION, HEADER_LEN},
    record::JournalRecord,
    rotated,
};

/// A stretch of bytes that was not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Where it starts in its file.
    pub offset: u64,
    /// How long it is.
    pub bytes: u64,
}

/// What one file held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The records, in the order they were written.
    pub records: Vec<JournalRecord>,
    /// Damaged stretches with whole records after them: skipped.
    pub skipped: Vec<Skipped>,
    /// Frames whose checksum held but whose payload does not decode (a
    /// newer writer, or a forged frame): skipped, counted.
    pub undecodable: u64,
    /// A partly written end (a writer killed mid-write): skipped.
    pub torn_tail: Option<Skipped>,
}

/// Decodes one journal file's bytes. An empty file is an empty journal
/// (a writer killed right after creating it); a file that does not start
/// with the journal header (or a prefix of it) is refused.
pub fn decode(data: &[u8]) -> Result<Decoded, JournalError> {
    let mut out = Decoded::default();
    let head = frame::header();
    if data.len() < HEADER_LEN {
        if data != &head[..data.len()] {
            return Err(JournalError::NotAJournal);
        }
        if !data.is_empty() {
            out.torn_tail = Some(Skipped {
                offset: 0,
                bytes: data.len() as u64,
            });
        }
        return Ok(out);
    }
    if data[..8] != FILE_MAGIC {
        return Err(JournalError::NotAJournal);
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != FILE_VERSION {
        return Err(JournalError::Version(version));
    }
    let mut pos = HEADER_LEN;
    while pos < data.len() {
        match frame::at(&data[pos..]) {
            At::Frame { payload, next } => {
                match JournalRecord::decode(payload) {
                    Ok(record) => out.records.push(record),
                    Err(_) => out.undecodable += 1,
                }
                pos += next;
            }
            At::Short | At::Bad => {
                let gap = |end: usize| Skipped {
                    offset: pos as u64,
                    bytes: (end - pos) as u64,
                };
                match frame::resync(data, pos + 1) {
                    Some(next) => {
                        out.skipped.push(gap(next));
                        pos = next;
                    }
                    None => {
                        out.torn_tail = Some(gap(data.len()));
                        break;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// One file of a journal, decoded.
#[derive(Debug)]
pub struct FileContents {
    /// Its path.
    pub path: PathBuf,
    /// What it held.
    pub decoded: Decoded,
}

/// Everything a journal holds, oldest file first.
#[derive(Debug, Default)]
pub struct Contents {
    /// Each file that exists, oldest first.
    pub files: Vec<FileContents>,
}

impl Contents {
    /// Every record, in the order written.
    pub fn records(&self) -> impl Iterator<Item = &JournalRecord> {
        self.files.iter().flat_map(|f| f.decoded.records.iter())
    }

    /// Records, skipped stretches, undecodable frames and torn tails, summed.
    pub fn counts(&self) -> (usize, usize, u64, usize) {
        let d = self.files.iter().map(|f| &f.decoded);
        (
            d.clone().map(|d| d.records.len()).sum(),
            d.clone().map(|d| d.skipped.len()).sum(),
            d.clone().map(|d| d.undecodable).sum(),
            d.filter(|d| d.torn_tail.is_some()).count(),
        )
    }

    /// Logs what was damaged, one line per file.
    pub fn report(&self) {
        for f in &self.files {
            let d = &f.decoded;
            if !d.skipped.is_empty() || d.undecodable > 0 {
                tracing::warn!(
                    "journal {}: skipped {} damaged stretch(es) ({} bytes) and {} undecodable record(s); the records after them were kept",
                    f.path.display(),
                    d.skipped.len(),
                    d.skipped.iter().map(|s| s.bytes).sum::<u64>(),
                    d.undecodable
                );
            }
            if let Some(t) = d.torn_tail {
                tracing::warn!(
                    "journal {}: skipped a torn tail of {} bytes at offset {} (a writer stopped mid-record)",
                    f.path.display(),
                    t.bytes,
                    t.offset
                );
            }
        }
    }
}

/// Reads the journal at `path` with its rotated files (`PATH.N` ...
/// `PATH.1`, then `PATH`). Missing files are skipped; none at all is an
/// empty journal. A file larger than `max_file_bytes` is refused (the
/// writer never makes one; this bounds memory for a hostile file).
pub fn read(path: &Path, max_file_bytes: u64) -> Result<Contents, JournalError> {
    let mut contents = Contents::default();
    for file in rotated::oldest_first(path)? {
        let data = match read_bounded(&file, max_file_bytes) {
            Ok(Some(data)) => data,
            Ok(None) => continue,
            Err(source) => return Err(JournalError::Io { path: file, source }),
        };
        let decoded = decode(&data).map_err(|e| e.in_file(&file))?;
        contents.files.push(FileContents {
            path: file,
            decoded,
        });
    }
    Ok(contents)
}

/// The file's bytes; None when it does not exist.
fn read_bounded(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {max} a journal file may hold"),
        ));
    }
    let mut data = Vec::with_capacity(len as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut data)?;
    Ok(Some(data))
}
