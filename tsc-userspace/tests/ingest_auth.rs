//! Agents proving the shared key, against a real in-process ingest on
//! 127.0.0.1 with a key: no key, a wrong key, a replayed response and a
//! key-less agent of an older version are each refused with their reason,
//! on both sides; the right key is served; and a good agent streaming all
//! the while loses nothing. Also the listener policy: no TCP beyond
//! loopback without a key unless insecure.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::{
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::oneshot,
};
use tokio_util::codec::{FramedRead, FramedWrite};
use tsc_userspace::{
    auth::{HMAC_SHA256, SharedKey, Transcript, fresh_nonce, hello_digest},
    ingest::{ConnError, Ingest, IngestConfig, IngestError, IngestItem, SockAddr},
    wire::{
        AuthResponse, CpuApic, Endpoint, Frame, FrameCodec, Hello, Page, TRACE_CLOCK, TscSample,
        VERSION,
    },
};

const PAGES: u32 = 400;
const PAGE_SIZE: usize = 4096;
const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
";

fn key(byte: u8) -> SharedKey {
    SharedKey::from_bytes(vec![byte; 32])
}

fn hello(version: u16, name: &str) -> Hello {
    Hello {
        version,
        agent_name: name.into(),
        hostname: "guest".into(),
        kernel_release: "6.18.0".into(),
        trace_clock: TRACE_CLOCK.into(),
        page_size: PAGE_SIZE as u32,
        cpus: vec![CpuApic { cpu: 0, apic_id: 0 }],
        header_page: HEADER_PAGE.into(),
        header_event: String::new(),
        events: vec![],
        samples: vec![TscSample::take()],
    }
}

type Rx = FramedRead<OwnedReadHalf, FrameCodec>;
type Tx = FramedWrite<OwnedWriteHalf, FrameCodec>;

struct Peer {
    rx: Rx,
    tx: Tx,
    local: SocketAddr,
}

async fn connect(addr: SocketAddr) -> Peer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (rd, wr) = stream.into_split();
    Peer {
        rx: FramedRead::new(rd, FrameCodec::default()),
        tx: FramedWrite::new(wr, FrameCodec::default()),
        local,
    }
}

impl Peer {
    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(20), self.rx.next())
            .await
            .expect("the host answers")
            .expect("the host did not close")
            .expect("a valid frame")
    }

    /// Sends a Hello and takes the challenge it gets.
    async fn hello(&mut self, hello: &Hello) -> [u8; 32] {
        self.tx
            .send(Frame::Hello(Box::new(hello.clone())))
            .await
            .unwrap();
        match self.next().await {
            Frame::AuthChallenge(c) => {
                assert_eq!(c.method, HMAC_SHA256);
                c.host_nonce
            }
            other => panic!("no challenge: {other:?}"),
        }
    }

    /// The host's last words: the Reject's reason, and then it closes.
    async fn rejected(mut self) -> String {
        let reason = match self.next().await {
            Frame::Reject(reason) => reason,
            other => panic!("not a Reject: {other:?}"),
        };
        assert!(self.rx.next().await.is_none(), "the host closes after it");
        reason
    }
}

/// A response to `host_nonce` for `hello` with `key`, and its transcript.
fn response(key: &SharedKey, host_nonce: [u8; 32], hello: &Hello) -> (AuthResponse, Transcript) {
    let t = Transcript {
        host_nonce,
        agent_nonce: fresh_nonce().unwrap(),
        hello: hello_digest(hello).unwrap(),
    };
    let r = AuthResponse {
        method: HMAC_SHA256,
        agent_nonce: t.agent_nonce,
        proof: t.agent_proof(key),
    };
    (r, t)
}

/// The good agent: proves the key, checks the host's proof, then streams
/// pages; halfway it waits until every refused peer is gone, so it is
/// mid-stream while they are refused.
async fn good_agent(addr: SocketAddr, refused: oneshot::Receiver<()>) -> SocketAddr {
    let mut peer = connect(addr).await;
    let hello = hello(VERSION, "good");
    let nonce = peer.hello(&hello).await;
    let (r, t) = response(&key(1), nonce, &hello);
    peer.tx.send(Frame::AuthResponse(r)).await.unwrap();
    let Frame::AuthConfirm(proof) = peer.next().await else {
        panic!("no AuthConfirm")
    };
    assert!(t.verify_host(&key(1), &proof), "the host proves the key");
    assert!(matches!(peer.next().await, Frame::HelloAck(_)));
    let mut refused = Some(refused);
    for n in 0..PAGES {
        let mut data = vec![(n % 251) as u8; PAGE_SIZE];
        data[..4].copy_from_slice(&n.to_le_bytes());
        let page = Page {
            cpu: 0,
            flags: 0,
            data: Bytes::from(data),
        };
        peer.tx.send(Frame::Page(page)).await.unwrap();
        if n == PAGES / 2 {
            tokio::time::timeout(Duration::from_secs(20), refused.take().unwrap())
                .await
                .expect("the refused peers were never all closed")
                .unwrap();
        }
    }
    peer.tx.send(Frame::Bye("done".into())).await.unwrap();
    peer.local
}

/// Each way to fail, as a peer that returns its address and the reason
/// the host gave it.
async fn no_key(addr: SocketAddr) -> (SocketAddr, String) {
    // What tsc-tracer's agent without --key-file does when challenged.
    let mut peer = connect(addr).await;
    peer.hello(&hello(VERSION, "no-key")).await;
    let said = "this host requires agents to prove a shared key: start the agent with --key-file";
    peer.tx.send(Frame::Bye(said.into())).await.unwrap();
    let local = peer.local;
    (local, peer.rejected().await)
}

async fn wrong_key(addr: SocketAddr) -> (SocketAddr, String) {
    let mut peer = connect(addr).await;
    let hello = hello(VERSION, "wrong-key");
    let nonce = peer.hello(&hello).await;
    let (r, _) = response(&key(2), nonce, &hello);
    peer.tx.send(Frame::AuthResponse(r)).await.unwrap();
    let local = peer.local;
    (local, peer.rejected().await)
}

/// Records a good exchange (its response is served), then replays that
/// response on a new connection, with the same Hello, to a new challenge.
async fn replay(addr: SocketAddr) -> (SocketAddr, String) {
    let hello = hello(VERSION, "replayer");
    let mut recorded = connect(addr).await;
    let nonce = recorded.hello(&hello).await;
    let (r, _) = response(&key(1), nonce, &hello);
    recorded.tx.send(Frame::AuthResponse(r)).await.unwrap();
    assert!(matches!(recorded.next().await, Frame::AuthConfirm(_)));
    assert!(matches!(recorded.next().await, Frame::HelloAck(_)));
    recorded
        .tx
        .send(Frame::Bye("recorded".into()))
        .await
        .unwrap();

    let mut peer = connect(addr).await;
    let fresh = peer.hello(&hello).await;
    assert_ne!(fresh, nonce, "every connection gets a fresh challenge");
    peer.tx.send(Frame::AuthResponse(r)).await.unwrap();
    let local = peer.local;
    (local, peer.rejected().await)
}

/// An agent of version 2 (no authentication at all): refused at its Hello.
async fn old_agent(addr: SocketAddr) -> (SocketAddr, String) {
    let mut peer = connect(addr).await;
    peer.tx
        .send(Frame::Hello(Box::new(hello(2, "old"))))
        .await
        .unwrap();
    let local = peer.local;
    (local, peer.rejected().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_key_is_served_and_refusals_disturb_no_one() {
    let config = IngestConfig {
        key: Some(Arc::new(key(1))),
        decode_pages: false,
        queue_depth: 16,
        ..IngestConfig::default()
    };
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let mut ingest = Ingest::bind(&[listen], config).await.unwrap();
    let SockAddr::Tcp(addr) = ingest.local_addrs()[0] else {
        panic!("not tcp")
    };
    let (refused_tx, refused_rx) = oneshot::channel();
    let good = tokio::spawn(good_agent(addr, refused_rx));
    let refused = [
        ("no key", tokio::spawn(no_key(addr))),
        ("wrong key", tokio::spawn(wrong_key(addr))),
        ("replay", tokio::spawn(replay(addr))),
        ("version 2", tokio::spawn(old_agent(addr))),
    ];
    let mut refused_tx = Some(refused_tx);

    let mut pages = Vec::new();
    let mut closed: HashMap<SockAddr, Result<String, Arc<ConnError>>> = HashMap::new();
    let mut connected = Vec::new();
    // The good agent, the four refused and the recorded exchange.
    while closed.len() < 6 {
        let item = tokio::time::timeout(Duration::from_secs(20), ingest.next_item())
            .await
            .expect("every connection ends in time")
            .unwrap();
        match item {
            IngestItem::Page { page, .. } => {
                pages.push(u32::from_le_bytes(page.data[..4].try_into().unwrap()));
            }
            IngestItem::Connected(info) => connected.push(info.hello.agent_name.clone()),
            IngestItem::Closed { peer, outcome, .. } => {
                closed.insert(peer, outcome);
                let failed = closed.values().filter(|o| o.is_err()).count();
                if failed == refused.len()
                    && let Some(tx) = refused_tx.take()
                {
                    let _ = tx.send(());
                }
            }
            _ => {}
        }
    }
    let good = SockAddr::Tcp(good.await.unwrap());
    assert_eq!(closed[&good].as_ref().unwrap(), "done");
    assert_eq!(
        pages,
        (0..PAGES).collect::<Vec<_>>(),
        "every page, in order"
    );
    connected.sort();
    assert_eq!(
        connected,
        ["good", "replayer"],
        "only proven agents connect"
    );

    for (what, task) in refused {
        let (local, reason) = task.await.unwrap();
        let host_log = closed[&SockAddr::Tcp(local)]
            .as_ref()
            .expect_err(what)
            .to_string();
        let (agent_hears, host_says) = match what {
            "no key" => (
                "did not answer the key challenge",
                "not authenticated: the agent did not answer the key challenge: it said \"this host requires agents to prove a shared key",
            ),
            "wrong key" | "replay" => (
                "authentication failed: the agent's proof does not match this host's key and challenge",
                "not authenticated: authentication failed",
            ),
            "version 2" => (
                "this host requires agents to prove a shared key (--key-file), and protocol version 2 cannot",
                "not authenticated: this host requires agents to prove a shared key",
            ),
            _ => unreachable!(),
        };
        assert!(
            reason.contains(agent_hears),
            "{what}: the agent heard {reason:?}"
        );
        assert!(
            host_log.starts_with(host_says),
            "{what}: the host said {host_log:?}"
        );
        // Never mistaken for a version problem (an agent would downgrade).
        assert!(
            !reason.starts_with("unsupported protocol version"),
            "{reason}"
        );
    }
}

/// Without a key the ingest refuses a TCP listener beyond loopback and
/// says why; `insecure` or a key allows it; loopback needs neither.
#[tokio::test]
async fn a_listener_beyond_loopback_needs_a_key_or_insecure() {
    let any: Endpoint = "tcp:0.0.0.0:0".parse().unwrap();
    let err = Ingest::bind(std::slice::from_ref(&any), IngestConfig::default())
        .await
        .err()
        .expect("refused without a key");
    assert!(matches!(err, IngestError::NeedsKey(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("refusing to listen on tcp:0.0.0.0:0 without a key"),
        "{text}"
    );
    assert!(
        text.contains("--key-file") && text.contains("--insecure"),
        "{text}"
    );

    for config in [
        IngestConfig {
            insecure: true,
            ..IngestConfig::default()
        },
        IngestConfig {
            key: Some(Arc::new(key(1))),
            ..IngestConfig::default()
        },
    ] {
        let ingest = Ingest::bind(std::slice::from_ref(&any), config)
            .await
            .unwrap();
        ingest.close().await;
    }
    for loopback in ["tcp:127.0.0.1:0", "tcp:[::1]:0", "tcp:localhost:0"] {
        let listen: Endpoint = loopback.parse().unwrap();
        match Ingest::bind(&[listen], IngestConfig::default()).await {
            Ok(ingest) => ingest.close().await,
            // A host without IPv6 cannot bind ::1; never for want of a key.
            Err(e) => assert!(!matches!(e, IngestError::NeedsKey(_)), "{loopback}: {e}"),
        }
    }
}
