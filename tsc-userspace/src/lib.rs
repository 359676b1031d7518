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
//!
//! Without the default `host` feature only [`agent`], [`tracefs`] and
//! [`wire`] build: the guest agent alone (the `tsc-agent` binary), with
//! stable Rust and none of the kernel side's dependencies.

pub mod agent;
#[cfg(feature = "host")]
pub mod btf;
#[cfg(feature = "host")]
pub mod clock;
#[cfg(feature = "host")]
pub mod demo;
#[cfg(feature = "host")]
pub mod doctor;
#[cfg(feature = "host")]
pub mod ebpf;
#[cfg(feature = "host")]
pub mod ingest;
#[cfg(feature = "host")]
pub mod kvm;
#[cfg(feature = "host")]
pub mod merge;
#[cfg(feature = "host")]
pub mod offsets;
#[cfg(feature = "host")]
pub mod output;
#[cfg(feature = "host")]
pub mod process;
#[cfg(feature = "host")]
pub mod session;
#[cfg(feature = "host")]
pub mod timeline;
pub mod tracefs;
#[cfg(feature = "host")]
pub mod vmm;
pub mod wire;
