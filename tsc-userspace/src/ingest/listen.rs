//! TCP and vsock listeners and their accept loops.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::mpsc,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tokio_vsock::{VsockAddr, VsockListener};
use tracing::{error, info, warn};

use super::{IngestConfig, IngestError, IngestItem, SockAddr, conn};
use crate::wire::Endpoint;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What every accept loop shares.
#[derive(Clone)]
struct Shared {
    config: Arc<IngestConfig>,
    tx: mpsc::Sender<IngestItem>,
    stop: CancellationToken,
    next_id: Arc<AtomicU64>,
}

/// Binds every address it can and starts its accept loop.
pub(super) async fn start_all(
    addrs: &[Endpoint],
    config: IngestConfig,
    tx: mpsc::Sender<IngestItem>,
    stop: CancellationToken,
) -> Result<Vec<(SockAddr, JoinHandle<()>)>, IngestError> {
    if addrs.is_empty() {
        return Err(IngestError::NoAddress);
    }
    check_listeners(addrs, &config).await?;
    if config.key.is_some() {
        info!("agents must prove the shared key (HMAC-SHA256 challenge)");
    }
    let shared = Shared {
        config: Arc::new(config),
        tx,
        stop,
        next_id: Arc::new(AtomicU64::new(1)),
    };
    let mut bound = Vec::new();
    let mut failures = Vec::new();
    for addr in addrs {
        match start(addr, shared.clone()).await {
            Ok((local, task)) => {
                info!("listening for agents on {local}");
                bound.push((local, task));
            }
            Err(err) => {
                error!("cannot listen on {addr}: {err}");
                failures.push(format!("{addr}: {err}"));
            }
        }
    }
    if bound.is_empty() {
        return Err(IngestError::NoListener(failures.join("; ")));
    }
    Ok(bound)
}

/// Refuses a TCP listener beyond loopback when there is no key to ask
/// agents for, unless `insecure` says to listen there all the same.
pub async fn check_listeners(addrs: &[Endpoint], config: &IngestConfig) -> Result<(), IngestError> {
    if config.key.is_some() || config.insecure {
        return Ok(());
    }
    for addr in addrs {
        if !is_loopback(addr).await {
            return Err(IngestError::NeedsKey(addr.to_string()));
        }
    }
    Ok(())
}

/// Whether only this machine can reach `addr` without a key: vsock (the
/// hypervisor assigns its peers' CIDs), or TCP on an address every
/// resolution of which is loopback. A name that does not resolve is left
/// to the bind to report.
pub(super) async fn is_loopback(addr: &Endpoint) -> bool {
    let Endpoint::Tcp { host, port } = addr else {
        return true;
    };
    match tokio::net::lookup_host((host.as_str(), *port)).await {
        Ok(resolved) => {
            let mut resolved = resolved.peekable();
            resolved.peek().is_some() && resolved.all(|a| a.ip().to_canonical().is_loopback())
        }
        Err(_) => true,
    }
}

async fn start(addr: &Endpoint, shared: Shared) -> io::Result<(SockAddr, JoinHandle<()>)> {
    match addr {
        Endpoint::Tcp { host, port } => {
            let listener = TcpListener::bind((host.as_str(), *port)).await?;
            let local = SockAddr::Tcp(listener.local_addr()?);
            Ok((local, tokio::spawn(accept_tcp(listener, shared))))
        }
        Endpoint::Vsock { cid, port } => {
            let listener = VsockListener::bind(VsockAddr::new(*cid, *port)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{e} (is a vsock transport such as vhost_vsock loaded?)"),
                )
            })?;
            let local = listener.local_addr()?;
            let local = SockAddr::Vsock {
                cid: local.cid(),
                port: local.port(),
            };
            Ok((local, tokio::spawn(accept_vsock(listener, shared))))
        }
    }
}

async fn accept_tcp(listener: TcpListener, shared: Shared) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(err) = stream.set_nodelay(true) {
                    warn!("tcp:{peer}: cannot set TCP_NODELAY: {err}");
                }
                spawn_conn(stream, SockAddr::Tcp(peer), &shared);
            }
            Err(err) => accept_failed(&err).await,
        }
    }
}

async fn accept_vsock(listener: VsockListener, shared: Shared) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let peer = SockAddr::Vsock {
                    cid: peer.cid(),
                    port: peer.port(),
                };
                spawn_conn(stream, peer, &shared);
            }
            Err(err) => accept_failed(&err).await,
        }
    }
}

async fn accept_failed(err: &io::Error) {
    warn!("accepting a connection failed: {err}");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

fn spawn_conn<S>(stream: S, peer: SockAddr, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    info!("connection {id} from {peer}");
    tokio::spawn(conn::serve(
        stream,
        conn::Context {
            id,
            peer,
            config: shared.config.clone(),
            tx: shared.tx.clone(),
            stop: shared.stop.child_token(),
        },
    ));
}
