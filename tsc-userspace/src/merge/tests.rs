use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::{Flags, tracefs::FormatSet};

const SRC: SourceId = SourceId(0);

/// An item whose `guest_tsc` carries a unique id, to follow it through.
fn item(source: SourceId, cpu: u32, tsc: u64, id: u64) -> MergeItem {
    let mut item = MergeItem::host(source, cpu, tsc, EventData::default());
    item.guest_tsc = Some(id);
    item
}

fn collect(merger: &mut Merger, now: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let _ = merger.pop_ready::<Infallible>(now, |i| {
        out.push(i.host_tsc);
        Ok(())
    });
    out
}

fn flush(merger: &mut Merger) -> Vec<u64> {
    let mut out = Vec::new();
    let _ = merger.flush_all::<Infallible>(|i| {
        out.push(i.host_tsc);
        Ok(())
    });
    out
}

fn merger(window: u64) -> Merger {
    Merger::new(MergeConfig::new(window))
}

#[test]
fn waits_for_the_slowest_open_stream() {
    let mut m = merger(1000);
    assert!(m.push(item(SRC, 0, 10, 0)).is_none());
    assert!(m.push(item(SRC, 0, 30, 1)).is_none());
    assert!(m.push(item(SRC, 1, 20, 2)).is_none());
    // Watermarks: cpu0 30, cpu1 20.
    assert_eq!(collect(&mut m, 40), [10, 20]);
    assert_eq!(m.held(), 1);
    m.advance(SRC, 1, 29);
    assert_eq!(collect(&mut m, 40), Vec::<u64>::new());
    m.advance(SRC, 1, 30);
    assert_eq!(collect(&mut m, 40), [30]);
    let stats = m.stats();
    assert_eq!(stats.total.emitted, 3);
    assert_eq!(stats.total.forced, 0);
    assert_eq!(stats.watermark, Some(30));
}

#[test]
fn a_new_stream_holds_everything_back_until_it_speaks() {
    let mut m = merger(1000);
    assert!(m.push(item(SRC, 0, 10, 0)).is_none());
    m.advance(SRC, 5, 0);
    assert_eq!(collect(&mut m, 20), Vec::<u64>::new());
    m.advance(SRC, 5, 10);
    assert_eq!(collect(&mut m, 20), [10]);
}

#[test]
fn watermark_never_goes_back() {
    let mut m = merger(1000);
    m.advance(SRC, 0, 50);
    m.advance(SRC, 0, 20);
    assert_eq!(m.watermark(), Some(50));
}

#[test]
fn window_expiry_forces_items_out_and_counts_them() {
    let mut m = merger(100);
    assert!(m.push(item(SRC, 0, 10, 0)).is_none());
    assert!(m.push(item(SRC, 0, 50, 1)).is_none());
    m.advance(SRC, 1, 0); // a silent stream
    assert_eq!(collect(&mut m, 109), Vec::<u64>::new());
    assert_eq!(collect(&mut m, 110), [10]);
    assert_eq!(m.stats().total.forced, 1);
    assert_eq!(collect(&mut m, 150), [50]);
    assert_eq!(m.stats().total.forced, 2);
    // The silent stream now speaks of the past: late, handed straight back.
    let late = m.push(item(SRC, 1, 40, 2)).expect("late item comes back");
    assert!(late.flags.contains(Flags::LATE));
    assert_eq!(late.host_tsc, 40);
    let stats = m.stats();
    assert_eq!(stats.total.late, 1);
    assert_eq!(stats.total.emitted, 3);
    assert_eq!(stats.total.held, 0);
}

#[test]
fn an_item_equal_to_the_last_emitted_is_not_late() {
    let mut m = merger(1000);
    assert!(m.push(item(SRC, 0, 10, 0)).is_none());
    assert_eq!(collect(&mut m, 0), [10]);
    assert!(m.push(item(SRC, 1, 10, 1)).is_none());
    assert_eq!(m.stats().total.late, 0);
}

#[test]
fn the_held_bound_forces_out_the_oldest() {
    let mut m = Merger::new(MergeConfig {
        window: u64::MAX,
        max_held: 2,
    });
    m.advance(SRC, 9, 0); // holds everything back
    assert!(m.push(item(SRC, 0, 30, 0)).is_none());
    assert!(m.push(item(SRC, 1, 10, 1)).is_none());
    let out = m.push(item(SRC, 2, 20, 2)).expect("over the bound");
    assert_eq!(out.host_tsc, 10);
    assert!(out.flags.is_empty());
    let stats = m.stats();
    assert_eq!((stats.total.held, stats.total.overflowed), (2, 1));
    assert_eq!(flush(&mut m), [20, 30]);
}

#[test]
fn out_of_order_within_a_stream_is_put_in_place() {
    let mut m = merger(1000);
    m.advance(SRC, 1, 0);
    for (tsc, id) in [(10, 0), (30, 1), (20, 2), (5, 3)] {
        assert!(m.push(item(SRC, 0, tsc, id)).is_none());
    }
    assert_eq!(m.oldest_held(), Some(5));
    assert_eq!(m.stats().total.reordered, 2);
    assert_eq!(flush(&mut m), [5, 10, 20, 30]);
}

#[test]
fn closing_a_stream_releases_the_others_and_keeps_its_items() {
    let mut m = merger(1000);
    assert!(m.push(item(SRC, 0, 10, 0)).is_none());
    assert!(m.push(item(SRC, 0, 40, 1)).is_none());
    assert!(m.push(item(SRC, 1, 20, 2)).is_none());
    assert_eq!(collect(&mut m, 0), [10, 20]);
    m.close_stream(SRC, 1);
    assert_eq!(m.stats().open_streams, 1);
    assert_eq!(collect(&mut m, 0), [40]);
    // A closed stream still holding items keeps them until they are due.
    let other = SourceId(1);
    assert!(m.push(item(other, 0, 50, 3)).is_none());
    assert!(m.push(item(other, 1, 60, 4)).is_none());
    m.close_source(other);
    assert_eq!(m.held_of(other), 2);
    m.advance(SRC, 0, 55);
    assert_eq!(collect(&mut m, 0), [50]);
    m.close_source(SRC);
    assert_eq!(m.watermark(), None);
    assert_eq!(collect(&mut m, 0), [60]);
    assert_eq!(m.stats().streams, 0);
    assert_eq!(m.held_of(other), 0);
}

#[test]
fn per_source_counts_add_up() {
    let mut m = merger(10);
    let (a, b) = (SourceId(3), SourceId(7));
    assert!(m.push(item(a, 0, 100, 0)).is_none());
    assert!(m.push(item(b, 0, 50, 1)).is_none());
    assert_eq!(collect(&mut m, 0), [50]);
    assert!(m.push(item(b, 0, 40, 2)).is_some());
    let stats = m.stats();
    let of = |id| {
        stats
            .sources
            .iter()
            .find(|(s, _)| *s == id)
            .map(|(_, c)| *c)
    };
    let a = of(a).expect("a pushed");
    let b = of(b).expect("b pushed");
    assert_eq!((a.pushed, a.held, a.emitted), (1, 1, 0));
    assert_eq!((b.pushed, b.held, b.emitted, b.late), (2, 0, 2, 1));
    assert_eq!(stats.sources.len(), 2);
}

#[test]
fn pop_ready_stops_at_the_first_error() {
    let mut m = merger(1000);
    for tsc in [1, 2, 3] {
        assert!(m.push(item(SRC, 0, tsc, tsc)).is_none());
    }
    let mut seen = 0;
    let r = m.pop_ready(10, |_| {
        seen += 1;
        if seen == 2 { Err("full") } else { Ok(()) }
    });
    assert_eq!(r, Err("full"));
    assert_eq!(m.held(), 1);
}

#[test]
fn event_data_is_a_view_into_its_page() {
    let page = Bytes::from(vec![1u8, 2, 3, 4, 5, 6]);
    let data = EventData::from_page(&page, &page[2..5]).expect("inside");
    assert_eq!(data.payload(), [3, 4, 5]);
    assert_eq!(data.payload().as_ptr(), page[2..].as_ptr());
    let other = [3u8, 4];
    assert!(EventData::from_page(&page, &other).is_none());
}

#[test]
fn flags_names_in_fixed_order() {
    let f = Flags::LATE | Flags::RESOLVED_BY_ORDER;
    assert_eq!(f.names().collect::<Vec<_>>(), ["resolved-by-order", "late"]);
    assert!(Flags::NONE.is_empty());
}

fn sched_formats() -> Arc<FormatSet> {
    let mut set = FormatSet::new();
    set.insert_text("sched", include_str!("../../../fuzz/formats/sched_switch"))
        .expect("parses");
    Arc::new(set)
}

#[test]
fn sources_register_remove_and_learn_comms() {
    let mut sources = Sources::new();
    let formats = sched_formats();
    let host = sources
        .add(SourceInfo {
            kind: SourceKind::Host,
            name: "host".into(),
            formats: formats.clone(),
            kernel_release: None,
        })
        .expect("id");
    let guest = sources
        .add(SourceInfo {
            kind: SourceKind::Guest {
                vm_name: "vm1".into(),
                vm_pid: 42,
            },
            name: "agent".into(),
            formats: formats.clone(),
            kernel_release: None,
        })
        .expect("id");
    assert_ne!(host, guest);
    assert_eq!(sources.get(guest).map(Source::label), Some("vm1"));
    assert_eq!(sources.comm(host, 0), Some("<idle>"));
    assert!(sources.set_comms(host, [(7, "bash")]));
    assert_eq!(sources.comm(host, 7), Some("bash"));
    assert_eq!(sources.comm(guest, 7), None);

    // sched_switch from pid 7 (prev) to 9 (next) teaches both names.
    let format = formats.find("sched", "sched_switch").expect("format");
    let mut p = vec![0u8; 64];
    p[..2].copy_from_slice(&format.id.to_le_bytes());
    p[8..13].copy_from_slice(b"bash2");
    p[24..28].copy_from_slice(&7i32.to_le_bytes());
    p[40..44].copy_from_slice(b"kvm\0");
    p[56..60].copy_from_slice(&9i32.to_le_bytes());
    let data = EventData::from_bytes(Bytes::from(p));
    sources.learn_comms(&MergeItem::host(guest, 0, 1, data));
    assert_eq!(sources.comm(guest, 7), Some("bash2"));
    assert_eq!(sources.comm(guest, 9), Some("kvm"));
    assert_eq!(sources.comm(host, 7), Some("bash"));

    assert!(sources.remove(host).is_some());
    assert!(sources.get(host).is_none());
    assert!(!sources.set_comm(host, 1, "x"));
    let next = sources
        .add(SourceInfo {
            kind: SourceKind::Host,
            name: "again".into(),
            formats,
            kernel_release: None,
        })
        .expect("id");
    assert!(next != host && next != guest, "ids are never reused");
    assert_eq!(sources.iter().count(), 2);
}

/// One step of a random session.
#[derive(Debug, Clone)]
enum Op {
    /// Push the next item of stream `i`.
    Push(usize),
    /// Advance stream `i` to its last pushed TSC plus this.
    Advance(usize, u64),
    /// `pop_ready` with `now` moved on by this.
    Pop(u64),
    /// Close stream `i`.
    Close(usize),
}

fn op(streams: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..streams).prop_map(Op::Push),
        2 => (0..streams, 0u64..50).prop_map(|(i, d)| Op::Advance(i, d)),
        2 => (0u64..40).prop_map(Op::Pop),
        1 => (0..streams).prop_map(Op::Close),
    ]
}

/// Streams of sorted TSCs (steps of 0..20, so equal TSCs happen).
fn streams() -> impl Strategy<Value = Vec<Vec<u64>>> {
    prop::collection::vec(
        prop::collection::vec(0u64..20, 0..40).prop_map(|steps| {
            steps
                .into_iter()
                .scan(0u64, |t, s| {
                    *t += s;
                    Some(*t)
                })
                .collect()
        }),
        1..8,
    )
}

/// What came out, in order: `(tsc, stream, id, late)`.
type Out = Vec<(u64, u32, u64, bool)>;

/// Runs `ops` over `streams`; returns the output and the final merger.
fn run(streams: &[Vec<u64>], ops: &[Op], config: MergeConfig, may_be_late: bool) -> (Out, Merger) {
    let mut m = Merger::new(config);
    let mut out: Out = Vec::new();
    let record = |out: &mut Out, i: MergeItem| {
        let id = i.guest_tsc.unwrap_or(u64::MAX);
        out.push((i.host_tsc, i.cpu, id, i.flags.contains(Flags::LATE)));
    };
    for cpu in 0..streams.len() {
        m.advance(SRC, cpu as u32, 0);
    }
    let (mut next, mut now) = (vec![0usize; streams.len()], 0u64);
    for op in ops {
        match *op {
            Op::Push(i) => {
                let Some(&tsc) = streams[i].get(next[i]) else {
                    continue;
                };
                let id = (i as u64) << 32 | next[i] as u64;
                next[i] += 1;
                if let Some(x) = m.push(item(SRC, i as u32, tsc, id)) {
                    record(&mut out, x);
                }
            }
            Op::Advance(i, d) => {
                // A promise the stream keeps: not past its next item.
                let last = next[i].checked_sub(1).map_or(0, |n| streams[i][n]);
                let bound = streams[i].get(next[i]).copied().unwrap_or(u64::MAX);
                m.advance(SRC, i as u32, (last + d).min(bound));
            }
            Op::Pop(d) => {
                now += d;
                let _ = m.pop_ready::<Infallible>(now, |x| {
                    record(&mut out, x);
                    Ok(())
                });
            }
            // Closing a stream with more to come breaks its promise: only
            // when the merge may make items late.
            Op::Close(i) if may_be_late || next[i] == streams[i].len() => {
                m.close_stream(SRC, i as u32)
            }
            Op::Close(_) => {}
        }
    }
    // The rest of every stream, then the end.
    for (i, s) in streams.iter().enumerate() {
        for (n, &tsc) in s.iter().enumerate().skip(next[i]) {
            let id = (i as u64) << 32 | n as u64;
            if let Some(x) = m.push(item(SRC, i as u32, tsc, id)) {
                record(&mut out, x);
            }
        }
    }
    let _ = m.flush_all::<Infallible>(|x| {
        record(&mut out, x);
        Ok(())
    });
    (out, m)
}

/// Checks what must hold whatever the window and bound.
fn check_common(streams: &[Vec<u64>], out: &Out, m: &Merger) -> Result<(), TestCaseError> {
    let total: usize = streams.iter().map(Vec::len).sum();
    prop_assert_eq!(out.len(), total, "every item comes out");
    let mut ids: Vec<u64> = out.iter().map(|o| o.2).collect();
    ids.sort_unstable();
    ids.dedup();
    prop_assert_eq!(ids.len(), total, "each exactly once");
    // In order except the late ones, and each late one really was late.
    let mut max = 0;
    for &(tsc, _, _, late) in out {
        if late {
            prop_assert!(
                tsc < max,
                "flagged late at {} but the last was {}",
                tsc,
                max
            );
        } else {
            prop_assert!(tsc >= max, "{} after {}", tsc, max);
            max = tsc;
        }
    }
    // Each stream's in-order items keep their stream's order.
    for cpu in 0..streams.len() as u32 {
        if !streams[cpu as usize].is_sorted() {
            continue;
        }
        let ids: Vec<u64> = out
            .iter()
            .filter(|o| o.1 == cpu && !o.3)
            .map(|o| o.2)
            .collect();
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
    let stats = m.stats();
    let late = out.iter().filter(|o| o.3).count() as u64;
    prop_assert_eq!(stats.total.late, late);
    prop_assert_eq!(stats.total.pushed, total as u64);
    prop_assert_eq!(stats.total.emitted, total as u64);
    prop_assert_eq!(stats.total.held, 0);
    prop_assert_eq!(m.held(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A window that never expires and no bound: watermarks alone order
    /// everything, so nothing is late or forced.
    #[test]
    fn watermarks_alone_give_a_total_order(
        (streams, ops) in streams().prop_flat_map(|s| {
            let n = s.len();
            (Just(s), prop::collection::vec(op(n), 0..200))
        })
    ) {
        let config = MergeConfig { window: u64::MAX, max_held: usize::MAX };
        let (out, m) = run(&streams, &ops, config, false);
        check_common(&streams, &out, &m)?;
        let stats = m.stats();
        prop_assert_eq!((stats.total.late, stats.total.forced, stats.total.overflowed), (0, 0, 0));
        let mut sorted = out.clone();
        sorted.sort_by_key(|o| o.0);
        prop_assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            sorted.iter().map(|o| o.0).collect::<Vec<_>>()
        );
    }

    /// A short window and a small bound: items may be forced out or come
    /// late, but none is lost, and the counts say what happened.
    #[test]
    fn window_and_bound_lose_nothing(
        (streams, ops) in streams().prop_flat_map(|s| {
            let n = s.len();
            (Just(s), prop::collection::vec(op(n), 0..200))
        }),
        window in 0u64..60,
        max_held in 1usize..20,
    ) {
        let (out, m) = run(&streams, &ops, MergeConfig { window, max_held }, true);
        check_common(&streams, &out, &m)?;
    }

    /// Streams that break their own order (a guest stream stepping back
    /// across an epoch change): what can still be put in place is, the
    /// rest comes out late, and nothing is lost.
    #[test]
    fn disorder_within_streams_is_repaired_or_flagged(
        (streams, ops) in prop::collection::vec(prop::collection::vec(0u64..500, 0..40), 1..8)
            .prop_flat_map(|s| {
                let n = s.len();
                (Just(s), prop::collection::vec(op(n), 0..200))
            }),
        window in 0u64..600,
    ) {
        let config = MergeConfig { window, max_held: 64 };
        let (out, m) = run(&streams, &ops, config, true);
        check_common(&streams, &out, &m)?;
        let backwards: u64 = streams
            .iter()
            .map(|s| s.windows(2).filter(|w| w[1] < w[0]).count() as u64)
            .sum();
        let stats = m.stats();
        // Each step back is either put in place or late.
        prop_assert!(stats.total.reordered + stats.total.late >= backwards);
    }
}

#[test]
fn config_is_the_one_given() {
    let config = MergeConfig {
        window: 1234,
        max_held: 7,
    };
    assert_eq!(Merger::new(config).config(), config);
    assert_eq!(MergeConfig::new(99).max_held, MergeConfig::DEFAULT_MAX_HELD);
    assert_eq!(MergeConfig::default().window, 1 << 31);
}
