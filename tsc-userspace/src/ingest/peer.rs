//! Who is on the other end of a connection.

use std::{fmt, net::SocketAddr};

/// A socket address: a peer, or where the ingest listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SockAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A vsock peer (its CID identifies the VM).
    Vsock {
        /// Context id of the peer (the guest's `guest-cid`).
        cid: u32,
        /// Peer's port.
        port: u32,
    },
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockAddr::Tcp(a) => write!(f, "tcp:{a}"),
            SockAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}
