//! The frame decoder on arbitrary bytes, delivered in arbitrary chunks:
//! it must never panic, and every frame it accepts must re-encode to a
//! frame that decodes back to the same value. Covers every frame type of
//! protocol version 2, Drained (type 9) included.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};
use tsc_userspace::wire::{Frame, FrameCodec};

/// Small enough that oversize headers are common in the corpus.
const MAX_BODY: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;
    let mut codec = FrameCodec::new(MAX_BODY);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return check(frames),
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
    check(frames);
});

fn check(frames: Vec<Frame>) {
    for frame in frames {
        let mut again = BytesMut::new();
        FrameCodec::new(MAX_BODY).encode(&frame, &mut again).unwrap();
        let back = FrameCodec::new(MAX_BODY).decode(&mut again).unwrap();
        assert_eq!(back.as_ref(), Some(&frame));
        assert!(again.is_empty());
    }
}
