//! Recording a session as trace.dat files (`trace-cmd` file version 7) that
//! `trace-cmd report` and KernelShark open and merge: `host.dat` plus one
//! file per guest agent connection, paired the way `trace-cmd record -A`
//! pairs them, the guest files carrying every epoch of every vCPU.
//!
//! - [`dat`]: the file writer (header, sections, options, per-CPU data);
//! - [`options`]: the options this project writes and their encodings;
//! - [`timeshift`]: a vCPU's epochs as `TIME_SHIFT` samples, or its pages
//!   rewritten in host TSC where the samples could not place every event
//!   exactly as [`crate::timeline`] does;
//! - [`spill`], [`meta`], [`recorder`], [`assemble`](mod@assemble): the live side (pages
//!   appended to per-CPU spill files as they arrive, a JSON description of
//!   what assembly needs) and the assembly at the end or after a crash.
//!
//! The readers' rules this follows, with the functions of trace-cmd 3.1.6
//! they come from, are in `docs/RECORDING.md`.

pub mod assemble;
pub mod dat;
pub mod live;
pub mod meta;
pub mod options;
pub mod readme;
pub mod recorder;
pub mod rotate;
pub mod spill;
pub mod timeshift;

pub use assemble::{AssembleError, assemble};
pub use dat::{CpuData, DatFile, Formats};
pub use meta::{GuestMeta, RecordingMeta, StreamMeta};
pub use options::{DatOption, GuestVcpu, TimeShiftCpu, TimeShiftSample, Tsc2Nsec};
pub use readme::PERFETTO_FILE;
pub use recorder::{Recorder, RecorderError};
