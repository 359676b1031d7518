//! What the host offers: privileges, mounts, BTF, tracepoints, TSC flags.

use std::{fs, path::Path};

use nix::sys::statfs::{BPF_FS_MAGIC, DEBUGFS_MAGIC, FsType, TRACEFS_MAGIC, statfs};

use super::Check;

/// Where things are looked for.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// debugfs mount point.
pub const DEBUGFS: &str = "/sys/kernel/debug";
/// bpffs mount point.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The kvm tracepoints the programs use.
pub const TRACEPOINTS: [&str; 3] = ["kvm_write_tsc_offset", "kvm_entry", "kvm_exit"];

/// Capability bits (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The facts read from the host, before judging them.
#[derive(Clone, Debug, Default)]
pub struct Host {
    /// Effective uid is 0.
    pub root: bool,
    /// Effective capability mask (`CapEff` of /proc/self/status).
    pub caps: u64,
    /// tracefs mounted at [`TRACEFS`].
    pub tracefs: bool,
    /// debugfs mounted at [`DEBUGFS`].
    pub debugfs: bool,
    /// bpffs mounted at [`BPFFS`].
    pub bpffs: bool,
    /// [`VMLINUX_BTF`] exists.
    pub btf: bool,
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// Which of [`TRACEPOINTS`] exist in tracefs.
    pub tracepoints: [bool; 3],
    /// `flags` of the first CPU in /proc/cpuinfo.
    pub cpu_flags: Vec<String>,
    /// The current clocksource.
    pub clocksource: Option<String>,
}

impl Host {
    /// Reads everything; a fact that cannot be read counts as absent.
    pub fn read() -> Self {
        let events = Path::new(TRACEFS).join("events/kvm");
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            root: nix::unistd::Uid::effective().is_root(),
            caps: effective_caps(&status).unwrap_or(0),
            tracefs: mounted(TRACEFS, TRACEFS_MAGIC),
            debugfs: mounted(DEBUGFS, DEBUGFS_MAGIC),
            bpffs: mounted(BPFFS, BPF_FS_MAGIC),
            btf: Path::new(VMLINUX_BTF).exists(),
            dev_kvm: Path::new("/dev/kvm").exists(),
            tracepoints: TRACEPOINTS.map(|t| events.join(t).is_dir()),
            cpu_flags: cpu_flags(&cpuinfo),
            clocksource: fs::read_to_string(crate::clock::stability::CLOCKSOURCE)
                .ok()
                .map(|s| s.trim().to_owned()),
        }
    }

    /// True when this process may load BPF programs and read tracefs.
    pub fn privileged(&self) -> bool {
        self.root || has_cap(self.caps, CAP_BPF) && has_cap(self.caps, CAP_PERFMON)
    }

    /// Whether the first CPU has `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.cpu_flags.iter().any(|f| f == flag)
    }

    /// The checks these facts answer.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = vec![self.privileges()];
        checks.push(mount_check(
            "tracefs",
            self.tracefs,
            TRACEFS,
            "mount -t tracefs tracefs /sys/kernel/tracing",
            "the kvm tracepoints and the host trace live there",
        ));
        checks.push(mount_check(
            "debugfs",
            self.debugfs,
            DEBUGFS,
            "mount -t debugfs debugfs /sys/kernel/debug",
            "KVM's per-vCPU tsc-offset files find running VMs and check each change",
        ));
        checks.push(mount_check(
            "bpffs",
            self.bpffs,
            BPFFS,
            "mount -t bpf bpf /sys/fs/bpf",
            "the offsets map is pinned there for other processes",
        ));
        checks.push(self.btf_check());
        checks.push(self.kvm_check());
        checks.extend(self.tracepoint_checks());
        checks.push(self.stability());
        checks
    }

    fn privileges(&self) -> Check {
        let name = "privileges";
        if self.root {
            return Check::ok(name, "running as root");
        }
        if self.privileged() {
            let detail = if has_cap(self.caps, CAP_SYS_ADMIN) {
                "not root, but CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN are effective"
            } else {
                "not root; CAP_BPF and CAP_PERFMON are effective (debugfs may still need root)"
            };
            return Check::ok(name, detail);
        }
        Check::fail(
            name,
            "not root and CAP_BPF/CAP_PERFMON are not effective: cannot load eBPF programs",
            "run as root (sudo tsc-tracer ...) or grant the capabilities: \
             setcap cap_bpf,cap_perfmon,cap_sys_admin+ep tsc-tracer",
            true,
        )
    }

    fn btf_check(&self) -> Check {
        if self.btf {
            return Check::ok("btf", format!("{VMLINUX_BTF} is present"));
        }
        Check::fail(
            "btf",
            format!("{VMLINUX_BTF} is missing: the kvm_entry/kvm_exit programs cannot be placed"),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y; offset changes are still followed",
            false,
        )
    }

    fn kvm_check(&self) -> Check {
        if self.dev_kvm {
            return Check::ok("kvm", "/dev/kvm is present");
        }
        Check::fail(
            "kvm",
            "/dev/kvm is missing: there are no VMs to trace",
            "load KVM (modprobe kvm_intel or kvm_amd) and check virtualization is enabled",
            true,
        )
    }

    fn tracepoint_checks(&self) -> Vec<Check> {
        TRACEPOINTS
            .iter()
            .zip(self.tracepoints)
            .map(|(name, present)| {
                let check = match *name {
                    "kvm_write_tsc_offset" => "tracepoint-write-tsc-offset",
                    "kvm_entry" => "tracepoint-kvm-entry",
                    _ => "tracepoint-kvm-exit",
                };
                if present {
                    return Check::ok(check, format!("kvm:{name} exists"));
                }
                // Offset changes come from kvm_write_tsc_offset: without it
                // there is nothing to follow. entry/exit only sharpen epochs.
                let blocking = *name == "kvm_write_tsc_offset";
                let fix = if self.tracefs {
                    "load KVM (its tracepoints appear under events/kvm) on a kernel with \
                     CONFIG_TRACEPOINTS"
                } else {
                    "mount tracefs first (see the tracefs check)"
                };
                Check::fail(
                    check,
                    format!("kvm:{name} is not in {TRACEFS}/events/kvm"),
                    fix,
                    blocking,
                )
            })
            .collect()
    }

    /// Whether the host TSC is one stable clock (warns, with a fix, when not).
    pub fn stability(&self) -> Check {
        let why = crate::clock::stability::problems(&self.cpu_flags, self.clocksource.as_deref());
        if why.is_empty() {
            return Check::ok(
                "tsc-stability",
                "constant_tsc and nonstop_tsc, clocksource tsc: the host TSC is one clock",
            );
        }
        Check::warn(
            "tsc-stability",
            format!(
                "{}: KVM may rewrite offsets on every vCPU load, and host TSCs may disagree",
                why.join("; ")
            ),
            Some(
                "prefer a host with an invariant TSC; check dmesg for 'TSC unstable' and \
                 tsc=reliable only if you know the TSC is sound"
                    .into(),
            ),
        )
    }
}

fn mount_check(name: &'static str, mounted: bool, path: &str, command: &str, why: &str) -> Check {
    if mounted {
        return Check::ok(name, format!("mounted at {path}"));
    }
    Check::fail(name, format!("not mounted at {path}: {why}"), command, true)
}

fn mounted(path: &str, magic: FsType) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == magic)
}

/// `CapEff` of a /proc/PID/status text.
pub fn effective_caps(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let hex = line.strip_prefix("CapEff:")?.trim();
        u64::from_str_radix(hex, 16).ok()
    })
}

fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

pub use crate::clock::stability::cpu_flags;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn healthy() -> Host {
        Host {
            root: true,
            caps: 0,
            tracefs: true,
            debugfs: true,
            bpffs: true,
            btf: true,
            dev_kvm: true,
            tracepoints: [true; 3],
            cpu_flags: vec!["tsc".into(), "constant_tsc".into(), "nonstop_tsc".into()],
            clocksource: Some("tsc".into()),
        }
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn healthy_host_passes_every_check() {
        let checks = healthy().checks();
        assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:#?}");
    }

    #[test]
    fn only_what_stops_tracing_blocks() {
        let host = Host {
            root: false,
            tracefs: false,
            btf: false,
            tracepoints: [true, false, false],
            clocksource: Some("hpet".into()),
            ..healthy()
        };
        let checks = host.checks();
        let blocking: Vec<&str> = checks
            .iter()
            .filter(|c| c.blocking)
            .map(|c| c.name)
            .collect();
        assert_eq!(blocking, ["privileges", "tracefs"]);
        assert_eq!(find(&checks, "btf").status, Status::Fail);
        assert_eq!(find(&checks, "tracepoint-kvm-entry").status, Status::Fail);
        assert!(
            find(&checks, "tracepoint-kvm-entry")
                .fix
                .as_deref()
                .unwrap()
                .contains("mount tracefs")
        );
        let stability = find(&checks, "tsc-stability");
        assert_eq!(stability.status, Status::Warn);
        assert!(stability.detail.contains("hpet"), "{}", stability.detail);
        for check in &checks {
            if check.status == Status::Fail {
                assert!(check.fix.is_some(), "{} has no fix", check.name);
            }
        }
    }

    #[test]
    fn capabilities_stand_in_for_root() {
        let caps = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        let host = Host {
            root: false,
            caps,
            ..healthy()
        };
        assert!(host.privileged());
        assert!(
            !Host {
                caps: 1 << CAP_BPF,
                ..host
            }
            .privileged()
        );
    }

    #[test]
    fn parses_cap_eff_and_cpu_flags() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        let cpuinfo =
            "processor\t: 0\nflags\t\t: fpu tsc constant_tsc\n\nprocessor\t: 1\nflags\t\t: fpu\n";
        assert_eq!(cpu_flags(cpuinfo), ["fpu", "tsc", "constant_tsc"]);
    }
}
