//! What the Hello says about the guest: names, kernel, CPUs and APIC ids.

use std::{collections::HashMap, fs, io};

use crate::wire::CpuApic;

/// Reading what the kernel says about this system failed.
#[derive(Debug, thiserror::Error)]
pub enum SysInfoError {
    /// A /proc file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: &'static str,
        /// Why (in the message, so not a `source()` too).
        cause: io::Error,
    },
    /// A traced CPU has no APIC id in /proc/cpuinfo.
    #[error("/proc/cpuinfo gives no apicid for CPU {0} (not x86, or hidden by the hypervisor)")]
    NoApicId(u32),
}

fn read(path: &'static str) -> Result<String, SysInfoError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|cause| SysInfoError::Read { path, cause })
}

/// The hostname (`uname -n`).
pub fn hostname() -> Result<String, SysInfoError> {
    read("/proc/sys/kernel/hostname")
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> Result<String, SysInfoError> {
    read("/proc/sys/kernel/osrelease")
}

/// CPU number to APIC id, from the `processor` and `apicid` lines of
/// /proc/cpuinfo text.
pub fn parse_apic_ids(cpuinfo: &str) -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    for block in cpuinfo.split("\n\n") {
        let mut cpu = None;
        let mut apic = None;
        for line in block.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key.trim() {
                "processor" => cpu = value.trim().parse().ok(),
                "apicid" => apic = value.trim().parse().ok(),
                _ => {}
            }
        }
        if let (Some(cpu), Some(apic)) = (cpu, apic) {
            map.insert(cpu, apic);
        }
    }
    map
}

/// Each of `cpus` with its APIC id.
pub fn cpu_apic_ids(cpus: &[u32]) -> Result<Vec<CpuApic>, SysInfoError> {
    let ids = parse_apic_ids(&read("/proc/cpuinfo")?);
    cpus.iter()
        .map(|&cpu| {
            let apic_id = *ids.get(&cpu).ok_or(SysInfoError::NoApicId(cpu))?;
            Ok(CpuApic { cpu, apic_id })
        })
        .collect()
}

/// The `overrun` + `dropped events` counts of a `per_cpu/cpuN/stats` text:
/// every event the kernel lost on that CPU.
pub fn lost_events(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| matches!(key.trim(), "overrun" | "dropped events"))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_ids_come_from_each_processor_block() {
        let text = "processor\t: 0\napicid\t\t: 0\ninitial apicid\t: 0\n\n\
                    processor\t: 1\napicid\t\t: 6\ninitial apicid\t: 6\n\n";
        assert_eq!(parse_apic_ids(text), HashMap::from([(0, 0), (1, 6)]));
    }

    #[test]
    fn this_machine_has_an_apic_id_for_every_cpu() {
        let ids = cpu_apic_ids(&[0]).unwrap();
        assert_eq!(ids[0].cpu, 0);
    }

    #[test]
    fn lost_counts_overrun_and_dropped() {
        let stats = "entries: 12\noverrun: 5\ncommit overrun: 0\nbytes: 0\n\
                     oldest event ts: 1.0\nnow ts: 2.0\ndropped events: 3\nread events: 9\n";
        assert_eq!(lost_events(stats), 8);
    }
}
