//! One timeline out of many ordered streams: the host's per-CPU streams and
//! every guest's per-CPU streams, each ordered by host TSC, merged with a
//! bounded reorder window.
//!
//! # Use
//! A session registers each source in [`Sources`] (its kind, name and
//! event formats), turns each event into a [`MergeItem`] (host TSC, source,
//! CPU, guest details, flags and the record as [`EventData`], a view into
//! its page) and drives a [`Merger`]:
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use tsc_userspace::merge::*;
//! use tsc_userspace::tracefs::FormatSet;
//!
//! let mut sources = Sources::new();
//! let host = sources.add(SourceInfo {
//!     kind: SourceKind::Host,
//!     name: "host".into(),
//!     formats: Arc::new(FormatSet::new()),
//!     kernel_release: None,
//! })?;
//! let mut merger = Merger::new(MergeConfig::new(3_000_000)); // ~1 ms at 3 GHz
//! let mut written = Vec::new();
//! let data = EventData::from_bytes(Bytes::from_static(&[0; 8]));
//! for (cpu, tsc) in [(0, 20), (1, 10), (0, 30)] {
//!     // A late item, or one forced out by the bound, comes back to write now.
//!     if let Some(now) = merger.push(MergeItem::host(host, cpu, tsc, data.clone())) {
//!         written.push(now.host_tsc);
//!     }
//! }
//! let mut write = |item: MergeItem| {
//!     written.push(item.host_tsc);
//!     Ok::<(), std::io::Error>(())
//! };
//! assert_eq!(merger.pop_ready(40, &mut write)?, 1); // 10: CPU 1 is at 10
//! merger.advance(host, 1, 25); // CPU 1 read nothing new up to TSC 25
//! assert_eq!(merger.pop_ready(40, &mut write)?, 1); // 20
//! // 30 waits for CPU 1's watermark to pass it, or for the window.
//! assert_eq!(merger.flush_all(&mut write)?, 1);
//! assert_eq!(written, [10, 20, 30]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Semantics
//! - A stream is `(SourceId, cpu)`, opened by its first
//!   [`push`](Merger::push) or [`advance`](Merger::advance). It promises its
//!   items in host-TSC order; its *watermark* is the highest TSC it has
//!   pushed or advanced to ("nothing earlier will come"). A new stream's
//!   watermark is 0, so it holds everything back until it pushes or
//!   advances: a session should `advance` a stream when a read finds it
//!   empty (host CPUs) or a keep-alive arrives (guests).
//! - [`pop_ready`](Merger::pop_ready)`(now)` emits, in order, every held
//!   item at or before the minimum watermark of the open streams, and every
//!   item at or before `now - window` even if a stream has not caught up
//!   (counted as *forced*). `now` is the session's current host TSC.
//! - An item that arrives below the last emitted TSC cannot be put in
//!   order: [`push`](Merger::push) hands it straight back flagged
//!   [`Flags::LATE`](crate::Flags::LATE) and counts it. An item below its own stream's previous
//!   one but not below the last emitted is put in place (counted as
//!   *reordered*): guest streams can step back across an epoch change.
//! - At most `max_held` items are held; one more and `push` hands back the
//!   oldest (counted as *overflowed*). Nothing is ever dropped: every item
//!   pushed comes out of `push`, `pop_ready` or `flush_all`, and
//!   `pushed == held + emitted` for every source ([`MergeStats`]).
//! - [`close_stream`](Merger::close_stream) /
//!   [`close_source`](Merger::close_source): the stream stops holding the
//!   others back; its held items still come out in order. A push to a
//!   closed stream reopens it.
//! - Equal TSCs from different streams come out in an unspecified but
//!   deterministic order; within a stream, in push order.
//!
//! # Why per-stream queues and a heap of heads
//! Each stream already arrives in order, so it only needs a FIFO
//! (`VecDeque`, amortised O(1) and no allocation per item once grown), and
//! the merge needs only the smallest head: a binary heap of one entry per
//! non-empty stream. An item costs O(1) to hold (the heap changes only when
//! a stream goes from empty to non-empty) and O(log k) to emit, k being the
//! number of streams (tens), updated in place with `PeekMut` (one sift, not
//! a pop and a push). One heap of all held items would cost O(log n) for
//! both, with n up to a million, and would move the 90-byte items around
//! on every sift. `benches/merge.rs` measures both on the same work: the
//! per-stream queues are about twice as fast with 8 streams and three
//! times with 64. The minimum watermark is recomputed by a scan of the
//! streams once per `pop_ready` (per batch, not per item).

mod item;
mod merger;
mod sources;

pub use item::{EventData, MergeItem, SourceId};
pub use merger::{MergeConfig, MergeStats, Merger, SourceCounts};
pub use sources::{Source, SourceInfo, SourceKind, Sources};

/// Errors of the merge's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// Every source id has been used (2^32 sources in one session).
    #[error("no source ids left")]
    TooManySources,
}

#[cfg(test)]
mod tests;
