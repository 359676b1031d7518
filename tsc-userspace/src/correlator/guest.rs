//! One connected guest: its agent's binding, its CPUs' vCPUs, and where
//! each CPU's stream is in its vCPU's epochs.

use std::{collections::HashMap, io};

use tsc_common::tsc::TscParams;

use super::{bind::Binding, vms::VmState};
use crate::{
    Flags,
    ingest::EventPage,
    merge::{EventData, MergeItem, SourceId, Sources},
    timeline::{self, StreamCursor},
    wire::Hello,
};

/// A connected guest, bound to its VM.
pub(super) struct Guest {
    /// Its merge source.
    pub(super) source: SourceId,
    /// Its VM.
    pub(super) binding: Binding,
    /// Guest CPU -> vCPU id (the CPU's APIC id: KVM's x86 vcpu_id).
    vcpu_of: HashMap<u32, u32>,
    /// Each guest CPU stream's place in its vCPU's epochs.
    cursors: HashMap<u32, StreamCursor>,
}

impl Guest {
    pub(super) fn new(source: SourceId, binding: Binding, hello: &Hello) -> Self {
        Self {
            source,
            binding,
            vcpu_of: hello.cpus.iter().map(|c| (c.cpu, c.apic_id)).collect(),
            cursors: HashMap::new(),
        }
    }

    /// Host TSC of guest TSC `guest` on each of the agent's CPUs, with each
    /// vCPU's current conversion.
    pub(super) fn hosts_of<'a>(
        &'a self,
        vm: &'a VmState,
        guest: u64,
    ) -> impl Iterator<Item = (u32, u64)> + 'a {
        self.vcpu_of.iter().filter_map(move |(&cpu, vcpu)| {
            let params = vm.current.get(vcpu)?;
            Some((cpu, params.host_from_guest(guest).ok()?))
        })
    }

    /// Host TSC of guest TSC `guest` read on guest CPU `cpu`, with its
    /// vCPU's current conversion.
    pub(super) fn host_of(&self, vm: &VmState, cpu: u32, guest: u64) -> Option<u64> {
        let params = vm.current.get(self.vcpu_of.get(&cpu)?)?;
        params.host_from_guest(guest).ok()
    }

    /// Converts every event of a page to host time and hands each, in page
    /// order, to `push` (with the sources, whose comm table it updates).
    pub(super) fn convert(
        &mut self,
        page: &EventPage,
        vm: Option<&VmState>,
        sources: &mut Sources,
        mut push: impl FnMut(MergeItem, &Sources) -> io::Result<()>,
    ) -> io::Result<()> {
        let vcpu = self.vcpu_of.get(&page.cpu).copied();
        let timeline = vm.zip(vcpu).and_then(|(vm, v)| vm.vcpus.get(&v));
        let fallback = vm.and_then(|vm| {
            vcpu.and_then(|v| vm.current.get(&v))
                .or(vm.current.values().next())
        });
        let not_applied = if vm.is_some_and(|vm| vm.not_applied) {
            Flags::OFFSET_NOT_APPLIED
        } else {
            Flags::NONE
        };
        let cursor = self.cursors.entry(page.cpu).or_default();
        // The comm table is updated when the task changes, not per event
        // (a page's events mostly come from one task).
        let mut named = None;
        for event in page.events() {
            if let (Some(pid), Some(comm)) = (event.pid, event.comm)
                && named != Some(pid)
            {
                sources.set_comm(self.source, pid, comm);
                named = Some(pid);
            }
            let Some(data) = EventData::from_page(page.bytes(), event.data) else {
                continue;
            };
            let (host_tsc, epoch, flags) = place(timeline, fallback, cursor, event.tsc);
            let item = MergeItem {
                host_tsc,
                source: self.source,
                cpu: page.cpu,
                vcpu,
                guest_tsc: Some(event.tsc),
                epoch,
                flags: flags | not_applied,
                data,
            };
            push(item, sources)?;
        }
        Ok(())
    }
}

/// Host TSC, epoch and flags of one guest timestamp. Without a timeline (a
/// vCPU the session never saw) the VM's current conversion is used and the
/// event is flagged as outside any known epoch: never dropped, never
/// silently placed.
pub(super) fn place(
    timeline: Option<&timeline::VcpuTimeline>,
    fallback: Option<&TscParams>,
    cursor: &mut StreamCursor,
    guest: u64,
) -> (u64, Option<u64>, Flags) {
    if let Some(timeline) = timeline
        && let Ok(a) = timeline.assign(cursor, guest)
    {
        return (a.host, Some(a.epoch), a.flags);
    }
    let host = fallback
        .and_then(|p| p.host_from_guest(guest).ok())
        .unwrap_or(guest);
    (host, None, Flags::OUTSIDE_EPOCH)
}
