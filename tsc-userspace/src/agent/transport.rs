//! Connecting to the host over TCP or vsock, with retries.

use std::{io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_vsock::{VsockAddr, VsockStream};
use tracing::warn;

use crate::wire::Endpoint;

/// A connected byte stream to the host.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// How long one connection attempt may take (vsock connects to a CID that
/// nobody serves can hang until the kernel's own timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// A failed connection attempt, with the address in the message.
#[derive(Debug, thiserror::Error)]
#[error("{what} by {endpoint}: {cause}")]
pub struct ConnectError {
    what: &'static str,
    endpoint: Endpoint,
    // In the message, so not a `source()` too (a chain would repeat it).
    cause: io::Error,
}

/// Connects once.
pub async fn connect(endpoint: &Endpoint) -> Result<Box<dyn Transport>, ConnectError> {
    let attempt = async {
        let stream: Box<dyn Transport> = match endpoint {
            Endpoint::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Endpoint::Vsock { cid, port } => {
                Box::new(VsockStream::connect(VsockAddr::new(*cid, *port)).await?)
            }
        };
        Ok(stream)
    };
    let result = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")),
    };
    result.map_err(|cause| ConnectError {
        what: match cause.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused",
            io::ErrorKind::TimedOut => "connection timed out",
            _ => "cannot connect",
        },
        endpoint: endpoint.clone(),
        cause,
    })
}

/// Retry bookkeeping: how many more attempts, and the pause before the next.
#[derive(Debug)]
pub struct Backoff {
    left: u32,
    next: Duration,
}

impl Backoff {
    /// Allows `retries` attempts after the first failure.
    pub fn new(retries: u32) -> Self {
        Self {
            left: retries,
            next: FIRST_BACKOFF,
        }
    }

    /// After a failure: waits and returns true if another attempt is
    /// allowed, else returns false at once.
    pub async fn wait(&mut self, why: &str) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        warn!(
            "{why}; retrying in {:?} ({} retries left)",
            self.next, self.left
        );
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        true
    }

    /// After a successful session: the retry budget and pause start over.
    pub fn reset(&mut self, retries: u32) {
        *self = Self::new(retries);
    }
}
