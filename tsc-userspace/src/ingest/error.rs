//! Errors of the ingest as a whole and of one connection.

use std::time::Duration;

use crate::wire::WireError;

/// The ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No listen address could be bound (each failure is listed).
    #[error("could not listen on any address: {0}")]
    NoListener(String),
    /// No listen address was given.
    #[error("no listen address given")]
    NoAddress,
    /// A TCP listener beyond loopback without a key to ask agents for.
    #[error(
        "refusing to listen on {0} without a key: any machine that reaches it could send \
         this session forged guest traces. Give --key-file PATH (the agents get the same \
         key), listen on loopback or vsock, or pass --insecure to accept unauthenticated \
         agents there"
    )]
    NeedsKey(String),
}

/// Why one connection ended abnormally. Never affects other connections.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The byte stream broke the protocol or the transport failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// No Hello arrived in time.
    #[error("no Hello within {0:?}")]
    HandshakeTimeout(Duration),
    /// Nothing arrived for too long after the handshake.
    #[error("silent for {0:?} (no frame, not even a KeepAlive)")]
    IdleTimeout(Duration),
    /// The peer closed the connection without a Bye.
    #[error("peer disconnected without Bye")]
    Disconnected,
    /// A valid frame arrived where the protocol does not allow it.
    #[error("unexpected {got} frame {when}")]
    Unexpected {
        /// The frame's type name.
        got: &'static str,
        /// Where in the conversation.
        when: &'static str,
    },
    /// The agent did not prove the shared key; the reason was sent back.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The Hello was well formed but refused; the reason was sent back.
    #[error("Hello refused: {0}")]
    Refused(String),
    /// A frame contradicts the Hello (unknown CPU, page too large...).
    #[error("{0}")]
    Contradiction(String),
    /// The ingest is shutting down.
    #[error("ingest shut down")]
    Shutdown,
}
