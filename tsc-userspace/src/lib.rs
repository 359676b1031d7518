//! tsc-tracer's library: everything the `tsc-tracer` binary does, as typed APIs.
//!
//! Kernel side: [`ebpf`] loads the programs and [`offsets`] keeps the
//! per-VM, per-vCPU offset table they feed. [`kvm`] and [`process`] read
//! what the kernel exposes about VMs (debugfs, procfs). [`tracefs`] makes
//! private trace instances and decodes their ring-buffer pages.
//! [`timeline`] keeps each vCPU's offset epochs and places guest timestamps
//! in them; [`clock`] converts host TSC to CLOCK_MONOTONIC nanoseconds.
//!
//! Guest to host: [`agent`] runs in a guest and streams its raw trace pages
//! over the [`wire`] protocol (`docs/PROTOCOL.md`); [`ingest`] accepts
//! agents on the host and yields their decoded events.
//! [`merge`] puts many ordered event streams on one timeline and [`output`]
//! writes it; [`session`] drives it all live. [`demo`] is the toy guest and
//! agent behind `tsc-tracer demo`.

pub mod agent;
pub mod btf;
pub mod clock;
pub mod demo;
pub mod doctor;
pub mod ebpf;
pub mod ingest;
pub mod kvm;
pub mod merge;
pub mod offsets;
pub mod output;
pub mod process;
pub mod record;
pub mod session;
pub mod timeline;
pub mod tracefs;
pub mod vmm;
pub mod wire;
