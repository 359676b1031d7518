//! Events/s through the text, JSON and Perfetto writers (fields decoded,
//! lines or packets built, written to `io::sink()` in batches), on real
//! formats: a mix of `kvm:kvm_exit`, `sched:sched_switch`,
//! `sched:sched_wakeup` and `ftrace:print` from a host and a guest. Also
//! prints each writer's bytes per event.
//!
//! `cargo bench -p tsc-userspace --bench output`

use std::{hint::black_box, io, sync::Arc};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tsc_userspace::{
    Flags,
    merge::{EventData, MergeItem, SourceId, SourceInfo, SourceKind, Sources},
    output::{
        ClockMode, EventWriter, FlushPolicy, JsonWriter, PerfettoWriter, TextWriter, WriteContext,
    },
    tracefs::FormatSet,
};

const FORMATS: [(&str, &str); 4] = [
    (
        "kvm",
        include_str!("../src/output/testdata/kvm_exit.format"),
    ),
    (
        "sched",
        include_str!("../src/output/testdata/sched_switch.format"),
    ),
    (
        "sched",
        include_str!("../src/output/testdata/sched_wakeup.format"),
    ),
    (
        "ftrace",
        include_str!("../src/output/testdata/print.format"),
    ),
];

/// Events per iteration (the session's batch).
const EVENTS: usize = 512;

/// A payload of `name` with its integer fields set to `seq` and its
/// strings to a task name.
fn payload(set: &FormatSet, name: &str, seq: u32) -> Bytes {
    let format = set.iter().find(|f| f.name == name).expect("format");
    let end = format
        .fields
        .iter()
        .map(|f| f.decl.offset + f.decl.size)
        .max()
        .unwrap_or(8);
    let mut p = vec![0u8; end.next_multiple_of(4)];
    p[..2].copy_from_slice(&format.id.to_le_bytes());
    p[4..8].copy_from_slice(&(1000 + seq % 8).to_le_bytes());
    for f in format.own_fields() {
        let (at, size) = (f.decl.offset, f.decl.size);
        if f.decl.type_name == "char" && size == 16 {
            p[at..at + 11].copy_from_slice(b"kworker/1:2");
        } else if matches!(size, 4 | 8) {
            let v = u64::from(seq).wrapping_mul(0x1_0001);
            p[at..at + size].copy_from_slice(&v.to_le_bytes()[..size]);
        }
    }
    if name == "print" {
        p.extend_from_slice(format!("marker number {seq} from the bench\n\0").as_bytes());
    }
    Bytes::from(p)
}

fn fixture() -> (Sources, Vec<MergeItem>) {
    let mut set = FormatSet::new();
    for (system, text) in FORMATS {
        set.insert_text(system, text).expect("real format");
    }
    let set = Arc::new(set);
    let mut sources = Sources::new();
    let mut add = |kind| {
        sources
            .add(SourceInfo {
                kind,
                name: "bench".into(),
                formats: set.clone(),
                kernel_release: None,
            })
            .expect("id")
    };
    let host = add(SourceKind::Host);
    let guest = add(SourceKind::Guest {
        vm_name: "vm1".into(),
        vm_pid: 4242,
    });
    for pid in 1000..1008 {
        sources.set_comm(host, pid, "qemu-system-x86");
        sources.set_comm(guest, pid, "kworker/1:2");
    }
    let names = ["kvm_exit", "sched_switch", "sched_wakeup", "print"];
    let items = (0..EVENTS as u32)
        .map(|seq| {
            let data = EventData::from_bytes(payload(&set, names[seq as usize % 4], seq));
            let tsc = 3_000_000_000 + u64::from(seq) * 977;
            match seq % 2 {
                0 => MergeItem::host(host, seq % 4, tsc, data),
                _ => MergeItem {
                    host_tsc: tsc,
                    source: SourceId(guest.0),
                    cpu: seq % 2,
                    vcpu: Some(seq % 2),
                    guest_tsc: Some(tsc - 1000),
                    epoch: Some(1),
                    flags: if seq % 16 == 1 {
                        Flags::RESOLVED_BY_ORDER
                    } else {
                        Flags::NONE
                    },
                    data,
                },
            }
        })
        .collect();
    (sources, items)
}

fn run(w: &mut dyn EventWriter, ctx: &WriteContext<'_>, items: &[MergeItem]) {
    for item in items {
        w.write(ctx, black_box(item)).expect("sink");
    }
    w.flush().expect("sink");
}

fn bench(c: &mut Criterion) {
    let (sources, items) = fixture();
    let clock = |tsc: u64| tsc / 3;
    let boot = |tsc: u64| tsc / 3 + 1_000_000;
    let ctx = WriteContext {
        sources: &sources,
        clock: &clock,
        boottime: Some(&boot),
    };
    bytes_per_event(&ctx, &items);
    let mut group = c.benchmark_group("output");
    group.throughput(Throughput::Elements(items.len() as u64));
    let mut text = TextWriter::new(io::sink(), ClockMode::Ns, FlushPolicy::Batch);
    group.bench_function("text_ns", |b| b.iter(|| run(&mut text, &ctx, &items)));
    let mut json = JsonWriter::new(io::sink(), FlushPolicy::Batch);
    group.bench_function("json", |b| b.iter(|| run(&mut json, &ctx, &items)));
    let mut perfetto = PerfettoWriter::new(io::sink(), FlushPolicy::Batch);
    group.bench_function("perfetto", |b| b.iter(|| run(&mut perfetto, &ctx, &items)));
    group.finish();
}

/// Output size of each writer for the fixture, steady state (the second
/// batch: a Perfetto trace's machine and task packets come once).
fn bytes_per_event(ctx: &WriteContext<'_>, items: &[MergeItem]) {
    fn size<W: EventWriter>(
        w: &mut W,
        ctx: &WriteContext<'_>,
        items: &[MergeItem],
        len: impl Fn(&W) -> usize,
    ) -> f64 {
        run(w, ctx, items);
        let first = len(w);
        run(w, ctx, items);
        (len(w) - first) as f64 / items.len() as f64
    }
    let text = size(
        &mut TextWriter::new(Vec::new(), ClockMode::Ns, FlushPolicy::Batch),
        ctx,
        items,
        |w| w.get_ref().len(),
    );
    let json = size(
        &mut JsonWriter::new(Vec::new(), FlushPolicy::Batch),
        ctx,
        items,
        |w| w.get_ref().len(),
    );
    let perfetto = size(
        &mut PerfettoWriter::new(Vec::new(), FlushPolicy::Batch),
        ctx,
        items,
        |w| w.get_ref().len(),
    );
    println!("bytes per event: text {text:.1}, json {json:.1}, perfetto {perfetto:.1}");
}

criterion_group!(benches, bench);
criterion_main!(benches);
