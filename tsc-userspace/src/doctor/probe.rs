//! A throw-away VM that shows what KVM does: the TSC frequency and scaling it
//! reports, whether the offset it is given reaches the guest, and whether
//! `kvm_entry` fires when the guest runs.

use kvm_ioctls::{Cap, Kvm};
use tsc_common::{record::VcpuKey, vcpu_state::VcpuState};

use super::{Check, system::Host};
use crate::{
    ebpf::{LoadOptions, Programs, VcpuPrograms},
    kvm::Debugfs,
    vmm::{RdtscRun, Vm},
};

/// The offset the probe gives its vCPU: large and positive, so a guest
/// reading shifted by it cannot be mistaken for a raw host reading.
pub const PROBE_OFFSET: i64 = 1 << 52;
/// Guest `rdtsc` readings the probe takes.
const READINGS: u64 = 4;

/// What the probe measured.
#[derive(Debug, Default)]
pub struct Probe {
    /// Its checks.
    pub checks: Vec<Check>,
    /// Whether the offset was applied.
    pub offsets_applied: Option<bool>,
    /// Whether `kvm_entry` fired.
    pub kvm_entry_fires: Option<bool>,
    /// `KVM_GET_TSC_KHZ` of the probe vCPU.
    pub tsc_khz: Option<u32>,
    /// `KVM_CAP_TSC_CONTROL`.
    pub tsc_scaling: Option<bool>,
}

/// How the offset read back through each path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetReadings {
    /// `KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)`.
    pub ioctl: Option<i64>,
    /// debugfs `vcpu0/tsc-offset`.
    pub debugfs: Option<i64>,
    /// What the guest's `rdtsc` implies: Some(true) when every reading is
    /// the host TSC plus the offset, Some(false) when every one is the raw
    /// host TSC, None when the run failed or the readings fit neither.
    pub guest_shifted: Option<bool>,
}

impl OffsetReadings {
    /// The verdict: the guest's view when there is one, else the read-back.
    pub fn applied(&self, offset: i64) -> Option<bool> {
        self.guest_shifted
            .or_else(|| self.ioctl.map(|v| v == offset))
            .or_else(|| self.debugfs.map(|v| v == offset))
    }
}

/// Whether the guest's readings were shifted by `offset` (see
/// [`OffsetReadings::guest_shifted`]).
pub fn guest_shifted(run: &RdtscRun, offset: i64) -> Option<bool> {
    let pairs = || run.guest_readings.iter().zip(&run.brackets);
    if run.guest_readings.is_empty() {
        return None;
    }
    if pairs().all(|(&g, b)| b.contains(g.wrapping_sub(offset as u64))) {
        return Some(true);
    }
    if pairs().all(|(&g, b)| b.contains(g)) {
        return Some(false);
    }
    None
}

/// Runs the probe; checks that cannot run say why.
pub fn run(host: &Host) -> Probe {
    let mut probe = Probe::default();
    if !host.dev_kvm {
        return probe; // the kvm check already failed, with its fix
    }
    probe.tsc_scaling = Kvm::new().ok().map(|k| k.check_extension(Cap::TscControl));
    // Load first: the probe vCPU's creation and first entry must be seen.
    let programs = load_programs(host, &mut probe.checks);
    let mut vm = match Vm::new() {
        Ok(vm) => vm,
        Err(err) => {
            probe.checks.push(Check::fail(
                "kvm-vm",
                format!("cannot create a VM: {err}"),
                "check /dev/kvm permissions and that no policy forbids KVM_CREATE_VM",
                true,
            ));
            return probe;
        }
    };
    let vcpu = match vm.add_vcpu(0) {
        Ok(vcpu) => vcpu,
        Err(err) => {
            probe.checks.push(Check::fail(
                "kvm-vm",
                format!("cannot create a vCPU: {err}"),
                "check the kernel log (dmesg) for KVM errors",
                true,
            ));
            return probe;
        }
    };
    probe.tsc_khz = vcpu.tsc_khz().ok();
    probe.checks.push(frequency(host, probe.tsc_khz));
    probe.checks.push(scaling(probe.tsc_scaling));
    let readings = offset_readings(vcpu);
    probe.offsets_applied = readings.applied(PROBE_OFFSET);
    probe
        .checks
        .push(offsets_check(&readings, probe.offsets_applied));
    if let Some(programs) = programs {
        let key = VcpuKey {
            tgid: std::process::id(),
            vcpu_id: 0,
        };
        let fired = programs
            .vcpu_state(key)
            .is_some_and(|s| s.reported_seq != VcpuState::NEVER);
        probe.kvm_entry_fires = Some(fired);
        probe.checks.push(entry_check(fired));
    }
    probe
}

fn load_programs(host: &Host, checks: &mut Vec<Check>) -> Option<Programs> {
    let name = "kvm-entry-fires";
    if !host.privileged() || !host.tracefs {
        checks.push(Check::warn(
            name,
            "not measured: needs the privileges and tracefs above",
            None,
        ));
        return None;
    }
    let options = LoadOptions {
        pin_path: None,
        vcpu_programs: VcpuPrograms::Required,
        ringbuf_bytes: 4096,
        max_vcpus: 16,
        ..LoadOptions::default()
    };
    match Programs::load(&options) {
        Ok(programs) => Some(programs),
        Err(err) => {
            checks.push(Check::warn(
                name,
                format!("not measured: the kvm_entry/kvm_exit programs did not load: {err}"),
                Some("see the btf and tracepoint checks".into()),
            ));
            None
        }
    }
}

fn offset_readings(vcpu: &mut crate::vmm::Vcpu) -> OffsetReadings {
    if let Err(err) = vcpu.set_tsc_offset(PROBE_OFFSET) {
        tracing::debug!("setting the probe offset: {err}");
        return OffsetReadings {
            ioctl: None,
            debugfs: None,
            guest_shifted: None,
        };
    }
    let ioctl = vcpu.get_tsc_offset().ok();
    // KVM names the VM's debugfs directory after the thread that made it;
    // `Debugfs` reports it under that thread's process.
    let debugfs = Debugfs::default()
        .vcpu(std::process::id(), vcpu.id())
        .ok()
        .map(|v| v.tsc_offset);
    let guest_shifted = match vcpu.run_rdtsc(READINGS) {
        Ok(run) => guest_shifted(&run, PROBE_OFFSET),
        Err(err) => {
            tracing::debug!("running the probe guest: {err}");
            None
        }
    };
    OffsetReadings {
        ioctl,
        debugfs,
        guest_shifted,
    }
}

fn frequency(host: &Host, khz: Option<u32>) -> Check {
    let name = "tsc-frequency";
    let known = if host.has_flag("tsc_known_freq") {
        " (tsc_known_freq: the kernel did not have to calibrate it)"
    } else {
        ""
    };
    match khz {
        Some(khz) => Check::ok(name, format!("KVM_GET_TSC_KHZ: {khz} kHz{known}")),
        None => Check::warn(
            name,
            "KVM_GET_TSC_KHZ failed on the probe vCPU",
            Some("nanosecond output falls back to the kernel's calibration".into()),
        ),
    }
}

fn scaling(cap: Option<bool>) -> Check {
    match cap {
        Some(true) => Check::ok(
            "tsc-scaling",
            "KVM_CAP_TSC_CONTROL: guests may run at their own TSC rate; ratios are followed",
        ),
        Some(false) => Check::ok(
            "tsc-scaling",
            "no TSC scaling (KVM_CAP_TSC_CONTROL is 0): every guest TSC runs at the host rate",
        ),
        None => Check::warn(
            "tsc-scaling",
            "could not ask KVM (KVM_CHECK_EXTENSION)",
            None,
        ),
    }
}

fn offsets_check(r: &OffsetReadings, applied: Option<bool>) -> Check {
    let name = "offsets-applied";
    let show = |v: Option<i64>| v.map_or("unreadable".to_owned(), |v| v.to_string());
    let guest = match r.guest_shifted {
        Some(true) => "the guest's rdtsc is shifted by it",
        Some(false) => "the guest's rdtsc reads the raw host TSC",
        None => "the guest's rdtsc was not conclusive",
    };
    let detail = format!(
        "asked for offset {PROBE_OFFSET}: KVM_GET_DEVICE_ATTR reads {}, debugfs reads {}, {guest}",
        show(r.ioctl),
        show(r.debugfs)
    );
    match applied {
        Some(true) => Check::ok(name, detail),
        Some(false) => Check::warn(
            name,
            format!(
                "{detail}: this hypervisor does not apply TSC offsets (e.g. the PVM backend); \
                 guest timestamps are converted with the offset the vCPU holds"
            ),
            None,
        ),
        None => Check::warn(
            name,
            format!("{detail}: could not tell"),
            Some("run with -v to see which step failed".into()),
        ),
    }
}

fn entry_check(fired: bool) -> Check {
    let name = "kvm-entry-fires";
    if fired {
        return Check::ok(
            name,
            "kvm_entry fired for the probe guest: epochs start at the vCPU's first entry",
        );
    }
    Check::warn(
        name,
        "kvm_entry did not fire while the probe guest ran (the PVM backend never fires it): \
         epoch boundaries fall at the offset change, not at the vCPU's exit and entry",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::Bracket;

    fn run(readings: &[u64], brackets: &[(u64, u64)]) -> RdtscRun {
        RdtscRun {
            host_before: 0,
            guest_readings: readings.to_vec(),
            host_after: u64::MAX,
            brackets: brackets
                .iter()
                .map(|&(before, after)| Bracket { before, after })
                .collect(),
        }
    }

    #[test]
    fn guest_view_tells_shifted_from_raw() {
        let offset = PROBE_OFFSET;
        let shifted = run(&[105 + offset as u64], &[(100, 110)]);
        assert_eq!(guest_shifted(&shifted, offset), Some(true));
        let raw = run(&[105, 107], &[(100, 106), (106, 110)]);
        assert_eq!(guest_shifted(&raw, offset), Some(false));
        let neither = run(&[5], &[(100, 110)]);
        assert_eq!(guest_shifted(&neither, offset), None);
        assert_eq!(guest_shifted(&run(&[], &[]), offset), None);
    }

    #[test]
    fn guest_view_outranks_the_read_back() {
        let r = OffsetReadings {
            ioctl: Some(PROBE_OFFSET),
            debugfs: Some(PROBE_OFFSET),
            guest_shifted: Some(false),
        };
        assert_eq!(r.applied(PROBE_OFFSET), Some(false));
        let r = OffsetReadings {
            guest_shifted: None,
            ..r
        };
        assert_eq!(r.applied(PROBE_OFFSET), Some(true));
        let pvm = OffsetReadings {
            ioctl: Some(0),
            debugfs: Some(0),
            guest_shifted: None,
        };
        assert_eq!(pvm.applied(PROBE_OFFSET), Some(false));
    }
}
