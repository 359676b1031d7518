//! A guest's `events/header_page` text, then a NUL, then a page: parsing
//! the layout must never panic (its offsets are the guest's numbers), and
//! a page decoded with whatever layout it gives must not either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsc_userspace::tracefs::{Page, PageLayout};

fuzz_target!(|data: &[u8]| {
    let (text, page) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(layout) = PageLayout::parse(text) else {
        return;
    };
    // What the host reads of the layout, as it would (page_builder, recorder).
    let _ = layout.page_size().saturating_sub(layout.data_offset());
    let _ = (layout.long_size(), layout.timestamp_offset(), layout.commit_offset());
    let Ok(page) = Page::parse(&layout, page) else {
        return;
    };
    let _ = (page.lost_events().to_string(), page.timestamp());
    for event in page.events() {
        let _ = event.map(|e| e.data.len());
    }
});
