//! What assembly needs, spilled as JSON (`DIR/spill/meta.json`) each time
//! it changes, so `tsc-tracer record-finish DIR` can assemble a recording
//! whose session died.

use std::{fs, io, path::Path};

use serde::{Deserialize, Serialize};
use tsc_common::tsc::TscParams;

use super::options::Tsc2Nsec;
use crate::timeline::Epoch;

/// The spill directory inside a recording.
pub const SPILL_DIR: &str = "spill";
/// The metadata file inside [`SPILL_DIR`].
pub const META_FILE: &str = "meta.json";

/// One trace stream (the host's, or one guest connection's).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Its spill directory, relative to the recording.
    pub dir: String,
    /// Ring-buffer page size.
    pub page_size: u32,
    /// `events/header_page`.
    pub header_page: String,
    /// `events/header_event`.
    pub header_event: String,
    /// `(system, format text)` of every event.
    pub formats: Vec<(String, String)>,
    /// `PID COMM` lines.
    pub cmdlines: String,
    /// CPUs (the file's CPU count; CPU numbers below it).
    pub cpus: u32,
    /// `uname` text.
    pub uname: String,
    /// This stream's file's trace id.
    pub trace_id: u64,
}

/// One guest CPU of a connection.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestCpuMeta {
    /// Guest CPU number.
    pub cpu: u32,
    /// The vCPU running it, when known.
    pub vcpu_id: Option<u32>,
    /// The host thread of that vCPU (0 when unknown).
    pub tid: u32,
}

/// One guest agent connection: one guest file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestMeta {
    /// File name in the recording (`VM-AGENT.dat`).
    pub file: String,
    /// Name shown for the guest (KernelShark's GUEST name).
    pub name: String,
    /// The VMM process, when bound.
    pub vm_pid: Option<u32>,
    /// Its trace.
    pub stream: StreamMeta,
    /// Guest CPU -> vCPU -> host thread.
    pub cpus: Vec<GuestCpuMeta>,
    /// Pages left out (larger than the page size, or unreadable headers).
    pub skipped_pages: u64,
}

/// One epoch, as kept by [`crate::timeline::VcpuTimeline`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpochMeta {
    /// Offset (two's complement).
    pub offset: u64,
    /// Scaling ratio.
    pub ratio: u64,
    /// Its fraction bits.
    pub frac_bits: u32,
    /// First host TSC, when known.
    pub host_start: Option<u64>,
    /// End (exclusive), when ended.
    pub host_end: Option<u64>,
}

impl EpochMeta {
    /// From a timeline's epoch.
    pub fn of(e: &Epoch) -> Self {
        Self {
            offset: e.params.offset(),
            ratio: e.params.ratio(),
            frac_bits: e.params.frac_bits(),
            host_start: e.host_start,
            host_end: e.host_end,
        }
    }

    /// Back to an epoch (`None` for parameters no vCPU can have).
    pub fn epoch(&self, seq: u64) -> Option<Epoch> {
        Some(Epoch {
            seq,
            params: TscParams::new(self.offset, self.ratio, self.frac_bits).ok()?,
            host_start: self.host_start,
            host_end: self.host_end,
        })
    }
}

/// One vCPU's epochs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcpuEpochs {
    /// The VMM process.
    pub vm_pid: u32,
    /// vCPU id.
    pub vcpu_id: u32,
    /// Oldest first.
    pub epochs: Vec<EpochMeta>,
}

/// The whole recording's description.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecordingMeta {
    /// Format version of this file (1).
    pub version: u32,
    /// The host's trace, once started.
    pub host: Option<StreamMeta>,
    /// Every guest connection, in order.
    pub guests: Vec<GuestMeta>,
    /// Every bound vCPU's epochs.
    pub vcpus: Vec<VcpuEpochs>,
    /// Host TSC -> ns for both readers, when the clock is known.
    pub tsc2nsec: Option<Tsc2Nsec>,
    /// Nanoseconds to add after it (the OFFSET option).
    pub offset_ns: i64,
    /// Why the recording stopped early, if it did.
    pub stopped: Option<String>,
}

impl RecordingMeta {
    /// Writes `DIR/spill/meta.json` (whole file, then rename).
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let spill = dir.join(SPILL_DIR);
        let tmp = spill.join("meta.json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(io::Error::other)?,
        )?;
        fs::rename(tmp, spill.join(META_FILE))
    }

    /// Reads `DIR/spill/meta.json`.
    pub fn load(dir: &Path) -> io::Result<Self> {
        let text = fs::read(dir.join(SPILL_DIR).join(META_FILE))?;
        serde_json::from_slice(&text).map_err(io::Error::other)
    }

    /// The epochs of a vCPU, if any were recorded.
    pub fn epochs(&self, vm_pid: u32, vcpu_id: u32) -> Option<Vec<Epoch>> {
        let v = self
            .vcpus
            .iter()
            .find(|v| v.vm_pid == vm_pid && v.vcpu_id == vcpu_id)?;
        v.epochs
            .iter()
            .enumerate()
            .map(|(i, e)| e.epoch(i as u64))
            .collect()
    }
}
