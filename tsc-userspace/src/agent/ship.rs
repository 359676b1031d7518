//! Shipping pages to the host: connections, handshake, the send loop, and
//! the orderly end.

use std::{collections::HashMap, io, time::Duration};

use bytes::Buf;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::{codec::FramedRead, sync::CancellationToken};
use tracing::{info, warn};

use super::{
    AgentConfig, AgentError, AgentReport, hello,
    pages::Readers,
    sysinfo,
    transport::{self, Backoff, ConnectError, Transport},
};
use crate::{
    tracefs::Instance,
    wire::{DEFAULT_MAX_BODY, Frame, FrameCodec, Hello, Lost, Page, TscSample, WireError},
};

/// Time the host has to answer the Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a single frame write may block (a host that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// `saved_cmdlines` is re-sent (when changed) every this many KeepAlives.
const CMDLINES_EVERY: u32 = 5;

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("the host did not answer the Hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the host refused the Hello: {0}")]
    Rejected(String),
    #[error("the host said Bye: {0}")]
    HostBye(String),
    #[error("the host closed the connection")]
    HostClosed,
    #[error("the host sent an unexpected {0} frame")]
    Unexpected(&'static str),
    #[error("writing to the host blocked for {0:?}")]
    WriteTimeout(Duration),
    #[error("the page readers stopped")]
    ReadersGone,
}

type Reader = FramedRead<ReadHalf<Box<dyn Transport>>, FrameCodec>;
type Writer = WriteHalf<Box<dyn Transport>>;

/// The state that outlives connections.
pub(super) struct Shipper {
    config: AgentConfig,
    instance: Instance,
    hello: Hello,
    rx: mpsc::Receiver<Page>,
    /// A page taken from the queue whose write did not complete.
    pending: Option<Page>,
    /// Lost totals last reported, per CPU.
    lost_sent: HashMap<u32, u64>,
    cmdlines_sent: String,
    max_body: u32,
    report: AgentReport,
}

impl Shipper {
    pub(super) fn new(
        config: AgentConfig,
        instance: Instance,
        hello: Hello,
        rx: mpsc::Receiver<Page>,
    ) -> Self {
        Self {
            config,
            instance,
            hello,
            rx,
            pending: None,
            lost_sent: HashMap::new(),
            cmdlines_sent: String::new(),
            max_body: DEFAULT_MAX_BODY,
            report: AgentReport::default(),
        }
    }

    /// Connects and ships until stopped, retrying with backoff.
    pub(super) async fn run(
        &mut self,
        stop: &CancellationToken,
        readers: &Readers,
    ) -> Result<AgentReport, AgentError> {
        let mut backoff = Backoff::new(self.config.retry);
        loop {
            let connections = self.report.connections;
            let err = match self.connect_and_ship(stop, readers).await {
                Ok(()) => return Ok(self.report),
                Err(ConnectionError::Rejected(reason)) => {
                    return Err(AgentError::Rejected {
                        endpoint: self.config.endpoint.clone(),
                        reason,
                    });
                }
                Err(err) => err,
            };
            if self.report.connections > connections {
                backoff.reset(self.config.retry);
            }
            let why = err.to_string();
            let again = tokio::select! {
                _ = stop.cancelled() => return Ok(self.report),
                again = backoff.wait(&why) => again,
            };
            if !again {
                return Err(match err {
                    ConnectionError::Connect(e) => AgentError::Connect(e),
                    other => AgentError::Lost {
                        endpoint: self.config.endpoint.clone(),
                        reason: other.to_string(),
                    },
                });
            }
        }
    }

    async fn connect_and_ship(
        &mut self,
        stop: &CancellationToken,
        readers: &Readers,
    ) -> Result<(), ConnectionError> {
        // Until the handshake is done there is nothing to flush to: a stop
        // just ends the attempt.
        let stream = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            stream = transport::connect(&self.config.endpoint) => stream?,
        };
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rx = FramedRead::new(rd, FrameCodec::default());
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            done = self.handshake(&mut rx, &mut wr) => done?,
        }
        self.report.connections += 1;
        self.ship(&mut rx, &mut wr, stop, readers).await
    }

    async fn handshake(&mut self, rx: &mut Reader, wr: &mut Writer) -> Result<(), ConnectionError> {
        let hello = Frame::Hello(Box::new(hello::with_samples(&self.hello)));
        self.write(wr, &hello).await?;
        let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, rx.next())
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?;
        match reply {
            Some(Ok(Frame::HelloAck(ack))) => {
                info!(
                    "connected to {} as connection {}",
                    self.config.endpoint, ack.connection_id
                );
                self.max_body = ack.max_body;
                Ok(())
            }
            Some(Ok(Frame::Reject(reason))) => Err(ConnectionError::Rejected(reason)),
            other => Err(host_ended(other)),
        }
    }

    async fn ship(
        &mut self,
        rx: &mut Reader,
        wr: &mut Writer,
        stop: &CancellationToken,
        readers: &Readers,
    ) -> Result<(), ConnectionError> {
        self.send_cmdlines(wr, true).await?;
        if let Some(page) = self.pending.take() {
            self.send_page(wr, page).await?;
        }
        let mut keepalive = tokio::time::interval(self.config.keepalive);
        keepalive.tick().await;
        let mut beats = 0u32;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return self.finish(wr, readers).await,
                frame = rx.next() => return Err(host_ended(frame)),
                _ = keepalive.tick() => {
                    // Pages already read go first, so the keep-alive's sample
                    // tells the host that nothing older than one flush period
                    // before it is still to come (PROTOCOL.md, KeepAlive).
                    while let Ok(page) = self.rx.try_recv() {
                        self.send_page(wr, page).await?;
                    }
                    beats += 1;
                    self.keepalive(wr, beats.is_multiple_of(CMDLINES_EVERY)).await?;
                }
                page = self.rx.recv() => match page {
                    Some(page) => self.send_page(wr, page).await?,
                    None => return Err(ConnectionError::ReadersGone),
                },
            }
        }
    }

    /// The orderly end: stop recording, send every page left, Bye.
    async fn finish(&mut self, wr: &mut Writer, readers: &Readers) -> Result<(), ConnectionError> {
        if let Err(e) = self.instance.set_tracing_on(false) {
            warn!("cannot stop recording: {e}");
        }
        readers.stop();
        while let Some(page) = self.rx.recv().await {
            self.send_page(wr, page).await?;
        }
        self.send_lost(wr).await?;
        self.send_cmdlines(wr, false).await?;
        self.write(wr, &Frame::Bye("agent stopping".into())).await?;
        wr.shutdown().await?;
        info!(
            "sent {} pages ({} bytes); said Bye",
            self.report.pages, self.report.bytes
        );
        Ok(())
    }

    async fn send_page(&mut self, wr: &mut Writer, page: Page) -> Result<(), ConnectionError> {
        let bytes = page.data.len() as u64;
        let frame = Frame::Page(page);
        // Kept until written, so a reconnection can resend it.
        if let Frame::Page(page) = &frame {
            self.pending = Some(page.clone());
        }
        self.write(wr, &frame).await?;
        self.pending = None;
        self.report.pages += 1;
        self.report.bytes += bytes;
        Ok(())
    }

    async fn keepalive(&mut self, wr: &mut Writer, cmdlines: bool) -> Result<(), ConnectionError> {
        self.write(wr, &Frame::KeepAlive(TscSample::take())).await?;
        self.send_lost(wr).await?;
        if cmdlines {
            self.send_cmdlines(wr, false).await?;
        }
        Ok(())
    }

    /// Lost frames for every CPU whose kernel loss count went up.
    async fn send_lost(&mut self, wr: &mut Writer) -> Result<(), ConnectionError> {
        for cpu in self.hello.cpus.iter().map(|c| c.cpu).collect::<Vec<_>>() {
            let stats = match self.instance.read(&format!("per_cpu/cpu{cpu}/stats")) {
                Ok(stats) => stats,
                Err(e) => {
                    warn!("cannot read the loss count of CPU {cpu}: {e}");
                    continue;
                }
            };
            let total = sysinfo::lost_events(&stats);
            if total > self.lost_sent.get(&cpu).copied().unwrap_or(0) {
                self.write(wr, &Frame::Lost(Lost { cpu, total })).await?;
                self.lost_sent.insert(cpu, total);
            }
        }
        Ok(())
    }

    /// The guest's `saved_cmdlines`, when it changed (or always if `force`).
    async fn send_cmdlines(&mut self, wr: &mut Writer, force: bool) -> Result<(), ConnectionError> {
        let text = match self.instance.tracefs().read("saved_cmdlines") {
            Ok(text) => text,
            Err(e) => {
                warn!("cannot read saved_cmdlines: {e}");
                return Ok(());
            }
        };
        if force || text != self.cmdlines_sent {
            self.write(wr, &Frame::Cmdlines(text.clone())).await?;
            self.cmdlines_sent = text;
        }
        Ok(())
    }

    /// Writes one frame; a page's bytes go out by a vectored write, uncopied.
    async fn write(&self, wr: &mut Writer, frame: &Frame) -> Result<(), ConnectionError> {
        let (head, payload) = frame.encode_parts(self.max_body)?;
        write_all(wr, head.chain(payload)).await
    }
}

async fn write_all<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut buf: impl Buf,
) -> Result<(), ConnectionError> {
    tokio::time::timeout(WRITE_TIMEOUT, wr.write_all_buf(&mut buf))
        .await
        .map_err(|_| ConnectionError::WriteTimeout(WRITE_TIMEOUT))??;
    Ok(())
}

/// What a frame (or its absence) from the host means once streaming.
fn host_ended(frame: Option<Result<Frame, WireError>>) -> ConnectionError {
    match frame {
        None => ConnectionError::HostClosed,
        Some(Err(e)) => ConnectionError::Wire(e),
        Some(Ok(Frame::Bye(reason))) => ConnectionError::HostBye(reason),
        Some(Ok(Frame::Reject(reason))) => ConnectionError::Rejected(reason),
        Some(Ok(other)) => ConnectionError::Unexpected(other.frame_type().name()),
    }
}
