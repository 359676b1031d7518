//! `PageBuilder` writes the pages the kernel writes: real pages from a
//! private instance, decoded and rebuilt, come out byte for byte the same.

mod common;

use std::time::Duration;

use tsc_userspace::{
    clock::read_tsc,
    tracefs::{Instance, InstanceOptions, Page, PageBuilder},
};

/// A delta of more TSC ticks than this between two events (the x86-tsc
/// trace clock) does not fit a record header's 27 bits: the kernel writes a
/// time extend (`kernel/trace/ring_buffer.c`, `TS_DELTA_TEST`).
const EXTEND_TICKS: u64 = 1 << 27;

#[test]
fn rebuilt_kernel_pages_are_byte_identical() {
    if !common::privileged("rebuilt_kernel_pages_are_byte_identical") {
        return;
    }
    let instance = Instance::create(&InstanceOptions::new("tsc-pagebuild")).unwrap();
    let layout = instance.page_layout().unwrap();
    let mut marker = instance.trace_marker().unwrap();
    // Short, long (a length word) and in-between markers; a pause longer
    // than 2^27 TSC ticks (a time extend) in the middle.
    for i in 0..40 {
        let text = "x".repeat([1, 7, 60, 150, 300][i % 5]);
        marker.write_marker(&text).unwrap();
        if i == 20 {
            let written = read_tsc();
            common::wait_until(
                "the TSC to pass 2^27 ticks after a marker",
                Duration::from_secs(10),
                || (read_tsc().wrapping_sub(written) > EXTEND_TICKS).then_some(()),
            );
        }
    }
    instance.set_tracing_on(false).unwrap();
    let (mut pages, mut events, mut extends) = (0, 0, 0);
    for cpu in instance.cpus().unwrap() {
        let mut pipe = instance.open_pipe(cpu).unwrap();
        while let Some(raw) = pipe.read_page().unwrap() {
            let page = Page::parse(&layout, &raw).unwrap();
            if page.is_empty() {
                continue;
            }
            let mut builder = PageBuilder::new(layout);
            for event in page.events() {
                let event = event.unwrap();
                assert!(builder.push(event.ts, event.data).unwrap());
                events += 1;
            }
            let rebuilt = builder.finish();
            let used = layout.data_offset() + page.records().len();
            assert_eq!(&rebuilt[..], &raw[..used], "CPU {cpu}: page differs");
            extends += count_time_extends(page.records());
            pages += 1;
        }
    }
    assert_eq!(events, 40, "every marker read back once");
    assert!(pages >= 1);
    assert!(
        extends >= 1,
        "the pause made the kernel write a time extend"
    );
}

/// Time-extend records (type_len 30) in a page's records.
fn count_time_extends(records: &[u8]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while pos + 4 <= records.len() {
        let header = u32::from_le_bytes(records[pos..pos + 4].try_into().unwrap());
        let array0 = records
            .get(pos + 4..pos + 8)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
        pos += match header & 0x1f {
            0 => 8 + (array0 - 4).div_ceil(4) * 4,
            len @ 1..=28 => 4 + len as usize * 4,
            29 => 4 + array0,
            _ => {
                n += usize::from(header & 0x1f == 30);
                8
            }
        };
    }
    n
}
