//! One event in flight through the merge: where it came from, when it
//! happened in host time, and its record payload, shared with the page it
//! was read from.

use std::fmt;

use crate::Flags;

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
