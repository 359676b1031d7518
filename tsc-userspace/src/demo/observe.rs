//! Watching what the session writes: where each reading was placed, so the
//! demo can check itself and know when everything sent has come out.

use std::{
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use super::seq_of;
use crate::{
    Flags,
    merge::MergeItem,
    output::{EventWriter, WriteContext},
};

/// Where the session put one reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The reading's number.
    pub seq: u32,
    /// The host TSC the session converted it to.
    pub host_tsc: u64,
    /// The flags it was written with.
    pub flags: Flags,
}

/// The readings written so far, shared with whoever waits for them.
#[derive(Clone, Debug, Default)]
pub struct Placements {
    placed: Arc<Mutex<Vec<Placed>>>,
    changed: Arc<Notify>,
}

impl Placements {
    /// Everything placed so far, in output order.
    pub fn snapshot(&self) -> Vec<Placed> {
        self.placed.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Readings placed so far.
    pub fn count(&self) -> usize {
        self.placed.lock().map(|p| p.len()).unwrap_or_default()
    }

    /// Waits until at least `n` readings were written or `limit` passed;
    /// true when they were.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> bool {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if self.count() >= n {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    fn record(&self, placed: Placed) {
        if let Ok(mut all) = self.placed.lock() {
            all.push(placed);
        }
        self.changed.notify_waiters();
    }
}

/// An [`EventWriter`] that passes everything to another one and notes where
/// each `tsc_demo:rdtsc` event was placed.
pub struct Observer {
    inner: Box<dyn EventWriter + Send>,
    placements: Placements,
}

impl Observer {
    /// Wraps `inner`; the placements are also seen through `placements`.
    pub fn new(inner: Box<dyn EventWriter + Send>, placements: Placements) -> Self {
        Self { inner, placements }
    }
}

impl EventWriter for Observer {
    fn write(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) -> io::Result<()> {
        self.inner.write(ctx, item)?;
        if item.guest_tsc.is_some()
            && let Some(seq) = seq_of(item.data.payload())
        {
            self.placements.record(Placed {
                seq,
                host_tsc: item.host_tsc,
                flags: item.flags,
            });
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
