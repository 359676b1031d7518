//! What the ingest stream yields.

use std::{fmt, sync::Arc};

use tokio::sync::oneshot;

use super::{ConnError, EventPage, GuestFormats, SockAddr};
use crate::{
    tracefs::PageError,
    wire::{Hello, Page, TscSample},
};

/// Identifies one connection for the ingest's lifetime (never reused).
pub type ConnId = u64;

/// A connection that completed its handshake.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The connection's id.
    pub id: ConnId,
    /// Where it comes from.
    pub peer: SockAddr,
    /// Everything the agent said about itself.
    pub hello: Hello,
    /// Host TSC when the Hello was decoded (bounds the Hello's samples).
    pub host_tsc_at_hello: u64,
    /// The page layout and event formats from the Hello.
    pub guest: Arc<GuestFormats>,
}

/// An agent waiting to be accepted or refused.
pub struct Admission {
    /// Who it is and what it said.
    pub info: Arc<ConnectionInfo>,
    reply: oneshot::Sender<Result<(), String>>,
}

impl Admission {
    pub(super) fn new(info: Arc<ConnectionInfo>) -> (Self, oneshot::Receiver<Result<(), String>>) {
        let (reply, answer) = oneshot::channel();
        (Self { info, reply }, answer)
    }

    /// Accepts the agent (`Ok`) or refuses it with a reason it is sent.
    pub fn answer(self, decision: Result<(), String>) {
        // The connection may have ended meanwhile: nobody is left to tell.
        let _ = self.reply.send(decision);
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("info", &self.info)
            .finish()
    }
}

/// One thing that happened on one connection. Items of one connection
/// arrive in the order they happened: `Connected` first, `Closed` last.
#[derive(Debug)]
pub enum IngestItem {
    /// A valid Hello waiting for the consumer's decision (only with
    /// [`IngestConfig::ask_consumer`](super::IngestConfig::ask_consumer));
    /// `Connected` follows when it is accepted, `Closed` in any case.
    Hello(Admission),
    /// A handshake completed.
    Connected(Arc<ConnectionInfo>),
    /// A decoded page of events.
    Events(EventPage),
    /// A page that does not decode; skipped, the connection goes on.
    BadPage {
        /// Connection.
        conn: ConnId,
        /// Guest CPU.
        cpu: u32,
        /// What is wrong with it.
        error: PageError,
    },
    /// A raw page (only when the ingest does not decode pages).
    Page {
        /// Connection.
        conn: ConnId,
        /// The page as received.
        page: Page,
    },
    /// The guest kernel's lost-event count on a CPU went up.
    Lost {
        /// Connection.
        conn: ConnId,
        /// Guest CPU.
        cpu: u32,
        /// Events lost since the previous report for this CPU.
        new: u64,
        /// Events lost on this CPU since the agent started.
        total: u64,
    },
    /// A guest CPU's exact watermark (protocol version 2, Drained frame):
    /// its buffer was read empty just after the guest's TSC read
    /// `guest_tsc` plus the agent's margin (on guest CPU `tsc_cpu`), and
    /// every page read before came earlier on this connection. So no later
    /// event of `cpu` has a timestamp below `guest_tsc`, except a record
    /// whose writing outlasted the margin (rare: e.g. its vCPU was
    /// preempted inside the tracing code), which a merge writes `late`.
    /// Yielded only when the CPU's watermark advances (PROTOCOL.md §3.8).
    Drained {
        /// Connection.
        conn: ConnId,
        /// Guest CPU whose buffer was found empty.
        cpu: u32,
        /// Guest CPU the TSC was read on (convert with its vCPU's offset
        /// for an exact host time; the same as `cpu`'s when the guest's
        /// vCPUs share one offset, as KVM keeps them unless the guest
        /// writes one vCPU's TSC).
        tsc_cpu: u32,
        /// The guest TSC reading.
        guest_tsc: u64,
    },
    /// A TSC sample from a KeepAlive.
    TscSample {
        /// Connection.
        conn: ConnId,
        /// The guest's reading.
        sample: TscSample,
        /// Host TSC when the KeepAlive was decoded.
        host_tsc: u64,
    },
    /// A guest's `saved_cmdlines` text (only when not decoding pages;
    /// when decoding, events carry the command names).
    Cmdlines {
        /// Connection.
        conn: ConnId,
        /// Verbatim text.
        text: String,
    },
    /// The connection ended: with the peer's Bye reason, or an error.
    Closed {
        /// Connection.
        conn: ConnId,
        /// Where it came from.
        peer: SockAddr,
        /// `Ok(reason)` after a Bye, else what went wrong.
        outcome: Result<String, Arc<ConnError>>,
    },
}

impl IngestItem {
    /// The connection this item belongs to.
    pub fn conn(&self) -> ConnId {
        match self {
            IngestItem::Hello(admission) => admission.info.id,
            IngestItem::Connected(info) => info.id,
            IngestItem::Events(page) => page.conn,
            IngestItem::Page { conn, .. }
            | IngestItem::BadPage { conn, .. }
            | IngestItem::Lost { conn, .. }
            | IngestItem::Drained { conn, .. }
            | IngestItem::TscSample { conn, .. }
            | IngestItem::Cmdlines { conn, .. }
            | IngestItem::Closed { conn, .. } => *conn,
        }
    }
}
