//! Items/s through the [`Merger`]: streams that each deliver a page's worth
//! of events (64) at a time, overlapping in time as per-CPU streams do,
//! merged after every round. Also, for the design argument in the `merge`
//! module: the same work with one `BinaryHeap` of all held items.
//!
//! `cargo bench -p tsc-userspace --bench merge`

use std::{cmp::Reverse, collections::BinaryHeap, convert::Infallible, hint::black_box};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tsc_userspace::merge::{EventData, MergeConfig, MergeItem, Merger, SourceId};

/// Events per stream per round: about one ring-buffer page.
const BATCH: u64 = 64;
/// Rounds per iteration.
const ROUNDS: u64 = 16;

/// Host TSC of stream `s`'s `i`-th event of round `r`: streams interleave
/// finely, with a little jitter, each one strictly increasing.
fn tsc(r: u64, i: u64, s: u64, streams: u64) -> u64 {
    let slot = ((r * BATCH + i) * streams + s) * 16;
    slot + (slot.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60)
}

fn bench(c: &mut Criterion) {
    let data = EventData::from_bytes(Bytes::from(vec![0u8; 64]));
    let mut group = c.benchmark_group("merge");
    for streams in [8u64, 64] {
        group.throughput(Throughput::Elements(streams * BATCH * ROUNDS));
        group.bench_with_input(BenchmarkId::new("merger", streams), &streams, |b, &n| {
            let mut merger = Merger::new(MergeConfig::new(u64::MAX));
            let mut round = 0u64;
            b.iter(|| {
                let mut sum = 0u64;
                for _ in 0..ROUNDS {
                    for s in 0..n {
                        for i in 0..BATCH {
                            let t = tsc(round, i, s, n);
                            let item = MergeItem::host(SourceId(0), s as u32, t, data.clone());
                            if let Some(x) = merger.push(item) {
                                sum ^= x.host_tsc;
                            }
                        }
                    }
                    let _ = merger.pop_ready::<Infallible>(0, |x| {
                        sum = sum.wrapping_add(x.host_tsc);
                        Ok(())
                    });
                    round += 1;
                }
                black_box(sum)
            })
        });
        group.bench_with_input(
            BenchmarkId::new("one_heap_of_items", streams),
            &streams,
            |b, &n| {
                let mut heap = BinaryHeap::new();
                let mut frontier = vec![0u64; n as usize];
                let (mut round, mut seq) = (0u64, 0u64);
                b.iter(|| {
                    let mut sum = 0u64;
                    for _ in 0..ROUNDS {
                        for s in 0..n {
                            for i in 0..BATCH {
                                let t = tsc(round, i, s, n);
                                let item = MergeItem::host(SourceId(0), s as u32, t, data.clone());
                                heap.push(Reverse(Keyed(t, seq, item)));
                                seq += 1;
                                frontier[s as usize] = t;
                            }
                        }
                        let limit = frontier.iter().copied().min().unwrap_or(0);
                        while heap.peek().is_some_and(|Reverse(k)| k.0 <= limit) {
                            if let Some(Reverse(k)) = heap.pop() {
                                sum = sum.wrapping_add(k.2.host_tsc);
                            }
                        }
                        round += 1;
                    }
                    black_box(sum)
                })
            },
        );
    }
    group.finish();
}

/// An item ordered by (TSC, arrival).
struct Keyed(u64, u64, MergeItem);

impl PartialEq for Keyed {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Keyed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
