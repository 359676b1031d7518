//! tracefs: private trace instances, raw ring-buffer pages, and decoding them.
//!
//! Both halves of a session use this: the guest agent creates an
//! [`Instance`], reads each CPU's pages with a [`RawPipe`] /
//! [`AsyncRawPipe`] and forwards them untouched; the host decodes pages with
//! [`Page`] and fields with a [`FormatSet`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tsc_userspace::tracefs::{Instance, InstanceOptions, Page};
//!
//! let mut opts = InstanceOptions::new("tsc-agent");
//! opts.events = vec!["sched:sched_switch".parse()?];
//! let instance = Instance::create(&opts)?;
//! let layout = instance.page_layout()?;
//! let formats = instance.format_set()?;
//! let mut pipe = instance.open_pipe(0)?.into_async()?;
//! let page = pipe.next_page().await?; // bytes::Bytes, one whole page
//! for event in Page::parse(&layout, &page)?.events() {
//!     let event = event?;
//!     println!("{} {}", event.ts, formats.event(event.data)?);
//! }
//! # Ok(()) }
//! ```
//!
//! # Cleaning up
//! An instance is removed when the last handle to it (the [`Instance`] and
//! every pipe opened from it) is dropped: on normal return, on `?`, and while
//! a panic unwinds. Signals do not unwind, so a binary must turn SIGINT and
//! SIGTERM into an orderly return, e.g. by racing its work against
//! [`crate::signal::shutdown`] in `tokio::select!`, then dropping pipes and
//! instances before it exits. For the paths where nothing unwinds (a
//! `panic = "abort"` build, `std::process::exit`), [`cleanup_live_instances`]
//! stops and removes every instance this process still has, and
//! [`install_panic_hook`] calls it from the panic hook. An instance left by a
//! process that was killed (SIGKILL) is removed by the next
//! [`Instance::create`] with the same prefix.

mod fields;
mod format;
mod instance;
mod mount;
mod page;
mod page_builder;
mod pipe;
mod registry;
pub mod tracedat;

use std::{io, path::PathBuf};

pub use fields::{ArrayValue, Event, FieldError, Value};
pub use format::{
    EventFormat, Field, FieldDecl, FieldKind, FormatError, FormatSet, Location, parse_field_line,
};
pub use instance::{EventName, Instance, InstanceOptions, TraceMarker};
pub use mount::{DEFAULT_TRACEFS, Tracefs, find_in_mounts, parse_cpu_list, parse_saved_cmdlines};
pub use page::{Events, LostEvents, Page, PageError, PageLayout, RawEvent};
pub use page_builder::{PageBuildError, PageBuilder};
pub use pipe::{AsyncRawPipe, RawPipe};
pub use registry::{cleanup_live_instances, install_panic_hook};

/// Errors using tracefs.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// tracefs is mounted nowhere.
    #[error(
        "tracefs is not mounted (mount -t tracefs tracefs {})",
        mount::DEFAULT_TRACEFS
    )]
    NotMounted,
    /// tracefs must be mounted, and only root can.
    #[error("tracefs is not mounted and mounting it needs root")]
    NotRoot,
    /// An event the kernel does not have.
    #[error("unknown trace event {0} (not in tracefs events/)")]
    UnknownEvent(EventName),
    /// The kernel refused a trace clock.
    #[error("trace clock {clock:?} is not available (available: {available})")]
    Clock {
        /// The clock asked for.
        clock: String,
        /// What `trace_clock` lists.
        available: String,
    },
    /// A tracefs file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `header_page` or a page could not be decoded.
    #[error(transparent)]
    Page(#[from] PageError),
    /// An event format could not be parsed.
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl TracefsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
