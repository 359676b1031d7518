//! Errors of the VMM.

use std::io;

/// Why a VMM operation failed. Ioctl failures name the ioctl.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` could not be opened.
    #[error("opening /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A VM-level ioctl failed.
    #[error("{ioctl} failed: {source}")]
    Vm {
        /// The ioctl, e.g. `KVM_CREATE_VM`.
        ioctl: &'static str,
        /// The kernel's error.
        source: kvm_ioctls::Error,
    },
    /// A vCPU ioctl failed.
    #[error("{ioctl} on vCPU {vcpu} failed: {source}")]
    Vcpu {
        /// The ioctl, e.g. `KVM_SET_SREGS`.
        ioctl: &'static str,
        /// The vCPU id.
        vcpu: u32,
        /// The kernel's error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("mapping guest memory: {0}")]
    Memory(#[source] io::Error),
    /// `add_vcpu` with an id already in use.
    #[error("vCPU {0} already exists")]
    DuplicateVcpu(u32),
    /// A vCPU id that was never added.
    #[error("no vCPU {0}")]
    NoSuchVcpu(u32),
    /// `KVM_SET_MSRS` accepted fewer MSRs than given (KVM's way to refuse one).
    #[error("KVM_SET_MSRS on vCPU {vcpu} refused MSR {index:#x}")]
    MsrRefused {
        /// The vCPU id.
        vcpu: u32,
        /// The MSR index.
        index: u32,
    },
    /// The guest program exited to us in a way it never should.
    #[error("KVM_RUN on vCPU {vcpu}: unexpected exit {exit}")]
    UnexpectedExit {
        /// The vCPU id.
        vcpu: u32,
        /// What the exit was.
        exit: String,
    },
}
