//! One journal record: an [`OffsetEvent`] with the boundary the session
//! placed it at, and its fixed little-endian encoding (see the module doc
//! of [`super`] for the table).

use crate::{
    clock::Clock,
    offsets::{EventKind, OffsetEvent, OffsetSource},
};

/// Where the epoch an event starts begins, as the session placed it. Host
/// TSCs are kept, not only ns: a restarted session's clock calibration
/// differs by a few ticks, and the restored history must be the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Boundary {
    /// Host TSC the new epoch starts at (the change, the vCPU's first entry
    /// after it, or the time the event was received when it carried none).
    pub start_tsc: u64,
    /// The same instant in `CLOCK_MONOTONIC` ns.
    pub start_ns: u64,
    /// Host TSC the previous epoch ended at, when known (last exit).
    pub prev_end_tsc: Option<u64>,
}

impl Boundary {
    /// The boundary of `event` received at host TSC `now`: its own epoch
    /// start when it carries one, else `now`.
    pub fn of(event: &OffsetEvent, clock: &Clock, now: u64) -> Self {
        let (start_tsc, start_ns) = match event.new_start_ns {
            Some(ns) => (clock.ns_to_tsc(ns), ns),
            None => (now, clock.tsc_to_ns(now)),
        };
        Self {
            start_tsc,
            start_ns,
            prev_end_tsc: event.old_end_ns.map(|ns| clock.ns_to_tsc(ns)),
        }
    }
}

/// One record of the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// The event as the kernel side reported it.
    pub event: OffsetEvent,
    /// Where the session placed it.
    pub boundary: Boundary,
}

/// Why a payload that passed its checksum does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter or longer than its fields say.
    #[error("record of {got} bytes, its fields need {need}")]
    Length {
        /// Bytes the fields need.
        need: usize,
        /// Bytes there are.
        got: usize,
    },
    /// A field holds a value no writer produces.
    #[error("record field {field} holds {value}")]
    Field {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// `comm` is not UTF-8.
    #[error("record comm is not UTF-8")]
    Comm,
}

/// Payload version this code writes and reads.
pub const RECORD_VERSION: u8 = 1;
/// Bytes of a payload before `comm`.
pub const FIXED_LEN: usize = 120;
/// Longest `comm` kept (the kernel's is 15 bytes; longer ones are cut).
pub const MAX_COMM: usize = 64;
/// Largest payload: what a frame length above this is refused by.
pub const MAX_PAYLOAD: usize = FIXED_LEN + MAX_COMM;

mod present {
    pub const VCPU: u16 = 1 << 0;
    pub const OFFSET: u16 = 1 << 1;
    pub const EFFECTIVE: u16 = 1 << 2;
    pub const RATIO: u16 = 1 << 3;
    pub const FRAC: u16 = 1 << 4;
    pub const SEQ: u16 = 1 << 5;
    pub const PREV: u16 = 1 << 6;
    pub const CHANGES: u16 = 1 << 7;
    pub const EPOCH_START: u16 = 1 << 8;
    pub const PREV_END: u16 = 1 << 9;
    pub const PREV_END_TSC: u16 = 1 << 10;
    pub const ALL: u16 = (1 << 11) - 1;
}

const FLAG_UNCERTAIN: u8 = 1;

fn kind_code(kind: EventKind) -> u8 {
    match kind {
        EventKind::Snapshot => 0,
        EventKind::Change => 1,
        EventKind::VcpuAdded => 2,
        EventKind::VmExit => 3,
        EventKind::Entry => 4,
    }
}

fn kind_of(code: u8) -> Option<EventKind> {
    Some(match code {
        0 => EventKind::Snapshot,
        1 => EventKind::Change,
        2 => EventKind::VcpuAdded,
        3 => EventKind::VmExit,
        4 => EventKind::Entry,
        _ => return None,
    })
}

fn source_code(source: Option<OffsetSource>) -> u8 {
    match source {
        None => 0,
        Some(OffsetSource::Tracepoint) => 1,
        Some(OffsetSource::Debugfs) => 2,
        Some(OffsetSource::Map) => 3,
        Some(OffsetSource::Btf) => 4,
    }
}

fn source_of(code: u8) -> Option<Option<OffsetSource>> {
    Some(match code {
        0 => None,
        1 => Some(OffsetSource::Tracepoint),
        2 => Some(OffsetSource::Debugfs),
        3 => Some(OffsetSource::Map),
        4 => Some(OffsetSource::Btf),
        _ => return None,
    })
}

/// The longest prefix of `comm` of at most [`MAX_COMM`] bytes that ends
/// on a character boundary.
fn comm_bytes(comm: &str) -> &[u8] {
    let mut end = comm.len().min(MAX_COMM);
    while !comm.is_char_boundary(end) {
        end -= 1;
    }
    &comm.as_bytes()[..end]
}

impl JournalRecord {
    /// Appends the payload to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let e = &self.event;
        let b = &self.boundary;
        let mut bits = 0;
        let mut opt = |bit: u16, v: Option<u64>| {
            if v.is_some() {
                bits |= bit;
            }
            v.unwrap_or(0)
        };
        let vcpu = opt(present::VCPU, e.vcpu.map(u64::from)) as u32;
        let offset = opt(present::OFFSET, e.offset.map(|v| v as u64));
        let effective = opt(present::EFFECTIVE, e.effective_offset.map(|v| v as u64));
        let ratio = opt(present::RATIO, e.ratio);
        let frac = opt(present::FRAC, e.frac_bits.map(u64::from)) as u32;
        let seq = opt(present::SEQ, e.seq);
        let prev = opt(present::PREV, e.prev.map(|v| v as u64));
        let changes = opt(present::CHANGES, e.changes);
        let epoch_start = opt(present::EPOCH_START, e.new_start_ns);
        let prev_end = opt(present::PREV_END, e.old_end_ns);
        let prev_end_tsc = opt(present::PREV_END_TSC, b.prev_end_tsc);
        let comm = comm_bytes(&e.comm);
        out.reserve(FIXED_LEN + comm.len());
        out.push(RECORD_VERSION);
        out.push(kind_code(e.event));
        out.extend_from_slice(&bits.to_le_bytes());
        out.push(source_code(e.source));
        out.push(if e.boundary_uncertain {
            FLAG_UNCERTAIN
        } else {
            0
        });
        out.extend_from_slice(&(comm.len() as u16).to_le_bytes());
        out.extend_from_slice(&e.pid.to_le_bytes());
        out.extend_from_slice(&vcpu.to_le_bytes());
        for v in [e.start_time, offset, effective, ratio] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&frac.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for v in [
            seq,
            prev,
            changes,
            epoch_start,
            prev_end,
            b.start_tsc,
            b.start_ns,
            prev_end_tsc,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(comm);
    }

    /// Decodes one payload. Every check happens before anything is
    /// allocated (the only allocation is `comm`, at most [`MAX_COMM`]
    /// bytes); absent fields must be zero, so a record has one encoding.
    pub fn decode(payload: &[u8]) -> Result<Self, RecordError> {
        let mut r = Fields::new(payload)?;
        let version = r.u8();
        if version != RECORD_VERSION {
            return Err(field("version", version.into()));
        }
        let kind_raw = r.u8();
        let kind = kind_of(kind_raw).ok_or(field("kind", kind_raw.into()))?;
        let bits = r.u16();
        if bits & !present::ALL != 0 {
            return Err(field("present", bits.into()));
        }
        let source_raw = r.u8();
        let source = source_of(source_raw).ok_or(field("source", source_raw.into()))?;
        let flags = r.u8();
        if flags & !FLAG_UNCERTAIN != 0 {
            return Err(field("flags", flags.into()));
        }
        let comm_len = usize::from(r.u16());
        if comm_len > MAX_COMM || payload.len() != FIXED_LEN + comm_len {
            return Err(RecordError::Length {
                need: FIXED_LEN + comm_len,
                got: payload.len(),
            });
        }
        let pid = r.u32();
        let vcpu = r.u32();
        let [start_time, offset, effective, ratio] = [r.u64(), r.u64(), r.u64(), r.u64()];
        let frac = r.u32();
        let reserved = r.u32();
        if reserved != 0 {
            return Err(field("reserved", reserved.into()));
        }
        let [seq, prev, changes, epoch_start, prev_end] =
            [r.u64(), r.u64(), r.u64(), r.u64(), r.u64()];
        let [start_tsc, start_ns, prev_end_tsc] = [r.u64(), r.u64(), r.u64()];
        let opt = |bit: u16, name: &'static str, v: u64| match (bits & bit != 0, v) {
            (true, v) => Ok(Some(v)),
            (false, 0) => Ok(None),
            (false, v) => Err(field(name, v)),
        };
        let comm = std::str::from_utf8(&payload[FIXED_LEN..]).map_err(|_| RecordError::Comm)?;
        let event = OffsetEvent {
            event: kind,
            pid,
            start_time,
            comm: comm.to_owned(),
            vcpu: opt(present::VCPU, "vcpu", vcpu.into())?.map(|v| v as u32),
            offset: opt(present::OFFSET, "offset", offset)?.map(|v| v as i64),
            effective_offset: opt(present::EFFECTIVE, "effective_offset", effective)?
                .map(|v| v as i64),
            ratio: opt(present::RATIO, "ratio", ratio)?,
            frac_bits: opt(present::FRAC, "frac_bits", frac.into())?.map(|v| v as u32),
            source,
            seq: opt(present::SEQ, "seq", seq)?,
            prev: opt(present::PREV, "prev", prev)?.map(|v| v as i64),
            changes: opt(present::CHANGES, "changes", changes)?,
            new_start_ns: opt(present::EPOCH_START, "new_start_ns", epoch_start)?,
            old_end_ns: opt(present::PREV_END, "old_end_ns", prev_end)?,
            boundary_uncertain: flags & FLAG_UNCERTAIN != 0,
        };
        let boundary = Boundary {
            start_tsc,
            start_ns,
            prev_end_tsc: opt(present::PREV_END_TSC, "prev_end_tsc", prev_end_tsc)?,
        };
        Ok(Self { event, boundary })
    }
}

fn field(field: &'static str, value: u64) -> RecordError {
    RecordError::Field { field, value }
}

/// Reads the fixed part, whose length was checked once up front.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Result<Self, RecordError> {
        if buf.len() < FIXED_LEN {
            return Err(RecordError::Length {
                need: FIXED_LEN,
                got: buf.len(),
            });
        }
        Ok(Self { buf, pos: 0 })
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        // In bounds: every read is within FIXED_LEN, checked in `new`.
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}
