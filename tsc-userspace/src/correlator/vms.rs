//! Every VM's vCPU epoch timelines, kept current from the kernel side's
//! offset events.

use std::collections::{BTreeMap, HashMap};

use tsc_common::tsc::TscParams;

use super::bind::Candidate;
use crate::{
    clock::Clock,
    offsets::{EventKind, OffsetEvent, journal::Boundary},
    timeline::{OffsetChange, VcpuTimeline},
};

/// One VM as the session sees it.
#[derive(Debug)]
pub struct VmState {
    /// VMM `comm`.
    pub comm: String,
    /// VMM command line (vsock CIDs).
    pub cmdline: Vec<String>,
    /// Epochs per vCPU id.
    pub vcpus: BTreeMap<u32, VcpuTimeline>,
    /// The conversion each vCPU is in now.
    pub current: BTreeMap<u32, TscParams>,
    /// The hypervisor did not apply an offset KVM was asked for.
    pub not_applied: bool,
    /// The VMM exited (kept while its agents may still send).
    pub exited: bool,
}

/// All VMs by pid.
#[derive(Debug, Default)]
pub struct Vms {
    vms: HashMap<u32, VmState>,
}

impl Vms {
    /// The VM of `pid`.
    pub fn get(&self, pid: u32) -> Option<&VmState> {
        self.vms.get(&pid)
    }

    /// Applies one event of the offsets monitor, received at host TSC `now`
    /// (the boundary of a change that carries none); `cmdline` reads a new
    /// VMM's command line.
    pub fn apply(
        &mut self,
        event: &OffsetEvent,
        clock: &Clock,
        now: u64,
        cmdline: &dyn Fn(u32) -> Vec<String>,
    ) {
        self.apply_at(event, &Boundary::of(event, clock, now), cmdline);
    }

    /// Applies one event at the host TSCs of `boundary` (as a live event is
    /// placed, or as the journal recorded it). A snapshot row of a vCPU
    /// that already has epochs (restored from the journal) with other
    /// parameters than its latest is a change made while no session
    /// watched: it starts a new epoch at the boundary.
    pub fn apply_at(
        &mut self,
        event: &OffsetEvent,
        boundary: &Boundary,
        cmdline: &dyn Fn(u32) -> Vec<String>,
    ) {
        if event.event == EventKind::VmExit {
            if let Some(vm) = self.vms.get_mut(&event.pid) {
                vm.exited = true;
            }
            return;
        }
        let Some(vcpu) = event.vcpu else { return };
        let vm = self.vms.entry(event.pid).or_insert_with(|| VmState {
            comm: event.comm.clone(),
            cmdline: cmdline(event.pid),
            vcpus: BTreeMap::new(),
            current: BTreeMap::new(),
            not_applied: false,
            exited: false,
        });
        let Some(params) = params_in_force(event, vm, vcpu) else {
            return;
        };
        if let (Some(asked), Some(held)) = (event.offset, event.effective_offset) {
            vm.not_applied |= asked != held;
        }
        vm.current.insert(vcpu, params);
        let timeline = vm.vcpus.entry(vcpu).or_default();
        let change = OffsetChange {
            new_start: boundary.start_tsc,
            params,
            old_end: boundary.prev_end_tsc,
        };
        let result = match event.event {
            EventKind::Snapshot if timeline.latest().is_none() => {
                timeline.bootstrap(params).map(drop)
            }
            EventKind::Snapshot => timeline.offset_change(change).map(drop),
            EventKind::Entry if event.new_start_ns.is_some() => {
                timeline.first_entry(boundary.start_tsc, params).map(drop)
            }
            EventKind::Entry => Ok(()),
            _ => timeline.offset_change(change).map(drop),
        };
        if let Err(err) = result {
            tracing::debug!("vCPU {vcpu} of pid {}: {err}", event.pid);
        }
    }

    /// Drops the VMs that exited and no agent uses any more.
    pub fn reap(&mut self, in_use: impl Fn(u32) -> bool) {
        self.vms.retain(|pid, vm| !vm.exited || in_use(*pid));
    }

    /// What binding sees of every live VM.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.vms
            .iter()
            .filter(|(_, vm)| !vm.exited && !vm.current.is_empty())
            .map(|(&pid, vm)| Candidate {
                pid,
                comm: vm.comm.clone(),
                cmdline: vm.cmdline.clone(),
                vcpus: vm.current.iter().map(|(&v, &p)| (v, p)).collect(),
            })
            .collect()
    }
}

/// The conversion to use after `event`: the offset the vCPU holds when it
/// was read back; when it could not be (a later change superseded the
/// read-back), what it held before if this hypervisor is known not to apply
/// offsets, else what KVM was asked.
fn params_in_force(event: &OffsetEvent, vm: &VmState, vcpu: u32) -> Option<TscParams> {
    let offset = match (event.effective_offset, event.offset) {
        (Some(held), _) => held,
        (None, Some(asked)) if vm.not_applied => {
            vm.current.get(&vcpu).map_or(asked, |p| p.offset() as i64)
        }
        (None, Some(asked)) => asked,
        (None, None) => return None,
    };
    match (event.ratio, event.frac_bits) {
        (Some(ratio), Some(frac)) => TscParams::new(offset as u64, ratio, frac).ok(),
        _ => Some(TscParams::unscaled(offset as u64)),
    }
}
