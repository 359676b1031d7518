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
        (
            MIN_VERSION..=VERSION,
            arb_string(),
            arb_string(),
            arb_string(),
            arb_string(),
        ),
        any::<u32>(),
        prop::collection::vec(cpu, 0..8),
        (".{0,200}", ".{0,200}"),
        prop::collection::vec(event, 0..5),
        prop::collection::vec(arb_sample(), 0..5),
    )
        .prop_map(
            |(
                (version, agent_name, hostname, kernel_release, trace_clock),
                page_size,
                cpus,
                hdr,
                events,
                samples,
            )| Hello {
                version,
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
        arb_drained().prop_map(Frame::Drained),
        (any::<u32>(), any::<[u8; 32]>()).prop_map(|(method, host_nonce)| {
            Frame::AuthChallenge(AuthChallenge { method, host_nonce })
        }),
        (any::<u32>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
            |(method, agent_nonce, proof)| Frame::AuthResponse(AuthResponse {
                method,
                agent_nonce,
                proof
            })
        ),
        any::<[u8; 32]>().prop_map(Frame::AuthConfirm),
    ]
}

/// 1..8 entries with distinct CPUs.
fn arb_drained() -> impl Strategy<Value = Vec<DrainedCpu>> {
    prop::collection::btree_map(any::<u32>(), (any::<u32>(), any::<u64>()), 1..8).prop_map(|m| {
        m.into_iter()
            .map(|(cpu, (tsc_cpu, guest_tsc))| DrainedCpu {
                cpu,
                tsc_cpu,
                guest_tsc,
            })
            .collect()
    })
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
    fn arbitrary_bodies_of_each_type_never_panic(code in 1u16..=9, body in prop::collection::vec(any::<u8>(), 0..600)) {
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
        version: VERSION,
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
    for bad in [0, VERSION + 1] {
        let mut bytes = hello_bytes();
        bytes[HEADER_LEN + 4..HEADER_LEN + 6].copy_from_slice(&bad.to_le_bytes());
        let err = decode_one(&bytes).unwrap_err();
        assert!(
            matches!(err, WireError::UnsupportedVersion { got, ours: VERSION } if got == bad),
            "{err}"
        );
        assert!(err.to_string().contains("speaks 1 to 3"), "{err}");
    }
}

/// A version 1 Hello (from an agent built before version 2) is the same
/// bytes with 1 in the version field: it decodes, and says version 1.
#[test]
fn a_version_1_hello_decodes_as_version_1() {
    let mut bytes = hello_bytes();
    assert_eq!(
        &bytes[HEADER_LEN + 4..HEADER_LEN + 6],
        &VERSION.to_le_bytes()
    );
    bytes[HEADER_LEN + 4..HEADER_LEN + 6].copy_from_slice(&1u16.to_le_bytes());
    let frames = decode_one(&bytes).unwrap();
    let [Frame::Hello(hello)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(hello.version, 1);
    // And re-encodes to the very same bytes.
    assert_eq!(encode_all(&frames).to_vec(), bytes);
}

#[test]
fn a_hello_of_a_version_not_spoken_is_not_encoded() {
    let Frame::Hello(mut hello) = decode_one(&hello_bytes()).unwrap().remove(0) else {
        unreachable!()
    };
    hello.version = VERSION + 1;
    let err = Frame::Hello(hello)
        .encode_parts(DEFAULT_MAX_BODY)
        .unwrap_err();
    assert!(matches!(err, WireError::Encode { .. }), "{err}");
}

/// The layout of PROTOCOL.md's Drained example, byte for byte.
#[test]
fn drained_layout_is_the_documented_one() {
    let frame = Frame::Drained(vec![
        DrainedCpu {
            cpu: 0,
            tsc_cpu: 1,
            guest_tsc: 0x1122_3344_5566_7788,
        },
        DrainedCpu {
            cpu: 3,
            tsc_cpu: 1,
            guest_tsc: 0x1122_3344_5566_7799,
        },
    ]);
    let bytes = encode_all(std::slice::from_ref(&frame));
    let want: Vec<u8> = [
        &[0x24, 0, 0, 0, 9, 0, 0, 0][..],
        &[2, 0, 0, 0],
        &[0, 0, 0, 0, 1, 0, 0, 0],
        &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
        &[3, 0, 0, 0, 1, 0, 0, 0],
        &[0x99, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
    ]
    .concat();
    assert_eq!(bytes.to_vec(), want);
    assert_eq!(decode_one(&want).unwrap(), vec![frame]);
}

#[test]
fn malformed_drained_frames_are_refused() {
    let body = |n: u32, entries: &[(u32, u32, u64)], extra: &[u8]| {
        let mut b = Vec::new();
        b.put_u32_le(n);
        for &(cpu, tsc_cpu, tsc) in entries {
            b.put_u32_le(cpu);
            b.put_u32_le(tsc_cpu);
            b.put_u64_le(tsc);
        }
        b.extend_from_slice(extra);
        let mut f = header(b.len() as u32, 9, 0);
        f.extend_from_slice(&b);
        f
    };
    let cases = [
        ("empty list", body(0, &[], &[])),
        ("count past the body", body(2, &[(0, 0, 5)], &[])),
        ("huge count", body(u32::MAX, &[(0, 0, 5)], &[])),
        ("same CPU twice", body(2, &[(1, 0, 5), (1, 0, 6)], &[])),
        ("trailing bytes", body(1, &[(1, 0, 5)], &[0])),
        ("cut entry", body(1, &[], &[1, 0, 0, 0, 0, 0, 0, 0, 5])),
    ];
    for (what, bytes) in cases {
        let err = decode_one(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Malformed {
                    frame: "Drained",
                    ..
                }
            ),
            "{what}: {err}"
        );
    }
}

/// Reserved body fields are for later versions: a peer that sets one means
/// something this build cannot read, so the frame is refused, not half-read.
#[test]
fn nonzero_reserved_body_fields_are_refused() {
    let mut ack = header(16, 2, 0);
    ack.put_u64_le(7);
    ack.put_u32_le(DEFAULT_MAX_BODY);
    ack.put_u32_le(5);
    assert!(
        matches!(
            decode_one(&ack),
            Err(WireError::Reserved {
                frame: "HelloAck",
                field: "reserved",
                value: 5
            })
        ),
        "{:?}",
        decode_one(&ack)
    );
    let mut lost = header(16, 5, 0);
    lost.put_u32_le(1);
    lost.put_u32_le(0x100);
    lost.put_u64_le(9);
    assert!(
        matches!(
            decode_one(&lost),
            Err(WireError::Reserved {
                frame: "Lost",
                field: "reserved",
                value: 0x100
            })
        ),
        "{:?}",
        decode_one(&lost)
    );
    let mut hello = hello_bytes();
    hello[HEADER_LEN + 6..HEADER_LEN + 8].copy_from_slice(&3u16.to_le_bytes());
    assert!(
        matches!(
            decode_one(&hello),
            Err(WireError::Reserved {
                frame: "Hello",
                field: "reserved",
                value: 3
            })
        ),
        "{:?}",
        decode_one(&hello)
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

/// The authentication frames' layouts, byte for byte as PROTOCOL.md §9
/// gives them, and their size checks.
#[test]
fn auth_frames_have_the_documented_layout() {
    let challenge = Frame::AuthChallenge(AuthChallenge {
        method: 1,
        host_nonce: [0xaa; 32],
    });
    let mut want = vec![36, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0];
    want.extend([0xaa; 32]);
    assert_eq!(encode_all(std::slice::from_ref(&challenge)).to_vec(), want);

    let response = Frame::AuthResponse(AuthResponse {
        method: 1,
        agent_nonce: [0xbb; 32],
        proof: [0xcc; 32],
    });
    let mut want = vec![68, 0, 0, 0, 11, 0, 0, 0, 1, 0, 0, 0];
    want.extend([0xbb; 32]);
    want.extend([0xcc; 32]);
    assert_eq!(encode_all(std::slice::from_ref(&response)).to_vec(), want);

    let confirm = Frame::AuthConfirm([0xdd; 32]);
    let mut want = vec![32, 0, 0, 0, 12, 0, 0, 0];
    want.extend([0xdd; 32]);
    assert_eq!(encode_all(std::slice::from_ref(&confirm)).to_vec(), want);

    // One byte short or long is malformed, never a panic or a guess.
    for (ty, len) in [(10u16, 36u32), (11, 68), (12, 32)] {
        for bad in [len - 1, len + 1] {
            let mut bytes = header(bad, ty, 0);
            bytes.extend(vec![1u8; bad as usize]);
            let err = decode_one(&bytes).unwrap_err();
            assert!(matches!(err, WireError::Malformed { .. }), "{err}");
        }
    }
}

/// The whole exchange through the codec, each side computing from what it
/// sent and received: the right key passes both ways; a wrong key, a
/// response replayed to a new challenge, or one for another Hello fails.
#[test]
fn the_mac_exchange_binds_key_nonces_and_hello() {
    use crate::auth::{HMAC_SHA256, SharedKey, Transcript, fresh_nonce, hello_digest};

    let key = SharedKey::from_bytes(vec![0x42; 32]);
    let hello_frame = decode_one(&hello_bytes()).unwrap().remove(0);
    let Frame::Hello(hello) = &hello_frame else {
        unreachable!()
    };
    // The host digests the Hello it decoded, the agent the one it encoded:
    // the same bytes.
    assert_eq!(
        &hello_bytes()[HEADER_LEN..],
        &hello.encode_body().unwrap()[..]
    );
    let digest = hello_digest(hello).unwrap();

    // Agent: answers a challenge that crossed the wire.
    let answer = |challenge: &Frame, key: &SharedKey| -> (Frame, Transcript) {
        let [Frame::AuthChallenge(c)] =
            &decode_one(&encode_all(std::slice::from_ref(challenge))).unwrap()[..]
        else {
            panic!("not a challenge")
        };
        let t = Transcript {
            host_nonce: c.host_nonce,
            agent_nonce: fresh_nonce().unwrap(),
            hello: digest,
        };
        let response = Frame::AuthResponse(AuthResponse {
            method: HMAC_SHA256,
            agent_nonce: t.agent_nonce,
            proof: t.agent_proof(key),
        });
        (decode_one(&encode_all(&[response])).unwrap().remove(0), t)
    };
    // Host: checks a response against its own challenge.
    let check = |host_nonce, response: &Frame, hello| -> Option<Frame> {
        let Frame::AuthResponse(r) = response else {
            return None;
        };
        let t = Transcript {
            host_nonce,
            agent_nonce: r.agent_nonce,
            hello,
        };
        t.verify_agent(&key, &r.proof)
            .then(|| Frame::AuthConfirm(t.host_proof(&key)))
    };
    let challenge = |nonce| {
        Frame::AuthChallenge(AuthChallenge {
            method: HMAC_SHA256,
            host_nonce: nonce,
        })
    };

    let first = fresh_nonce().unwrap();
    let (response, agent_side) = answer(&challenge(first), &key);
    let confirm = check(first, &response, digest).expect("the right key is served");
    let Frame::AuthConfirm(host_proof) = decode_one(&encode_all(&[confirm])).unwrap().remove(0)
    else {
        unreachable!()
    };
    assert!(
        agent_side.verify_host(&key, &host_proof),
        "the host proves it back"
    );
    let other = SharedKey::from_bytes(vec![0x43; 32]);
    assert!(!agent_side.verify_host(&other, &host_proof));

    // The same response, recorded, replayed against a fresh challenge.
    let second = fresh_nonce().unwrap();
    assert!(check(second, &response, digest).is_none(), "a replay fails");
    // A wrong key.
    let (wrong, _) = answer(&challenge(second), &other);
    assert!(check(second, &wrong, digest).is_none(), "a wrong key fails");
    // The right answer, but for another Hello.
    assert!(
        check(first, &response, [0; 32]).is_none(),
        "another Hello fails"
    );
}
