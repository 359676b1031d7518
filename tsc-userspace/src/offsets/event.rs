//! Events the offset table emits: what `offsets --follow` prints.

use serde::Serialize;

use super::{OffsetSource, VmEntry};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A row of the table as it was when the session started.
    Snapshot,
    /// A known vCPU's offset changed.
    Change,
    /// A vCPU appeared (created, hot-plugged, or first seen).
    VcpuAdded,
    /// A VM's process exited; its rows are gone.
    VmExit,
    /// A known vCPU entered the guest for the first time after a change (or
    /// for the first time seen): its offset as the vCPU holds it, and where
    /// the new epoch starts (`kvm_entry`, BTF).
    Entry,
}

/// One event, flat, as printed in JSON (one object per line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OffsetEvent {
    /// What happened.
    pub event: EventKind,
    /// VMM process id.
    pub pid: u32,
    /// VMM start time (clock ticks since boot): with `pid`, the VM's identity.
    pub start_time: u64,
    /// VMM `comm`.
    pub comm: String,
    /// vCPU id (None for `vm-exit`).
    pub vcpu: Option<u32>,
    /// Offset KVM was asked to set (two's complement).
    pub offset: Option<i64>,
    /// Offset the guest sees, when it could be read back.
    pub effective_offset: Option<i64>,
    /// Scaling ratio (None without TSC scaling).
    pub ratio: Option<u64>,
    /// Fraction bits of `ratio`.
    pub frac_bits: Option<u32>,
    /// Where `offset` came from.
    pub source: Option<OffsetSource>,
    /// Kernel per-vCPU sequence number of the change (0: none seen).
    pub seq: Option<u64>,
    /// Offset before the change (for `change`).
    pub prev: Option<i64>,
    /// Changes this session has seen for the vCPU.
    pub changes: Option<u64>,
    /// CLOCK_MONOTONIC ns where the epoch this event starts begins: the
    /// change, or the vCPU's first entry after it when `kvm_entry` is followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_start_ns: Option<u64>,
    /// CLOCK_MONOTONIC ns where the previous epoch ended: the vCPU's last
    /// exit before the change when `kvm_exit` is followed, else the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_end_ns: Option<u64>,
    /// The epoch start is not exactly known: a change re-read from the
    /// kernel map after a ring-buffer overflow (the map keeps only the last
    /// change per vCPU and its kernel time, so changes before it were
    /// lost and the previous epoch's end is unknown), or a change found
    /// at a restart that happened while no session watched.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub boundary_uncertain: bool,
}

impl OffsetEvent {
    /// The same event, placed on the vCPU's epoch boundaries.
    pub fn with_boundary(mut self, edge: &super::boundary::Boundary) -> Self {
        self.new_start_ns = Some(edge.new_start_ns);
        self.old_end_ns = edge.old_end_ns;
        self
    }

    pub(super) fn of(event: EventKind, vm: &VmEntry, vcpu_id: u32) -> Self {
        let v = &vm.vcpus[&vcpu_id];
        Self {
            event,
            pid: vm.process.pid,
            start_time: vm.process.start_time,
            comm: vm.comm.clone(),
            vcpu: Some(vcpu_id),
            offset: Some(v.offset),
            effective_offset: v.effective_offset,
            ratio: v.scaling.map(|s| s.ratio),
            frac_bits: v.scaling.map(|s| s.frac_bits),
            source: Some(v.source),
            seq: Some(v.seq),
            prev: v.history.back().map(|c| c.prev),
            changes: Some(v.changes),
            new_start_ns: None,
            old_end_ns: None,
            boundary_uncertain: false,
        }
    }

    pub(super) fn vm_exit(vm: &VmEntry) -> Self {
        Self {
            event: EventKind::VmExit,
            pid: vm.process.pid,
            start_time: vm.process.start_time,
            comm: vm.comm.clone(),
            vcpu: None,
            offset: None,
            effective_offset: None,
            ratio: None,
            frac_bits: None,
            source: None,
            seq: None,
            prev: None,
            changes: None,
            new_start_ns: None,
            old_end_ns: None,
            boundary_uncertain: false,
        }
    }
}
