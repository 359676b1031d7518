//! Writers for the merged timeline: text in the spirit of `trace-cmd
//! report`, JSON lines, and a Perfetto trace ([`perfetto`], described
//! there). [`rotate`] cuts any of them into pieces that each open on
//! their own (`--rotate-size`, `--rotate-every`).
//!
//! A writer decodes an item's fields only when it writes it, with the
//! formats of the item's source, and builds each line in a reused buffer:
//! no allocation per event once warm. Output reaches the underlying writer
//! per event or per batch ([`FlushPolicy`]); with `Batch` the session calls
//! [`EventWriter::flush`] after each batch it pops from the merge.
//!
//! ```
//! use std::sync::Arc;
//! use tsc_userspace::merge::{MergeConfig, Merger, SourceInfo, SourceKind, Sources};
//! use tsc_userspace::output::{self, ClockMode, FlushPolicy, OutputFormat, WriteContext};
//! use tsc_userspace::tracefs::FormatSet;
//!
//! let mut sources = Sources::new();
//! sources.add(SourceInfo { kind: SourceKind::Host, name: "host".into(), formats: Arc::new(FormatSet::new()), kernel_release: None })?;
//! let mut merger = Merger::new(MergeConfig::default());
//! let mut writer = output::writer(OutputFormat::Text, ClockMode::Ns, FlushPolicy::Batch, std::io::stdout());
//! let tsc_to_ns = |tsc: u64| tsc / 3; // the session's calibrated host clock
//! // For each batch of events: push them, then
//! merger.pop_ready(0, |item| {
//!     sources.learn_comms(&item); // names from sched events, before writing
//!     writer.write(&WriteContext { sources: &sources, clock: &tsc_to_ns, boottime: None }, &item)
//! })?;
//! writer.flush()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Text
//! ```text
//! SOURCE: COMM-PID [CPU] TIMESTAMP: (+DELTA) SYSTEM:NAME: FIELD=VALUE... [FLAGS]
//! host:        qemu-1234 [001] 812.000000123: (+250) kvm:kvm_exit: exit_reason=30 ...
//! vm1:    kworker/0:1-15 [000] 812.000000200: (+77) sched:sched_switch: prev_comm=...
//! ```
//! - SOURCE is `host`, or the guest's VM name; CPU is then the *guest* CPU
//!   (the vCPU it runs on is in the JSON output). `SOURCE:` is padded to 6
//!   columns and `COMM-PID` right-aligned to 16, so short names align.
//! - COMM is the task's name from the source's table, `<...>` when
//!   unknown; PID is `common_pid` (`?` for an event of unknown format).
//! - TIMESTAMP is host time: `seconds.nanoseconds` ([`ClockMode::Ns`]) or
//!   host TSC ticks ([`ClockMode::Tsc`]); DELTA is the difference from the
//!   previous line in the same unit (negative for a late event).
//! - Fields are every non-common field in format order: integers in
//!   decimal, pointers in hex, strings as text with control characters,
//!   backslashes and bytes that are not UTF-8 escaped (`\n`, `\\`,
//!   `\xNN`), arrays as `{a,b}`, other bytes in hex, and `<out of record>`
//!   for a field the record is too short for.
//! - FLAGS, when any: `[resolved-by-order,outside-epoch,offset-not-applied,late]`.
//! - An event whose format is unknown: `<unknown id ID>: len=N` (ID `?`
//!   when its source has no formats at all).
//!
//! # JSON lines
//! One object per event:
//! ```text
//! {"source":"guest","vm":"vm1","vm_pid":4242,"cpu":0,"vcpu":0,
//!  "event":"sched:sched_switch","id":372,"host_tsc":123,"ns":41,
//!  "guest_tsc":100,"epoch":2,"pid":15,"comm":"kworker/0:1",
//!  "fields":{"prev_comm":"kworker/0:1","prev_pid":15,...},"flags":["late"]}
//! ```
//! `source` is `"unknown"` for an item whose source was removed before it
//! was written. `id` is the event's `common_type`.
//! `vm`, `vm_pid`, `vcpu`, `guest_tsc` and `epoch` are null when not known
//! (always for the host); `pid` and `comm` are null when unknown. In
//! `fields`, integers are numbers, strings are strings (lossy UTF-8),
//! arrays and other bytes are arrays of numbers, pointers are `"0x..."`
//! strings, and a field beyond the record is null. An event of unknown
//! format has `"event":null`, its `id` (or null), `"payload_len":N` and
//! `"fields":null`.

mod json;
mod last_comm;
pub mod perfetto;
pub mod rotate;
mod sink;
mod tee;
mod text;
mod value;

use std::io::{self, Write};

pub use json::JsonWriter;
pub use perfetto::PerfettoWriter;
pub use rotate::Rotating;
pub use sink::FlushPolicy;
pub use tee::Tee;
pub use text::TextWriter;

use crate::{
    merge::{MergeItem, Source, Sources},
    tracefs::Event,
};

/// Host TSC to host nanoseconds, as the session's clock calibration says.
/// Any `Fn(u64) -> u64` is one.
pub trait TscToNs {
    /// Nanoseconds of host TSC `tsc`.
    fn tsc_to_ns(&self, tsc: u64) -> u64;
}

impl<F: Fn(u64) -> u64> TscToNs for F {
    fn tsc_to_ns(&self, tsc: u64) -> u64 {
        self(tsc)
    }
}

/// What a writer needs besides the item: the sources (names, formats,
/// command names) and the clock. Passed per call, so the session keeps
/// ownership and can update both between events.
#[derive(Clone, Copy)]
pub struct WriteContext<'a> {
    /// Every source.
    pub sources: &'a Sources,
    /// Host TSC to nanoseconds.
    pub clock: &'a dyn TscToNs,
    /// Host TSC to `CLOCK_BOOTTIME` nanoseconds, for the writers whose
    /// format is defined on it (Perfetto); `None` makes them use `clock`.
    /// Text and JSON ignore it.
    pub boottime: Option<&'a dyn TscToNs>,
}

/// Which unit timestamps are printed in (`--clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ClockMode {
    /// Host nanoseconds, as `seconds.nanoseconds`.
    #[default]
    Ns,
    /// Host TSC ticks.
    Tsc,
}

/// Which writer (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// `trace-cmd report`-like lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// A Perfetto trace (binary protobuf; use `-o FILE`): open it at
    /// ui.perfetto.dev or query it with `trace_processor`.
    Perfetto,
}

/// Something that writes merged items.
pub trait EventWriter {
    /// Writes one item (to the buffer, or through, per the flush policy).
    fn write(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) -> io::Result<()>;
    /// Writes out everything pending and flushes the underlying writer.
    fn flush(&mut self) -> io::Result<()>;
    /// Bytes written but held back from the underlying writer (those a
    /// flush would write now; for a format encoded at flush, an exact
    /// count of what it would encode). Rotation counts them, so a piece
    /// ends at its size rather than a batch later.
    fn held_bytes(&self) -> u64 {
        0
    }
}

/// A writer that drops everything: where events go once the reader of the
/// timeline has gone away, so the session can still end cleanly.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl EventWriter for Discard {
    fn write(&mut self, _: &WriteContext<'_>, _: &MergeItem) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer of `format` to `out`.
pub fn writer<W: Write + Send + 'static>(
    format: OutputFormat,
    clock: ClockMode,
    flush: FlushPolicy,
    out: W,
) -> Box<dyn EventWriter + Send> {
    match format {
        OutputFormat::Text => Box::new(TextWriter::new(out, clock, flush)),
        OutputFormat::Json => Box::new(JsonWriter::new(out, flush)),
        OutputFormat::Perfetto => Box::new(PerfettoWriter::new(out, flush)),
    }
}

/// An item with what its source says about it.
struct Resolved<'a> {
    source: Option<&'a Source>,
    /// The event with its format, when its id is known.
    event: Option<Event<'a>>,
    /// `common_type`, when the source's formats say where it is.
    id: Option<u16>,
    pid: Option<i32>,
    comm: Option<&'a str>,
}

impl<'a> Resolved<'a> {
    fn new(sources: &'a Sources, item: &'a MergeItem) -> Self {
        let source = sources.get(item.source);
        let payload = item.data.payload();
        let formats = source.map(Source::formats);
        let event = formats.and_then(|f| f.event(payload).ok());
        let id = match &event {
            Some(e) => Some(e.format.id),
            None => formats.and_then(|f| f.event_id(payload)),
        };
        let pid = event.as_ref().and_then(Event::pid);
        let comm = source.zip(pid).and_then(|(s, pid)| s.comm(pid));
        Self {
            source,
            event,
            id,
            pid,
            comm,
        }
    }
}

#[cfg(test)]
mod tests;
