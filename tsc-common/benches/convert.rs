//! Conversions per second: unscaled and scaled inverse, the scaled forward,
//! and a bare multiply-shift as the floor to compare against. After the
//! criterion runs it prints each path's cost relative to that baseline.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput};
use tsc_common::tsc::TscParams;

const BATCH: usize = 1024;

/// Guest TSCs spread like real ones: a few seconds of a 2.6 GHz TSC.
fn inputs() -> Vec<u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..BATCH)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (1 << 44) + (x >> 30)
        })
        .collect()
}

fn unscaled() -> TscParams {
    TscParams::unscaled((-123_456_789i64) as u64)
}

fn scaled() -> TscParams {
    // 1.5x on VMX (48 frac bits); the offset is in guest ticks.
    match TscParams::new((-123_456_789i64) as u64, 3 << 47, 48) {
        Ok(p) => p,
        Err(e) => panic!("bench params: {e}"),
    }
}

#[inline(never)]
fn bare_mul_shift(values: &[u64], ratio: u64, frac: u32) -> u64 {
    values.iter().fold(0u64, |acc, &v| {
        acc ^ ((v as u128 * ratio as u128) >> frac) as u64
    })
}

#[inline(never)]
fn inverse_all(p: &TscParams, values: &[u64]) -> u64 {
    values
        .iter()
        .fold(0u64, |acc, &g| acc ^ p.host_from_guest(g).unwrap_or(0))
}

#[inline(never)]
fn forward_all(p: &TscParams, values: &[u64]) -> u64 {
    values
        .iter()
        .fold(0u64, |acc, &h| acc ^ p.guest_from_host(h))
}

type Path = (&'static str, Box<dyn Fn(&[u64]) -> u64>);

fn paths() -> Vec<Path> {
    let (u, s) = (unscaled(), scaled());
    vec![
        (
            "bare multiply-shift",
            Box::new(move |v: &[u64]| bare_mul_shift(v, black_box(3 << 47), black_box(48))),
        ),
        (
            "unscaled host_from_guest",
            Box::new(move |v: &[u64]| inverse_all(black_box(&u), v)),
        ),
        (
            "scaled host_from_guest",
            Box::new(move |v: &[u64]| inverse_all(black_box(&s), v)),
        ),
        (
            "scaled guest_from_host",
            Box::new(move |v: &[u64]| forward_all(black_box(&s), v)),
        ),
    ]
}

/// Best-of-N nanoseconds per conversion, for the ratio summary only.
fn ns_per_conversion(f: &dyn Fn(&[u64]) -> u64, values: &[u64]) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let start = Instant::now();
        for _ in 0..200 {
            black_box(f(black_box(values)));
        }
        best = best.min(start.elapsed());
    }
    best.as_nanos() as f64 / (200 * values.len()) as f64
}

fn main() {
    let values = inputs();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("convert");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, f) in paths() {
        group.bench_function(name, |b| b.iter(|| f(black_box(&values))));
    }
    group.finish();
    c.final_summary();

    let paths = paths();
    let base = ns_per_conversion(&*paths[0].1, &values);
    println!("\nconversions/s and cost relative to a bare multiply-shift (best of 20):");
    for (name, f) in &paths {
        let ns = ns_per_conversion(&**f, &values);
        println!(
            "  {name:<26} {:>8.3} ns  {:>14.0} /s  x{:.2}",
            ns,
            1e9 / ns,
            ns / base
        );
    }
}
