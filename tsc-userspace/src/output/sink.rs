//! A line buffer in front of the real output, flushed per event or per batch.

use std::io::{self, Write};

/// When output reaches the underlying writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// Write and flush after every event: lowest latency, one write(2) each.
    EveryEvent,
    /// Keep events until [`EventWriter::flush`](super::EventWriter::flush)
    /// (the session calls it after each batch) or until
    /// 64 KiB are pending.
    #[default]
    Batch,
}

/// Pending lines and the writer they go to. Lines are built straight into
/// `buf`, which is reused, so a line costs no allocation once it has grown.
#[derive(Debug)]
pub(crate) struct Sink<W: Write> {
    inner: W,
    pub(crate) buf: Vec<u8>,
    policy: FlushPolicy,
}

impl<W: Write> Sink<W> {
    /// Pending bytes past which a batch is written out even before `flush`.
    pub(crate) const BATCH_BYTES: usize = 64 * 1024;

    pub(crate) fn new(inner: W, policy: FlushPolicy) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(Self::BATCH_BYTES + 4096),
            policy,
        }
    }

    /// A line has been appended to `buf`.
    pub(crate) fn line_done(&mut self) -> io::Result<()> {
        match self.policy {
            FlushPolicy::EveryEvent => self.flush(),
            FlushPolicy::Batch if self.buf.len() >= Self::BATCH_BYTES => self.write_out(),
            FlushPolicy::Batch => Ok(()),
        }
    }

    /// Writes what is pending and flushes the writer.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.inner.flush()
    }

    fn write_out(&mut self) -> io::Result<()> {
        // Cleared even on error: a failed write must not be repeated with
        // the next line, duplicating what did get through.
        let result = self.inner.write_all(&self.buf);
        self.buf.clear();
        result
    }

    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Drop for Sink<W> {
    fn drop(&mut self) {
        if !self.buf.is_empty()
            && let Err(e) = self.flush()
        {
            tracing::warn!("output lost at exit: {e}");
        }
    }
}
