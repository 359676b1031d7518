//! Per-vCPU epoch history, and which epoch (so which host TSC) a guest
//! timestamp belongs to.
//!
//! An epoch is a stretch of host time during which one vCPU's TSC offset and
//! ratio did not change. A new offset takes effect at the vCPU's next guest
//! entry; the old one ended at its last exit. So an offset change recorded
//! at host TSC `t` ends the previous epoch at `t` (or at the last exit before
//! it, when known) and starts the next one at `t` (or at the first entry
//! after it, when known). Host ranges are half-open: `host_start <=
//! h < host_end`.
//!
//! A guest event with guest TSC `g` can only have happened while its vCPU ran
//! the guest, so an epoch is a *candidate* for it when a host TSC inside the
//! epoch reads as `g` under the epoch's parameters (for a guest TSC running
//! faster than the host's, `g` may also fall between two consecutive
//! readings inside the epoch: [`TscParams::host_from_guest`] rounds it up).
//! The event's host TSC is then the first such host TSC in the epoch. Each
//! guest per-CPU stream is in order, and keeps a [`StreamCursor`]:
//! - exactly one candidate: it is the answer;
//! - several (the guest wrote its TSC backwards): the earliest candidate not
//!   before the stream's current epoch whose host TSC is not before the
//!   stream's last event, flagged [`Flags::RESOLVED_BY_ORDER`](crate::Flags::RESOLVED_BY_ORDER);
//! - none: the epoch whose host range is nearest, flagged
//!   [`Flags::OUTSIDE_EPOCH`](crate::Flags::OUTSIDE_EPOCH). Events are never dropped.
//!
//! An unknown start or end is bounded by [`HORIZON`]: host TSCs more than
//! that far from the known end are not candidates (a guest TSC written far
//! backwards would otherwise "convert" to a host TSC centuries ahead).
//!
//! Lookup is O(1) when the stream stays in its epoch and the guest TSC is
//! outside the part of that epoch another epoch also explains: each epoch
//! keeps the set of guest TSCs it explains (`arc`) and a span covering
//! its overlaps with all others, so the test is two compares and the
//! conversion. Otherwise it scans the kept history (bounded, oldest dropped
//! and counted).

mod arc;
mod assign;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, num::NonZeroUsize};

use arc::{GuestArc, Span};
pub use assign::{Assignment, StreamCursor};
use tsc_common::tsc::{ConvertError, TscParams};

/// How far (in host TSC ticks) an epoch with an unknown start or end is taken
/// to reach: 2^62 ticks, decades at any real TSC frequency.
pub const HORIZON: u64 = 1 << 62;

/// Errors building a timeline or assigning an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimelineError {
    /// A change or entry at a host TSC before the start of the latest epoch.
    #[error("host TSC {at} is before the start of the latest epoch ({start})")]
    OutOfOrder {
        /// The host TSC of the change or entry.
        at: u64,
        /// The start of the latest epoch.
        start: u64,
    },
    /// [`VcpuTimeline::bootstrap`] on a timeline that already has epochs.
    #[error("the timeline already has epochs; bootstrap only starts an empty one")]
    NotEmpty,
    /// No epoch can convert the guest TSC (or there are no epochs).
    #[error("no epoch of this vCPU converts guest TSC {0}")]
    NoEpoch(u64),
    /// A conversion overflowed where the arithmetic says it cannot.
    #[error("conversion failed: {0}")]
    Convert(#[from] ConvertError),
}

/// One epoch of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    /// Sequence number in this vCPU's history, from 0; never reused.
    pub seq: u64,
    /// Offset and scaling in force.
    pub params: TscParams,
    /// First host TSC of the epoch, when known.
    pub host_start: Option<u64>,
    /// Host TSC the epoch ended at (exclusive), `None` while it lasts.
    pub host_end: Option<u64>,
}

impl Epoch {
    /// Inclusive host range used for candidacy, unknown bounds taken [`HORIZON`] wide.
    fn host_range(&self) -> (u64, u64) {
        let hi = match (self.host_start, self.host_end) {
            (_, Some(0)) => return (1, 0),
            (_, Some(end)) => end - 1,
            (Some(start), None) => start.saturating_add(HORIZON),
            (None, None) => u64::MAX,
        };
        let lo = match (self.host_start, self.host_end) {
            (Some(start), _) => start,
            (None, Some(_)) => hi.saturating_sub(HORIZON),
            (None, None) => 0,
        };
        (lo, hi)
    }
}

/// An offset change of one vCPU, as the kernel side reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetChange {
    /// Host TSC when the change was made.
    pub new_start: u64,
    /// The parameters in force from the vCPU's next entry.
    pub params: TscParams,
    /// Host TSC of the vCPU's last exit before the change, when known.
    pub old_end: Option<u64>,
}

/// What [`VcpuTimeline::first_entry`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The entry's parameters are the latest epoch's (its start was refined).
    Matched(u64),
    /// They differ: a change was missed, a new epoch starts at the entry.
    MissedChange(u64),
}

/// An epoch plus what makes lookups fast.
#[derive(Clone, Debug)]
struct Slot {
    epoch: Epoch,
    /// Guest TSCs this epoch explains.
    arc: Option<GuestArc>,
    /// Positions in `arc` some other epoch may also explain.
    shared: Option<Span>,
    /// First host TSC of the range `arc` was computed from.
    host_lo: u64,
    /// The start is a guest entry, not the change (nothing will refine it).
    start_is_entry: bool,
}

/// The epoch history of one vCPU, bounded to a number of epochs.
#[derive(Clone, Debug)]
pub struct VcpuTimeline {
    slots: VecDeque<Slot>,
    next_seq: u64,
    cap: NonZeroUsize,
    dropped: u64,
}

impl Default for VcpuTimeline {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAP)
    }
}

impl VcpuTimeline {
    /// Epochs kept per vCPU unless configured otherwise.
    pub const DEFAULT_CAP: NonZeroUsize = NonZeroUsize::new(256).unwrap();

    /// An empty history keeping at most `cap` epochs.
    pub fn new(cap: NonZeroUsize) -> Self {
        Self {
            slots: VecDeque::with_capacity(cap.get()),
            next_seq: 0,
            cap,
            dropped: 0,
        }
    }

    /// Starts the history with parameters already in force since an unknown
    /// time (a vCPU found running, e.g. from debugfs). Returns its sequence.
    pub fn bootstrap(&mut self, params: TscParams) -> Result<u64, TimelineError> {
        if !self.slots.is_empty() {
            return Err(TimelineError::NotEmpty);
        }
        Ok(self.push(params, None, false))
    }

    /// Records an offset change; returns the sequence of the epoch it starts
    /// (the latest one unchanged when KVM rewrote the same parameters).
    pub fn offset_change(&mut self, change: OffsetChange) -> Result<u64, TimelineError> {
        let Some(latest) = self.slots.back() else {
            return Ok(self.push(change.params, Some(change.new_start), false));
        };
        self.check_order(change.new_start)?;
        if latest.epoch.params.same_conversion(&change.params) {
            return Ok(latest.epoch.seq);
        }
        let end = match change.old_end {
            Some(exit) if exit <= change.new_start => exit,
            _ => change.new_start,
        };
        self.close_latest(end);
        Ok(self.push(change.params, Some(change.new_start), false))
    }

    /// Records the vCPU's first guest entry after a change (or the first one
    /// seen at all) with the parameters it entered with.
    pub fn first_entry(&mut self, at: u64, params: TscParams) -> Result<Entry, TimelineError> {
        let Some(latest) = self.slots.back_mut() else {
            return Ok(Entry::MissedChange(self.push(params, None, false)));
        };
        if !latest.epoch.params.same_conversion(&params) {
            self.check_order(at)?;
            self.close_latest(at);
            return Ok(Entry::MissedChange(self.push(params, Some(at), true)));
        }
        let seq = latest.epoch.seq;
        match latest.epoch.host_start {
            Some(start) if !latest.start_is_entry => {
                if at < start {
                    return Err(TimelineError::OutOfOrder { at, start });
                }
                latest.epoch.host_start = Some(at);
                latest.start_is_entry = true;
                self.reshape_latest(false);
            }
            _ => {}
        }
        Ok(Entry::Matched(seq))
    }

    /// The kept epochs, oldest first.
    pub fn epochs(&self) -> impl ExactSizeIterator<Item = &Epoch> {
        self.slots.iter().map(|s| &s.epoch)
    }

    /// The epoch with sequence `seq`, if still kept.
    pub fn epoch(&self, seq: u64) -> Option<&Epoch> {
        self.slot(seq).map(|s| &s.epoch)
    }

    /// The most recent epoch.
    pub fn latest(&self) -> Option<&Epoch> {
        self.slots.back().map(|s| &s.epoch)
    }

    /// How many epochs were dropped to keep the history bounded.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn slot(&self, seq: u64) -> Option<&Slot> {
        // Sequences are contiguous from the front: O(1).
        let front = self.slots.front()?.epoch.seq;
        let index = usize::try_from(seq.checked_sub(front)?).ok()?;
        self.slots.get(index)
    }

    fn check_order(&self, at: u64) -> Result<(), TimelineError> {
        match self.slots.back().and_then(|s| s.epoch.host_start) {
            Some(start) if at < start => Err(TimelineError::OutOfOrder { at, start }),
            _ => Ok(()),
        }
    }

    fn close_latest(&mut self, end: u64) {
        if let Some(latest) = self.slots.back_mut() {
            let end = latest.epoch.host_end.map_or(end, |e| e.min(end));
            latest.epoch.host_end = Some(end);
        }
    }

    fn push(&mut self, params: TscParams, host_start: Option<u64>, start_is_entry: bool) -> u64 {
        if self.slots.len() == self.cap.get() {
            self.slots.pop_front();
            self.dropped += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.push_back(Slot {
            epoch: Epoch {
                seq,
                params,
                host_start,
                host_end: None,
            },
            arc: None,
            shared: None,
            host_lo: 0,
            start_is_entry,
        });
        self.reshape_latest(true);
        seq
    }

    /// Recomputes the arcs of the last one or two epochs (those a change
    /// touches) and their overlaps exactly. Older epochs' overlap spans only
    /// grow to cover the new arcs: a span covering an arc that has since
    /// shrunk is still a correct (if cautious) span.
    fn reshape_latest(&mut self, with_previous: bool) {
        let len = self.slots.len();
        let touched = if with_previous && len >= 2 {
            len - 2
        } else {
            len.saturating_sub(1)
        };
        for slot in self.slots.range_mut(touched..) {
            let (lo, hi) = slot.epoch.host_range();
            slot.arc = GuestArc::of(&slot.epoch.params, lo, hi);
            slot.host_lo = lo;
        }
        for i in 0..len {
            let Some(arc) = self.slots[i].arc else {
                self.slots[i].shared = None;
                continue;
            };
            let others = if i >= touched { 0..len } else { touched..len };
            let spans = others
                .filter(|&j| j != i)
                .map(|j| self.slots[j].arc.and_then(|other| arc.overlap(&other)));
            let shared = if i >= touched {
                Span::cover_all(spans)
            } else {
                Span::cover_all(spans.chain([self.slots[i].shared]))
            };
            self.slots[i].shared = shared;
        }
    }
}
