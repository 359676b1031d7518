//! Protocol versions against a real in-process ingest on 127.0.0.1: a
//! version 2 agent's Drained frames come out as watermarks; a version 1
//! agent is still served, and a Drained from it ends its connection.

use std::{net::SocketAddr, time::Duration};

use futures::{SinkExt, StreamExt};
use tokio::net::{
    TcpStream,
    tcp::{OwnedReadHalf, OwnedWriteHalf},
};
use tokio_util::codec::{FramedRead, FramedWrite};
use tsc_userspace::{
    ingest::{ConnError, Ingest, IngestConfig, IngestItem, SockAddr},
    wire::{
        CpuApic, DrainedCpu, Endpoint, Frame, FrameCodec, Hello, TRACE_CLOCK, TscSample, VERSION,
    },
};

const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
";

fn hello(version: u16) -> Hello {
    Hello {
        version,
        agent_name: format!("v{version}"),
        hostname: "guest".into(),
        kernel_release: "6.18.0".into(),
        trace_clock: TRACE_CLOCK.into(),
        page_size: 4096,
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

fn mark(cpu: u32, guest_tsc: u64) -> DrainedCpu {
    DrainedCpu {
        cpu,
        tsc_cpu: 1,
        guest_tsc,
    }
}

type Rx = FramedRead<OwnedReadHalf, FrameCodec>;
type Tx = FramedWrite<OwnedWriteHalf, FrameCodec>;

async fn start() -> (Ingest, SocketAddr) {
    let listen: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let config = IngestConfig {
        decode_pages: false,
        ..IngestConfig::default()
    };
    let ingest = Ingest::bind(&[listen], config).await.unwrap();
    let SockAddr::Tcp(addr) = ingest.local_addrs()[0] else {
        panic!("not tcp")
    };
    (ingest, addr)
}

/// Connects and completes the handshake with a Hello of `version`.
async fn connect(addr: SocketAddr, version: u16) -> (Rx, Tx) {
    let (rd, wr) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut rx = FramedRead::new(rd, FrameCodec::default());
    let mut tx = FramedWrite::new(wr, FrameCodec::default());
    tx.send(Frame::Hello(Box::new(hello(version))))
        .await
        .unwrap();
    let ack = rx.next().await.unwrap().unwrap();
    assert!(matches!(ack, Frame::HelloAck(_)), "{ack:?}");
    (rx, tx)
}

/// Every item until the connection's Closed (included).
async fn items_until_closed(ingest: &mut Ingest) -> Vec<IngestItem> {
    let mut items = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), ingest.next_item())
            .await
            .expect("the connection closes in time")
            .unwrap();
        let closed = matches!(item, IngestItem::Closed { .. });
        items.push(item);
        if closed {
            return items;
        }
    }
}

fn watermarks(items: &[IngestItem]) -> Vec<(u32, u32, u64)> {
    items
        .iter()
        .filter_map(|i| match i {
            IngestItem::Drained {
                cpu,
                tsc_cpu,
                guest_tsc,
                ..
            } => Some((*cpu, *tsc_cpu, *guest_tsc)),
            _ => None,
        })
        .collect()
}

/// Version 2, and version 3 without a key on either side (served as 2:
/// the same frames, no challenge).
#[tokio::test]
async fn a_version_2_agent_s_watermarks_come_out_only_when_they_advance() {
    for version in [2, VERSION] {
        watermarks_advance(version).await;
    }
}

async fn watermarks_advance(version: u16) {
    let (mut ingest, addr) = start().await;
    let (_rx, mut tx) = connect(addr, version).await;
    for frame in [
        Frame::Drained(vec![mark(0, 100), mark(1, 200)]),
        Frame::Drained(vec![mark(0, 100), mark(1, 150)]),
        Frame::Drained(vec![mark(0, 300)]),
        Frame::Bye("done".into()),
    ] {
        tx.send(frame).await.unwrap();
    }
    let items = items_until_closed(&mut ingest).await;
    let IngestItem::Connected(info) = &items[0] else {
        panic!("{:?}", items[0])
    };
    assert_eq!(info.hello.version, version);
    assert_eq!(
        watermarks(&items),
        vec![(0, 1, 100), (1, 1, 200), (0, 1, 300)]
    );
    assert!(matches!(items.last(), Some(IngestItem::Closed { outcome: Ok(r), .. }) if r == "done"));
}

#[tokio::test]
async fn a_version_1_agent_is_served_and_gets_nothing_of_version_2() {
    let (mut ingest, addr) = start().await;
    let (rx, mut tx) = connect(addr, 1).await;
    tx.send(Frame::KeepAlive(TscSample::take())).await.unwrap();
    tx.send(Frame::Bye("done".into())).await.unwrap();
    let items = items_until_closed(&mut ingest).await;
    let IngestItem::Connected(info) = &items[0] else {
        panic!("{:?}", items[0])
    };
    assert_eq!(info.hello.version, 1);
    assert!(
        matches!(items[1], IngestItem::TscSample { .. }),
        "{:?}",
        items[1]
    );
    assert!(matches!(
        items.last(),
        Some(IngestItem::Closed { outcome: Ok(_), .. })
    ));
    // After its HelloAck the host sent this agent nothing at all.
    drop(tx);
    let rest: Vec<_> = rx.collect().await;
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn a_drained_from_a_version_1_agent_ends_its_connection() {
    let (mut ingest, addr) = start().await;
    let (mut rx, mut tx) = connect(addr, 1).await;
    tx.send(Frame::Drained(vec![mark(0, 100)])).await.unwrap();
    let items = items_until_closed(&mut ingest).await;
    assert!(watermarks(&items).is_empty());
    let Some(IngestItem::Closed {
        outcome: Err(e), ..
    }) = items.last()
    else {
        panic!("{:?}", items.last())
    };
    assert!(
        matches!(**e, ConnError::Unexpected { got: "Drained", .. }),
        "{e}"
    );
    let bye = rx.next().await.unwrap().unwrap();
    assert!(
        matches!(&bye, Frame::Bye(r) if r.contains("Drained")),
        "{bye:?}"
    );
}

#[tokio::test]
async fn a_drained_for_an_unknown_cpu_ends_its_connection() {
    let (mut ingest, addr) = start().await;
    let (_rx, mut tx) = connect(addr, VERSION).await;
    tx.send(Frame::Drained(vec![mark(0, 100), mark(7, 100)]))
        .await
        .unwrap();
    let items = items_until_closed(&mut ingest).await;
    assert_eq!(watermarks(&items), vec![(0, 1, 100)]);
    let Some(IngestItem::Closed {
        outcome: Err(e), ..
    }) = items.last()
    else {
        panic!("{:?}", items.last())
    };
    assert!(
        matches!(&**e, ConnError::Contradiction(r) if r.contains("CPU 7")),
        "{e}"
    );
}
