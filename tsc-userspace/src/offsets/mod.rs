//! The per-VM, per-vCPU TSC offset table, kept current from the kernel.
//!
//! [`OffsetMap`] is the model: pure, synchronous, unit-tested. It is fed by
//! [`monitor::Monitor`], which drives the eBPF ring buffer, debugfs
//! read-backs and process exits, and turns every change into an
//! [`OffsetEvent`].

pub mod boundary;
mod event;
pub mod journal;
pub mod monitor;

use std::collections::{BTreeMap, VecDeque};

pub use event::{EventKind, OffsetEvent};
use serde::Serialize;

use crate::{kvm::Scaling, process::ProcessId};

/// Where a value in the table came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OffsetSource {
    /// The `kvm:kvm_write_tsc_offset` tracepoint, through the ring buffer.
    Tracepoint,
    /// KVM's debugfs (`vcpuN/tsc-offset`), for VMs started before us and
    /// for read-backs of the effective offset.
    Debugfs,
    /// The kernel offsets map, re-read after the ring buffer overflowed.
    Map,
    /// `struct kvm_vcpu` itself, read by the `kvm_entry` program (BTF
    /// offsets): a vCPU discovered running, or its offset after a change.
    Btf,
}

/// One change of one vCPU's offset, as kept in its bounded history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Kernel per-vCPU sequence number (0 when unknown).
    pub seq: u64,
    /// Offset KVM was asked to set.
    pub offset: i64,
    /// Offset the tracepoint reported as previous.
    pub prev: i64,
    /// CLOCK_MONOTONIC ns when the kernel saw it (0 when unknown).
    pub ktime_ns: u64,
    /// Where the change was learned.
    pub source: OffsetSource,
}

/// What is known of one vCPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VcpuEntry {
    /// KVM vCPU id.
    pub vcpu_id: u32,
    /// The offset KVM was asked to set last.
    pub offset: i64,
    /// Where `offset` came from.
    pub source: OffsetSource,
    /// The offset the guest actually sees, when it could be read.
    pub effective_offset: Option<i64>,
    /// TSC scaling, when the host has it.
    pub scaling: Option<Scaling>,
    /// Kernel sequence number of the last change (0: none seen yet).
    pub seq: u64,
    /// Changes seen by this session.
    pub changes: u64,
    /// Last changes, oldest first, at most the map's history cap.
    pub history: VecDeque<Change>,
}

impl VcpuEntry {
    /// The offset to convert with: the effective one when known.
    pub fn offset_in_force(&self) -> i64 {
        self.effective_offset.unwrap_or(self.offset)
    }

    /// True when the read-back contradicts what KVM was asked.
    pub fn offset_not_applied(&self) -> bool {
        self.effective_offset.is_some_and(|e| e != self.offset)
    }
}

/// One VM: its VMM process and vCPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmEntry {
    /// The VMM process (pid plus start time).
    pub process: ProcessId,
    /// The VMM's `comm`.
    pub comm: String,
    /// vCPUs by id.
    pub vcpus: BTreeMap<u32, VcpuEntry>,
    /// Set once the "offset not applied" warning was given for this VM.
    #[serde(skip)]
    pub warned_not_applied: bool,
}

/// A change to apply, from whichever source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update {
    /// VMM process id.
    pub pid: u32,
    /// KVM vCPU id.
    pub vcpu_id: u32,
    /// The change itself.
    pub change: Change,
}

/// Every known VM by pid, with bounded per-vCPU history.
#[derive(Clone, Debug)]
pub struct OffsetMap {
    vms: BTreeMap<u32, VmEntry>,
    history_cap: usize,
}

/// Default number of changes kept per vCPU.
pub const DEFAULT_HISTORY: usize = 64;

impl Default for OffsetMap {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY)
    }
}

impl OffsetMap {
    /// An empty map keeping `history_cap` changes per vCPU (at least 1).
    pub fn new(history_cap: usize) -> Self {
        Self {
            vms: BTreeMap::new(),
            history_cap: history_cap.max(1),
        }
    }

    /// All VMs by pid.
    pub fn vms(&self) -> &BTreeMap<u32, VmEntry> {
        &self.vms
    }

    /// One vCPU, if known.
    pub fn vcpu(&self, pid: u32, vcpu_id: u32) -> Option<&VcpuEntry> {
        self.vms.get(&pid)?.vcpus.get(&vcpu_id)
    }

    /// Registers a VM (or finds it). When the pid is known under another start
    /// time the old VM exited unseen and is replaced; its exit event is returned.
    pub fn ensure_vm(&mut self, process: ProcessId, comm: &str) -> Option<OffsetEvent> {
        let stale = match self.vms.get(&process.pid) {
            Some(vm) if vm.process == process => return None,
            Some(_) => self.remove_vm(process.pid),
            None => None,
        };
        let vm = VmEntry {
            process,
            comm: comm.to_owned(),
            vcpus: BTreeMap::new(),
            warned_not_applied: false,
        };
        self.vms.insert(process.pid, vm);
        stale
    }

    /// Records a vCPU found in debugfs (a VM started before us, or one whose
    /// records were lost). Returns `vcpu-added` when it is new.
    pub fn bootstrap_vcpu(
        &mut self,
        pid: u32,
        vcpu_id: u32,
        offset: i64,
        scaling: Option<Scaling>,
    ) -> Option<OffsetEvent> {
        let vm = self.vms.get_mut(&pid)?;
        if vm.vcpus.contains_key(&vcpu_id) {
            return None;
        }
        let entry = VcpuEntry {
            vcpu_id,
            offset,
            source: OffsetSource::Debugfs,
            effective_offset: Some(offset),
            scaling,
            seq: 0,
            changes: 0,
            history: VecDeque::new(),
        };
        vm.vcpus.insert(vcpu_id, entry);
        Some(OffsetEvent::of(EventKind::VcpuAdded, vm, vcpu_id))
    }

    /// Applies a change. Stale changes (seq not newer than what is known, as
    /// when the map was re-read and the ring buffer then delivered the same
    /// change) are ignored. The VM must have been registered with `ensure_vm`.
    pub fn apply(&mut self, update: Update) -> Option<OffsetEvent> {
        let cap = self.history_cap;
        let vm = self.vms.get_mut(&update.pid)?;
        let change = update.change;
        let kind = match vm.vcpus.get_mut(&update.vcpu_id) {
            Some(v) if change.seq != 0 && change.seq <= v.seq => return None,
            Some(v) => {
                record(v, change, cap);
                EventKind::Change
            }
            None => {
                let mut v = VcpuEntry {
                    vcpu_id: update.vcpu_id,
                    offset: change.offset,
                    source: change.source,
                    effective_offset: None,
                    scaling: None,
                    seq: 0,
                    changes: 0,
                    history: VecDeque::new(),
                };
                record(&mut v, change, cap);
                vm.vcpus.insert(update.vcpu_id, v);
                EventKind::VcpuAdded
            }
        };
        Some(OffsetEvent::of(kind, vm, update.vcpu_id))
    }

    /// Stores the read-back of a vCPU's effective offset. Returns true when
    /// this is the first time the VM shows an offset that was not applied,
    /// so the caller warns once per VM.
    pub fn set_effective(
        &mut self,
        pid: u32,
        vcpu_id: u32,
        effective: i64,
        scaling: Option<Scaling>,
    ) -> bool {
        let Some(vm) = self.vms.get_mut(&pid) else {
            return false;
        };
        let Some(v) = vm.vcpus.get_mut(&vcpu_id) else {
            return false;
        };
        v.effective_offset = Some(effective);
        v.scaling = scaling;
        if v.offset_not_applied() && !vm.warned_not_applied {
            vm.warned_not_applied = true;
            return true;
        }
        false
    }

    /// A vCPU's first guest entry after a change (or first seen), holding
    /// `effective` (read from `struct kvm_vcpu`). A vCPU not known yet is
    /// discovered (`vcpu-added`, source btf); a known one gets the effective
    /// offset (`entry`). The flag is true the first time the VM shows an
    /// offset that was not applied, so the caller warns once per VM.
    pub fn entered(
        &mut self,
        pid: u32,
        vcpu_id: u32,
        effective: i64,
        scaling: Option<Scaling>,
    ) -> Option<(OffsetEvent, bool)> {
        let vm = self.vms.get_mut(&pid)?;
        if vm.vcpus.contains_key(&vcpu_id) {
            let warn = self.set_effective(pid, vcpu_id, effective, scaling);
            let vm = self.vms.get(&pid)?;
            return Some((OffsetEvent::of(EventKind::Entry, vm, vcpu_id), warn));
        }
        let entry = VcpuEntry {
            vcpu_id,
            offset: effective,
            source: OffsetSource::Btf,
            effective_offset: Some(effective),
            scaling,
            seq: 0,
            changes: 0,
            history: VecDeque::new(),
        };
        vm.vcpus.insert(vcpu_id, entry);
        Some((OffsetEvent::of(EventKind::VcpuAdded, vm, vcpu_id), false))
    }

    /// Removes a VM whose process exited.
    pub fn remove_vm(&mut self, pid: u32) -> Option<OffsetEvent> {
        let vm = self.vms.remove(&pid)?;
        Some(OffsetEvent::vm_exit(&vm))
    }

    /// Snapshot rows, one per known vCPU, by pid then vCPU id.
    pub fn snapshot(&self) -> Vec<OffsetEvent> {
        self.vms
            .values()
            .flat_map(|vm| {
                vm.vcpus
                    .keys()
                    .map(move |&id| OffsetEvent::of(EventKind::Snapshot, vm, id))
            })
            .collect()
    }
}

fn record(v: &mut VcpuEntry, change: Change, cap: usize) {
    v.offset = change.offset;
    v.source = change.source;
    v.seq = v.seq.max(change.seq);
    v.changes += 1;
    // The read-back belongs to the previous offset until it is redone.
    v.effective_offset = None;
    if v.history.len() == cap {
        v.history.pop_front();
    }
    v.history.push_back(change);
}

#[cfg(test)]
mod tests;
