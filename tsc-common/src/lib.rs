//! Types shared by the kernel programs (`tsc-ebpf`) and userspace
//! (`tsc-userspace`), and the exact integer TSC arithmetic both rely on.
//!
//! Everything here is `no_std` and allocation-free so the eBPF side can use it.
#![no_std]

pub mod record;
pub mod tsc;
pub mod vcpu_state;
