//! Frame codec throughput: encoding and decoding 4 KiB Page frames, the
//! bulk of the traffic.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, Encoder};
use tsc_userspace::wire::{DEFAULT_MAX_BODY, Frame, FrameCodec, Page};

const PAGES: usize = 256;
const PAGE_SIZE: usize = 4096;

fn pages() -> Vec<Frame> {
    (0..PAGES)
        .map(|n| {
            Frame::Page(Page {
                cpu: (n % 4) as u32,
                flags: 0,
                data: Bytes::from(vec![n as u8; PAGE_SIZE]),
            })
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let frames = pages();
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Bytes((PAGES * PAGE_SIZE) as u64));
    group.bench_function("encode_into 256 pages", |b| {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(PAGES * (PAGE_SIZE + 16));
        b.iter(|| {
            buf.clear();
            for f in &frames {
                codec.encode(f, &mut buf).unwrap();
            }
            buf.len()
        })
    });
    group.bench_function("encode_parts 256 pages (no payload copy)", |b| {
        b.iter(|| {
            frames
                .iter()
                .map(|f| f.encode_parts(DEFAULT_MAX_BODY).unwrap().0.len())
                .sum::<usize>()
        })
    });
    let mut encoded = BytesMut::new();
    for f in &frames {
        FrameCodec::default().encode(f, &mut encoded).unwrap();
    }
    let encoded = encoded.freeze();
    group.bench_function("decode 256 pages", |b| {
        b.iter(|| {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(&encoded[..]);
            let mut n = 0;
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                n += matches!(frame, Frame::Page(_)) as usize;
            }
            assert_eq!(n, PAGES);
        })
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
