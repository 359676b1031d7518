//! Assigning a guest event to an epoch (the rules are in the parent module).

use tsc_common::tsc::ConvertError;

use super::{Slot, TimelineError, VcpuTimeline};
use crate::flags::Flags;

/// Where one guest per-CPU stream is: owned by the caller, one per stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCursor {
    epoch: Option<u64>,
    last_host: u64,
}

impl StreamCursor {
    /// The epoch of the stream's last event that had a candidate.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Host TSC of that event.
    pub fn last_host(&self) -> u64 {
        self.last_host
    }

    fn advance(&mut self, epoch: u64, host: u64) -> Flags {
        let flags = if host < self.last_host && self.epoch.is_some() {
            Flags::BACKWARDS
        } else {
            Flags::NONE
        };
        self.epoch = Some(epoch);
        self.last_host = host;
        flags
    }
}

/// The epoch a guest event belongs to and its host TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Host TSC of the event.
    pub host: u64,
    /// Sequence of the epoch used.
    pub epoch: u64,
    /// How it was chosen.
    pub flags: Flags,
}

impl Slot {
    /// The first host TSC in this epoch reading `guest` (a slower-than-host
    /// guest TSC reads the same value on several host TSCs, the first of which
    /// may precede the epoch).
    #[inline]
    fn host_of(&self, guest: u64) -> Result<u64, ConvertError> {
        Ok(self.epoch.params.host_from_guest(guest)?.max(self.host_lo))
    }
}

impl VcpuTimeline {
    /// Assigns the guest event with TSC `guest` of the stream at `cursor` to
    /// an epoch and converts it; advances the cursor unless no epoch was a
    /// candidate (an outlier must not drag the stream along).
    pub fn assign(
        &self,
        cursor: &mut StreamCursor,
        guest: u64,
    ) -> Result<Assignment, TimelineError> {
        if let Some(done) = self.assign_cached(cursor, guest) {
            return Ok(done);
        }
        self.assign_scan(cursor, guest)
    }

    /// The O(1) path: the stream's epoch is the only candidate.
    #[inline]
    fn assign_cached(&self, cursor: &mut StreamCursor, guest: u64) -> Option<Assignment> {
        let slot = self.slot(cursor.epoch?)?;
        let k = slot.arc?.position(guest)?;
        if slot.shared.is_some_and(|s| s.contains(k)) {
            return None;
        }
        let host = slot.host_of(guest).ok()?;
        let flags = cursor.advance(slot.epoch.seq, host);
        Some(Assignment {
            host,
            epoch: slot.epoch.seq,
            flags,
        })
    }

    fn assign_scan(
        &self,
        cursor: &mut StreamCursor,
        guest: u64,
    ) -> Result<Assignment, TimelineError> {
        let from = cursor.epoch.unwrap_or(0);
        let mut count = 0usize;
        let mut in_order = None;
        let mut first_not_before = None;
        let mut last = None;
        for slot in &self.slots {
            if slot.arc.and_then(|a| a.position(guest)).is_none() {
                continue;
            }
            count += 1;
            last = Some(slot);
            if in_order.is_some() || slot.epoch.seq < from {
                continue;
            }
            let host = slot.host_of(guest)?;
            first_not_before.get_or_insert(slot);
            if host >= cursor.last_host {
                in_order = Some(slot);
            }
        }
        let (slot, flags) = match (count, last) {
            (0, _) | (_, None) => return self.nearest(guest),
            (1, Some(only)) => (only, Flags::NONE),
            (_, Some(last)) => {
                let chosen = in_order.or(first_not_before).unwrap_or(last);
                (chosen, Flags::RESOLVED_BY_ORDER)
            }
        };
        self.finish(cursor, slot, guest, flags)
    }

    fn finish(
        &self,
        cursor: &mut StreamCursor,
        slot: &Slot,
        guest: u64,
        flags: Flags,
    ) -> Result<Assignment, TimelineError> {
        let host = slot.host_of(guest)?;
        let flags = flags | cursor.advance(slot.epoch.seq, host);
        Ok(Assignment {
            host,
            epoch: slot.epoch.seq,
            flags,
        })
    }

    /// No candidate: the epoch whose host range is nearest the host TSC it
    /// converts the event to (ties to the earlier epoch).
    fn nearest(&self, guest: u64) -> Result<Assignment, TimelineError> {
        let mut best: Option<(u64, u64, u64)> = None;
        for slot in &self.slots {
            let Ok(host) = slot.epoch.params.host_from_guest(guest) else {
                continue;
            };
            let (lo, hi) = slot.epoch.host_range();
            if lo > hi {
                continue;
            }
            let distance = if host < lo {
                lo - host
            } else {
                host.saturating_sub(hi)
            };
            if best.is_none_or(|(d, _, _)| distance < d) {
                best = Some((distance, host, slot.epoch.seq));
            }
        }
        let (_, host, epoch) = best.ok_or(TimelineError::NoEpoch(guest))?;
        Ok(Assignment {
            host,
            epoch,
            flags: Flags::OUTSIDE_EPOCH,
        })
    }
}
