//! The hot path allocates nothing per event once warm: pushing events that
//! point into shared pages, merging them, learning command names and
//! writing text and JSON. Counted with a counting global allocator (this
//! file is its own test binary, so nothing else is counted).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
    io,
    sync::Arc,
};

use bytes::Bytes;
use tsc_userspace::{
    merge::{EventData, MergeConfig, MergeItem, Merger, SourceInfo, SourceKind, Sources},
    output::{ClockMode, EventWriter, FlushPolicy, JsonWriter, TextWriter, WriteContext},
    tracefs::FormatSet,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

const SCHED_SWITCH: &str = include_str!("../src/output/testdata/sched_switch.format");
const KVM_EXIT: &str = include_str!("../src/output/testdata/kvm_exit.format");

/// A "page" of `n` records alternating sched_switch (ids from the set) and
/// kvm_exit, and the record ranges.
fn page(set: &FormatSet, n: usize) -> (Bytes, Vec<(usize, usize)>) {
    let switch = set.find("sched", "sched_switch").expect("format");
    let exit = set.find("kvm", "kvm_exit").expect("format");
    let (mut bytes, mut ranges) = (Vec::new(), Vec::new());
    for i in 0..n {
        let start = bytes.len();
        let (id, len) = if i % 2 == 0 {
            (switch.id, 64)
        } else {
            (exit.id, 72)
        };
        bytes.resize(start + len, 0);
        bytes[start..start + 2].copy_from_slice(&id.to_le_bytes());
        bytes[start + 4..start + 8].copy_from_slice(&(100 + (i as i32 % 4)).to_le_bytes());
        if id == switch.id {
            bytes[start + 8..start + 12].copy_from_slice(b"bash");
            bytes[start + 24..start + 28].copy_from_slice(&100i32.to_le_bytes());
            bytes[start + 40..start + 43].copy_from_slice(b"kvm");
            bytes[start + 56..start + 60].copy_from_slice(&101i32.to_le_bytes());
        }
        ranges.push((start, len));
    }
    let page = Bytes::from(bytes);
    // Make the page's storage shared now, as pages from a socket already are.
    drop(page.clone());
    (page, ranges)
}

#[test]
fn merge_and_write_allocate_nothing_per_event_once_warm() {
    let mut set = FormatSet::new();
    set.insert_text("sched", SCHED_SWITCH).expect("format");
    set.insert_text("kvm", KVM_EXIT).expect("format");
    let set = Arc::new(set);
    let mut sources = Sources::new();
    let host = sources
        .add(SourceInfo {
            kind: SourceKind::Host,
            name: "host".into(),
            formats: set.clone(),
            kernel_release: None,
        })
        .expect("id");
    let (page, ranges) = page(&set, 64);
    let mut merger = Merger::new(MergeConfig::new(1 << 40));
    let mut text = TextWriter::new(io::sink(), ClockMode::Ns, FlushPolicy::Batch);
    let mut json = JsonWriter::new(io::sink(), FlushPolicy::Batch);
    let clock = |tsc: u64| tsc / 3;

    let mut round = |r: u64| {
        for cpu in 0..8u32 {
            for (i, &(start, len)) in ranges.iter().enumerate() {
                let data = EventData::from_page(&page, &page[start..start + len]).expect("in page");
                let tsc = (r * 64 + i as u64) * 8 + u64::from(cpu);
                let item = MergeItem::host(host, cpu, tsc, data);
                assert!(merger.push(item).is_none());
            }
        }
        let _ = merger.pop_ready::<Infallible>(0, |item| {
            sources.learn_comms(&item);
            let ctx = WriteContext {
                sources: &sources,
                clock: &clock,
                boottime: None,
            };
            let _ = text.write(&ctx, &item);
            let _ = json.write(&ctx, &item);
            Ok(())
        });
        let _ = text.flush();
        let _ = json.flush();
    };
    let start = allocs();
    for r in 0..4 {
        round(r);
    }
    let before = allocs();
    assert!(before > start, "the counter counts: warming up allocates");
    for r in 4..104 {
        round(r);
    }
    let per_round = (allocs() - before) as f64 / 100.0;
    assert_eq!(
        allocs() - before,
        0,
        "{per_round} allocations per 512 events"
    );
    assert!(
        merger.held() > 0 && merger.held() <= 512,
        "rounds were merged"
    );
    assert_eq!(merger.stats().total.late, 0);
    assert_eq!(sources.comm(host, 101), Some("kvm"));
}
