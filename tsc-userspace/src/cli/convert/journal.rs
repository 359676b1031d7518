//! `convert --journal`: one vCPU's epochs as an offset journal recorded
//! them, and the placement of guest TSCs in them, as the live session
//! places guest events.

use std::path::Path;

use anyhow::{Context, Result, bail};
use tsc_common::tsc::TscParams;
use tsc_userspace::{
    Flags,
    correlator::Vms,
    offsets::journal::{self, JournalRecord},
    timeline::{StreamCursor, VcpuTimeline},
};

/// One vCPU's history, and the cursor of the stream being converted.
pub struct History {
    timeline: Option<VcpuTimeline>,
    current: Option<TscParams>,
    not_applied: bool,
    cursor: StreamCursor,
}

/// Where one guest TSC landed.
pub struct Placed {
    /// Its host TSC.
    pub host: u64,
    /// The epoch (None: outside every known epoch).
    pub epoch: Option<u64>,
    /// How sure the place is.
    pub flags: Flags,
}

impl Placed {
    /// ` epoch=N [flag,...]`, as the text timeline shows flags.
    pub fn write_suffix(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match self.epoch {
            Some(e) => write!(out, " epoch={e}")?,
            None => write!(out, " epoch=-")?,
        }
        let names: Vec<&str> = self.flags.names().collect();
        if !names.is_empty() {
            write!(out, " [{}]", names.join(","))?;
        }
        Ok(())
    }
}

impl History {
    /// Replays the journal at `path` for `vm` (a pid, or the VMM's comm)
    /// and its vCPU `vcpu`.
    pub fn load(path: &Path, vm: &str, vcpu: u32) -> Result<Self> {
        let contents = journal::reader::read(path, u64::MAX)
            .with_context(|| format!("reading the offset journal {}", path.display()))?;
        contents.report();
        let records: Vec<&JournalRecord> = contents.records().collect();
        let identity = pick(&records, vm)?;
        let mut vms = Vms::default();
        let mut n = 0;
        for r in records.iter().filter(|r| identity_of(r) == identity) {
            vms.apply_at(&r.event, &r.boundary, &|_| Vec::new());
            n += 1;
        }
        let Some(state) = vms.get(identity.0) else {
            bail!("the journal has no offsets of VM {vm}");
        };
        let timeline = state.vcpus.get(&vcpu).cloned();
        match &timeline {
            Some(t) => tracing::info!(
                "VM {vm} (pid {}, start time {}) vCPU {vcpu}: {} epoch(s) from {n} journal records",
                identity.0,
                identity.1,
                t.epochs().len()
            ),
            None => tracing::warn!(
                "the journal has no epochs of vCPU {vcpu} of VM {vm}: converting with the VM's latest offset, flagged outside-epoch"
            ),
        }
        Ok(Self {
            current: state
                .current
                .get(&vcpu)
                .or(state.current.values().next())
                .copied(),
            timeline,
            not_applied: state.not_applied,
            cursor: StreamCursor::default(),
        })
    }

    /// Places `guest` (values come in the stream's order).
    pub fn place(&mut self, guest: u64) -> Placed {
        let assigned = self
            .timeline
            .as_ref()
            .and_then(|t| t.assign(&mut self.cursor, guest).ok());
        let mut placed = match assigned {
            Some(a) => Placed {
                host: a.host,
                epoch: Some(a.epoch),
                flags: a.flags,
            },
            None => Placed {
                host: self
                    .current
                    .and_then(|p| p.host_from_guest(guest).ok())
                    .unwrap_or(guest),
                epoch: None,
                flags: Flags::OUTSIDE_EPOCH,
            },
        };
        if self.not_applied {
            placed.flags |= Flags::OFFSET_NOT_APPLIED;
        }
        placed
    }
}

fn identity_of(r: &JournalRecord) -> (u32, u64) {
    (r.event.pid, r.event.start_time)
}

/// The VM `vm` names: a pid or a comm. When a pid was reused, or several
/// VMs share the comm, the one journaled last is taken (and said).
fn pick(records: &[&JournalRecord], vm: &str) -> Result<(u32, u64)> {
    let matches = |r: &&&JournalRecord| match vm.parse::<u32>() {
        Ok(pid) => r.event.pid == pid,
        Err(_) => r.event.comm == vm,
    };
    let mut ids: Vec<(u32, u64)> = Vec::new();
    for r in records.iter().filter(matches) {
        let id = identity_of(r);
        ids.retain(|i| *i != id);
        ids.push(id);
    }
    let Some(&last) = ids.last() else {
        bail!("the journal has no VM {vm} (a pid or a VMM comm)");
    };
    if ids.len() > 1 {
        tracing::warn!(
            "{} VMs in the journal match {vm}; using the last one journaled (pid {}, start time {})",
            ids.len(),
            last.0,
            last.1
        );
    }
    Ok(last)
}
