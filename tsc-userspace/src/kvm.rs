//! What KVM's debugfs says about running VMs.
//!
//! `/sys/kernel/debug/kvm/PID-FD/vcpuN/tsc-offset` is the offset KVM holds for
//! the vCPU (the effective one: on PVM it reads 0 whatever was requested), and
//! `tsc-scaling-ratio{,-frac-bits}` exist only on hosts with TSC scaling.
//! This is how VMs started before the tracer are found, and how each change
//! the tracepoint reports is checked.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Where KVM's debugfs directory is when debugfs is mounted in the usual place.
pub const DEBUGFS_KVM: &str = "/sys/kernel/debug/kvm";

/// Errors reading KVM's debugfs.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No `kvm` directory in debugfs.
    #[error(
        "{0} does not exist: mount debugfs (mount -t debugfs debugfs /sys/kernel/debug) and load KVM"
    )]
    NoDebugfs(PathBuf),
    /// The VM or vCPU directory is gone (the VM exited, or never had that vCPU).
    #[error("{0} does not exist")]
    Gone(PathBuf),
    /// A file that should hold a number does not.
    #[error("{path}: {value:?} is not a number")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it held.
        value: String,
    },
    /// Any other I/O error.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// TSC scaling of one vCPU as KVM holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Scaling {
    /// Fixed-point multiplier.
    pub ratio: u64,
    /// Fraction bits of `ratio` (48 on VMX, 32 on SVM).
    pub frac_bits: u32,
}

/// One vCPU's TSC state as debugfs shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// KVM vCPU id.
    pub vcpu_id: u32,
    /// The offset KVM holds (two's complement).
    pub tsc_offset: i64,
    /// Scaling, when the host supports it.
    pub scaling: Option<Scaling>,
}

/// One VM directory of KVM's debugfs (`PID-FD`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDir {
    /// VMM process id. KVM names the directory after the *thread* that
    /// created the VM; this is that thread's process.
    pub pid: u32,
    /// The VM's file descriptor in that process.
    pub fd: u32,
    /// The directory.
    pub path: PathBuf,
}

/// Reads KVM's debugfs rooted at a path (tests may point it elsewhere).
#[derive(Clone, Debug)]
pub struct Debugfs {
    root: PathBuf,
}

impl Default for Debugfs {
    fn default() -> Self {
        Self::at(DEBUGFS_KVM)
    }
}

impl Debugfs {
    /// A reader for a KVM debugfs directory at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// All VM directories, in no particular order.
    pub fn vms(&self) -> Result<Vec<VmDir>, KvmError> {
        let entries = fs::read_dir(&self.root).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => KvmError::NoDebugfs(self.root.clone()),
            _ => io_err(&self.root, e),
        })?;
        let mut vms = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((tid, fd)) = name.to_str().and_then(parse_vm_dir) else {
                continue;
            };
            // KVM names the directory after the creating thread
            // (`task_pid_nr(current)`), which is the process only when the
            // VMM made its VM on its main thread. A thread already gone
            // leaves its id: the tracepoint's tgid names the VM later.
            let pid = crate::process::tgid(tid).unwrap_or(tid);
            vms.push(VmDir {
                pid,
                fd,
                path: entry.path(),
            });
        }
        Ok(vms)
    }

    /// The VM directories of process `pid` (a VMM may hold several VMs).
    pub fn vms_of(&self, pid: u32) -> Result<Vec<VmDir>, KvmError> {
        Ok(self.vms()?.into_iter().filter(|vm| vm.pid == pid).collect())
    }

    /// Every vCPU of one VM, sorted by id.
    pub fn vcpus(&self, vm: &VmDir) -> Result<Vec<VcpuState>, KvmError> {
        let entries = fs::read_dir(&vm.path).map_err(|e| gone_or_io(&vm.path, e))?;
        let mut ids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("vcpu")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut vcpus = Vec::with_capacity(ids.len());
        for id in ids {
            match read_vcpu(&vm.path, id) {
                Ok(state) => vcpus.push(state),
                // Torn down between listing and reading: not an error.
                Err(KvmError::Gone(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(vcpus)
    }

    /// The host threads running process `pid`'s vCPUs, as `(vcpu_id, tid)`
    /// from each `vcpuN/pid`, sorted by vCPU id; empty when there are none
    /// or debugfs cannot say (best effort: it names, never converts).
    pub fn vcpu_threads(&self, pid: u32) -> Vec<(u32, i32)> {
        let mut threads: Vec<(u32, i32)> = self
            .vms_of(pid)
            .unwrap_or_default()
            .iter()
            .filter_map(|vm| fs::read_dir(&vm.path).ok())
            .flat_map(|entries| entries.flatten())
            .filter_map(|e| {
                let vcpu = e.file_name().to_str()?.strip_prefix("vcpu")?.parse().ok()?;
                let tid = fs::read_to_string(e.path().join("pid")).ok()?;
                Some((vcpu, tid.trim().parse().ok()?))
            })
            .collect();
        threads.sort_unstable();
        threads
    }

    /// One vCPU of process `pid`, searching each of its VMs.
    pub fn vcpu(&self, pid: u32, vcpu_id: u32) -> Result<VcpuState, KvmError> {
        for vm in self.vms_of(pid)? {
            match read_vcpu(&vm.path, vcpu_id) {
                Err(KvmError::Gone(_)) => continue,
                other => return other,
            }
        }
        Err(KvmError::Gone(
            self.root.join(format!("{pid}-*/vcpu{vcpu_id}")),
        ))
    }
}

fn read_vcpu(vm: &Path, vcpu_id: u32) -> Result<VcpuState, KvmError> {
    let dir = vm.join(format!("vcpu{vcpu_id}"));
    let tsc_offset = read_number::<i64>(&dir.join("tsc-offset"))?;
    let scaling = match read_number::<u64>(&dir.join("tsc-scaling-ratio")) {
        Ok(ratio) => Some(Scaling {
            ratio,
            frac_bits: read_number(&dir.join("tsc-scaling-ratio-frac-bits"))?,
        }),
        Err(KvmError::Gone(_)) if dir.exists() => None,
        Err(e) => return Err(e),
    };
    Ok(VcpuState {
        vcpu_id,
        tsc_offset,
        scaling,
    })
}

/// `PID-FD` -> (pid, fd).
fn parse_vm_dir(name: &str) -> Option<(u32, u32)> {
    let (pid, fd) = name.split_once('-')?;
    Some((pid.parse().ok()?, fd.parse().ok()?))
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Result<T, KvmError> {
    let text = fs::read_to_string(path).map_err(|e| gone_or_io(path, e))?;
    text.trim().parse().map_err(|_| KvmError::Malformed {
        path: path.to_owned(),
        value: text.trim().to_owned(),
    })
}

fn gone_or_io(path: &Path, e: io::Error) -> KvmError {
    match e.kind() {
        io::ErrorKind::NotFound => KvmError::Gone(path.to_owned()),
        _ => io_err(path, e),
    }
}

fn io_err(path: &Path, source: io::Error) -> KvmError {
    KvmError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (vcpu id, tsc-offset text, optional (ratio, frac bits) texts)
    type FakeVcpu<'a> = (u32, &'a str, Option<(&'a str, &'a str)>);

    fn fake_vm(root: &Path, name: &str, vcpus: &[FakeVcpu]) {
        for (id, offset, scaling) in vcpus {
            let dir = root.join(name).join(format!("vcpu{id}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("tsc-offset"), format!("{offset}\n")).unwrap();
            if let Some((ratio, frac)) = scaling {
                fs::write(dir.join("tsc-scaling-ratio"), ratio).unwrap();
                fs::write(dir.join("tsc-scaling-ratio-frac-bits"), frac).unwrap();
            }
        }
    }

    // Pids above the largest pid_max (2^22): no such thread, so the names
    // stay as they are.
    #[test]
    fn reads_vms_vcpus_offsets_and_scaling() {
        let tmp = tempfile::tempdir().unwrap();
        fake_vm(
            tmp.path(),
            "4194401-11",
            &[(0, "-5", None), (4, "-9223372036854775808", None)],
        );
        fake_vm(
            tmp.path(),
            "4194402-7",
            &[(2, "17", Some(("281474976710656", "48")))],
        );
        fs::create_dir(tmp.path().join("not-a-vm")).unwrap();
        let dfs = Debugfs::at(tmp.path());
        let mut vms = dfs.vms().unwrap();
        vms.sort_by_key(|vm| vm.pid);
        assert_eq!(
            (vms[0].pid, vms[0].fd, vms[1].pid, vms.len()),
            (4194401, 11, 4194402, 2)
        );
        let vcpus = dfs.vcpus(&vms[0]).unwrap();
        assert_eq!(
            vcpus
                .iter()
                .map(|v| (v.vcpu_id, v.tsc_offset))
                .collect::<Vec<_>>(),
            [(0, -5), (4, i64::MIN)]
        );
        let scaled = dfs.vcpu(4194402, 2).unwrap();
        assert_eq!(
            scaled.scaling,
            Some(Scaling {
                ratio: 1 << 48,
                frac_bits: 48
            })
        );
        assert!(matches!(dfs.vcpu(4194402, 3), Err(KvmError::Gone(_))));
    }

    #[test]
    fn garbage_offset_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        fake_vm(tmp.path(), "4194403-2", &[(0, "zero", None)]);
        let err = Debugfs::at(tmp.path()).vcpu(4194403, 0).unwrap_err();
        assert!(
            err.to_string().contains("\"zero\" is not a number"),
            "{err}"
        );
    }

    #[test]
    fn missing_debugfs_says_how_to_mount_it() {
        let err = Debugfs::at("/nonexistent/kvm").vms().unwrap_err();
        assert!(err.to_string().contains("mount -t debugfs"), "{err}");
    }
}
