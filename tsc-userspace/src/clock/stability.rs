//! Whether the host TSC is one stable clock. Guest timestamps are only
//! comparable with the host's when it is: without `constant_tsc` and
//! `nonstop_tsc` its rate changes with frequency and sleep states, and a
//! clocksource other than `tsc` means the kernel found it unreliable (KVM
//! then rewrites offsets on every vCPU load: `kvm_arch_vcpu_load` in
//! arch/x86/kvm/x86.c).

use std::fs;

/// The file naming the kernel's current clocksource.
pub const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// The CPU flags the TSC needs to be one clock.
const NEEDED_FLAGS: [&str; 2] = ["constant_tsc", "nonstop_tsc"];

/// What stands against the TSC being one clock, given the first CPU's
/// `/proc/cpuinfo` flags and the clocksource; empty when nothing does.
pub fn problems(cpu_flags: &[String], clocksource: Option<&str>) -> Vec<String> {
    let missing: Vec<&str> = NEEDED_FLAGS
        .into_iter()
        .filter(|f| !cpu_flags.iter().any(|have| have == f))
        .collect();
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!("CPU lacks {}", missing.join(", ")));
    }
    let source = clocksource.unwrap_or("unknown");
    if source != "tsc" {
        why.push(format!(
            "clocksource is {source}, not tsc (the kernel distrusts the TSC)"
        ));
    }
    why
}

/// The first CPU's flags in `/proc/cpuinfo` text.
pub fn cpu_flags(cpuinfo: &str) -> Vec<String> {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "flags").then(|| value.split_whitespace().map(str::to_owned).collect())
        })
        .unwrap_or_default()
}

/// Reads this host's flags and clocksource and logs a warning, once, when
/// the TSC may not be one clock.
pub fn warn_if_unstable() {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let source = fs::read_to_string(CLOCKSOURCE).ok();
    let why = problems(&cpu_flags(&cpuinfo), source.as_deref().map(str::trim));
    if !why.is_empty() {
        tracing::warn!(
            "{}: guest and host timestamps may not be comparable (`tsc-tracer doctor` says more)",
            why.join("; ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stable_tsc_has_no_problems_and_each_missing_piece_is_named() {
        let flags: Vec<String> = ["fpu", "constant_tsc", "nonstop_tsc"]
            .map(String::from)
            .into();
        assert!(problems(&flags, Some("tsc")).is_empty());
        let why = problems(&flags[..2], Some("hpet"));
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("nonstop_tsc") && !why[0].contains("constant_tsc"));
        assert!(why[1].contains("hpet"));
        assert_eq!(
            cpu_flags("processor\t: 0\nflags\t\t: fpu tsc\nbogus\n"),
            ["fpu", "tsc"]
        );
    }
}
