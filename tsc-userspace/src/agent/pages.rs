//! One task per CPU moves pages from `trace_pipe_raw` into a bounded queue.
//!
//! When the network is slower than the trace, the queue fills, the tasks
//! stop reading, and the kernel's ring buffer overwrites its oldest pages
//! and counts the loss (reported in Lost frames): the agent never buffers
//! without bound and never spins.

use std::time::Duration;

use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    tracefs::{AsyncRawPipe, TracefsError},
    wire::Page,
};

/// Pages a flush reads before yielding, so a busy CPU cannot keep the other
/// CPUs' tasks waiting.
const FLUSH_BATCH: usize = 64;

/// The per-CPU reader tasks.
pub struct Readers {
    tasks: JoinSet<Result<(), TracefsError>>,
    stop: CancellationToken,
}

impl Readers {
    /// Starts a reader per pipe, each flushing partly filled pages every
    /// `flush` so quiet CPUs are not held back.
    pub fn start(pipes: Vec<AsyncRawPipe>, tx: mpsc::Sender<Page>, flush: Duration) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for pipe in pipes {
            tasks.spawn(read_cpu(pipe, tx.clone(), flush, stop.clone()));
        }
        Self { tasks, stop }
    }

    /// Tells every reader to drain its CPU and finish.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits for the readers to finish; logs their errors.
    pub async fn join(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("page reader failed: {e}"),
                Err(e) => warn!("page reader task failed: {e}"),
            }
        }
    }
}

async fn read_cpu(
    mut pipe: AsyncRawPipe,
    tx: mpsc::Sender<Page>,
    flush: Duration,
    stop: CancellationToken,
) -> Result<(), TracefsError> {
    let cpu = pipe.cpu();
    let mut tick = tokio::time::interval(flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            page = pipe.next_page() => {
                if !send(&tx, cpu, 0, page?).await {
                    return Ok(());
                }
            }
            // Drain everything on each tick: once a read has taken a partly
            // filled page, this kernel stops waking pollers of the pipe
            // (seen on 6.18 with any buffer_percent above 0), so the tick is
            // what keeps a busy CPU's buffer from overflowing.
            _ = tick.tick() => {
                if !drain(&mut pipe, &tx, usize::MAX).await? {
                    return Ok(());
                }
            }
        }
    }
    // Shutting down: whatever is left, partly filled pages included.
    drain(&mut pipe, &tx, usize::MAX).await?;
    debug!("cpu {cpu}: reader done");
    Ok(())
}

/// Reads up to `max` ready pages; false once nobody takes pages.
async fn drain(
    pipe: &mut AsyncRawPipe,
    tx: &mpsc::Sender<Page>,
    max: usize,
) -> Result<bool, TracefsError> {
    for n in 1..=max {
        let Some(data) = pipe.try_read_page()? else {
            break;
        };
        if !send(tx, pipe.cpu(), Page::FLAG_PARTIAL, data).await {
            return Ok(false);
        }
        if n % FLUSH_BATCH == 0 {
            tokio::task::yield_now().await;
        }
    }
    Ok(true)
}

async fn send(tx: &mpsc::Sender<Page>, cpu: u32, flags: u32, data: bytes::Bytes) -> bool {
    tx.send(Page { cpu, flags, data }).await.is_ok()
}
