//! The `kvm_entry`/`kvm_exit` BTF tracepoint programs: layout, load, attach.
//!
//! They are optional: a kernel without the tracepoints, without BTF, or
//! whose `struct kvm_vcpu` lacks a field they read still gets the
//! `kvm_write_tsc_offset` program (unless the caller asked for them to be
//! required).

use aya::{Ebpf, programs::BtfTracePoint};
use tsc_common::record::KvmVcpuLayout;

use super::LoadError;
use crate::btf::{Btf, Kind, KvmLayout, kvm::vcpu_arg};

/// The tracepoints the two programs attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuTracepoints {
    /// For the `kvm_exit` program.
    pub exit: String,
    /// For the `kvm_entry` program.
    pub entry: String,
}

impl Default for VcpuTracepoints {
    /// `kvm_exit` and `kvm_entry`. Another tracepoint whose arguments
    /// include the `struct kvm_vcpu *` can stand in for either, e.g. to see
    /// the programs run on a host where these two never fire (PVM).
    fn default() -> Self {
        Self {
            exit: "kvm_exit".into(),
            entry: "kvm_entry".into(),
        }
    }
}

/// Whether to load the `kvm_entry`/`kvm_exit` programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VcpuPrograms {
    /// Load them when this kernel allows; otherwise warn and go on.
    #[default]
    Auto,
    /// Load them or fail.
    Required,
    /// Do not load them.
    Off,
}

/// What became of the `kvm_entry`/`kvm_exit` programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuStatus {
    /// Both are attached, reading `struct kvm_vcpu` with this layout.
    Attached(KvmLayout),
    /// They could not be used; why, in plain words.
    Unavailable(String),
    /// Not asked for.
    Off,
}

/// The global the programs read, from the resolved layout.
pub fn program_layout(layout: &KvmLayout) -> Result<KvmVcpuLayout, LoadError> {
    let arg = |what: &'static str, index: usize| {
        // The programs branch on indices 0..=2 (every known prototype).
        u32::try_from(index)
            .ok()
            .filter(|i| *i <= 2)
            .ok_or(LoadError::VcpuArg { what, index })
    };
    Ok(KvmVcpuLayout {
        vcpu_id: layout.vcpu_id,
        l1_tsc_offset: layout.l1_tsc_offset,
        tsc_offset: layout.tsc_offset,
        l1_tsc_scaling_ratio: layout.l1_tsc_scaling_ratio,
        tsc_scaling_ratio: layout.tsc_scaling_ratio,
        entry_arg: arg("kvm_entry", layout.kvm_entry.index)?,
        exit_arg: arg("kvm_exit", layout.kvm_exit.index)?,
        _pad: 0,
    })
}

/// Resolves the layout from the running kernel's BTF, or says why not. The
/// vCPU argument indices are those of the tracepoints in `at`.
pub fn resolve(at: &VcpuTracepoints) -> Result<(KvmLayout, KvmVcpuLayout), LoadError> {
    let btf = Btf::running_kernel().map_err(LoadError::Btf)?;
    let mut layout = KvmLayout::resolve(&btf).map_err(LoadError::Btf)?;
    let vcpu = btf.find(Kind::Struct, "kvm_vcpu").map_err(LoadError::Btf)?;
    if at.entry != "kvm_entry" {
        layout.kvm_entry = vcpu_arg(&btf, &at.entry, vcpu).map_err(LoadError::Btf)?;
    }
    if at.exit != "kvm_exit" {
        layout.kvm_exit = vcpu_arg(&btf, &at.exit, vcpu).map_err(LoadError::Btf)?;
    }
    Ok((layout, program_layout(&layout)?))
}

/// Loads (verifier) and attaches both programs, exit first: on a shared
/// tracepoint the exit is then recorded before the entry reads it.
pub fn attach(ebpf: &mut Ebpf, at: &VcpuTracepoints) -> Result<(), LoadError> {
    let btf = aya::Btf::from_sys_fs().map_err(LoadError::KernelBtf)?;
    for (name, tracepoint) in [("kvm_exit", &at.exit), ("kvm_entry", &at.entry)] {
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or(LoadError::Program {
                what: "finding a BTF tracepoint program",
                source: aya::programs::ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| LoadError::Program {
                what: "BTF tracepoint program type",
                source,
            })?;
        prog.load(tracepoint, &btf)
            .map_err(|source| LoadError::VcpuProgram {
                what: "loading (verifier)",
                name,
                source,
            })?;
        prog.attach().map_err(|source| LoadError::VcpuProgram {
            what: "attaching",
            name,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::TracepointArg;

    fn layout(entry: usize, exit: usize) -> KvmLayout {
        KvmLayout {
            vcpu_id: 4,
            arch: 100,
            l1_tsc_offset: 108,
            tsc_offset: 116,
            l1_tsc_scaling_ratio: 124,
            tsc_scaling_ratio: 132,
            kvm_entry: TracepointArg {
                index: entry,
                count: 2,
            },
            kvm_exit: TracepointArg {
                index: exit,
                count: 3,
            },
        }
    }

    #[test]
    fn program_layout_carries_every_offset_and_argument() {
        let got = program_layout(&layout(0, 1)).unwrap();
        assert_eq!(
            got,
            KvmVcpuLayout {
                vcpu_id: 4,
                l1_tsc_offset: 108,
                tsc_offset: 116,
                l1_tsc_scaling_ratio: 124,
                tsc_scaling_ratio: 132,
                entry_arg: 0,
                exit_arg: 1,
                _pad: 0,
            }
        );
    }

    #[test]
    fn argument_the_programs_cannot_read_is_named() {
        let err = program_layout(&layout(0, 3)).unwrap_err();
        assert!(err.to_string().contains("kvm_exit"), "{err}");
        assert!(err.to_string().contains("argument 3"), "{err}");
    }
}
