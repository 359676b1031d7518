//! Counting what the correlator does, for the session's status line and
//! its summary at the end.

use serde::Serialize;

use crate::merge::Merger;

/// What a session did, reported at exit.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Guest events converted.
    pub guest_events: u64,
    /// Host events read.
    pub host_events: u64,
    /// Events guests' kernels reported lost.
    pub guest_lost: u64,
    /// Events the host's ring buffer lost.
    pub host_lost: u64,
    /// Events written in order.
    pub emitted: u64,
    /// Events written out of order (flagged `late`).
    pub late: u64,
    /// Events written when the window expired rather than when all streams
    /// had caught up.
    pub forced: u64,
    /// Events written early because too many were held.
    pub overflowed: u64,
    /// The session stopped because the reader of its output went away.
    pub output_closed: bool,
}

/// What the correlator has taken in so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Guest events converted.
    pub guest_events: u64,
    /// Host events read.
    pub host_events: u64,
    /// Events guests' kernels reported lost.
    pub guest_lost: u64,
    /// Events the host's ring buffer lost.
    pub host_lost: u64,
}

impl Summary {
    /// The summary of `counts` and what the merge did.
    pub(super) fn new(counts: &Counts, merger: &Merger) -> Self {
        let s = merger.stats().total;
        Self {
            guest_events: counts.guest_events,
            host_events: counts.host_events,
            guest_lost: counts.guest_lost,
            host_lost: counts.host_lost,
            emitted: s.emitted,
            late: s.late,
            forced: s.forced,
            overflowed: s.overflowed,
            output_closed: false,
        }
    }
}
