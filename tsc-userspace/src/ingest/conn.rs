//! One connection: handshake (with the key's challenge when the ingest has
//! one), then frames until Bye, error or silence.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf},
    sync::mpsc,
};
use tokio_util::{
    codec::{FramedRead, FramedWrite},
    sync::CancellationToken,
};
use tracing::{info, warn};

use super::{
    Cmdlines, ConnError, ConnId, ConnectionInfo, EventPage, GuestFormats, IngestConfig, IngestItem,
    SockAddr,
};
use crate::auth::{self, HMAC_SHA256, SharedKey, Transcript};
use crate::tracefs::parse_saved_cmdlines;
use crate::wire::{
    AUTH_VERSION, AuthChallenge, DrainedCpu, Frame, FrameCodec, HEADER_LEN, Hello, HelloAck, Page,
    TRACE_CLOCK, WireError, rdtsc,
};

/// How long a parting Reject or Bye may take to send.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Smallest page that can hold a ring-buffer page header.
const MIN_PAGE_SIZE: u32 = 64;

/// What a connection task needs from the ingest.
pub(super) struct Context {
    pub(super) id: ConnId,
    pub(super) peer: SockAddr,
    pub(super) config: Arc<IngestConfig>,
    pub(super) tx: mpsc::Sender<IngestItem>,
    pub(super) stop: CancellationToken,
}

type Reader<S> = FramedRead<ReadHalf<S>, FrameCodec>;
type Writer<S> = FramedWrite<WriteHalf<S>, FrameCodec>;

/// Serves one connection to its end and reports how it ended.
pub(super) async fn serve<S>(stream: S, ctx: Context)
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = FramedRead::new(rd, FrameCodec::new(ctx.config.max_body));
    let mut writer = FramedWrite::new(wr, FrameCodec::new(ctx.config.max_body));
    let outcome = tokio::select! {
        _ = ctx.stop.cancelled() => Err(ConnError::Shutdown),
        outcome = run(&mut reader, &mut writer, &ctx) => outcome,
    };
    let (id, peer) = (ctx.id, ctx.peer);
    match &outcome {
        Ok(reason) => info!("connection {id} from {peer} said Bye: {reason}"),
        Err(err) => {
            warn!("connection {id} from {peer} closed: {err}");
            goodbye(&mut writer, err).await;
        }
    }
    let closed = IngestItem::Closed {
        conn: id,
        peer,
        outcome: outcome.map_err(Arc::new),
    };
    // The consumer may be gone (shutdown): nobody is left to tell.
    let _ = ctx.tx.send(closed).await;
}

/// Tells the peer why it is being dropped, when it can still hear it.
async fn goodbye<S: AsyncWrite>(writer: &mut Writer<S>, err: &ConnError) {
    let frame = match err {
        ConnError::Refused(reason) | ConnError::Unauthenticated(reason) => {
            Frame::Reject(reason.clone())
        }
        ConnError::Wire(e @ (WireError::UnsupportedVersion { .. } | WireError::BadMagic(_))) => {
            Frame::Reject(e.to_string())
        }
        ConnError::Wire(WireError::Io(_)) | ConnError::Disconnected => return,
        other => Frame::Bye(other.to_string()),
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, writer.send(frame)).await;
}

async fn run<S>(
    reader: &mut Reader<S>,
    writer: &mut Writer<S>,
    ctx: &Context,
) -> Result<String, ConnError>
where
    S: AsyncRead + AsyncWrite,
{
    let hello = handshake(reader, ctx).await?;
    let host_tsc_at_hello = rdtsc();
    // Before anything of the Hello is believed or parsed further.
    if let Some(key) = &ctx.config.key {
        authenticate(reader, writer, ctx, key, &hello).await?;
    }
    let guest = check_hello(&hello, ctx.config.max_body)
        .and_then(|()| GuestFormats::from_hello(&hello))
        .map_err(ConnError::Refused)?;
    let guest = Arc::new(guest);
    let mut state = State::new(&hello, guest.clone(), ctx.config.decode_pages);
    let info = Arc::new(ConnectionInfo {
        id: ctx.id,
        peer: ctx.peer,
        hello,
        host_tsc_at_hello,
        guest,
    });
    if ctx.config.ask_consumer {
        admit(ctx, info.clone()).await?;
    }
    let ack = HelloAck {
        connection_id: ctx.id,
        max_body: ctx.config.max_body,
    };
    writer.send(Frame::HelloAck(ack)).await?;
    info!(
        "connection {} is agent {:?} on {:?} ({} CPUs, {} events)",
        ctx.id,
        info.hello.agent_name,
        info.hello.hostname,
        info.hello.cpus.len(),
        info.hello.events.len()
    );
    emit(ctx, IngestItem::Connected(info)).await?;
    loop {
        let frame = next_frame(reader, ctx.config.idle_timeout, false).await?;
        if let Some(reason) = state.handle(frame, ctx).await? {
            return Ok(reason);
        }
    }
}

/// Asks the consumer whether to accept the agent, and waits for its answer
/// as long as a Hello may take.
async fn admit(ctx: &Context, info: Arc<ConnectionInfo>) -> Result<(), ConnError> {
    let (admission, answer) = super::Admission::new(info);
    emit(ctx, IngestItem::Hello(admission)).await?;
    match tokio::time::timeout(ctx.config.handshake_timeout, answer).await {
        Ok(Ok(decision)) => decision.map_err(ConnError::Refused),
        Ok(Err(_)) => Err(ConnError::Refused("the host session is stopping".into())),
        Err(_) => Err(ConnError::Refused(
            "the host session did not decide in time".into(),
        )),
    }
}

async fn handshake<S: AsyncRead>(
    reader: &mut Reader<S>,
    ctx: &Context,
) -> Result<Hello, ConnError> {
    match next_frame(reader, ctx.config.handshake_timeout, true).await? {
        Frame::Hello(hello) => Ok(*hello),
        other => Err(ConnError::Unexpected {
            got: other.frame_type().name(),
            when: "before Hello",
        }),
    }
}

/// The challenge-response of `docs/PROTOCOL.md` §9: the agent proves the
/// key over a fresh nonce of ours and its Hello, then we prove it back.
async fn authenticate<S>(
    reader: &mut Reader<S>,
    writer: &mut Writer<S>,
    ctx: &Context,
    key: &SharedKey,
    hello: &Hello,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite,
{
    if hello.version < AUTH_VERSION {
        return Err(ConnError::Unauthenticated(format!(
            "this host requires agents to prove a shared key (--key-file), and protocol \
             version {} cannot: use an agent of version {AUTH_VERSION} or later with --key-file",
            hello.version
        )));
    }
    let host_nonce = auth::fresh_nonce().map_err(|e| {
        ConnError::Unauthenticated(format!("the host cannot draw a random challenge: {e}"))
    })?;
    let challenge = AuthChallenge {
        method: HMAC_SHA256,
        host_nonce,
    };
    writer.send(Frame::AuthChallenge(challenge)).await?;
    let response = match next_frame(reader, ctx.config.handshake_timeout, true).await? {
        Frame::AuthResponse(response) => response,
        Frame::Bye(reason) => {
            return Err(ConnError::Unauthenticated(format!(
                "the agent did not answer the key challenge: it said {reason:?}"
            )));
        }
        other => {
            return Err(ConnError::Unexpected {
                got: other.frame_type().name(),
                when: "instead of AuthResponse",
            });
        }
    };
    let transcript = Transcript {
        host_nonce,
        agent_nonce: response.agent_nonce,
        hello: auth::hello_digest(hello)?,
    };
    if response.method != HMAC_SHA256 || !transcript.verify_agent(key, &response.proof) {
        return Err(ConnError::Unauthenticated(
            "authentication failed: the agent's proof does not match this host's key and \
             challenge (a wrong --key-file, or a replayed response)"
                .into(),
        ));
    }
    writer
        .send(Frame::AuthConfirm(transcript.host_proof(key)))
        .await?;
    info!("connection {} proved the shared key", ctx.id);
    Ok(())
}

/// The next frame, or why there is none.
async fn next_frame<S: AsyncRead>(
    reader: &mut Reader<S>,
    limit: Duration,
    handshake: bool,
) -> Result<Frame, ConnError> {
    match tokio::time::timeout(limit, reader.next()).await {
        Err(_) if handshake => Err(ConnError::HandshakeTimeout(limit)),
        Err(_) => Err(ConnError::IdleTimeout(limit)),
        Ok(None) => Err(ConnError::Disconnected),
        Ok(Some(frame)) => Ok(frame?),
    }
}

async fn emit(ctx: &Context, item: IngestItem) -> Result<(), ConnError> {
    ctx.tx.send(item).await.map_err(|_| ConnError::Shutdown)
}

/// Refuses a Hello this host cannot decode from, with the reason to send.
fn check_hello(hello: &Hello, max_body: u32) -> Result<(), String> {
    if hello.trace_clock != TRACE_CLOCK {
        return Err(format!(
            "trace clock {:?} is not {TRACE_CLOCK:?}",
            hello.trace_clock
        ));
    }
    let max_page = max_body.saturating_sub(HEADER_LEN as u32);
    if !(MIN_PAGE_SIZE..=max_page).contains(&hello.page_size) {
        return Err(format!(
            "page size {} outside {MIN_PAGE_SIZE}..={max_page}",
            hello.page_size
        ));
    }
    if hello.cpus.is_empty() {
        return Err("no CPUs".into());
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = hello.cpus.iter().find(|c| !seen.insert(c.cpu)) {
        return Err(format!("CPU {} listed twice", dup.cpu));
    }
    Ok(())
}

/// Per-connection bookkeeping after the handshake.
struct State {
    /// The protocol version of the agent's Hello.
    version: u16,
    page_size: usize,
    /// Highest watermark yielded per guest CPU (version 2).
    drained: HashMap<u32, u64>,
    /// Lost-event totals per known guest CPU.
    lost: HashMap<u32, u64>,
    /// `None` when pages go out raw.
    guest: Option<Arc<GuestFormats>>,
    comms: Arc<Cmdlines>,
}

impl State {
    fn new(hello: &Hello, guest: Arc<GuestFormats>, decode: bool) -> Self {
        Self {
            version: hello.version,
            page_size: hello.page_size as usize,
            drained: HashMap::new(),
            lost: hello.cpus.iter().map(|c| (c.cpu, 0)).collect(),
            guest: decode.then_some(guest),
            comms: Arc::default(),
        }
    }

    fn page_item(&self, conn: ConnId, page: Page) -> IngestItem {
        let Some(guest) = &self.guest else {
            return IngestItem::Page { conn, page };
        };
        let cpu = page.cpu;
        match EventPage::new(conn, cpu, page.data, guest.clone(), self.comms.clone()) {
            Ok(events) => IngestItem::Events(events),
            Err(error) => {
                warn!("connection {conn}: skipping a bad page of CPU {cpu}: {error}");
                IngestItem::BadPage { conn, cpu, error }
            }
        }
    }

    /// Merges a `saved_cmdlines` text; yields it only when not decoding.
    fn cmdlines(&mut self, conn: ConnId, text: String) -> Option<IngestItem> {
        if self.guest.is_none() {
            return Some(IngestItem::Cmdlines { conn, text });
        }
        Arc::make_mut(&mut self.comms).extend(parse_saved_cmdlines(&text));
        None
    }

    /// Handles one frame; `Some(reason)` when the peer said Bye.
    async fn handle(&mut self, frame: Frame, ctx: &Context) -> Result<Option<String>, ConnError> {
        let conn = ctx.id;
        let item = match frame {
            Frame::Page(page) => {
                self.check_page(&page)?;
                self.page_item(conn, page)
            }
            Frame::Lost(lost) => {
                let total = self.lost.get_mut(&lost.cpu).ok_or_else(|| {
                    ConnError::Contradiction(format!("Lost for unknown CPU {}", lost.cpu))
                })?;
                let new = lost.total.saturating_sub(*total);
                *total = lost.total.max(*total);
                if new == 0 {
                    return Ok(None);
                }
                IngestItem::Lost {
                    conn,
                    cpu: lost.cpu,
                    new,
                    total: *total,
                }
            }
            Frame::KeepAlive(sample) => IngestItem::TscSample {
                conn,
                sample,
                host_tsc: rdtsc(),
            },
            Frame::Cmdlines(text) => match self.cmdlines(conn, text) {
                Some(item) => item,
                None => return Ok(None),
            },
            Frame::Drained(cpus) if self.version >= 2 => {
                for d in cpus {
                    if let Some(item) = self.drained(conn, d)? {
                        emit(ctx, item).await?;
                    }
                }
                return Ok(None);
            }
            Frame::Drained(_) => {
                return Err(ConnError::Unexpected {
                    got: "Drained",
                    when: "from a version 1 agent",
                });
            }
            Frame::Bye(reason) => return Ok(Some(reason)),
            other => {
                return Err(ConnError::Unexpected {
                    got: other.frame_type().name(),
                    when: "after the handshake",
                });
            }
        };
        emit(ctx, item).await?;
        Ok(None)
    }

    /// A CPU's watermark, when it advanced.
    fn drained(&mut self, conn: ConnId, d: DrainedCpu) -> Result<Option<IngestItem>, ConnError> {
        if !self.lost.contains_key(&d.cpu) {
            return Err(ConnError::Contradiction(format!(
                "Drained for unknown CPU {}",
                d.cpu
            )));
        }
        let last = self.drained.entry(d.cpu).or_insert(0);
        if *last != 0 && d.guest_tsc <= *last {
            return Ok(None);
        }
        *last = d.guest_tsc;
        Ok(Some(IngestItem::Drained {
            conn,
            cpu: d.cpu,
            tsc_cpu: d.tsc_cpu,
            guest_tsc: d.guest_tsc,
        }))
    }

    fn check_page(&self, page: &Page) -> Result<(), ConnError> {
        if !self.lost.contains_key(&page.cpu) {
            return Err(ConnError::Contradiction(format!(
                "Page for unknown CPU {}",
                page.cpu
            )));
        }
        if page.data.len() > self.page_size {
            return Err(ConnError::Contradiction(format!(
                "Page of {} bytes, the Hello said {}",
                page.data.len(),
                self.page_size
            )));
        }
        Ok(())
    }
}
