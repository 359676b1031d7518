//! The session's whole per-event path, without its I/O: guest pages
//! checked as the ingest checks them ([`EventPage::new`]), converted and
//! merged by the [`Correlator`] with host pages, released by watermark and
//! written as text or JSON lines (to `io::sink()`). The workload is the e2e
//! bench's burst: `ftrace:print` markers `e2e:SEQ:NS\n` back to back on one
//! guest CPU (97%), `sched:sched_switch` on two host CPUs.
//!
//! `cargo bench -p tsc-userspace --bench session_path`
//!
//! Instructions per event, reproducibly (the figure to compare on a loaded
//! machine): `SESSION_PATH_ONCE=text` (or `json`) replays the workload once
//! instead of running criterion, and prints how many events it wrote:
//! ```text
//! SESSION_PATH_ONCE=text valgrind --tool=callgrind \
//!   --toggle-collect='session_path::replay*' target/release/deps/session_path-HASH
//! ```
//! then instructions / events.

use std::{collections::HashMap, hint::black_box, io, sync::Arc};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use tsc_userspace::{
    clock::{Clock, Sample},
    correlator::{Correlator, CorrelatorConfig, HostTraceInfo},
    demo,
    ingest::{ConnectionInfo, EventPage, GuestFormats, SockAddr},
    offsets::{EventKind, OffsetEvent, OffsetSource},
    output::{ClockMode, EventWriter, FlushPolicy, JsonWriter, TextWriter},
    tracefs::{FormatSet, PageBuilder, PageLayout},
    wire::{self, TscSample},
};

const PRINT: &str = include_str!("../src/output/testdata/print.format");
const SWITCH: &str = include_str!("../src/output/testdata/sched_switch.format");
/// Above any pid_max: no procfs lookup finds it.
const VM_PID: u32 = 4_194_400;
const GUEST_PID: i32 = 4321;
/// Markers per replay, and one host event per this many markers.
const MARKERS: u64 = 100_000;
const HOST_EVERY: u64 = 32;
/// Ticks between markers (about 0.5 µs at 3 GHz).
const STEP: u64 = 1_500;
/// Guest pages per batch (what one socket read brings).
const PAGES_PER_BATCH: usize = 4;

fn layout() -> PageLayout {
    PageLayout::parse(demo::HEADER_PAGE).expect("header page")
}

fn clock() -> Clock {
    let anchor = Sample {
        tsc: 0,
        ns: 0,
        width: 0,
    };
    Clock::fixed(anchor, 3_000_000)
}

fn snapshot(vcpu: u32) -> OffsetEvent {
    OffsetEvent {
        event: EventKind::Snapshot,
        pid: VM_PID,
        start_time: 1,
        comm: "vmm".into(),
        vcpu: Some(vcpu),
        offset: Some(0),
        effective_offset: Some(0),
        ratio: None,
        frac_bits: None,
        source: Some(OffsetSource::Tracepoint),
        seq: Some(0),
        prev: None,
        changes: Some(0),
        new_start_ns: None,
        old_end_ns: None,
        boundary_uncertain: false,
    }
}

/// The agent's connection: one ftrace:print format, guest CPU n on vCPU n.
fn connection() -> ConnectionInfo {
    let mut hello = demo::hello("vm1", &[0, 1]);
    let format = tsc_userspace::tracefs::EventFormat::parse("ftrace", PRINT).expect("format");
    hello.events = vec![wire::EventFormat {
        system: "ftrace".into(),
        name: "print".into(),
        id: u32::from(format.id),
        format: PRINT.into(),
    }];
    hello.samples = vec![TscSample {
        cpu: 0,
        tsc_before: 1_000,
        clock_ns: 0,
        tsc_after: 1_010,
    }];
    let guest = Arc::new(GuestFormats::from_hello(&hello).expect("hello"));
    ConnectionInfo {
        id: 1,
        peer: SockAddr::Tcp("127.0.0.1:7170".parse().expect("addr")),
        hello,
        host_tsc_at_hello: 1_000,
        guest,
    }
}

fn host_formats() -> FormatSet {
    let mut set = FormatSet::new();
    set.insert_text("sched", SWITCH).expect("format");
    set
}

fn marker(id: u16, seq: u64) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[..2].copy_from_slice(&id.to_le_bytes());
    p[4..8].copy_from_slice(&GUEST_PID.to_le_bytes());
    p[8..16].copy_from_slice(&0xffff_ffff_8123_4560u64.to_le_bytes());
    p.extend_from_slice(format!("e2e:{seq}:{}\n\0", 1_000_000_000 + seq * 500).as_bytes());
    p
}

fn switch(set: &FormatSet, seq: u64) -> Vec<u8> {
    let f = set.iter().next().expect("sched_switch");
    let end = f
        .fields
        .iter()
        .map(|f| f.decl.offset + f.decl.size)
        .max()
        .unwrap_or(8);
    let mut p = vec![0u8; end.next_multiple_of(4)];
    p[..2].copy_from_slice(&f.id.to_le_bytes());
    let (prev, next): (i64, i64) = if seq.is_multiple_of(2) {
        (0, 777)
    } else {
        (777, 0)
    };
    p[4..8].copy_from_slice(&(prev as i32).to_le_bytes());
    for field in f.own_fields() {
        let (at, size) = (field.decl.offset, field.decl.size);
        let text: &[u8] = match field.name() {
            "prev_comm" if prev == 0 => b"swapper/1",
            "prev_comm" | "next_comm" if size == 16 => b"kworker/u4:1",
            "next_comm" => b"swapper/1",
            _ => b"",
        };
        if !text.is_empty() {
            p[at..at + text.len()].copy_from_slice(text);
            continue;
        }
        let v: i64 = match field.name() {
            "prev_pid" => prev,
            "next_pid" => next,
            "prev_prio" | "next_prio" => 120,
            "prev_state" => 1,
            _ => 0,
        };
        p[at..at + size].copy_from_slice(&v.to_le_bytes()[..size]);
    }
    p
}

/// What one socket read and one host read bring: guest pages (CPU 1),
/// host pages (`(cpu, page)`, partly filled as a drained read finds them)
/// and the TSC every stream is then known to be read up to.
struct Batch {
    guest: Vec<Bytes>,
    host: Vec<(u32, Bytes)>,
    watermark: u64,
}

fn workload(guest_id: u16, host: &FormatSet) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut batch = Batch {
        guest: Vec::new(),
        host: Vec::new(),
        watermark: 0,
    };
    let mut builder = PageBuilder::new(layout());
    let mut host_builder = [PageBuilder::new(layout()), PageBuilder::new(layout())];
    let mut host_count = [0usize; 2];
    for seq in 0..MARKERS {
        let tsc = 10_000 + seq * STEP;
        if !builder.push(tsc, &marker(guest_id, seq)).expect("fits") {
            batch.guest.push(builder.finish());
            if batch.guest.len() == PAGES_PER_BATCH {
                for (cpu, b) in host_builder.iter_mut().enumerate() {
                    if host_count[cpu] > 0 {
                        batch.host.push((cpu as u32, b.finish()));
                        host_count[cpu] = 0;
                    }
                }
                batch.watermark = tsc - 1;
                batches.push(std::mem::replace(
                    &mut batch,
                    Batch {
                        guest: Vec::new(),
                        host: Vec::new(),
                        watermark: 0,
                    },
                ));
            }
            assert!(builder.push(tsc, &marker(guest_id, seq)).expect("fits"));
        }
        if seq % HOST_EVERY == 0 {
            let cpu = (seq / HOST_EVERY % 2) as usize;
            let event = switch(host, seq / HOST_EVERY);
            if !host_builder[cpu].push(tsc + 7, &event).expect("fits") {
                batch.host.push((cpu as u32, host_builder[cpu].finish()));
                assert!(host_builder[cpu].push(tsc + 7, &event).expect("fits"));
                host_count[cpu] = 0;
            }
            host_count[cpu] += 1;
        }
    }
    batch.guest.push(builder.finish());
    for (cpu, b) in host_builder.iter_mut().enumerate() {
        if host_count[cpu] > 0 {
            batch.host.push((cpu as u32, b.finish()));
        }
    }
    batch.watermark = u64::MAX / 2;
    batches.push(batch);
    batches
}

struct Fixture {
    info: ConnectionInfo,
    host_formats: Arc<FormatSet>,
    work: Vec<Batch>,
    comms: Arc<HashMap<i32, String>>,
}

fn fixture() -> Fixture {
    let info = connection();
    let guest_id = info.guest.formats().iter().next().expect("print").id;
    let host_formats = Arc::new(host_formats());
    let work = workload(guest_id, &host_formats);
    let comms = Arc::new(HashMap::from([(GUEST_PID, "e2e-load".to_owned())]));
    Fixture {
        info,
        host_formats,
        work,
        comms,
    }
}

fn correlator(f: &Fixture) -> Correlator {
    let config = CorrelatorConfig {
        vms: vec![format!("{VM_PID}=vm1").parse().expect("vm spec")],
        ..CorrelatorConfig::default()
    };
    let host = HostTraceInfo {
        name: "host".into(),
        layout: layout(),
        formats: f.host_formats.clone(),
        cpus: vec![0, 1],
    };
    let mut c = Correlator::new(config, clock(), host).expect("correlator");
    c.offsets(&[snapshot(0), snapshot(1)], 0, &|_| Vec::new());
    c.admit(&f.info).expect("the agent binds");
    c
}

/// Everything the session does per event, for one whole workload.
/// Returns the events written.
#[inline(never)]
fn replay(f: &Fixture, c: &mut Correlator, out: &mut dyn EventWriter) -> u64 {
    let mut written = 0;
    for batch in &f.work {
        for page in &batch.guest {
            let page = EventPage::new(
                f.info.id,
                1,
                page.clone(),
                f.info.guest.clone(),
                f.comms.clone(),
            )
            .expect("page");
            c.guest_page(&page, out).expect("guest page");
        }
        for (cpu, data) in &batch.host {
            c.host_page(*cpu, data, out).expect("host page");
        }
        // Every stream read up to here, as drained marks say.
        c.guest_drained(f.info.id, 0, 0, batch.watermark);
        c.guest_drained(f.info.id, 1, 1, batch.watermark);
        c.host_read(batch.watermark);
        written += c.release(batch.watermark, out).expect("release");
    }
    written
}

fn writer(format: &str) -> Box<dyn EventWriter> {
    match format {
        "json" => Box::new(JsonWriter::new(io::sink(), FlushPolicy::Batch)),
        _ => Box::new(TextWriter::new(
            io::sink(),
            ClockMode::Ns,
            FlushPolicy::Batch,
        )),
    }
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let events = {
        let mut corr = correlator(&f);
        replay(&f, &mut corr, writer("text").as_mut())
    };
    let mut group = c.benchmark_group("session_path");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    for format in ["text", "json"] {
        group.bench_function(format, |b| {
            b.iter_batched(
                || (correlator(&f), writer(format)),
                |(mut corr, mut out)| black_box(replay(&f, &mut corr, out.as_mut())),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(format) = std::env::var("SESSION_PATH_ONCE") {
        let f = fixture();
        let mut corr = correlator(&f);
        let mut out = writer(&format);
        let n = replay(&f, &mut corr, out.as_mut());
        let s = corr.summary();
        println!(
            "session_path: {format}: {n} events written ({} guest + {} host, {} late, {} forced)",
            s.guest_events, s.host_events, s.late, s.forced
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
