//! Reading a trace instance's ring buffers: one task moves every CPU's
//! pages from `trace_pipe_raw` into a bounded queue, each CPU's exact
//! watermark right after its pages. The guest agent ships what it reads;
//! the host session reads its own instance the same way.
//!
//! When to read:
//! - a busy CPU: as soon as the kernel says its buffer reached the
//!   instance's `buffer_percent` (re-armed after each read, see
//!   [`AsyncRawPipe::rearm`]), until empty;
//! - every CPU on a short timer, partly filled pages included: how a quiet
//!   CPU's events and watermark get out. The period doubles while every
//!   CPU is found empty, up to [`IDLE_FACTOR`] times the flush period, and
//!   drops back as soon as one is not.
//!
//! Each read until empty ends with a read that found the buffer empty; the
//! TSC read just before it, less [`MARGIN_TICKS`], is that CPU's watermark
//! ([`Read::Drained`]): no later page of the CPU holds an event stamped
//! before it. The margin is for records being written at that instant: the
//! kernel stamps a record when it reserves room for it, and a reader sees
//! it only once it is committed (for a `trace_marker` write, after the
//! copy from user space; with interrupts nested inside, after them too).
//! A back-to-back writer is inside that window a good part of the time,
//! so without the margin most reads of a busy CPU would end just above a
//! record still to come.
//!
//! Buffers are sized up front, never grown while recording: a resize
//! stops the whole instance's recording while it allocates
//! (`__tracing_resize_ring_buffer()` in kernel/trace/trace.c: "Do not
//! allow tracing while resizing ring buffer"), and what happens meanwhile
//! is lost without a count (`trace_marker` writers get EBADF: seen on 6.18
//! when an earlier version of this reader doubled a busy CPU's buffer).
//!
//! When the network is slower than the trace, the queue fills, the task
//! stops reading, and the kernel's ring buffer overwrites its oldest pages
//! and counts the loss (reported in Lost frames): the agent never buffers
//! without bound and never spins.
//!
//! The pages and watermarks are the wire's ([`Page`], [`DrainedCpu`]): what
//! a reader hands on is what the agent sends.

use std::time::Duration;

use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    tracefs::{AsyncRawPipe, TracefsError},
    wire::{DrainedCpu, Page, rdtsc},
};

/// Pages a drain reads before yielding, so one busy CPU cannot keep the
/// network side waiting.
const DRAIN_BATCH: usize = 64;

/// How far below the TSC of an empty read a watermark is put: 100 µs at
/// 5 GHz, the fastest TSC there is (250 µs at 2 GHz). Also covers small
/// TSC skews between the agent's CPU and the one it read.
pub const MARGIN_TICKS: u64 = 500_000;

/// The agent's timer's longest period while every CPU is idle, in flush
/// periods.
pub const IDLE_FACTOR: u32 = 2;

/// What the reader hands the network side, in read order.
#[derive(Debug)]
pub enum Read {
    /// A page.
    Page(Page),
    /// Watermarks of the CPUs just read until empty (after their pages).
    Drained(Vec<DrainedCpu>),
}

/// How the reader reads.
#[derive(Clone, Copy, Debug)]
pub struct ReadConfig {
    /// Shortest period of the timer that reads every CPU.
    pub flush: Duration,
    /// The timer's longest period while every CPU is idle, in flush
    /// periods (1: fixed).
    pub idle_factor: u32,
}

/// Where the reader puts what it reads.
enum Out {
    /// Pages and watermarks.
    Reads(mpsc::Sender<Read>),
    /// Pages only.
    Pages(mpsc::Sender<Page>),
}

impl Out {
    /// False once nobody takes pages.
    async fn page(&self, page: Page) -> bool {
        match self {
            Out::Reads(tx) => tx.send(Read::Page(page)).await.is_ok(),
            Out::Pages(tx) => tx.send(page).await.is_ok(),
        }
    }

    /// False once nobody takes pages.
    async fn marks(&self, marks: Vec<DrainedCpu>) -> bool {
        match self {
            Out::Reads(tx) => tx.send(Read::Drained(marks)).await.is_ok(),
            Out::Pages(tx) => !tx.is_closed(),
        }
    }
}

/// The reader task.
pub struct Readers {
    task: JoinHandle<Result<(), TracefsError>>,
    stop: CancellationToken,
}

impl Readers {
    /// Starts reading `pipes` into a queue of pages only, on a fixed
    /// `flush` timer and on wake-ups, without growing buffers (what the
    /// host session reads its own instance with).
    pub fn start(pipes: Vec<AsyncRawPipe>, tx: mpsc::Sender<Page>, flush: Duration) -> Self {
        let config = ReadConfig {
            flush,
            idle_factor: 1,
        };
        Self::spawn(pipes, Out::Pages(tx), config)
    }

    /// Starts reading `pipes` into a queue of pages and each CPU's
    /// watermark after its pages (what the agent does).
    pub fn start_with_marks(
        pipes: Vec<AsyncRawPipe>,
        tx: mpsc::Sender<Read>,
        config: ReadConfig,
    ) -> Self {
        Self::spawn(pipes, Out::Reads(tx), config)
    }

    fn spawn(pipes: Vec<AsyncRawPipe>, out: Out, config: ReadConfig) -> Self {
        let stop = CancellationToken::new();
        let reader = Reader { pipes, out, config };
        let task = tokio::spawn(reader.run(stop.clone()));
        Self { task, stop }
    }

    /// Tells the reader to drain every CPU and finish.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits for the reader to finish; logs its error.
    pub async fn join(self) {
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("page reader failed: {e}"),
            Err(e) => warn!("page reader task failed: {e}"),
        }
    }
}

struct Reader {
    pipes: Vec<AsyncRawPipe>,
    out: Out,
    config: ReadConfig,
}

/// What one drain of one CPU found; `None` when nobody takes pages.
struct Drain {
    mark: DrainedCpu,
    pages: usize,
}

impl Reader {
    async fn run(mut self, stop: CancellationToken) -> Result<(), TracefsError> {
        let flush = self.config.flush;
        let idle = flush * self.config.idle_factor.max(1);
        let mut period = flush;
        let mut tick = Instant::now() + period;
        loop {
            let ready = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(tick) => None,
                i = any_ready(&self.pipes) => Some(i?),
            };
            let which: Vec<usize> = match ready {
                Some(i) => vec![i],
                None => (0..self.pipes.len()).collect(),
            };
            // Only a wake-up disarms the kernel's wake-up (see `rearm`).
            let rearm = ready.is_some();
            let Some(pages) = self.drain_and_mark(&which, rearm).await? else {
                return Ok(());
            };
            if ready.is_none() {
                period = if pages == 0 {
                    (period * 2).min(idle)
                } else {
                    flush
                };
                tick = Instant::now() + period;
            }
        }
        // Shutting down: whatever is left, partly filled pages included.
        let all: Vec<usize> = (0..self.pipes.len()).collect();
        self.drain_and_mark(&all, false).await?;
        debug!("page reader done");
        Ok(())
    }

    /// Drains the CPUs `which` (re-arming their wake-ups if `rearm`) and
    /// sends their watermarks; the pages read, or `None` once nobody takes
    /// them.
    async fn drain_and_mark(
        &mut self,
        which: &[usize],
        rearm: bool,
    ) -> Result<Option<usize>, TracefsError> {
        let mut marks = Vec::with_capacity(which.len());
        let mut pages = 0;
        for &i in which {
            let Some(drain) = self.drain(i, rearm).await? else {
                return Ok(None);
            };
            pages += drain.pages;
            marks.push(drain.mark);
        }
        if !self.out.marks(marks).await {
            return Ok(None);
        }
        Ok(Some(pages))
    }

    /// Reads CPU `i` until empty; with `rearm`, re-arms its wake-up and
    /// reads again while the kernel says it refilled past the mark.
    async fn drain(&mut self, i: usize, rearm: bool) -> Result<Option<Drain>, TracefsError> {
        let mut total = 0;
        let mark = loop {
            let (mark, pages) = match self.read_until_empty(i).await? {
                Some(found) => found,
                None => return Ok(None),
            };
            total += pages;
            if !rearm || !self.pipes[i].rearm()? {
                break mark;
            }
        };
        Ok(Some(Drain { mark, pages: total }))
    }

    async fn read_until_empty(
        &mut self,
        i: usize,
    ) -> Result<Option<(DrainedCpu, usize)>, TracefsError> {
        let pipe = &mut self.pipes[i];
        let cpu = pipe.cpu();
        let mut pages = 0;
        loop {
            let (guest_tsc, tsc_cpu) = tsc_and_cpu();
            let Some(data) = pipe.try_read_page()? else {
                let mark = DrainedCpu {
                    cpu,
                    tsc_cpu,
                    guest_tsc: guest_tsc.saturating_sub(MARGIN_TICKS),
                };
                return Ok(Some((mark, pages)));
            };
            let page = Page {
                cpu,
                flags: Page::FLAG_PARTIAL,
                data,
            };
            if !self.out.page(page).await {
                return Ok(None);
            }
            pages += 1;
            if pages % DRAIN_BATCH == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The index of a pipe whose buffer reached `buffer_percent`.
async fn any_ready(pipes: &[AsyncRawPipe]) -> Result<usize, TracefsError> {
    if pipes.is_empty() {
        return std::future::pending().await;
    }
    let waits = pipes
        .iter()
        .enumerate()
        .map(|(i, p)| Box::pin(async move { p.ready().await.map(|()| i) }));
    futures::future::select_all(waits).await.0
}

/// The TSC and the CPU it was read on (retaken if the thread moved in
/// between; `rdtscp` would give both at once, but not every CPU model a
/// hypervisor presents has it).
fn tsc_and_cpu() -> (u64, u32) {
    let mut last = (rdtsc(), 0);
    for _ in 0..4 {
        // SAFETY: sched_getcpu takes no arguments and has no preconditions.
        let before = unsafe { libc::sched_getcpu() };
        let tsc = rdtsc();
        // SAFETY: as above.
        let after = unsafe { libc::sched_getcpu() };
        last = (tsc, u32::try_from(after).unwrap_or(0));
        if before == after {
            break;
        }
    }
    last
}
