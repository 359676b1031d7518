//! Turning SIGINT and SIGTERM into an orderly return. Signals do not
//! unwind: a binary races its work against [`shutdown`] (`tokio::select!`)
//! and returns normally, so that tracefs instances, pins and files are
//! cleaned up by their owners' `Drop`.

use std::io;

use tokio::signal::unix::{SignalKind, signal};

/// Resolves when SIGINT or SIGTERM arrives, with the signal's name. Must
/// be called inside a tokio runtime; the handlers are installed when it is
/// first polled. A binary that says it is ready before then uses
/// [`Shutdown::install`] first instead.
pub async fn shutdown() -> io::Result<&'static str> {
    Ok(Shutdown::install()?.recv().await)
}

/// SIGINT and SIGTERM handlers, installed when made: a signal sent after
/// that is seen by [`Shutdown::recv`], however late it is polled. Made
/// before a binary logs that it is ready, so that a signal sent on that
/// line is never lost (a process started with SIGINT ignored, as a
/// background job of a script is, would otherwise drop it and run on).
pub struct Shutdown {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs both handlers (inside a tokio runtime).
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves at the first SIGINT or SIGTERM since [`Shutdown::install`],
    /// with the signal's name.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// SIGUSR1, the request to dump the flight recorder (`tsc-tracer dump`,
/// `kill -USR1 PID`). Once this is made, SIGUSR1 no longer ends the
/// process: a session without a flight recorder says so and goes on.
pub struct DumpRequests(Option<tokio::signal::unix::Signal>);

impl DumpRequests {
    /// Installs the handler (inside a tokio runtime). When that fails the
    /// requests never come, and it is logged.
    pub fn new() -> Self {
        match signal(SignalKind::user_defined1()) {
            Ok(s) => Self(Some(s)),
            Err(e) => {
                tracing::warn!("cannot catch SIGUSR1 (flight recorder dumps): {e}");
                Self(None)
            }
        }
    }

    /// Resolves at the next SIGUSR1 (never, without a handler).
    pub async fn recv(&mut self) {
        if let Some(s) = &mut self.0
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

impl Default for DumpRequests {
    fn default() -> Self {
        Self::new()
    }
}
