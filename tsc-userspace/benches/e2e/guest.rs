//! What the session received from the agent, decoded from the relay's
//! capture: the Hello, the pages, and each marker's arrival time.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;
use tsc_userspace::{
    tracefs::{Page as RawPage, PageLayout},
    wire::{Frame, FrameCodec, Hello},
};

use crate::{load, relay::Capture};

/// The guest side of one run.
pub struct Guest {
    /// The agent's Hello (formats, headers, page size).
    pub hello: Option<Hello>,
    /// Pages in arrival order, with their guest CPU.
    pub pages: Vec<(u32, Bytes)>,
    pub cmdlines: String,
    /// Per marker sequence number: (send time, arrival time at the session).
    pub markers: Vec<Option<(u64, u64)>>,
    /// Guest events of any kind in the pages.
    pub events: u64,
}

/// Decodes the frames the agent sent.
pub fn decode(capture: &Capture, sent: u64) -> Guest {
    let mut codec = FrameCodec::default();
    let mut src = BytesMut::from(&capture.bytes[..]);
    let total = src.len() as u64;
    let mut guest = Guest {
        hello: None,
        pages: Vec::new(),
        cmdlines: String::new(),
        markers: vec![None; sent as usize],
        events: 0,
    };
    let mut layout = None;
    while let Some(frame) = codec
        .decode(&mut src)
        .expect("a frame the session accepted")
    {
        // The frame's last byte: its arrival is when that byte was relayed.
        let end = total - src.len() as u64 - 1;
        match frame {
            Frame::Hello(hello) => {
                layout = Some(PageLayout::parse(&hello.header_page).expect("header_page"));
                guest.hello = Some(*hello);
            }
            Frame::Page(page) => {
                let layout = layout.as_ref().expect("Hello before pages");
                let arrival = capture.arrival(end).expect("relayed");
                guest.record(layout, &page.data, arrival);
                guest.pages.push((page.cpu, page.data));
            }
            Frame::Cmdlines(text) => guest.cmdlines.push_str(&text),
            _ => {}
        }
    }
    guest
}

impl Guest {
    fn record(&mut self, layout: &PageLayout, data: &[u8], arrival: u64) {
        let Ok(page) = RawPage::parse(layout, data) else {
            return;
        };
        for event in page.events().filter_map(Result::ok) {
            self.events += 1;
            let Some(at) = load::find(event.data, load::TAG) else {
                continue;
            };
            let Some((seq, send)) = load::parse(&event.data[at + load::TAG.len()..]) else {
                continue;
            };
            if let Some(slot) = self.markers.get_mut(seq as usize) {
                *slot = Some((send, arrival));
            }
        }
    }
}
