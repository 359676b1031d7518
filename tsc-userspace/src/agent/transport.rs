//! Connecting to the host over TCP or vsock, with retries.

use std::{
    io,
    time::{Duration, Instant},
};

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
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between attempts: how late an agent can notice that its
/// host is back.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At the longest pause, a failure that says what the one before said is
/// logged once per this many attempts (about a minute).
const QUIET_EVERY: u32 = 12;
/// `--retry` for "until stopped": the default, so an agent outlasts a
/// restart of its host however long it takes.
pub const RETRY_FOREVER: u32 = u32::MAX;

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

/// Retry bookkeeping: capped exponential backoff with jitter, and a log
/// that says each step once rather than every attempt.
#[derive(Debug)]
pub struct Backoff {
    retries: u32,
    failures: u32,
    step: Duration,
    last_reason: String,
    /// Failures since the pause reached [`MAX_BACKOFF`].
    at_cap: u32,
    first_failure: Option<Instant>,
}

/// What to do after one failure.
#[derive(Debug, PartialEq)]
struct Step {
    pause: Duration,
    /// Log this failure (else it repeats one already said at the cap).
    loud: bool,
    /// The first failure at the longest pause.
    first_at_cap: bool,
}

impl Backoff {
    /// Allows `retries` attempts after the first failure
    /// ([`RETRY_FOREVER`]: no limit).
    pub fn new(retries: u32) -> Self {
        Self {
            retries,
            failures: 0,
            step: FIRST_BACKOFF,
            last_reason: String::new(),
            at_cap: 0,
            first_failure: None,
        }
    }

    /// Failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long since the first failure after the last success.
    pub fn failing_for(&self) -> Duration {
        self.first_failure.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// After a failure: waits and returns true if another attempt is
    /// allowed, else returns false at once.
    pub async fn wait(&mut self, why: &str) -> bool {
        let Some(step) = self.next_step(why, jitter()) else {
            return false;
        };
        if step.loud {
            let left = match self.retries {
                RETRY_FOREVER => String::from("retrying until stopped"),
                n => format!("{} retries left", n - self.failures),
            };
            let quiet = if step.first_at_cap {
                "; the same failure is logged once a minute from now on"
            } else {
                ""
            };
            warn!(
                "{why}; retrying in {:?} (attempt {} failed, {left}{quiet})",
                step.pause, self.failures
            );
        }
        tokio::time::sleep(step.pause).await;
        true
    }

    /// Counts a failure; the pause before the next attempt (the step
    /// scaled by `jitter`, 750..=1250 per mille) and whether to log it.
    fn next_step(&mut self, why: &str, jitter: u32) -> Option<Step> {
        if self.retries != RETRY_FOREVER && self.failures >= self.retries {
            return None;
        }
        self.first_failure.get_or_insert_with(Instant::now);
        let pause = self.step * jitter / 1000;
        self.failures = self.failures.saturating_add(1);
        if self.step == MAX_BACKOFF {
            self.at_cap = self.at_cap.saturating_add(1);
        }
        let repeated = self.at_cap > 1 && why == self.last_reason;
        let loud = !repeated || self.at_cap.is_multiple_of(QUIET_EVERY);
        self.last_reason = why.to_owned();
        self.step = (self.step * 2).min(MAX_BACKOFF);
        Some(Step {
            pause,
            loud,
            first_at_cap: self.at_cap == 1,
        })
    }

    /// After a successful handshake: the budget and the pause start over.
    pub fn reset(&mut self) {
        *self = Self::new(self.retries);
    }
}

/// A random factor in per mille, 750..=1250: agents that lost the same
/// host do not all come back at the same instant.
fn jitter() -> u32 {
    750 + getrandom::u32().unwrap_or(0) % 501
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_100_ms_to_5_s_with_jitter() {
        let mut b = Backoff::new(RETRY_FOREVER);
        let pauses: Vec<u128> = (0..9)
            .map(|_| b.next_step("down", 1000).unwrap().pause.as_millis())
            .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        let mut b = Backoff::new(RETRY_FOREVER);
        assert_eq!(b.next_step("x", 750).unwrap().pause.as_millis(), 75);
        assert_eq!(b.next_step("x", 1250).unwrap().pause.as_millis(), 250);
        for _ in 0..1000 {
            assert!((750..=1250).contains(&jitter()));
        }
    }

    #[test]
    fn retries_are_counted_unless_forever() {
        let mut b = Backoff::new(2);
        assert!(b.next_step("x", 1000).is_some());
        assert!(b.next_step("x", 1000).is_some());
        assert!(b.next_step("x", 1000).is_none());
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_step("x", 1000).is_some(), "a success starts over");
        let mut b = Backoff::new(0);
        assert!(b.next_step("x", 1000).is_none(), "0: fail at once");
        let mut b = Backoff::new(RETRY_FOREVER);
        assert!((0..10_000).all(|_| b.next_step("x", 1000).is_some()));
    }

    /// Each step of the growing pause is said; at the cap the same failure
    /// once per QUIET_EVERY attempts, a new one at once.
    #[test]
    fn the_log_says_each_step_then_once_a_minute() {
        let mut b = Backoff::new(RETRY_FOREVER);
        let loud: Vec<bool> = (0..38)
            .map(|_| b.next_step("refused", 1000).unwrap().loud)
            .collect();
        // Steps 100 ms .. 5 s: attempts 1 to 7 are said (the 7th is the
        // first 5 s pause); after that every 12th.
        let said: Vec<usize> = (0..38).filter(|&i| loud[i]).map(|i| i + 1).collect();
        assert_eq!(said, [1, 2, 3, 4, 5, 6, 7, 18, 30]);
        assert!(b.next_step("timed out", 1000).unwrap().loud, "a new reason");
        assert!(!b.next_step("timed out", 1000).unwrap().loud);
    }
}
