//! One event in flight through the merge: where it came from, when it
//! happened in host time, and its record payload, shared with the page it
//! was read from.

use std::fmt;

use bytes::Bytes;

/// Identifies a source (the host, or one guest agent) for the session's
/// lifetime. Never reused, so a stale item can never be attributed to a
/// source added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u32);

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What is known to be uncertain or unusual about an event's place on the
/// timeline. A small bitset; [`Flags::names`] lists the set ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flags.
    pub const NONE: Self = Self(0);
    /// Several epochs could explain the guest timestamp; the stream's order
    /// chose one.
    pub const RESOLVED_BY_ORDER: Self = Self(1 << 0);
    /// No known epoch explains the guest timestamp.
    pub const OUTSIDE_EPOCH: Self = Self(1 << 1);
    /// The offset KVM was asked for is not the one the guest sees (PVM);
    /// the effective one was used.
    pub const OFFSET_NOT_APPLIED: Self = Self(1 << 2);
    /// Arrived after later events had been written: out of order.
    pub const LATE: Self = Self(1 << 3);

    /// Every flag with its name, in the order they are printed.
    const NAMED: [(Self, &'static str); 4] = [
        (Self::RESOLVED_BY_ORDER, "resolved-by-order"),
        (Self::OUTSIDE_EPOCH, "outside-epoch"),
        (Self::OFFSET_NOT_APPLIED, "offset-not-applied"),
        (Self::LATE, "late"),
    ];

    /// True when every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// The names of the set flags (`"late"`, ...), in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMED
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, name)| name)
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// An event's record payload (from `common_type` on), sharing the page it
/// was read from: making one is a reference-count bump, not a copy.
///
/// It is a [`Bytes`] view into the page rather than `(page, start, len)`:
/// `Bytes` already is a pointer and length into shared storage, so the
/// view costs nothing more and the item stays 8 bytes smaller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventData(Bytes);

impl EventData {
    /// The payload `record`, which must lie inside `page` (as the records
    /// [`Page::events`](crate::tracefs::Page::events) yields do). `None`
    /// when it does not.
    pub fn from_page(page: &Bytes, record: &[u8]) -> Option<Self> {
        let base = page.as_ptr() as usize;
        let start = (record.as_ptr() as usize).checked_sub(base)?;
        let end = start.checked_add(record.len())?;
        // Checked first: `Bytes::slice_ref` panics on a foreign slice.
        (end <= page.len()).then(|| Self(page.slice(start..end)))
    }

    /// A payload of its own (tests, synthetic events).
    pub fn from_bytes(payload: Bytes) -> Self {
        Self(payload)
    }

    /// The record payload.
    pub fn payload(&self) -> &[u8] {
        &self.0
    }
}

/// One event in flight: everything the merge and the writers need, with the
/// fields left undecoded until written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeItem {
    /// When it happened, in host TSC ticks: the merge key.
    pub host_tsc: u64,
    /// Where it came from.
    pub source: SourceId,
    /// The CPU it was recorded on: a host CPU, or a guest CPU for a guest.
    pub cpu: u32,
    /// The vCPU the guest CPU runs on (guests only, when known).
    pub vcpu: Option<u32>,
    /// The guest's own timestamp (guests only).
    pub guest_tsc: Option<u64>,
    /// The vCPU epoch used to convert `guest_tsc` (guests only, when known).
    pub epoch: Option<u64>,
    /// What is uncertain about its place.
    pub flags: Flags,
    /// The record payload.
    pub data: EventData,
}

impl MergeItem {
    /// A host event recorded on `cpu` at `host_tsc`.
    pub fn host(source: SourceId, cpu: u32, host_tsc: u64, data: EventData) -> Self {
        Self {
            host_tsc,
            source,
            cpu,
            vcpu: None,
            guest_tsc: None,
            epoch: None,
            flags: Flags::NONE,
            data,
        }
    }
}
