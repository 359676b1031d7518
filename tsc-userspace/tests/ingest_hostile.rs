//! Hostile peers against a real in-process ingest on 127.0.0.1: each one
//! ends only its own connection, with a reported reason, while a good agent
//! connected at the same time delivers everything.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};
use tokio_util::codec::{FramedRead, FramedWrite};
use tsc_userspace::{
    ingest::{ConnError, Ingest, IngestConfig, IngestItem, SockAddr},
    wire::{
        CpuApic, DEFAULT_MAX_BODY, Endpoint, Frame, FrameCodec, Hello, Lost, Page, TRACE_CLOCK,
        TscSample, WireError,
    },
};

const PAGES_PER_CPU: u32 = 300;
const PAGE_SIZE: usize = 4096;
/// `events/header_page` of an x86_64 Linux 6.18.
const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
";

fn hello() -> Hello {
    Hello {
        version: tsc_userspace::wire::VERSION,
        agent_name: "good".into(),
        hostname: "guest".into(),
        kernel_release: "6.18.0".into(),
        trace_clock: TRACE_CLOCK.into(),
        page_size: PAGE_SIZE as u32,
        cpus: vec![
            CpuApic { cpu: 0, apic_id: 0 },
            CpuApic { cpu: 1, apic_id: 4 },
        ],
        header_page: HEADER_PAGE.into(),
        header_event: String::new(),
        events: vec![],
        samples: vec![TscSample::take()],
    }
}

fn hello_bytes() -> BytesMut {
    let mut b = BytesMut::new();
    Frame::Hello(Box::new(hello()))
        .encode_into(&mut b, DEFAULT_MAX_BODY)
        .unwrap();
    b
}

fn page(cpu: u32, n: u32) -> Page {
    let mut data = vec![(n % 251) as u8; PAGE_SIZE];
    data[..4].copy_from_slice(&n.to_le_bytes());
    Page {
        cpu,
        flags: 0,
        data: Bytes::from(data),
    }
}

/// A well-behaved agent: handshake, pages on two CPUs, a Lost, a
/// KeepAlive, Bye. Halfway through it waits for `hostile_gone`, so that it
/// is connected, mid-stream, while the hostile peers are ended. Returns its
/// local address.
async fn good_agent(addr: SocketAddr, hostile_gone: oneshot::Receiver<()>) -> SocketAddr {
    let stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (rd, wr) = stream.into_split();
    let mut rx = FramedRead::new(rd, FrameCodec::default());
    let mut tx = FramedWrite::new(wr, FrameCodec::default());
    tx.send(Frame::Hello(Box::new(hello()))).await.unwrap();
    let ack = rx.next().await.unwrap().unwrap();
    assert!(matches!(ack, Frame::HelloAck(_)), "{ack:?}");
    let mut hostile_gone = Some(hostile_gone);
    for n in 0..PAGES_PER_CPU {
        for cpu in 0..2 {
            tx.send(Frame::Page(page(cpu, n))).await.unwrap();
        }
        if n == PAGES_PER_CPU / 2 {
            tx.send(Frame::Lost(Lost { cpu: 1, total: 17 }))
                .await
                .unwrap();
            tx.send(Frame::KeepAlive(TscSample::take())).await.unwrap();
            // The breakers are ended within milliseconds: well inside the
            // idle limit this connection is under while it waits.
            let gone = hostile_gone.take().unwrap();
            tokio::time::timeout(Duration::from_secs(20), gone)
                .await
                .expect("the hostile peers that break the protocol were never all ended")
                .unwrap();
        }
    }
    tx.send(Frame::Bye("done".into())).await.unwrap();
    local
}

/// Sends `bytes`, then closes the write side; returns the local address
/// and every frame the host sent back.
async fn raw_peer(addr: SocketAddr, bytes: Vec<u8>, close: bool) -> (SocketAddr, Vec<Frame>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(&bytes).await.unwrap();
    if close {
        stream.shutdown().await.unwrap();
    }
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    let mut frames = Vec::new();
    let mut buf = BytesMut::from(&back[..]);
    let mut codec = FrameCodec::default();
    while let Ok(Some(f)) = tokio_util::codec::Decoder::decode(&mut codec, &mut buf) {
        frames.push(f);
    }
    (local, frames)
}

/// Sends a Hello one byte at a time, too slowly for the handshake limit.
async fn slow_peer(addr: SocketAddr) -> (SocketAddr, Vec<Frame>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    for byte in hello_bytes() {
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        // The slowness is the hostility under test, not a wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (local, Vec::new())
}

/// A connection ended for what its peer sent, not for a time limit.
fn broke_protocol(err: &ConnError) -> bool {
    matches!(
        err,
        ConnError::Wire(
            WireError::Oversize { .. }
                | WireError::Truncated { .. }
                | WireError::UnsupportedVersion { .. }
                | WireError::UnknownType(_)
        )
    )
}

fn header(len: u32, code: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.put_u32_le(len);
    h.put_u16_le(code);
    h.put_u16_le(0);
    h
}

#[derive(Debug, Default)]
struct Seen {
    pages: HashMap<u32, Vec<u32>>,
    lost: u64,
    samples: usize,
    closed: HashMap<SockAddr, Result<String, String>>,
    errors: HashMap<SockAddr, std::sync::Arc<ConnError>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_end_only_their_own_connection() {
    let config = IngestConfig {
        handshake_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(800),
        decode_pages: false,
        queue_depth: 16,
        ..IngestConfig::default()
    };
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let mut ingest = Ingest::bind(&[listen], config).await.unwrap();
    let SockAddr::Tcp(addr) = ingest.local_addrs()[0] else {
        panic!("not tcp")
    };

    let mut wrong_version = hello_bytes().to_vec();
    wrong_version[12..14].copy_from_slice(&9u16.to_le_bytes());
    let mut after_hello = hello_bytes().to_vec();
    let mut truncated_page = header(8 + PAGE_SIZE as u32, 4);
    truncated_page.extend_from_slice(&[0u8; 100]);
    let mut unknown_type = after_hello.clone();
    unknown_type.extend_from_slice(&header(0, 0x77));
    after_hello.extend_from_slice(&truncated_page);
    let mut truncated_hello = hello_bytes().to_vec();
    truncated_hello.truncate(40);

    let hostile = vec![
        (
            "garbage",
            tokio::spawn(raw_peer(
                addr,
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                true,
            )),
        ),
        (
            "oversize",
            tokio::spawn(raw_peer(addr, header(DEFAULT_MAX_BODY + 1, 4), false)),
        ),
        (
            "truncated",
            tokio::spawn(raw_peer(addr, truncated_hello, true)),
        ),
        ("mid-frame", tokio::spawn(raw_peer(addr, after_hello, true))),
        (
            "version",
            tokio::spawn(raw_peer(addr, wrong_version, false)),
        ),
        ("unknown", tokio::spawn(raw_peer(addr, unknown_type, false))),
        (
            "silent",
            tokio::spawn(raw_peer(addr, hello_bytes().to_vec(), false)),
        ),
        ("slow", tokio::spawn(slow_peer(addr))),
    ];
    // The six that break the protocol are ended at once; "slow" and
    // "silent" run out their time limits.
    const BREAKERS: usize = 6;
    let (hostile_gone, gone) = oneshot::channel();
    let mut hostile_gone = Some(hostile_gone);
    let good = tokio::spawn(good_agent(addr, gone));

    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.closed.len() < hostile.len() + 1 {
        let item = tokio::time::timeout_at(deadline, ingest.next_item())
            .await
            .expect("every connection closes in time")
            .unwrap();
        // A slow consumer must not break anyone: dawdle now and then (the
        // dawdling is under test, not a wait).
        if item.conn() % 3 == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        match item {
            IngestItem::Page { page, .. } => {
                let n = u32::from_le_bytes(page.data[..4].try_into().unwrap());
                assert_eq!(page.data.len(), PAGE_SIZE);
                assert!(page.data[4..].iter().all(|&b| b == (n % 251) as u8));
                seen.pages.entry(page.cpu).or_default().push(n);
            }
            IngestItem::Lost {
                new, total, cpu: 1, ..
            } => {
                assert_eq!((new, total), (17, 17));
                seen.lost += new;
            }
            IngestItem::TscSample {
                sample, host_tsc, ..
            } => {
                assert!(host_tsc >= sample.tsc_after);
                seen.samples += 1;
            }
            IngestItem::Closed { peer, outcome, .. } => {
                if let Err(e) = &outcome {
                    seen.errors.insert(peer, e.clone());
                }
                seen.closed.insert(peer, outcome.map_err(|e| e.to_string()));
                let broke = seen.errors.values().filter(|e| broke_protocol(e)).count();
                if broke == BREAKERS
                    && let Some(tx) = hostile_gone.take()
                {
                    let _ = tx.send(());
                }
            }
            IngestItem::Connected(_) | IngestItem::Cmdlines { .. } | IngestItem::Lost { .. } => {}
            other => panic!("unexpected in raw mode: {other:?}"),
        }
    }

    let good_addr = SockAddr::Tcp(good.await.unwrap());
    assert_eq!(seen.closed[&good_addr], Ok("done".to_string()));
    let expected: Vec<u32> = (0..PAGES_PER_CPU).collect();
    assert_eq!(seen.pages[&0], expected, "cpu 0 pages all arrive, in order");
    assert_eq!(seen.pages[&1], expected, "cpu 1 pages all arrive, in order");
    assert_eq!((seen.lost, seen.samples), (17, 1));

    for (name, task) in hostile {
        let (local, back) = task.await.unwrap();
        let err = &seen.errors[&SockAddr::Tcp(local)];
        let ok = match name {
            "garbage" | "oversize" => matches!(**err, ConnError::Wire(WireError::Oversize { .. })),
            "truncated" | "mid-frame" => {
                matches!(**err, ConnError::Wire(WireError::Truncated { .. }))
            }
            "version" => {
                assert!(
                    matches!(&back[..], [Frame::Reject(r)] if r.contains("unsupported protocol version 9")),
                    "{back:?}"
                );
                matches!(
                    **err,
                    ConnError::Wire(WireError::UnsupportedVersion { got: 9, .. })
                )
            }
            "unknown" => {
                assert!(
                    matches!(&back[..], [Frame::HelloAck(_), Frame::Bye(r)] if r.contains("0x0077")),
                    "{back:?}"
                );
                matches!(**err, ConnError::Wire(WireError::UnknownType(0x77)))
            }
            "silent" => matches!(**err, ConnError::IdleTimeout(_)),
            "slow" => matches!(**err, ConnError::HandshakeTimeout(_)),
            _ => unreachable!(),
        };
        assert!(ok, "{name}: closed with {err}");
    }
}

#[tokio::test]
async fn a_hello_with_the_wrong_clock_is_rejected_with_the_reason() {
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let mut ingest = Ingest::bind(&[listen], IngestConfig::default())
        .await
        .unwrap();
    let SockAddr::Tcp(addr) = ingest.local_addrs()[0] else {
        panic!("not tcp")
    };
    let mut h = hello();
    h.trace_clock = "local".into();
    let mut bytes = BytesMut::new();
    Frame::Hello(Box::new(h))
        .encode_into(&mut bytes, DEFAULT_MAX_BODY)
        .unwrap();
    let (_, back) = raw_peer(addr, bytes.to_vec(), false).await;
    assert!(
        matches!(&back[..], [Frame::Reject(r)] if r.contains("\"local\"")),
        "{back:?}"
    );
    let item = ingest.next_item().await.unwrap();
    assert!(
        matches!(&item, IngestItem::Closed { outcome: Err(e), .. } if matches!(**e, ConnError::Refused(_))),
        "{item:?}"
    );
}

#[tokio::test]
async fn an_unusable_vsock_address_does_not_stop_tcp() {
    // CID 12345 is nobody's local CID: binding it fails whether or not a
    // vsock transport is loaded.
    let addrs: Vec<Endpoint> = vec![
        "vsock:12345:5000".parse().unwrap(),
        "tcp:127.0.0.1:0".parse().unwrap(),
    ];
    let ingest = Ingest::bind(&addrs, IngestConfig::default()).await.unwrap();
    assert_eq!(ingest.local_addrs().len(), 1);
    assert!(matches!(ingest.local_addrs()[0], SockAddr::Tcp(_)));
    let only_vsock: Vec<Endpoint> = vec!["vsock:12345:5000".parse().unwrap()];
    assert!(
        Ingest::bind(&only_vsock, IngestConfig::default())
            .await
            .is_err()
    );
}

/// A page whose header says more bytes than it holds.
fn corrupt_page() -> Bytes {
    let mut data = vec![0u8; PAGE_SIZE];
    data[8..16].copy_from_slice(&(PAGE_SIZE as u64 * 2).to_le_bytes());
    Bytes::from(data)
}

#[tokio::test]
async fn a_corrupt_page_is_reported_and_skipped_not_fatal() {
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let mut ingest = Ingest::bind(&[listen], IngestConfig::default())
        .await
        .unwrap();
    let SockAddr::Tcp(addr) = ingest.local_addrs()[0] else {
        panic!("not tcp")
    };
    let stream = TcpStream::connect(addr).await.unwrap();
    let (rd, wr) = stream.into_split();
    let mut rx = FramedRead::new(rd, FrameCodec::default());
    let mut tx = FramedWrite::new(wr, FrameCodec::default());
    tx.send(Frame::Hello(Box::new(hello()))).await.unwrap();
    assert!(matches!(rx.next().await, Some(Ok(Frame::HelloAck(_)))));
    let page = |data| {
        Frame::Page(Page {
            cpu: 1,
            flags: 0,
            data,
        })
    };
    tx.send(page(corrupt_page())).await.unwrap();
    // An empty page (commit 0) is valid and holds no events.
    tx.send(page(Bytes::from(vec![0u8; PAGE_SIZE])))
        .await
        .unwrap();
    tx.send(Frame::Bye("done".into())).await.unwrap();

    let mut items = Vec::new();
    loop {
        let item = ingest.next_item().await.unwrap();
        let closed = matches!(item, IngestItem::Closed { .. });
        items.push(item);
        if closed {
            break;
        }
    }
    assert!(matches!(items[0], IngestItem::Connected(_)), "{items:?}");
    assert!(
        matches!(items[1], IngestItem::BadPage { cpu: 1, .. }),
        "{items:?}"
    );
    assert!(
        matches!(&items[2], IngestItem::Events(p) if p.count == 0 && p.cpu == 1),
        "{items:?}"
    );
    assert!(
        matches!(&items[3], IngestItem::Closed { outcome: Ok(r), .. } if r == "done"),
        "{items:?}"
    );
}
