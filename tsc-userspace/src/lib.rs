//! tsc-tracer's library: everything the `tsc-tracer` binary does, as typed
//! APIs. The modules, in the order data flows through a live session:
//!
//! 1. **kernel**: [`ebpf`] loads the programs on `kvm_write_tsc_offset`
//!    and `kvm_entry`/`kvm_exit`; [`btf`] finds the vCPU fields they read;
//!    [`kvm`] and [`process`] read what debugfs and procfs say of VMs.
//! 2. **offsets**: [`offsets`] keeps the per-VM, per-vCPU offset table and
//!    emits every change as an [`offsets::OffsetEvent`].
//! 3. **timeline**: [`timeline`] keeps each vCPU's epochs and places a guest
//!    timestamp in one, with [`Flags`] saying how sure the place is;
//!    [`clock`] turns host TSC into `CLOCK_MONOTONIC` nanoseconds.
//! 4. **ingest**: in the guest, [`agent`] streams the raw [`tracefs`] pages
//!    [`page_reader`] reads (with each CPU's exact watermark) over the
//!    [`wire`] protocol (`docs/PROTOCOL.md`); on the host, [`ingest`]
//!    accepts agents and decodes their pages in place, and the session
//!    reads its own instance with the same [`page_reader`].
//! 5. **correlator**: [`correlator`] binds agents to VMs, converts each
//!    guest timestamp with the epoch it belongs to and feeds the merge. It
//!    does no I/O; [`session`] is the live loop around it.
//! 6. **merge**: [`merge`] puts every ordered stream on one timeline within
//!    a bounded window.
//! 7. **output**: [`output`] writes it (text, JSON lines).
//!
//! Beside the flow: [`doctor`] checks what a host allows, [`vmm`] is a
//! minimal VMM on `/dev/kvm` (tests, demo), [`demo`] the toy guest behind
//! `tsc-tracer demo`. [`record`] writes a session as trace.dat files;
//! [`flight`] keeps only its newest pages and writes them when asked.
//!
//! Agents prove a shared key to the host with [`auth`].
//!
//! Without the default `host` feature only [`agent`], [`auth`], [`page_reader`], [`signal`], [`tracefs`]
//! and [`wire`] build: the guest agent alone (the `tsc-agent` binary), with
//! stable Rust and none of the kernel side's dependencies.

pub mod agent;
pub mod auth;
#[cfg(feature = "host")]
pub mod btf;
#[cfg(feature = "host")]
pub mod clock;
#[cfg(feature = "host")]
pub mod correlator;
#[cfg(feature = "host")]
pub mod demo;
#[cfg(feature = "host")]
pub mod doctor;
#[cfg(feature = "host")]
pub mod ebpf;
#[cfg(feature = "host")]
pub mod flags;
#[cfg(feature = "host")]
pub mod flight;
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
pub mod page_reader;
#[cfg(feature = "host")]
pub mod process;
#[cfg(feature = "host")]
pub mod record;
#[cfg(feature = "host")]
pub mod session;
pub mod signal;
#[cfg(feature = "host")]
pub mod timeline;
pub mod tracefs;
#[cfg(feature = "host")]
pub mod vmm;
pub mod wire;

#[cfg(feature = "host")]
pub use flags::Flags;
