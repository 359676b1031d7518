//! Host side of the wire: accept guest agents on TCP and vsock, run the
//! handshake, and hand out what each guest sends as one stream of
//! [`IngestItem`]s.
//!
//! Every connection runs in its own task: a peer that misbehaves, stalls or
//! disconnects ends only its own connection, reported as
//! [`IngestItem::Closed`] with the reason. All connections share one
//! bounded queue to the consumer, so a slow consumer slows every sender
//! down (TCP back-pressure) instead of growing memory.

mod conn;
mod decode;
mod error;
mod item;
mod listen;
mod peer;

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use decode::{Cmdlines, EventPage, GuestEvent, GuestFormats};
pub use error::{ConnError, IngestError};
pub use item::{Admission, ConnId, ConnectionInfo, IngestItem};
pub use listen::check_listeners;
pub use peer::SockAddr;

use crate::{
    auth::SharedKey,
    wire::{DEFAULT_MAX_BODY, Endpoint},
};

/// How the ingest treats its peers.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Largest frame body accepted (and announced in HelloAck).
    pub max_body: u32,
    /// Time a new connection has to deliver its Hello.
    pub handshake_timeout: Duration,
    /// Longest silence allowed after the handshake (agents send keep-alives).
    pub idle_timeout: Duration,
    /// Items the shared queue to the consumer holds.
    pub queue_depth: usize,
    /// Decode pages into events; when false, yield raw pages.
    pub decode_pages: bool,
    /// Let the consumer decide whether each agent is accepted: after a
    /// valid Hello the connection yields [`IngestItem::Hello`] and waits
    /// for its [`Admission::answer`] before acknowledging (a refusal goes to
    /// the agent as a Reject with its reason). When false, every valid
    /// Hello is accepted.
    pub ask_consumer: bool,
    /// The shared key agents must prove (`docs/PROTOCOL.md` §9) on every
    /// listener, vsock included. None: agents are not asked for one.
    pub key: Option<Arc<SharedKey>>,
    /// Allow a TCP listener on an address other than loopback without a
    /// key (any peer that reaches it is served). Without this such a
    /// listener is refused: [`IngestError::NeedsKey`].
    pub insecure: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            queue_depth: 1024,
            decode_pages: true,
            ask_consumer: false,
            key: None,
            insecure: false,
        }
    }
}

/// A running ingest: its listeners, its connections and the stream of
/// what they deliver. Dropping it stops everything.
pub struct Ingest {
    rx: mpsc::Receiver<IngestItem>,
    bound: Vec<SockAddr>,
    accepts: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Ingest {
    /// Starts listening on every address. An address that cannot be bound
    /// (e.g. vsock without a loaded transport) is logged and skipped; only
    /// when none can be bound is it an error.
    pub async fn bind(addrs: &[Endpoint], config: IngestConfig) -> Result<Self, IngestError> {
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let stop = CancellationToken::new();
        let (bound, accepts) = listen::start_all(addrs, config, tx, stop.clone())
            .await?
            .into_iter()
            .unzip();
        Ok(Self {
            rx,
            bound,
            accepts,
            stop,
        })
    }

    /// The addresses actually listened on (with the ports the kernel chose).
    pub fn local_addrs(&self) -> &[SockAddr] {
        &self.bound
    }

    /// The next item from any connection; `None` once stopped.
    pub async fn next_item(&mut self) -> Option<IngestItem> {
        self.rx.recv().await
    }

    /// Stops listening and closes every connection (each peer gets a Bye).
    pub fn shutdown(&mut self) {
        self.stop.cancel();
        self.rx.close();
    }

    /// Like [`Ingest::shutdown`], and returns once the listening sockets
    /// are closed (so their addresses can be bound again).
    pub async fn close(mut self) {
        self.shutdown();
        for accept in std::mem::take(&mut self.accepts) {
            // A task that panicked has dropped its listener all the same.
            let _ = accept.await;
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl futures::Stream for Ingest {
    type Item = IngestItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<IngestItem>> {
        self.rx.poll_recv(cx)
    }
}
