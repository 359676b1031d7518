//! The guest agent: a private `x86-tsc` trace instance whose raw ring-buffer
//! pages go, unparsed, to a tsc-tracer host (protocol in `docs/PROTOCOL.md`).
//!
//! [`Agent::start`] sets up the instance; [`Agent::run`] connects, sends the
//! Hello, then streams pages, each CPU's exact watermark (Drained frames,
//! protocol version 2), keep-alives (with fresh TSC samples), lost
//! counts and command names until told to stop, reconnecting with backoff
//! when the connection drops. On stop it flushes partly filled pages, says
//! Bye and removes the instance.

mod hello;
mod ship;
pub mod sysinfo;
pub mod transport;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    auth::SharedKey,
    tracefs::{AsyncRawPipe, EventName, FormatError, Instance, InstanceOptions, TracefsError},
    wire::{Endpoint, Hello},
};

pub use sysinfo::SysInfoError;
pub use transport::{ConnectError, RETRY_FOREVER};

/// Events traced when none are asked for: scheduling and interrupts.
pub const DEFAULT_EVENTS: &str =
    "sched:sched_switch,sched:sched_wakeup,irq:irq_handler_entry,irq:irq_handler_exit";

/// Pages (and watermark lists) the queue between the reader and the
/// network holds.
const QUEUE_PAGES: usize = 256;

/// Per-CPU ring buffer, KiB, unless asked otherwise (the kernel's default
/// is 1408). Sized up front, never grown while recording (see
/// [`crate::page_reader`]): with reads on wake-up and every few ms, it absorbs a
/// 500,000-event burst on one CPU.
pub const DEFAULT_BUFFER_KB: u32 = 4096;
/// How full (percent) a CPU's buffer gets before the kernel wakes the
/// reader (between the timer's reads).
pub const DEFAULT_BUFFER_PERCENT: u32 = 25;
/// Shortest period of the timer that reads every CPU, partly filled pages
/// included: how late a quiet CPU's events and watermark can be.
/// Each read costs the agent a wake-up, and a busy CPU's partly filled
/// page: 10 ms keeps it near 2% of a core at 100k events/s (agent_cpu
/// bench); 1 ms is the low-latency setting.
pub const DEFAULT_FLUSH: Duration = Duration::from_millis(10);

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The host to send to.
    pub endpoint: Endpoint,
    /// Events to enable.
    pub events: Vec<EventName>,
    /// Name in the Hello (default: the hostname).
    pub name: Option<String>,
    /// Reconnection attempts after a failure before giving up (0: none;
    /// [`RETRY_FOREVER`]: until stopped).
    pub retry: u32,
    /// The key to prove to the host (`docs/PROTOCOL.md` §9). With one, the
    /// agent also requires the host to prove it back.
    pub key: Option<Arc<SharedKey>>,
    /// Interval between KeepAlives.
    pub keepalive: Duration,
    /// Shortest interval at which every CPU is read, partly filled pages
    /// included (it grows up to [`crate::page_reader::IDLE_FACTOR`] times while all are
    /// idle).
    pub flush: Duration,
    /// Per-CPU ring buffer size in KiB (`None`: [`DEFAULT_BUFFER_KB`]).
    pub buffer_size_kb: Option<u32>,
    /// How full (percent) a buffer gets before the reader is woken.
    pub buffer_percent: u32,
}

impl AgentConfig {
    /// Defaults: the [`DEFAULT_EVENTS`], retrying until stopped (backoff
    /// from 100 ms to 5 s), no key, a KeepAlive every 250 ms,
    /// a flush every 10 ms, the default buffer size and wake-up level.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            events: DEFAULT_EVENTS
                .split(',')
                .filter_map(|e| e.parse().ok())
                .collect(),
            name: None,
            retry: RETRY_FOREVER,
            key: None,
            keepalive: Duration::from_millis(250),
            flush: DEFAULT_FLUSH,
            buffer_size_kb: None,
            buffer_percent: DEFAULT_BUFFER_PERCENT,
        }
    }
}

/// Why the agent stopped other than by being told to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Setting up or reading the trace instance failed.
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// An event format of this kernel does not parse.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// What the Hello says about the system could not be read.
    #[error(transparent)]
    SysInfo(#[from] SysInfoError),
    /// The host could not be reached and no retries are left.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection broke and no retries are left.
    #[error("lost the connection to {endpoint}: {reason}")]
    Lost {
        /// The host.
        endpoint: Endpoint,
        /// What happened.
        reason: String,
    },
    /// The two sides could not authenticate each other (a key on one side
    /// only, or a host that cannot prove the agent's key). Not retried.
    #[error("{endpoint}: {reason}")]
    Auth {
        /// The host.
        endpoint: Endpoint,
        /// What is missing or wrong.
        reason: String,
    },
    /// The host refused the Hello.
    #[error("{endpoint} refused this agent: {reason}")]
    Rejected {
        /// The host.
        endpoint: Endpoint,
        /// The host's reason.
        reason: String,
    },
}

/// What an agent run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// Pages sent.
    pub pages: u64,
    /// Page bytes sent.
    pub bytes: u64,
    /// Connections that completed the handshake.
    pub connections: u32,
}

/// A set-up agent: its instance exists and is recording.
pub struct Agent {
    config: AgentConfig,
    instance: Instance,
    hello: Hello,
    pipes: Vec<AsyncRawPipe>,
}

impl Agent {
    /// Creates the trace instance and opens its pipes. Must be called
    /// inside a tokio runtime.
    pub fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let mut opts = InstanceOptions::new("tsc-agent");
        opts.events = config.events.clone();
        opts.buffer_size_kb = Some(config.buffer_size_kb.unwrap_or(DEFAULT_BUFFER_KB));
        opts.buffer_percent = Some(config.buffer_percent.min(100));
        let instance = Instance::create(&opts)?;
        let hello = hello::hello(&instance, config.name.as_deref())?;
        let pipes = instance
            .cpus()?
            .into_iter()
            .map(|cpu| instance.open_pipe(cpu)?.into_async())
            .collect::<Result<_, _>>()?;
        info!(
            "trace instance {} on {} CPUs, events: {}",
            instance.name(),
            hello.cpus.len(),
            hello
                .events
                .iter()
                .map(|e| format!("{}:{}", e.system, e.name))
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(Self {
            config,
            instance,
            hello,
            pipes,
        })
    }

    /// The agent's trace instance (e.g. for its `trace_marker`).
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// What the Hello will say (without TSC samples).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Streams to the host until `shutdown` resolves (then flushes, says
    /// Bye and returns `Ok`) or the connection is lost for good.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<AgentReport, AgentError> {
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        let watcher = tokio::spawn(async move {
            shutdown.await;
            on_signal.cancel();
        });
        let (tx, rx) = mpsc::channel(QUEUE_PAGES);
        let read = crate::page_reader::ReadConfig {
            flush: self.config.flush,
            idle_factor: crate::page_reader::IDLE_FACTOR,
        };
        let readers = crate::page_reader::Readers::start_with_marks(self.pipes, tx, read);
        let mut shipper = ship::Shipper::new(self.config, self.instance, self.hello, rx);
        let result = shipper.run(&stop, &readers).await;
        readers.stop();
        drop(shipper);
        readers.join().await;
        watcher.abort();
        result
    }
}
