//! Turning SIGINT and SIGTERM into an orderly return. Signals do not
//! unwind: a binary races its work against [`shutdown`] (`tokio::select!`)
//! and returns normally, so that tracefs instances, pins and files are
//! cleaned up by their owners' `Drop`.

use std::io;

use tokio::signal::unix::{SignalKind, signal};

/// Resolves when SIGINT or SIGTERM arrives, with the signal's name. Must
/// be called inside a tokio runtime; the handlers are installed at the
/// call, so call it before the work starts.
pub async fn shutdown() -> io::Result<&'static str> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = int.recv() => Ok("SIGINT"),
        _ = term.recv() => Ok("SIGTERM"),
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
