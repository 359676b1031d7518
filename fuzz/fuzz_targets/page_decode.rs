//! Arbitrary bytes as a ring-buffer page: decoding the page, and every field
//! of every event against real formats, must never panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tsc_userspace::tracefs::{FormatSet, Page, PageLayout};

/// Formats as this kernel writes them, covering every field kind.
const FORMATS: &[(&str, &str)] = &[
    ("ftrace", include_str!("../formats/print")),
    ("sched", include_str!("../formats/sched_switch")),
    ("sched", include_str!("../formats/sched_process_exec")),
    ("test", include_str!("../formats/all_kinds")),
];

static SET: LazyLock<Option<FormatSet>> = LazyLock::new(|| {
    let mut set = FormatSet::new();
    for (system, text) in FORMATS {
        set.insert_text(system, text).ok()?;
    }
    Some(set)
});

fuzz_target!(|data: &[u8]| {
    let Some(formats) = SET.as_ref() else {
        return;
    };
    // The first byte picks the page size, so short and long pages are both tried.
    let Some((&size, page)) = data.split_first() else {
        return;
    };
    let layout = PageLayout::x86_64(16 + usize::from(size) * 16);
    let Ok(page) = Page::parse(&layout, page) else {
        return;
    };
    let _ = page.lost_events();
    for event in page.events().flatten() {
        if let Ok(event) = formats.event(event.data) {
            for (_, value) in event.fields() {
                if let Ok(value) = value {
                    let _ = value.to_string();
                }
            }
        }
    }
});
