//! Shipping pages to the host: connections, handshake (with the key's
//! challenge-response), the send loop, reconnection, and the orderly end.

use std::{
    collections::{HashMap, VecDeque},
    io::{self, IoSlice},
    time::Duration,
};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::{codec::FramedRead, sync::CancellationToken};
use tracing::{info, warn};

use super::{
    AgentConfig, AgentError, AgentReport, hello, sysinfo,
    transport::{self, Backoff, ConnectError, Transport},
};
use crate::{
    auth::{self, HMAC_SHA256, Transcript},
    page_reader::{Read, Readers},
    tracefs::Instance,
    wire::{
        AUTH_VERSION, AuthChallenge, AuthResponse, DEFAULT_MAX_BODY, Frame, FrameCodec, Hello,
        Lost, MIN_VERSION, Page, TscSample, VERSION, WireError,
    },
};

/// Time the host has to answer the Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a single frame write may block (a host that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// `saved_cmdlines` is re-sent (when changed) every this many KeepAlives.
const CMDLINES_EVERY: u32 = 5;
/// Most queued reads one write takes.
const BATCH_READS: usize = 64;

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
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
    /// Authentication cannot succeed with this configuration: not retried.
    #[error("{0}")]
    Auth(String),
}

/// What the agent tells a host that challenges it without a key, and the
/// error it stops with.
const NO_KEY: &str = "this host requires agents to prove a shared key: start the agent with \
                      --key-file PATH (the host's key)";

type Reader = FramedRead<ReadHalf<Box<dyn Transport>>, FrameCodec>;
type Writer = WriteHalf<Box<dyn Transport>>;

/// The state that outlives connections.
pub(super) struct Shipper {
    config: AgentConfig,
    instance: Instance,
    hello: Hello,
    rx: mpsc::Receiver<Read>,
    /// The protocol version offered (lowered when a host refuses it).
    version: u16,
    /// Pages taken from the queue whose write did not complete.
    pending: Vec<Page>,
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
        rx: mpsc::Receiver<Read>,
    ) -> Self {
        Self {
            config,
            instance,
            hello,
            rx,
            version: VERSION,
            pending: Vec::new(),
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
            let err = match self.connect_and_ship(stop, readers, &backoff).await {
                Ok(()) => return Ok(self.report),
                // A host of an older version says so in its Reject: offer
                // the older version at once (PROTOCOL.md, versioning).
                Err(ConnectionError::Rejected(reason))
                    if self.version > MIN_VERSION
                        && reason.starts_with("unsupported protocol version") =>
                {
                    self.downgrade(&reason)?;
                    continue;
                }
                Err(ConnectionError::Rejected(reason)) => {
                    return Err(AgentError::Rejected {
                        endpoint: self.config.endpoint.clone(),
                        reason,
                    });
                }
                Err(ConnectionError::Auth(reason)) => {
                    return Err(AgentError::Auth {
                        endpoint: self.config.endpoint.clone(),
                        reason,
                    });
                }
                Err(err) => err,
            };
            if self.report.connections > connections {
                backoff.reset();
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

    /// After a Reject naming the versions the host speaks: offer the
    /// newest of them (or the next lower one when it names none).
    fn downgrade(&mut self, reason: &str) -> Result<(), AgentError> {
        let host = newest_spoken(reason)
            .filter(|&v| v >= MIN_VERSION)
            .unwrap_or(self.version - 1)
            .min(self.version - 1);
        if self.config.key.is_some() && host < AUTH_VERSION {
            return Err(AgentError::Auth {
                endpoint: self.config.endpoint.clone(),
                reason: format!(
                    "the host speaks protocol versions up to {host} only ({reason}), which \
                     cannot prove a key; this agent has --key-file: upgrade the host"
                ),
            });
        }
        warn!(
            "{} refused protocol version {} ({reason}); offering {host}",
            self.config.endpoint, self.version
        );
        self.version = host;
        Ok(())
    }

    async fn connect_and_ship(
        &mut self,
        stop: &CancellationToken,
        readers: &Readers,
        backoff: &Backoff,
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
        if backoff.failures() > 0 {
            self.report_gap(backoff);
        }
        self.ship(&mut rx, &mut wr, stop, readers).await
    }

    /// After a reconnection: what waited meanwhile is sent now; what the
    /// guest kernel dropped meanwhile is said here and in Lost frames.
    fn report_gap(&self, backoff: &Backoff) {
        let queued = self.pending.len() + self.rx.len();
        let lost: u64 = self
            .hello
            .cpus
            .iter()
            .filter_map(|c| {
                let stats = self
                    .instance
                    .read(&format!("per_cpu/cpu{}/stats", c.cpu))
                    .ok()?;
                let sent = self.lost_sent.get(&c.cpu).copied().unwrap_or(0);
                Some(sysinfo::lost_events(&stats).saturating_sub(sent))
            })
            .sum();
        let lost = match lost {
            0 => "the guest kernel lost no events meanwhile".to_owned(),
            n => format!("the guest kernel lost {n} events meanwhile (its buffers filled up)"),
        };
        info!(
            "reached {} after {} failed attempts in {:.1?}: sending the {queued} reads that \
             waited; {lost}",
            self.config.endpoint,
            backoff.failures(),
            backoff.failing_for()
        );
    }

    async fn handshake(&mut self, rx: &mut Reader, wr: &mut Writer) -> Result<(), ConnectionError> {
        let mut hello = hello::with_samples(&self.hello);
        hello.version = self.version;
        // Kept: the authentication digests what was sent.
        self.write(wr, &Frame::Hello(Box::new(hello.clone())))
            .await?;
        let mut reply = handshake_reply(rx).await?;
        if let Frame::AuthChallenge(challenge) = reply {
            self.prove(rx, wr, challenge, &hello).await?;
            reply = handshake_reply(rx).await?;
        } else if self.config.key.is_some() && matches!(reply, Frame::HelloAck(_)) {
            let why = "this agent has a key (--key-file) but the host asked for none";
            let _ = self.write(wr, &Frame::Bye(why.into())).await;
            return Err(ConnectionError::Auth(format!(
                "{why}: it may not be the host meant; give the host the same --key-file, \
                 or run this agent without one"
            )));
        }
        match reply {
            Frame::HelloAck(ack) => {
                info!(
                    "connected to {} as connection {}",
                    self.config.endpoint, ack.connection_id
                );
                self.max_body = ack.max_body;
                Ok(())
            }
            Frame::Reject(reason) => Err(ConnectionError::Rejected(reason)),
            other => Err(host_ended(Some(Ok(other)))),
        }
    }

    /// Answers the host's challenge, then checks the host's own proof
    /// (`docs/PROTOCOL.md` §9).
    async fn prove(
        &mut self,
        rx: &mut Reader,
        wr: &mut Writer,
        challenge: AuthChallenge,
        hello: &Hello,
    ) -> Result<(), ConnectionError> {
        let Some(key) = self.config.key.clone() else {
            let _ = self.write(wr, &Frame::Bye(NO_KEY.into())).await;
            return Err(ConnectionError::Auth(NO_KEY.into()));
        };
        if challenge.method != HMAC_SHA256 {
            let why = format!(
                "the host asks for authentication method {}, which this agent does not know",
                challenge.method
            );
            let _ = self.write(wr, &Frame::Bye(why.clone())).await;
            return Err(ConnectionError::Auth(why));
        }
        let agent_nonce = auth::fresh_nonce()?;
        let transcript = Transcript {
            host_nonce: challenge.host_nonce,
            agent_nonce,
            hello: auth::hello_digest(hello)?,
        };
        let response = AuthResponse {
            method: HMAC_SHA256,
            agent_nonce,
            proof: transcript.agent_proof(&key),
        };
        self.write(wr, &Frame::AuthResponse(response)).await?;
        match handshake_reply(rx).await? {
            Frame::AuthConfirm(proof) if transcript.verify_host(&key, &proof) => Ok(()),
            Frame::AuthConfirm(_) => {
                let why = "the host's proof does not match this agent's key";
                let _ = self.write(wr, &Frame::Bye(why.into())).await;
                Err(ConnectionError::Auth(format!(
                    "{why}: a host with another --key-file, or not the host meant"
                )))
            }
            Frame::Reject(reason) => Err(ConnectionError::Rejected(reason)),
            other => Err(host_ended(Some(Ok(other)))),
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
        let mut batch = Batch::default();
        for page in std::mem::take(&mut self.pending) {
            self.add(&mut batch, Read::Page(page))?;
        }
        self.write_batch(wr, batch).await?;
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
                    while let Ok(read) = self.rx.try_recv() {
                        self.send_reads(wr, read).await?;
                    }
                    beats += 1;
                    self.keepalive(wr, beats.is_multiple_of(CMDLINES_EVERY)).await?;
                }
                read = self.rx.recv() => match read {
                    Some(read) => self.send_reads(wr, read).await?,
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
        while let Some(read) = self.rx.recv().await {
            self.send_reads(wr, read).await?;
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

    /// `first` and whatever else the queue holds right now (up to
    /// [`BATCH_READS`]), in one vectored write: a busy CPU's pages cost a
    /// system call per batch, not per page.
    async fn send_reads(&mut self, wr: &mut Writer, first: Read) -> Result<(), ConnectionError> {
        let mut batch = Batch::default();
        self.add(&mut batch, first)?;
        for _ in 1..BATCH_READS {
            match self.rx.try_recv() {
                Ok(read) => self.add(&mut batch, read)?,
                Err(_) => break,
            }
        }
        self.write_batch(wr, batch).await
    }

    /// Encodes a page, or watermarks (to a host of version 2 or later),
    /// into `batch`. Pages are kept until written, so a reconnection can
    /// resend them.
    fn add(&mut self, batch: &mut Batch, read: Read) -> Result<(), ConnectionError> {
        let frame = match read {
            Read::Page(page) => {
                self.pending.push(page.clone());
                Frame::Page(page)
            }
            Read::Drained(marks) if self.version >= 2 && !marks.is_empty() => Frame::Drained(marks),
            Read::Drained(_) => return Ok(()),
        };
        let (head, payload) = frame.encode_parts(self.max_body)?;
        batch.push(head);
        batch.push(payload);
        Ok(())
    }

    async fn write_batch(&mut self, wr: &mut Writer, batch: Batch) -> Result<(), ConnectionError> {
        if batch.remaining() > 0 {
            write_all(wr, batch).await?;
        }
        for page in self.pending.drain(..) {
            self.report.pages += 1;
            self.report.bytes += page.data.len() as u64;
        }
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

/// The host's next frame during the handshake, within its time limit.
async fn handshake_reply(rx: &mut Reader) -> Result<Frame, ConnectionError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, rx.next()).await {
        Err(_) => Err(ConnectionError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
        Ok(Some(Ok(frame))) => Ok(frame),
        Ok(other) => Err(host_ended(other)),
    }
}

/// The newest version a host's "unsupported protocol version" Reject says
/// it speaks: "(this build speaks 1 to 2)" or "(this build speaks 1)".
fn newest_spoken(reason: &str) -> Option<u16> {
    let spoken = reason.split("this build speaks ").nth(1)?;
    let spoken = spoken.split(')').next()?;
    spoken.rsplit(' ').next()?.trim().parse().ok()
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

/// Encoded frames, written with one vectored write (`chunks_vectored`
/// hands the kernel up to 64 of them at a time).
#[derive(Default)]
struct Batch {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push_back(part);
        }
    }
}

impl Buf for Batch {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| &p[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of a batch");
        self.len -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_yields_its_parts_in_order_across_partial_advances() {
        let mut batch = Batch::default();
        for part in [&b"abc"[..], b"", b"de", b"fghij"] {
            batch.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(batch.remaining(), 10);
        let mut slices = [IoSlice::new(&[]); 8];
        assert_eq!(batch.chunks_vectored(&mut slices), 3);
        batch.advance(4);
        assert_eq!(batch.chunk(), b"e");
        let mut rest = Vec::new();
        while batch.has_remaining() {
            let chunk = batch.chunk().to_vec();
            batch.advance(chunk.len());
            rest.extend(chunk);
        }
        assert_eq!(rest, b"efghij");
    }
}
