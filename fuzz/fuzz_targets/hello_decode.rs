//! What an agent sends first, as bytes on the wire: a Hello frame, then
//! pages. The host's path must never panic: the frame decoder, the Hello's
//! header_page and formats (`GuestFormats::from_hello`), then every page
//! decoded with them, every event's fields printed.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use tsc_userspace::{
    ingest::{Cmdlines, EventPage, GuestFormats},
    wire::{Frame, FrameCodec},
};

/// The host's default frame limit is larger; this keeps runs fast.
const MAX_BODY: u32 = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(MAX_BODY);
    let mut buf = BytesMut::from(data);
    let Ok(Some(Frame::Hello(hello))) = codec.decode(&mut buf) else {
        return;
    };
    let Ok(guest) = GuestFormats::from_hello(&hello) else {
        return;
    };
    let guest = Arc::new(guest);
    let comms: Arc<Cmdlines> = Arc::default();
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let Frame::Page(page) = frame else {
            continue;
        };
        let Ok(page) = EventPage::new(1, page.cpu, page.data, guest.clone(), comms.clone()) else {
            continue;
        };
        for event in page.events() {
            let _ = (event.name(), event.pid, event.comm);
            if let Some(fields) = event.fields() {
                let _ = fields.to_string();
            }
        }
    }
});
