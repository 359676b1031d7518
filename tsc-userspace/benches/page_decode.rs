//! Page-decode throughput (events/s) on pages shaped like real traffic:
//! `sched_switch`, `sched_wakeup` and `ftrace:print` records with the odd
//! time extend, as a busy CPU fills them.
//!
//! `cargo bench -p tsc-userspace --bench page_decode`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tsc_userspace::tracefs::{FormatSet, Page, PageLayout, Value};

const PAGE: usize = 4096;
const PAGES: usize = 64;

const SCHED_SWITCH: &str = include_str!("../../fuzz/formats/sched_switch");
const PRINT: &str = include_str!("../../fuzz/formats/print");
const WAKEUP: &str = "name: sched_wakeup
ID: 374
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:int target_cpu;\toffset:32;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d prio=%d target_cpu=%03d\"
";

fn formats() -> FormatSet {
    let mut set = FormatSet::new();
    for (sys, text) in [
        ("sched", SCHED_SWITCH),
        ("sched", WAKEUP),
        ("ftrace", PRINT),
    ] {
        set.insert_text(sys, text).expect("format parses");
    }
    set
}

/// A record payload of `format` with its common fields and strings filled.
fn payload(set: &FormatSet, system: &str, name: &str, len: usize, seq: u32) -> Vec<u8> {
    let format = set.find(system, name).expect("known event");
    let mut p = vec![0u8; len];
    p[..2].copy_from_slice(&format.id.to_le_bytes());
    p[4..8].copy_from_slice(&(1000 + seq % 50).to_le_bytes());
    for f in format.own_fields() {
        let (at, size) = (f.decl.offset, f.decl.size);
        if f.decl.type_name == "char" && size == 16 {
            p[at..at + 10].copy_from_slice(b"worker/1:2");
        } else if size == 4 && at + 4 <= len {
            p[at..at + 4].copy_from_slice(&seq.to_le_bytes());
        }
    }
    p
}

/// Fills pages with a repeating mix of events, as the kernel lays them out.
fn pages(set: &FormatSet) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    let mut events = 0;
    let mut seq = 0u32;
    for n in 0..PAGES {
        let mut records = Vec::new();
        loop {
            seq += 1;
            let mut rec = Vec::new();
            let (delta, data) = match seq % 4 {
                0 | 1 => (700, payload(set, "sched", "sched_switch", 64, seq)),
                2 => (300, payload(set, "sched", "sched_wakeup", 36, seq)),
                _ => {
                    let mut p = payload(set, "ftrace", "print", 16, seq);
                    p.extend_from_slice(
                        format!("marker number {seq} from the bench\n\0").as_bytes(),
                    );
                    (1200, p)
                }
            };
            if seq.is_multiple_of(97) {
                // A long gap: a time extend, then a zero delta.
                rec.extend_from_slice(&(30u32 | (5 << 5)).to_le_bytes());
                rec.extend_from_slice(&3u32.to_le_bytes());
            }
            let padded = data.len().div_ceil(4) * 4;
            let delta = if seq.is_multiple_of(97) { 0 } else { delta };
            if padded <= 112 {
                rec.extend_from_slice(&((padded / 4) as u32 | delta << 5).to_le_bytes());
            } else {
                rec.extend_from_slice(&(delta << 5).to_le_bytes());
                rec.extend_from_slice(&(padded as u32 + 4).to_le_bytes());
            }
            rec.extend_from_slice(&data);
            rec.resize(rec.len().div_ceil(4) * 4, 0);
            if 16 + records.len() + rec.len() > PAGE {
                break;
            }
            records.extend_from_slice(&rec);
            events += 1;
        }
        let mut page = vec![0u8; PAGE];
        page[..8].copy_from_slice(&(1_000_000 * n as u64).to_le_bytes());
        page[8..16].copy_from_slice(&(records.len() as u64).to_le_bytes());
        page[16..16 + records.len()].copy_from_slice(&records);
        out.push(page);
    }
    (out, events)
}

fn bench(c: &mut Criterion) {
    let set = formats();
    let layout = PageLayout::x86_64(PAGE);
    let (pages, events) = pages(&set);
    let mut group = c.benchmark_group("page_decode");
    group.throughput(Throughput::Elements(events as u64));

    group.bench_function("records", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for page in &pages {
                let page = Page::parse(&layout, black_box(page)).expect("valid page");
                for event in page.events() {
                    let event = event.expect("valid record");
                    sum = sum.wrapping_add(event.ts ^ event.data.len() as u64);
                }
            }
            sum
        })
    });

    group.bench_function("records_and_fields", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for page in &pages {
                let page = Page::parse(&layout, black_box(page)).expect("valid page");
                for raw in page.events() {
                    let raw = raw.expect("valid record");
                    let event = set.event(raw.data).expect("known event");
                    for (_, value) in event.fields() {
                        sum = sum.wrapping_add(match value.expect("in record") {
                            Value::Str(s) => s.len() as u64,
                            v => v.as_u64().unwrap_or(1),
                        });
                    }
                }
            }
            sum
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
