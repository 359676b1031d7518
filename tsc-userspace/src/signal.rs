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
