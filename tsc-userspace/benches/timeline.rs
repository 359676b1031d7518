//! Guest event -> epoch + host TSC, single-threaded: the cached common path
//! (the stream stays in its epoch), the ambiguous path (the guest rewrote its
//! TSC; every event is explained by several epochs), and a bare
//! multiply-shift as the floor. Prints each path's cost relative to it.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput};
use tsc_common::tsc::TscParams;
use tsc_userspace::timeline::{OffsetChange, StreamCursor, VcpuTimeline};

const BATCH: u64 = 1024;

fn change(at: u64, params: TscParams) -> OffsetChange {
    OffsetChange {
        new_start: at,
        params,
        old_end: None,
    }
}

/// 16 forward epochs; events in the latest one.
fn steady(params: impl Fn(u64) -> TscParams) -> (VcpuTimeline, Vec<u64>) {
    let mut tl = VcpuTimeline::default();
    for i in 0..16u64 {
        tl.offset_change(change(i << 32, params(i))).ok();
    }
    let p = params(15);
    let events = (0..BATCH)
        .map(|k| p.guest_from_host((15 << 32) + 1000 * k))
        .collect();
    (tl, events)
}

/// The guest sets its TSC to 0 at every change: 16 epochs all explain
/// guest TSCs 0..2^20; events in the latest.
fn ambiguous() -> (VcpuTimeline, Vec<u64>) {
    let mut tl = VcpuTimeline::default();
    for i in 0..16u64 {
        let at = (i + 1) << 20;
        tl.offset_change(change(at, TscParams::unscaled(at.wrapping_neg())))
            .ok();
    }
    (tl, (0..BATCH).map(|k| 1000 * k).collect())
}

#[inline(never)]
fn assign_all(tl: &VcpuTimeline, events: &[u64], from_start: bool) -> u64 {
    let mut cursor = StreamCursor::default();
    if !from_start {
        // Position the stream in its epoch, as a running stream would be.
        let _ = tl.assign(&mut cursor, events[0]);
    }
    events.iter().fold(0, |acc, &g| {
        acc ^ tl.assign(&mut cursor, g).map_or(0, |a| a.host)
    })
}

#[inline(never)]
fn bare_mul_shift(values: &[u64], ratio: u64, frac: u32) -> u64 {
    values.iter().fold(0, |acc, &v| {
        acc ^ ((v as u128 * ratio as u128) >> frac) as u64
    })
}

type Path = (&'static str, Box<dyn Fn() -> u64>);

fn paths() -> Vec<Path> {
    let (unscaled, u_events) = steady(|i| TscParams::unscaled(i << 40));
    let (scaled, s_events) =
        steady(|i| TscParams::new(i << 40, 3 << 47, 48).unwrap_or(TscParams::unscaled(0)));
    let (amb, a_events) = ambiguous();
    let base = u_events.clone();
    vec![
        (
            "bare multiply-shift",
            Box::new(move || bare_mul_shift(black_box(&base), black_box(3 << 47), black_box(48))),
        ),
        (
            "cached, unscaled",
            Box::new(move || assign_all(&unscaled, black_box(&u_events), false)),
        ),
        (
            "cached, scaled",
            Box::new(move || assign_all(&scaled, black_box(&s_events), false)),
        ),
        (
            "ambiguous (16 epochs)",
            Box::new(move || assign_all(&amb, black_box(&a_events), true)),
        ),
    ]
}

fn ns_per_event(f: &dyn Fn() -> u64) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let start = Instant::now();
        for _ in 0..100 {
            black_box(f());
        }
        best = best.min(start.elapsed());
    }
    best.as_nanos() as f64 / (100 * BATCH) as f64
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("timeline");
    group.throughput(Throughput::Elements(BATCH));
    for (name, f) in paths() {
        group.bench_function(name, |b| b.iter(&f));
    }
    group.finish();
    c.final_summary();

    let paths = paths();
    let base = ns_per_event(&*paths[0].1);
    println!("\nevents/s and cost relative to a bare multiply-shift (best of 20):");
    for (name, f) in &paths {
        let ns = ns_per_event(&**f);
        println!(
            "  {name:<24} {ns:>8.3} ns  {:>14.0} /s  x{:.2}",
            1e9 / ns,
            ns / base
        );
    }
}
