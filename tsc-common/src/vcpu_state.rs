//! The per-vCPU state the kernel programs share, and every decision they take
//! on it, as plain functions: the eBPF programs call exactly these, and the
//! host tests exercise them.
//!
//! `kvm_write_tsc_offset` bumps `change_seq`; `kvm_exit` stores the exit time;
//! `kvm_entry` reports when `change_seq` moved since its last report or the
//! vCPU was never reported. Comparing sequences (instead of clearing a
//! "pending" flag) means a change racing with an entry is never lost: at
//! worst it is reported at the next entry as well.

/// Value of the vCPU-state map, keyed by [`VcpuKey`](crate::record::VcpuKey).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// Sequence of the last offset change seen (0: none).
    pub change_seq: u64,
    /// `change_seq` as of the last reported entry ([`VcpuState::NEVER`]:
    /// no entry reported yet). The entry program reports exactly when the
    /// two differ: one compare on the common path.
    pub reported_seq: u64,
    /// CLOCK_MONOTONIC ns of the last guest exit (0: none seen).
    pub last_exit_ns: u64,
}

/// What an entry must push: the decision, before the struct is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryReport {
    /// The change sequence the entry follows (0: none seen).
    pub seq: u64,
    /// The sequence reported before ([`VcpuState::NEVER`]: first entry seen).
    pub prev_reported: u64,
    /// Last exit before this entry (0: unknown).
    pub last_exit_ns: u64,
}

impl VcpuState {
    /// `reported_seq` of a vCPU none of whose entries was reported.
    pub const NEVER: u64 = u64::MAX;

    /// A vCPU met at its first entry, before that entry is reported.
    pub const UNSEEN: Self = Self {
        change_seq: 0,
        reported_seq: Self::NEVER,
        last_exit_ns: 0,
    };

    /// State of a vCPU first met at an offset change.
    #[inline(always)]
    pub const fn changed(seq: u64) -> Self {
        Self {
            change_seq: seq,
            ..Self::UNSEEN
        }
    }

    /// State of a vCPU first met at a guest exit.
    #[inline(always)]
    pub const fn exited(now_ns: u64) -> Self {
        Self {
            last_exit_ns: now_ns,
            ..Self::UNSEEN
        }
    }

    /// An offset change with sequence `seq`.
    #[inline(always)]
    pub fn on_change(&mut self, seq: u64) {
        self.change_seq = seq;
    }

    /// A guest exit at `now_ns`.
    #[inline(always)]
    pub fn on_exit(&mut self, now_ns: u64) {
        self.last_exit_ns = now_ns;
    }

    /// What a guest entry must report, `None` on the common path (the last
    /// change, or the vCPU's first entry, was reported already).
    #[inline(always)]
    pub fn entry(&self) -> Option<EntryReport> {
        if self.change_seq == self.reported_seq {
            return None;
        }
        Some(EntryReport {
            seq: self.change_seq,
            prev_reported: self.reported_seq,
            last_exit_ns: self.last_exit_ns,
        })
    }

    /// Marks `report` as done, after its record was pushed. Only the
    /// sequence the report carried is marked: a change that landed since is
    /// still reported at the next entry.
    #[inline(always)]
    pub fn mark_reported(&mut self, report: &EntryReport) {
        self.reported_seq = report.seq;
    }
}

/// Why an entry was reported ([`entry_reason`](crate::record::entry_reason)
/// bits), from what the record carries; userspace computes it so the kernel
/// program needs no branch for it.
pub const fn entry_reason(seq: u64, prev_reported: u64) -> u32 {
    use crate::record::entry_reason::{AFTER_CHANGE, FIRST_SEEN};
    let mut reason = 0;
    if prev_reported == VcpuState::NEVER {
        reason |= FIRST_SEEN;
    }
    if seq != 0 && seq != prev_reported {
        reason |= AFTER_CHANGE;
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::entry_reason::{AFTER_CHANGE, FIRST_SEEN};

    /// What the entry program does with one map slot; returns the reason.
    fn entry(slot: &mut Option<VcpuState>) -> Option<(u32, EntryReport)> {
        let state = slot.get_or_insert(VcpuState::UNSEEN);
        let report = state.entry()?;
        state.mark_reported(&report);
        Some((entry_reason(report.seq, report.prev_reported), report))
    }

    fn exit(slot: &mut Option<VcpuState>, now: u64) {
        match slot {
            Some(state) => state.on_exit(now),
            None => *slot = Some(VcpuState::exited(now)),
        }
    }

    fn change(slot: &mut Option<VcpuState>, seq: u64) {
        match slot {
            Some(state) => state.on_change(seq),
            None => *slot = Some(VcpuState::changed(seq)),
        }
    }

    #[test]
    fn never_seen_vcpu_reports_once_then_stays_quiet() {
        let mut slot = None;
        let (reason, first) = entry(&mut slot).unwrap();
        assert_eq!((reason, first.seq, first.last_exit_ns), (FIRST_SEEN, 0, 0));
        exit(&mut slot, 20);
        assert_eq!(entry(&mut slot), None);
        exit(&mut slot, 40);
        assert_eq!(entry(&mut slot), None);
    }

    #[test]
    fn vcpu_met_at_exit_reports_first_entry_with_that_exit() {
        let mut slot = None;
        exit(&mut slot, 7);
        let (reason, report) = entry(&mut slot).unwrap();
        assert_eq!((reason, report.last_exit_ns), (FIRST_SEEN, 7));
        assert_eq!(entry(&mut slot), None);
    }

    #[test]
    fn change_is_reported_at_the_next_entry_only() {
        let mut slot = None;
        change(&mut slot, 1); // KVM_CREATE_VCPU
        let (reason, created) = entry(&mut slot).unwrap();
        assert_eq!((reason, created.seq), (FIRST_SEEN | AFTER_CHANGE, 1));
        exit(&mut slot, 100);
        change(&mut slot, 2);
        let (reason, report) = entry(&mut slot).unwrap();
        assert_eq!(
            (reason, report.seq, report.last_exit_ns),
            (AFTER_CHANGE, 2, 100)
        );
        exit(&mut slot, 160);
        assert_eq!(entry(&mut slot), None);
    }

    #[test]
    fn several_changes_between_entries_give_one_report_of_the_last() {
        let mut slot = None;
        assert!(entry(&mut slot).is_some());
        exit(&mut slot, 10);
        change(&mut slot, 1);
        change(&mut slot, 2);
        change(&mut slot, 3);
        let (reason, report) = entry(&mut slot).unwrap();
        assert_eq!(
            (reason, report.seq, report.last_exit_ns),
            (AFTER_CHANGE, 3, 10)
        );
        assert_eq!(entry(&mut slot), None);
    }

    #[test]
    fn change_racing_an_entry_is_reported_at_the_following_entry() {
        // The entry decided on seq 1, then a change landed before it marked
        // the report: the mark must not swallow seq 2.
        let mut state = VcpuState::changed(1);
        let report = state.entry().unwrap();
        state.on_change(2);
        state.mark_reported(&report);
        let next = state.entry().unwrap();
        assert_eq!(entry_reason(next.seq, next.prev_reported), AFTER_CHANGE);
        assert_eq!(next.seq, 2);
    }
}
