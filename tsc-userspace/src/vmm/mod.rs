//! A small real VMM on `/dev/kvm`, for tests, the demo and `doctor` probes.
//!
//! It does what the project needs from a VM and nothing more: create vCPUs
//! (sparse ids allowed), give them exact TSC offsets and MSR values, and run a
//! guest program that reads the TSC and reports each reading, bracketed by
//! host `rdtsc` around every `KVM_RUN`. Every vCPU starts in 64-bit mode at
//! CPL3: on the PVM backend code at CPL3 runs on the hardware (CPL0 code is
//! emulated one instruction at a time), so `rdtsc` is the real thing.
//!
//! [`Child`] drives `tsc-tracer vmm`, the same VMM in a separate process, so
//! a test can watch a VMM with its own pid come and go.

mod child;
mod error;
pub mod guest_code;
pub mod memory;
pub mod script;
mod vcpu;
mod vm;

pub use child::{Child, ChildError};
pub use error::VmmError;
pub use vcpu::{Bracket, RdtscRun, Vcpu};
pub use vm::Vm;

use std::path::Path;

/// `IA32_TSC`: writing it sets the guest TSC (KVM turns that into an offset).
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_TSC_ADJUST`: writing it shifts the guest TSC by the difference.
pub const MSR_IA32_TSC_ADJUST: u32 = 0x3b;

/// True when `/dev/kvm` is served by the PVM backend, which runs guests
/// without VMX/SVM and does not apply TSC offsets: it zeroes
/// `arch.l1_tsc_offset` and `arch.tsc_offset` right after the
/// `kvm_write_tsc_offset` tracepoint, so a guest reads the raw host TSC.
pub fn is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}
