//! Rotation: an output cut into pieces, each a complete file of its format
//! that opens on its own, with only the newest kept.
//!
//! [`Rotating`] wraps the writers of [`output`](super) without changing
//! them: each piece gets a fresh writer, so a text piece is plain lines
//! (its first delta `+0`), a JSON piece is JSON lines, and a Perfetto
//! piece starts with the host's `SystemInfo` and describes every machine
//! and task again as their first event in it is written (what
//! [`PerfettoWriter`](super::PerfettoWriter) emits once per file).
//!
//! - **When.** A piece ends at an event boundary: before the first event
//!   written once it is due ([`RotatePolicy::due`]: its bytes reached the
//!   size, or its age the period), or right after a flush that found it
//!   due. Its bytes are those in the file plus those its writer holds
//!   back ([`EventWriter::held_bytes`]: a batch of text or JSON, or the
//!   events Perfetto holds in bundles, by their encoded size), so a piece
//!   ends within one event (and, for Perfetto, a few bytes of framing per
//!   bundle) of its size however seldom the session flushes. A piece is
//!   opened by its first event: no empty pieces, and no rotation while
//!   nothing is written.
//! - **Names.** [`Pieces`]: `FILE.0001`, `FILE.0002`, ...
//! - **Kept.** After a piece is opened the oldest are deleted so that
//!   [`RotatePolicy::keep`] remain, the new one included.
//! - **Following.** A recording's Perfetto copy follows the recording's
//!   pieces ([`PieceSignal`]) instead of deciding itself: it moves to
//!   `DIR/NNNN/trace.perfetto-trace` when the recording moves to
//!   `DIR/NNNN/`.

mod pieces;
mod policy;

use std::{
    fs::File,
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

pub use pieces::{PieceKind, Pieces, piece_number};
pub use policy::{ByteSize, ByteSizeError, DEFAULT_KEEP, RotatePolicy};

use super::{ClockMode, EventWriter, FlushPolicy, OutputFormat, WriteContext};
use crate::merge::MergeItem;

/// The number of the piece another rotation (a recording's) is writing,
/// for writers that follow it. 0 until its first piece.
#[derive(Clone, Debug, Default)]
pub struct PieceSignal(Arc<AtomicU64>);

impl PieceSignal {
    /// The current piece.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Piece `n` is now the current one (its directory exists).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Release);
    }
}

/// Who decides when a piece ends, and where pieces go.
enum Target {
    /// This writer, by its policy; it deletes old pieces too.
    Own {
        pieces: Pieces,
        policy: RotatePolicy,
        next: u64,
    },
    /// Another rotation: piece `n` goes to `path(n)`.
    Follow {
        signal: PieceSignal,
        path: Box<dyn Fn(u64) -> PathBuf + Send>,
    },
}

/// A file that counts the bytes written to it.
struct Counted {
    file: File,
    bytes: Arc<AtomicU64>,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The piece being written.
struct Piece {
    n: u64,
    path: PathBuf,
    writer: Box<dyn EventWriter + Send>,
    bytes: Arc<AtomicU64>,
    opened: Instant,
    events: u64,
}

/// What a rotation did, for the log and the tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotateStats {
    /// Pieces opened.
    pub opened: u64,
    /// Pieces deleted (this run's and earlier runs').
    pub deleted: u64,
    /// Events written into pieces this run deleted.
    pub deleted_events: u64,
}

/// An [`EventWriter`] that writes `format` into a sequence of pieces; see
/// the [module documentation](self).
pub struct Rotating {
    format: OutputFormat,
    clock: ClockMode,
    flush: FlushPolicy,
    target: Target,
    current: Option<Piece>,
    /// Events of this run's pieces still on disk, by number.
    written: Vec<(u64, u64)>,
    stats: RotateStats,
}

impl Rotating {
    /// Writes `format` into the pieces of `file` (`FILE.NNNN`), cut by
    /// `policy`. Numbering continues after the pieces already there.
    pub fn new(
        file: impl Into<PathBuf>,
        policy: RotatePolicy,
        format: OutputFormat,
        clock: ClockMode,
        flush: FlushPolicy,
    ) -> io::Result<Self> {
        let pieces = Pieces::new(file, PieceKind::File);
        let next = pieces.next_number()?;
        Ok(Self::with_target(
            Target::Own {
                pieces,
                policy,
                next,
            },
            format,
            clock,
            flush,
        ))
    }

    /// Writes `format` into `path(n)` for each piece `n` that `signal`
    /// announces (a recording's pieces).
    pub fn following(
        signal: PieceSignal,
        path: impl Fn(u64) -> PathBuf + Send + 'static,
        format: OutputFormat,
        clock: ClockMode,
        flush: FlushPolicy,
    ) -> Self {
        let target = Target::Follow {
            signal,
            path: Box::new(path),
        };
        Self::with_target(target, format, clock, flush)
    }

    fn with_target(
        target: Target,
        format: OutputFormat,
        clock: ClockMode,
        flush: FlushPolicy,
    ) -> Self {
        Self {
            format,
            clock,
            flush,
            target,
            current: None,
            written: Vec::new(),
            stats: RotateStats::default(),
        }
    }

    /// What was done so far.
    pub fn stats(&self) -> &RotateStats {
        &self.stats
    }

    /// Whether the current piece is done.
    fn due(&self) -> bool {
        let Some(p) = &self.current else {
            return false;
        };
        match &self.target {
            Target::Own { policy, .. } => policy.due(
                p.events,
                p.bytes.load(Ordering::Relaxed) + p.writer.held_bytes(),
                p.opened.elapsed(),
            ),
            Target::Follow { signal, .. } => signal.current() != p.n,
        }
    }

    /// Flushes and closes the current piece.
    fn close(&mut self) -> io::Result<()> {
        let Some(mut p) = self.current.take() else {
            return Ok(());
        };
        let result = p.writer.flush();
        drop(p.writer);
        tracing::info!(
            "{}: {} events, {} bytes",
            p.path.display(),
            p.events,
            p.bytes.load(Ordering::Relaxed)
        );
        if let Some(w) = self.written.iter_mut().find(|(n, _)| *n == p.n) {
            w.1 = p.events;
        }
        result
    }

    /// Opens the next piece, then deletes what is beyond the ones kept.
    fn open(&mut self) -> io::Result<()> {
        let (n, path) = match &mut self.target {
            Target::Own { pieces, next, .. } => (*next, pieces.path(*next)),
            Target::Follow { signal, path } => {
                let n = signal.current();
                (n, path(n))
            }
        };
        let file = File::create(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if let Target::Own { next, .. } = &mut self.target {
            *next += 1;
        }
        let bytes = Arc::new(AtomicU64::new(0));
        let out = Counted {
            file,
            bytes: Arc::clone(&bytes),
        };
        self.current = Some(Piece {
            n,
            writer: super::writer(self.format, self.clock, self.flush, out),
            path,
            bytes,
            opened: Instant::now(),
            events: 0,
        });
        self.written.push((n, 0));
        self.stats.opened += 1;
        self.prune();
        Ok(())
    }

    /// Deletes the oldest pieces beyond those kept (a failure is logged:
    /// the output goes on).
    fn prune(&mut self) {
        let Target::Own { pieces, policy, .. } = &self.target else {
            return;
        };
        let existing = match pieces.existing() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("listing the pieces of {}: {e}", pieces.base().display());
                return;
            }
        };
        for n in policy.to_delete(&existing) {
            match pieces.delete(n) {
                Ok(()) => {
                    let events = self
                        .written
                        .iter()
                        .position(|(m, _)| *m == n)
                        .map_or(0, |i| self.written.remove(i).1);
                    self.stats.deleted += 1;
                    self.stats.deleted_events += events;
                    tracing::info!(
                        "deleted {} ({events} events): beyond the {} pieces kept",
                        pieces.path(n).display(),
                        policy.keep
                    );
                }
                Err(e) => tracing::warn!("deleting {}: {e}", pieces.path(n).display()),
            }
        }
    }
}

impl EventWriter for Rotating {
    fn write(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) -> io::Result<()> {
        if self.due() {
            self.close()?;
        }
        if self.current.is_none() {
            self.open()?;
        }
        let Some(p) = &mut self.current else {
            return Ok(());
        };
        p.events += 1;
        p.writer.write(ctx, item)
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(p) = &mut self.current {
            p.writer.flush()?;
        }
        if self.due() {
            self.close()?;
        }
        Ok(())
    }
}

impl Drop for Rotating {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("closing the last piece: {e}");
        }
        if let Target::Own { pieces, .. } = &self.target {
            let s = &self.stats;
            tracing::info!(
                "{}: {} pieces written, {} deleted ({} events in this run's deleted pieces)",
                pieces.base().display(),
                s.opened,
                s.deleted,
                s.deleted_events
            );
        }
    }
}

#[cfg(test)]
mod tests;
