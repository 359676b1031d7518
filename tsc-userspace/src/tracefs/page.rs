//! Ring-buffer pages as `per_cpu/cpuN/trace_pipe_raw` hands them out, decoded
//! in place.
//!
//! A page (a "sub-buffer") is a header followed by records:
//!
//! ```text
//! u64  timestamp            full clock value of the page's first record
//! long commit               bytes of records; bit 31: events were lost before
//!                           this page, bit 30: their count is stored as a
//!                           `long` right after the records
//! u8   data[commit]         records
//! ```
//!
//! The offsets and sizes come from `events/header_page` ([`PageLayout::parse`]).
//! Every record starts with a little-endian `u32`: `type_len` in bits 0..5 and
//! `time_delta` in bits 5..32.
//!
//! | type_len | record                                                        |
//! |----------|---------------------------------------------------------------|
//! | 1..=28   | event of `type_len * 4` payload bytes after the header          |
//! | 0        | event; `array[0]` = payload length + 4, payload after it        |
//! | 29       | padding: `time_delta == 0` ends the page, else `4 + array[0]` bytes (a discarded event) |
//! | 30       | time extend: `ts += array[0] << 27 | time_delta`                |
//! | 31       | absolute time stamp: low 59 bits, top 5 bits from the current ts |
//!
//! The time stamp rules follow `rb_read_data_buffer()` in the kernel's
//! `kernel/trace/ring_buffer.c` (6.x), the kernel's own checker of a page:
//! data records add their delta; time extends add theirs; an absolute stamp
//! replaces the time stamp (the kernel writes one in the middle of a page when
//! an event interrupted another one's time update, so it is not only seen in
//! `timestamp_mode` absolute); a padding record adds its delta unless the delta
//! is 1, the marker the kernel puts on discarded events whose real delta was 0
//! and on the padding that fills the end of a page.
//!
//! Pages are little-endian (x86, the only architecture this tool serves).

use std::fmt;

use super::format::{self, FieldDecl};

/// `type_len` of a padding record.
const PADDING: u32 = 29;
/// `type_len` of a time-extend record.
pub(super) const TIME_EXTEND: u32 = 30;
/// `type_len` of an absolute time stamp record.
pub(super) const TIME_STAMP: u32 = 31;
/// Largest `type_len` of an event whose length is in its header.
pub(super) const MAX_SMALL_TYPE_LEN: u32 = 28;
/// Bits of `time_delta` in a record header; a time extend holds the rest.
pub(super) const TS_SHIFT: u32 = 27;
/// The top 5 bits of a time stamp, which an absolute time stamp does not hold.
const TS_MSB: u64 = 0xf8 << 56;
/// Bits of `commit` that count bytes (as libtraceevent reads it).
const COMMIT_MASK: u64 = (1 << 27) - 1;
/// Flag in `commit`: events were lost between the previous page and this one.
const MISSED_EVENTS: u64 = 1 << 31;
/// Flag in `commit`: the number lost is stored right after the records.
const MISSED_STORED: u64 = 1 << 30;

/// Errors decoding a page or its layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// `events/header_page` lacks a field or has an unusable one.
    #[error("header_page: {0}")]
    Layout(String),
    /// A `header_page` field ends past the largest possible offset.
    #[error("header_page: field `{0}` ends past any possible page")]
    LayoutRange(&'static str),
    /// Fewer bytes than the page header needs.
    #[error("page of {len} bytes is shorter than its {need}-byte header")]
    Short {
        /// Bytes given.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// `commit` says more bytes than the page holds.
    #[error("page commit of {commit} bytes exceeds the {capacity} bytes it can hold")]
    Commit {
        /// The committed size the page claims.
        commit: usize,
        /// Room for records in the bytes given.
        capacity: usize,
    },
    /// A record runs past the committed bytes or has an impossible length.
    #[error("malformed record at data offset {offset}: {what}")]
    Record {
        /// Offset of the record from the start of the records.
        offset: usize,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// Where the page header's fields are, from `events/header_page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLayout {
    timestamp_offset: usize,
    commit_offset: usize,
    /// Size of `commit` and of the stored lost-events count: the kernel's `long`.
    long_size: usize,
    data_offset: usize,
    page_size: usize,
    /// Bytes before which every header field ends (checked when parsed).
    header_len: usize,
}

impl PageLayout {
    /// The layout of a 64-bit kernel with `page_size`-byte sub-buffers
    /// (what `header_page` says on x86_64), for tests and benchmarks.
    pub const fn x86_64(page_size: usize) -> Self {
        Self {
            timestamp_offset: 0,
            commit_offset: 8,
            long_size: 8,
            data_offset: 16,
            page_size,
            header_len: 16,
        }
    }

    /// Parses the text of `events/header_page`.
    pub fn parse(header_page: &str) -> Result<Self, PageError> {
        let mut timestamp = None;
        let mut commit = None;
        let mut data = None;
        for line in header_page.lines() {
            let Some(decl) = format::parse_field_line(line) else {
                continue;
            };
            let decl = decl.map_err(|e| PageError::Layout(e.to_string()))?;
            match decl.name.as_str() {
                "timestamp" => timestamp = Some(decl),
                "commit" => commit = Some(decl),
                "data" => data = Some(decl),
                _ => {}
            }
        }
        let need = |f: Option<FieldDecl>, name: &str| {
            f.ok_or_else(|| PageError::Layout(format!("no `{name}` field")))
        };
        let (timestamp, commit, data) = (
            need(timestamp, "timestamp")?,
            need(commit, "commit")?,
            need(data, "data")?,
        );
        if timestamp.size != 8 || !matches!(commit.size, 4 | 8) {
            return Err(PageError::Layout(format!(
                "timestamp of {} bytes or commit of {} bytes is not supported",
                timestamp.size, commit.size
            )));
        }
        // A guest writes this text: its numbers may be anything up to
        // usize::MAX, so every end is computed checked.
        let end = |f: &FieldDecl, name| {
            f.offset
                .checked_add(f.size)
                .ok_or(PageError::LayoutRange(name))
        };
        let header_len = end(&timestamp, "timestamp")?
            .max(end(&commit, "commit")?)
            .max(data.offset);
        Ok(Self {
            timestamp_offset: timestamp.offset,
            commit_offset: commit.offset,
            long_size: commit.size,
            data_offset: data.offset,
            page_size: end(&data, "data")?,
            header_len,
        })
    }

    /// Bytes in a whole page (header and records): what one read returns.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Offset of the first record in a page.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The kernel's `long` size (8 on 64-bit kernels).
    pub fn long_size(&self) -> usize {
        self.long_size
    }

    /// Offset of the page's `u64` time stamp.
    pub fn timestamp_offset(&self) -> usize {
        self.timestamp_offset
    }

    /// Offset of the page's `commit` word (a kernel `long`).
    pub fn commit_offset(&self) -> usize {
        self.commit_offset
    }

    fn header_len(&self) -> usize {
        self.header_len
    }
}

/// Events the kernel dropped before a page, as its header reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostEvents {
    /// Nothing was lost.
    None,
    /// Events were lost; the kernel had no room to say how many.
    Unknown,
    /// This many events were lost.
    Count(u64),
}

impl fmt::Display for LostEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Unknown => f.write_str("an unknown number of"),
            Self::Count(n) => write!(f, "{n}"),
        }
    }
}

/// One page, borrowed from the bytes read.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    timestamp: u64,
    records: &'a [u8],
    lost: LostEvents,
}

impl<'a> Page<'a> {
    /// Checks the header and finds the records. Decoding the records happens
    /// lazily in [`Page::events`].
    pub fn parse(layout: &PageLayout, bytes: &'a [u8]) -> Result<Self, PageError> {
        let need = layout.header_len();
        if bytes.len() < need {
            return Err(PageError::Short {
                len: bytes.len(),
                need,
            });
        }
        let timestamp = read_u64(bytes, layout.timestamp_offset).unwrap_or_default();
        let flags = read_long(bytes, layout.commit_offset, layout.long_size).unwrap_or_default();
        let data = &bytes[layout.data_offset..];
        let commit = (flags & COMMIT_MASK) as usize;
        if commit > data.len() {
            return Err(PageError::Commit {
                commit,
                capacity: data.len(),
            });
        }
        let lost = if flags & MISSED_EVENTS == 0 {
            LostEvents::None
        } else if flags & MISSED_STORED != 0 {
            read_long(data, commit, layout.long_size).map_or(LostEvents::Unknown, LostEvents::Count)
        } else {
            LostEvents::Unknown
        };
        Ok(Self {
            timestamp,
            records: &data[..commit],
            lost,
        })
    }

    /// The page's time stamp: the clock value its first record is relative to.
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// Events lost between the previous page of this CPU and this one.
    pub fn lost_events(&self) -> LostEvents {
        self.lost
    }

    /// The committed record bytes.
    pub fn records(&self) -> &'a [u8] {
        self.records
    }

    /// True when the page holds no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The page's events in order, with absolute time stamps. A malformed
    /// record yields one error and ends the iteration.
    pub fn events(&self) -> Events<'a> {
        Events {
            records: self.records,
            pos: 0,
            ts: self.timestamp,
            done: false,
        }
    }
}

/// One event record: its time stamp and its payload, which starts with the
/// event's common fields (`common_type` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent<'a> {
    /// Trace clock value (for `x86-tsc`, the TSC).
    pub ts: u64,
    /// The payload, rounded up to 4 bytes by the ring buffer.
    pub data: &'a [u8],
}

/// Iterator over a page's events; see [`Page::events`].
#[derive(Debug, Clone)]
pub struct Events<'a> {
    records: &'a [u8],
    pos: usize,
    ts: u64,
    done: bool,
}

/// What one record header says, before the time stamp is applied.
enum Record<'a> {
    Event { delta: u64, data: &'a [u8] },
    Extend(u64),
    Absolute(u64),
    Padding { delta: u64 },
    End,
}

impl<'a> Events<'a> {
    /// Decodes the record at `self.pos` and moves past it.
    fn record(&mut self) -> Result<Record<'a>, PageError> {
        let offset = self.pos;
        let bad = |what| PageError::Record { offset, what };
        let header = read_u32(self.records, offset).ok_or(bad("truncated header"))?;
        let type_len = header & 0x1f;
        let delta = u64::from(header >> 5);
        let array0 = read_u32(self.records, offset + 4);
        let (len, record) = match type_len {
            0 => {
                let word = array0.ok_or(bad("truncated length"))? as usize;
                let payload = word.checked_sub(4).ok_or(bad("length below 4"))?;
                let payload = payload.div_ceil(4) * 4;
                let data = self.slice(offset + 8, payload).ok_or(bad("past commit"))?;
                (8 + payload, Record::Event { delta, data })
            }
            1..=28 => {
                let payload = type_len as usize * 4;
                let data = self.slice(offset + 4, payload).ok_or(bad("past commit"))?;
                (4 + payload, Record::Event { delta, data })
            }
            PADDING if delta == 0 => (0, Record::End),
            PADDING => {
                let word = array0.ok_or(bad("truncated padding"))? as usize;
                let len = word.checked_add(4).ok_or(bad("padding too long"))?;
                self.slice(offset, len).ok_or(bad("padding past commit"))?;
                (len, Record::Padding { delta })
            }
            // TIME_EXTEND, or 31 (absolute time stamp): all a 5-bit type_len has left.
            _ => {
                let high = u64::from(array0.ok_or(bad("truncated time stamp"))?);
                let value = (high << TS_SHIFT) | delta;
                let rec = if type_len == TIME_EXTEND {
                    Record::Extend(value)
                } else {
                    Record::Absolute(value)
                };
                (8, rec)
            }
        };
        if len == 0 && !matches!(record, Record::End) {
            return Err(bad("zero-length record"));
        }
        self.pos = offset + len;
        Ok(record)
    }

    fn slice(&self, start: usize, len: usize) -> Option<&'a [u8]> {
        self.records.get(start..start.checked_add(len)?)
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<RawEvent<'a>, PageError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done && self.pos < self.records.len() {
            match self.record() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(Record::Event { delta, data }) => {
                    self.ts = self.ts.wrapping_add(delta);
                    return Some(Ok(RawEvent { ts: self.ts, data }));
                }
                Ok(Record::Extend(delta)) => self.ts = self.ts.wrapping_add(delta),
                Ok(Record::Absolute(abs)) => self.ts = fix_absolute(abs, self.ts),
                Ok(Record::Padding { delta }) if delta != 1 => {
                    self.ts = self.ts.wrapping_add(delta)
                }
                Ok(Record::Padding { .. }) => {}
                Ok(Record::End) => self.done = true,
            }
        }
        None
    }
}

/// An absolute stamp lacks the top 5 bits: take them from the current time
/// stamp, and carry once if that made it go backwards (`rb_fix_abs_ts`).
pub(super) fn fix_absolute(abs: u64, current: u64) -> u64 {
    if current & TS_MSB == 0 {
        return abs;
    }
    let fixed = abs | (current & TS_MSB);
    if fixed < current {
        fixed.wrapping_add(1 << 59)
    } else {
        fixed
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

fn read_long(bytes: &[u8], at: usize, size: usize) -> Option<u64> {
    match size {
        4 => read_u32(bytes, at).map(u64::from),
        _ => read_u64(bytes, at),
    }
}

#[cfg(test)]
#[path = "page_tests.rs"]
mod tests;
