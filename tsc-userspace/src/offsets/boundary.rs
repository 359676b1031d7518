//! Ring-buffer records, and the epoch boundaries they mark.
//!
//! A vCPU's epoch is a stretch of host time with one offset and ratio. A
//! new offset takes effect at the vCPU's next guest entry; the old one
//! ended at its last exit. The kernel side reports both ends:
//! - `kvm_write_tsc_offset` ([`Record::Write`]): the change, with the time of
//!   the vCPU's last exit before it when `kvm_exit` is followed;
//! - `kvm_entry` ([`Record::Entry`]): the first entry after the change (or
//!   the first entry ever seen), with the offset and ratio the vCPU holds.
//!
//! [`BoundaryRecord`] is what one record says, in CLOCK_MONOTONIC ns, shaped
//! after the epoch timeline's inputs (an offset change with an optional last
//! exit; a first entry with the parameters in force), so feeding a timeline
//! is a clock conversion away. [`BoundaryTracker`] pairs them per vCPU into the
//! boundary between two epochs, refined when the entry arrives.

use std::collections::BTreeMap;

use serde::Serialize;
use tsc_common::record::{EntryRecord, OffsetRecord, VcpuKey, entry_reason, kind};

use crate::kvm::Scaling;

/// One record of the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// `kvm_write_tsc_offset` fired.
    Write(OffsetRecord),
    /// `kvm_entry`: first entry after a change, or first seen.
    Entry(EntryRecord),
}

impl Record {
    /// Copies a record out of the ring buffer (its alignment is not
    /// guaranteed). None for an unknown kind or a size that does not match it.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let kind = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
        match kind {
            kind::WRITE_TSC_OFFSET => read::<OffsetRecord>(bytes).map(Self::Write),
            kind::ENTRY_AFTER_CHANGE => read::<EntryRecord>(bytes).map(Self::Entry),
            _ => None,
        }
    }

    /// The vCPU it is about.
    pub fn key(&self) -> VcpuKey {
        let (tgid, vcpu_id) = match self {
            Self::Write(r) => (r.tgid, r.vcpu_id),
            Self::Entry(r) => (r.tgid, r.vcpu_id),
        };
        VcpuKey { tgid, vcpu_id }
    }

    /// The epoch boundary it marks.
    pub fn boundary(&self) -> BoundaryRecord {
        match *self {
            Self::Write(r) => BoundaryRecord::Change {
                seq: r.seq,
                at_ns: r.ktime_ns,
                last_exit_ns: known(r.last_exit_ns),
                offset: r.next as i64,
            },
            Self::Entry(r) => BoundaryRecord::Entry {
                seq: r.seq,
                at_ns: r.entry_ns,
                last_exit_ns: known(r.last_exit_ns),
                offset: r.l1_tsc_offset as i64,
                ratio: r.l1_tsc_scaling_ratio,
                first_seen: r.reason() & entry_reason::FIRST_SEEN != 0,
            },
        }
    }
}

/// A plain-old-data record from possibly unaligned bytes of exactly its size.
fn read<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != size_of::<T>() {
        return None;
    }
    // SAFETY: the size matches, T is plain old data (any bytes are a valid
    // value), and read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The kernel's 0 for "no exit seen".
fn known(ns: u64) -> Option<u64> {
    (ns != 0).then_some(ns)
}

/// What one record says about a vCPU's epochs (times in CLOCK_MONOTONIC ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "boundary", rename_all = "kebab-case")]
pub enum BoundaryRecord {
    /// The offset was changed at `at_ns`: the epoch in force ends at the
    /// vCPU's last exit before it (`last_exit_ns`, when known) or else at
    /// the change; the next begins no earlier than the change.
    Change {
        /// Kernel per-vCPU change sequence.
        seq: u64,
        /// When the change was made.
        at_ns: u64,
        /// The vCPU's last exit before the change, when `kvm_exit` is followed.
        last_exit_ns: Option<u64>,
        /// The offset KVM was asked for.
        offset: i64,
    },
    /// The vCPU entered the guest at `at_ns` for the first time since change
    /// `seq` (or for the first time seen): the epoch starts here, with the
    /// offset and ratio the vCPU holds.
    Entry {
        /// The change the entry follows (0: none seen).
        seq: u64,
        /// When the vCPU entered.
        at_ns: u64,
        /// Its last exit before (the end of the previous epoch), when seen.
        last_exit_ns: Option<u64>,
        /// `arch.l1_tsc_offset`: the offset the guest sees.
        offset: i64,
        /// `arch.l1_tsc_scaling_ratio`, raw.
        ratio: u64,
        /// No entry of this vCPU was seen before.
        first_seen: bool,
    },
}

/// The raw ratio as [`Scaling`], when the host scales TSCs (`frac_bits`
/// known) and this ratio actually scales.
pub fn scaling(ratio: u64, frac_bits: Option<u32>) -> Option<Scaling> {
    let frac_bits = frac_bits?;
    let unity = 1u64.checked_shl(frac_bits)?;
    (ratio != unity && ratio != 0).then_some(Scaling { ratio, frac_bits })
}

/// The boundary between two epochs of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Boundary {
    /// The change sequence that starts the new epoch (0: vCPU discovered).
    pub seq: u64,
    /// Where the old epoch ends (exclusive), None for a vCPU discovered at
    /// its first entry with nothing known before.
    pub old_end_ns: Option<u64>,
    /// Where the new epoch starts.
    pub new_start_ns: u64,
    /// The offset KVM was asked for, when the change was seen.
    pub requested: Option<i64>,
    /// The offset the vCPU holds (from `struct kvm_vcpu`), once it entered.
    pub effective: Option<i64>,
    /// The raw scaling ratio the vCPU holds, once it entered.
    pub ratio: Option<u64>,
    /// True once both ends are exact: the last exit and the first entry.
    pub exact: bool,
}

/// Pairs each vCPU's change with its first entry after it.
#[derive(Clone, Debug, Default)]
pub struct BoundaryTracker {
    /// The last edge of each vCPU, awaiting refinement by an entry.
    pending: BTreeMap<VcpuKey, Boundary>,
}

impl BoundaryTracker {
    /// Applies one record; returns the edge it creates or refines.
    pub fn apply(&mut self, key: VcpuKey, boundary: &BoundaryRecord) -> Boundary {
        let edge = match *boundary {
            BoundaryRecord::Change {
                seq,
                at_ns,
                last_exit_ns,
                offset,
            } => Boundary {
                seq,
                old_end_ns: Some(last_exit_ns.filter(|&e| e <= at_ns).unwrap_or(at_ns)),
                new_start_ns: at_ns,
                requested: Some(offset),
                effective: None,
                ratio: None,
                exact: false,
            },
            BoundaryRecord::Entry {
                seq,
                at_ns,
                last_exit_ns,
                offset,
                ratio,
                first_seen: _,
            } => {
                let change = self.pending.get(&key).filter(|e| e.seq == seq && seq != 0);
                let old_end_ns = match (change, last_exit_ns) {
                    (_, Some(exit)) => Some(exit),
                    (Some(change), None) => change.old_end_ns,
                    (None, None) => None,
                };
                Boundary {
                    seq,
                    old_end_ns,
                    new_start_ns: at_ns,
                    requested: change.and_then(|c| c.requested),
                    effective: Some(offset),
                    ratio: Some(ratio),
                    // The start is the entry itself; the end is exact when it
                    // is the last exit, or when there is no old epoch at all.
                    exact: last_exit_ns.is_some() || old_end_ns.is_none(),
                }
            }
        };
        self.pending.insert(key, edge);
        edge
    }

    /// Forgets a VM's vCPUs (its process exited).
    pub fn forget(&mut self, tgid: u32) {
        self.pending.retain(|key, _| key.tgid != tgid);
    }
}

#[cfg(test)]
mod tests;
