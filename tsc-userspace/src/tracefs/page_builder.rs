//! Writing ring-buffer pages in the kernel's layout: the inverse of
//! [`Page`](super::Page), for sources that are not a kernel (the demo's
//! toy guest, tests, benchmarks).
//!
//! Records follow `rb_calculate_event_length()` and `rb_update_event()` in
//! the kernel's `kernel/trace/ring_buffer.c`: a payload is rounded up to 4
//! bytes, and one of 8 bytes to 12 (a 12-byte record could not be turned
//! into a time extend plus padding); one of up to 112 bytes keeps its length
//! in `type_len` (`len / 4`), a longer (or empty) one has `type_len` 0 and
//! `array[0] = len + 4`. The first event of
//! a page carries the page's time stamp and a delta of 0; a later one carries
//! its distance from the previous event in `time_delta` when that fits in 27
//! bits, else a time-extend record (`type_len` 30) holding the delta goes
//! first. An event earlier than the previous one (which a per-CPU kernel
//! buffer never has) is preceded by an absolute time stamp (`type_len` 31),
//! when the decoder can rebuild it from the 59 bits that record holds.

use bytes::Bytes;

use super::page::{
    MAX_SMALL_TYPE_LEN, PageLayout, TIME_EXTEND, TIME_STAMP, TS_SHIFT, fix_absolute,
};

/// Bits of a time-extend or absolute record's value: 27 in the header, 32
/// in `array[0]`.
const STAMP_BITS: u32 = TS_SHIFT + 32;
/// Size of a record header word.
const WORD: usize = 4;

/// Why an event cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageBuildError {
    /// Even an empty page has no room for the event.
    #[error("an event of {len} payload bytes does not fit in a page with {room} bytes for records")]
    TooBig {
        /// Payload bytes.
        len: usize,
        /// Bytes for records in an empty page.
        room: usize,
    },
    /// The time stamp goes back (or jumps) further than a record can say.
    #[error("time stamp {ts} cannot follow {current} in a ring-buffer page")]
    Unrepresentable {
        /// The event's time stamp.
        ts: u64,
        /// The time stamp before it.
        current: u64,
    },
}

/// Builds one page at a time; [`PageBuilder::push`] says when the page is
/// full and [`PageBuilder::finish`] hands it out and starts the next.
#[derive(Debug, Clone)]
pub struct PageBuilder {
    layout: PageLayout,
    records: Vec<u8>,
    /// Time stamp of the page (its first event); `None` while empty.
    start: Option<u64>,
    /// Time stamp of the last event written.
    current: u64,
    events: usize,
}

impl PageBuilder {
    /// An empty page of `layout`.
    pub fn new(layout: PageLayout) -> Self {
        Self {
            layout,
            records: Vec::with_capacity(room(&layout)),
            start: None,
            current: 0,
            events: 0,
        }
    }

    /// Events in the page so far.
    pub fn len(&self) -> usize {
        self.events
    }

    /// True when the page holds no event.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Appends an event at time `ts` whose payload (common fields first) is
    /// `payload`. `Ok(false)` when the page is full: nothing was written;
    /// [`finish`](Self::finish) it and push again.
    pub fn push(&mut self, ts: u64, payload: &[u8]) -> Result<bool, PageBuildError> {
        let (stamp, delta) = match self.start {
            None => (None, 0),
            Some(_) => self.time_record(ts)?,
        };
        let event_len = event_len(payload.len());
        let need = event_len + stamp.map_or(0, |_| 2 * WORD);
        let room = room(&self.layout);
        if self.records.len() + need > room {
            if self.is_empty() {
                return Err(PageBuildError::TooBig {
                    len: payload.len(),
                    room,
                });
            }
            return Ok(false);
        }
        if let Some((type_len, value)) = stamp {
            self.word(type_len, (value & mask(TS_SHIFT)) as u32);
            self.records
                .extend_from_slice(&((value >> TS_SHIFT) as u32).to_le_bytes());
        }
        self.event(delta, payload);
        self.start.get_or_insert(ts);
        self.current = ts;
        self.events += 1;
        Ok(true)
    }

    /// How `ts` follows the last event: an optional time-extend or absolute
    /// record (`type_len`, value), and the delta the event itself carries.
    fn time_record(&self, ts: u64) -> Result<(Option<(u32, u64)>, u32), PageBuildError> {
        let unrepresentable = PageBuildError::Unrepresentable {
            ts,
            current: self.current,
        };
        match ts.checked_sub(self.current) {
            Some(delta) if delta <= mask(TS_SHIFT) => Ok((None, delta as u32)),
            Some(delta) if delta <= mask(STAMP_BITS) => Ok((Some((TIME_EXTEND, delta)), 0)),
            _ => {
                let abs = ts & mask(STAMP_BITS);
                if fix_absolute(abs, self.current) != ts {
                    return Err(unrepresentable);
                }
                Ok((Some((TIME_STAMP, abs)), 0))
            }
        }
    }

    fn word(&mut self, type_len: u32, delta: u32) {
        let header = type_len | (delta << 5);
        self.records.extend_from_slice(&header.to_le_bytes());
    }

    fn event(&mut self, delta: u32, payload: &[u8]) {
        let padded = padded_len(payload.len());
        let words = (padded / WORD) as u32;
        if (1..=MAX_SMALL_TYPE_LEN).contains(&words) {
            self.word(words, delta);
        } else {
            self.word(0, delta);
            let len = (padded + WORD) as u32;
            self.records.extend_from_slice(&len.to_le_bytes());
        }
        self.records.extend_from_slice(payload);
        self.records
            .resize(self.records.len() + padded - payload.len(), 0);
    }

    /// The page as `trace_pipe_raw` would hand it out, cut after its
    /// records; the builder starts a new, empty page.
    pub fn finish(&mut self) -> Bytes {
        let layout = &self.layout;
        let mut page = vec![0u8; layout.data_offset() + self.records.len()];
        let ts_at = layout.timestamp_offset();
        page[ts_at..ts_at + 8].copy_from_slice(&self.start.unwrap_or(0).to_le_bytes());
        let commit = self.records.len() as u64;
        let at = layout.commit_offset();
        match layout.long_size() {
            4 => page[at..at + 4].copy_from_slice(&(commit as u32).to_le_bytes()),
            _ => page[at..at + 8].copy_from_slice(&commit.to_le_bytes()),
        }
        page[layout.data_offset()..].copy_from_slice(&self.records);
        self.records.clear();
        self.start = None;
        self.events = 0;
        Bytes::from(page)
    }
}

/// Bytes for records in one page.
fn room(layout: &PageLayout) -> usize {
    layout.page_size().saturating_sub(layout.data_offset())
}

/// Payload bytes an event of `len` bytes takes in its record.
fn padded_len(len: usize) -> usize {
    match len.div_ceil(WORD) * WORD {
        // The kernel keeps records of 12 bytes (header + 8) out: a record
        // is 8 bytes (a time extend) or at least 16 (room for padding).
        8 => 12,
        padded => padded,
    }
}

/// Bytes an event record of `len` payload bytes takes.
fn event_len(len: usize) -> usize {
    let padded = padded_len(len);
    if (1..=MAX_SMALL_TYPE_LEN as usize).contains(&(padded / WORD)) {
        WORD + padded
    } else {
        2 * WORD + padded
    }
}

const fn mask(bits: u32) -> u64 {
    (1 << bits) - 1
}

#[cfg(test)]
#[path = "page_builder_tests.rs"]
mod tests;
