//! tsc-tracer's library: everything the `tsc-tracer` binary does, as typed APIs.
//!
//! Kernel side: [`ebpf`] loads the programs and [`offsets`] keeps the
//! per-VM, per-vCPU offset table they feed. [`kvm`] and [`process`] read
//! what the kernel exposes about VMs (debugfs, procfs). [`tracefs`] makes
//! private trace instances and decodes their ring-buffer pages. [`merge`]
//! puts many ordered event streams on one timeline and [`output`] writes it.

pub mod btf;
pub mod ebpf;
pub mod kvm;
pub mod merge;
pub mod offsets;
pub mod output;
pub mod process;
pub mod tracefs;
pub mod vmm;
