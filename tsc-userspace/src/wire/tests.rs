//! Round trips, chunked delivery and every typed decode error.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;

fn arb_string() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn arb_sample() -> impl Strategy<Value = TscSample> {
    (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(cpu, tsc_before, clock_ns, tsc_after)| TscSample {
            cpu,
            tsc_before,
            clock_ns,
            tsc_after,
        },
    )
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    let event = (arb_string(), arb_string(), any::<u32>(), ".{0,300}").prop_map(
        |(system, name, id, format)| EventFormat {
            system,
            name,
            id,
            format,
        },
    );
    let cpu = (any::<u32>(), any::<u32>()).prop_map(|(cpu, apic_id)| CpuApic { cpu, apic_id });
    (
        (arb_string(), arb_string(), arb_string(), arb_string()),
        any::<u32>(),
        prop::collection::vec(cpu, 0..8),
        (".{0,200}", ".{0,200}"),
        prop::collection::vec(event, 0..5),
        prop::collection::vec(arb_sample(), 0..5),
    )
        .prop_map(
            |(
                (agent_name, hostname, kernel_release, trace_clock),
                page_size,
                cpus,
                hdr,
                events,
                samples,
            )| Hello {
                agent_name,
                hostname,
                kernel_release,
                trace_clock,
                page_size,
                cpus,
                header_page: hdr.0,
                header_event: hdr.1,
                events,
                samples,
            },
        )
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        arb_hello().prop_map(|h| Frame::Hello(Box::new(h))),
        (any::<u64>(), any::<u32>()).prop_map(|(connection_id, max_body)| Frame::HelloAck(
            HelloAck {
                connection_id,
                max_body
            }
        )),
        arb_string().prop_map(Frame::Reject),
        (
            any::<u32>(),
            0..=Page::KNOWN_FLAGS,
            prop::collection::vec(any::<u8>(), 1..5000)
        )
            .prop_map(|(cpu, flags, data)| Frame::Page(Page {
                cpu,
                flags,
                data: Bytes::from(data)
            })),
        (any::<u32>(), any::<u64>()).prop_map(|(cpu, total)| Frame::Lost(Lost { cpu, total })),
        arb_sample().prop_map(Frame::KeepAlive),
        ".{0,500}".prop_map(Frame::Cmdlines),
        arb_string().prop_map(Frame::Bye),
    ]
}

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    for f in frames {
        codec.encode(f, &mut buf).unwrap();
    }
    buf
}

/// Feeds `bytes` in chunks of `chunk` and decodes everything, EOF included.
fn decode_chunked(bytes: &[u8], chunk: usize) -> Result<Vec<Frame>, WireError> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(f) = codec.decode(&mut buf)? {
            out.push(f);
        }
    }
    while let Some(f) = codec.decode_eof(&mut buf)? {
        out.push(f);
    }
    Ok(out)
}

proptest! {
    #[test]
    fn frames_round_trip_in_any_chunking(
        frames in prop::collection::vec(arb_frame(), 1..6),
        chunk in 1usize..300,
    ) {
        let bytes = encode_all(&frames);
        prop_assert_eq!(decode_chunked(&bytes, chunk).unwrap(), frames);
    }

    #[test]
    fn encode_parts_matches_encode_into(frame in arb_frame()) {
        let (head, payload) = frame.encode_parts(DEFAULT_MAX_BODY).unwrap();
        let mut whole = BytesMut::new();
        frame.encode_into(&mut whole, DEFAULT_MAX_BODY).unwrap();
        prop_assert_eq!([&head[..], &payload[..]].concat(), whole.to_vec());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..64) {
        let _ = decode_chunked(&bytes, chunk);
    }

    #[test]
    fn arbitrary_bodies_of_each_type_never_panic(code in 1u16..=8, body in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut bytes = header(body.len() as u32, code, 0);
        bytes.extend_from_slice(&body);
        let _ = decode_chunked(&bytes, 7);
    }

    #[test]
    fn every_strict_prefix_is_truncated(frame in arb_frame(), cut_seed in any::<usize>()) {
        let bytes = encode_all(std::slice::from_ref(&frame));
        let cut = 1 + cut_seed % (bytes.len() - 1);
        let result = decode_chunked(&bytes[..cut], 1000);
        prop_assert!(matches!(result, Err(WireError::Truncated { buffered }) if buffered == cut), "{:?}", result);
    }
}

fn header(len: u32, code: u16, reserved: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.put_u32_le(len);
    h.put_u16_le(code);
    h.put_u16_le(reserved);
    h
}

fn decode_one(bytes: &[u8]) -> Result<Vec<Frame>, WireError> {
    decode_chunked(bytes, bytes.len().max(1))
}

#[test]
fn page_body_is_shared_with_the_read_buffer() {
    let page = Frame::Page(Page {
        cpu: 3,
        flags: 0,
        data: Bytes::from(vec![7u8; 4096]),
    });
    let mut buf = encode_all(&[page]);
    let start = buf.as_ptr() as usize;
    let frame = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
    let Frame::Page(p) = frame else {
        panic!("not a page")
    };
    // 8-byte header + 8-byte page prefix precede the data in the buffer.
    assert_eq!(p.data.as_ptr() as usize, start + 16);
    assert_eq!(p.cpu, 3);
}

#[test]
fn oversize_length_fails_on_the_header_alone() {
    let err = FrameCodec::new(4096)
        .decode(&mut BytesMut::from(&header(4097, 4, 0)[..]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            WireError::Oversize {
                len: 4097,
                max: 4096
            }
        ),
        "{err}"
    );
}

#[test]
fn unknown_type_fails_on_the_header_alone() {
    let err = decode_one(&header(0, 0x99, 0)).unwrap_err();
    assert!(matches!(err, WireError::UnknownType(0x99)), "{err}");
}

#[test]
fn reserved_header_bits_are_refused() {
    let err = decode_one(&header(0, 8, 1)).unwrap_err();
    assert!(matches!(err, WireError::Reserved { .. }), "{err}");
}

fn hello_bytes() -> Vec<u8> {
    let hello = Hello {
        agent_name: "a".into(),
        hostname: "h".into(),
        kernel_release: "6.18".into(),
        trace_clock: TRACE_CLOCK.into(),
        page_size: 4096,
        cpus: vec![CpuApic { cpu: 0, apic_id: 2 }],
        header_page: String::new(),
        header_event: String::new(),
        events: vec![],
        samples: vec![],
    };
    encode_all(&[Frame::Hello(Box::new(hello))]).to_vec()
}

#[test]
fn wrong_version_is_a_typed_error() {
    let mut bytes = hello_bytes();
    bytes[HEADER_LEN + 4..HEADER_LEN + 6].copy_from_slice(&2u16.to_le_bytes());
    let err = decode_one(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::UnsupportedVersion {
                got: 2,
                ours: VERSION
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_magic_is_a_typed_error() {
    let mut bytes = hello_bytes();
    bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(b"HTTP");
    assert!(matches!(decode_one(&bytes), Err(WireError::BadMagic(m)) if &m == b"HTTP"));
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut bytes = header(17, 5, 0);
    bytes.put_u32_le(1);
    bytes.put_u32_le(0);
    bytes.put_u64_le(9);
    bytes.put_u8(0);
    assert!(matches!(
        decode_one(&bytes),
        Err(WireError::Malformed { frame: "Lost", .. })
    ));
}

#[test]
fn huge_element_count_is_refused_without_allocating() {
    let mut body = hello_bytes()[HEADER_LEN..].to_vec();
    // The cpu count follows magic, version, 4 strings and page_size.
    let at = 8 + (4 + 1) + (4 + 1) + (4 + 4) + (4 + 7) + 4;
    body[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut bytes = header(body.len() as u32, 1, 0);
    bytes.extend_from_slice(&body);
    let err = decode_one(&bytes).unwrap_err();
    assert!(err.to_string().contains("cpu count"), "{err}");
}

#[test]
fn invalid_utf8_is_malformed() {
    let mut bytes = header(6, 8, 0);
    bytes.put_u32_le(2);
    bytes.put_slice(&[0xff, 0xfe]);
    assert!(matches!(
        decode_one(&bytes),
        Err(WireError::Malformed { frame: "Bye", .. })
    ));
}

#[test]
fn unknown_page_flags_and_empty_pages_are_refused() {
    let mut bytes = header(9, 4, 0);
    bytes.put_u32_le(0);
    bytes.put_u32_le(0x80);
    bytes.put_u8(0);
    assert!(matches!(
        decode_one(&bytes),
        Err(WireError::Reserved { field: "flags", .. })
    ));
    let mut bytes = header(8, 4, 0);
    bytes.put_u64_le(0);
    assert!(matches!(
        decode_one(&bytes),
        Err(WireError::Malformed { frame: "Page", .. })
    ));
}

#[test]
fn encoder_refuses_a_body_over_the_limit() {
    let page = Frame::Page(Page {
        cpu: 0,
        flags: 0,
        data: Bytes::from(vec![0u8; 100]),
    });
    let mut buf = BytesMut::new();
    let err = FrameCodec::new(107).encode(&page, &mut buf).unwrap_err();
    assert!(matches!(err, WireError::Encode { .. }), "{err}");
    assert!(buf.is_empty(), "a refused frame leaves nothing behind");
    FrameCodec::new(108).encode(&page, &mut buf).unwrap();
}

#[test]
fn tsc_samples_are_ordered_and_on_one_cpu() {
    let samples = TscSample::take_best(4, 16);
    assert_eq!(samples.len(), 4);
    for s in &samples {
        assert!(s.tsc_before < s.tsc_after, "{s:?}");
        assert!(s.clock_ns > 0);
    }
    let widths: Vec<u64> = samples.iter().map(|s| s.tsc_after - s.tsc_before).collect();
    assert!(widths.windows(2).all(|w| w[0] <= w[1]), "{widths:?}");
}
