use proptest::prelude::*;

use super::*;
use crate::Flags;

fn unscaled(offset: i64) -> TscParams {
    TscParams::unscaled(offset as u64)
}

fn change(at: u64, params: TscParams) -> OffsetChange {
    OffsetChange {
        new_start: at,
        params,
        old_end: None,
    }
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// (host, epoch, flags) for each guest TSC, through one cursor.
fn run(tl: &VcpuTimeline, guests: &[u64]) -> Vec<(u64, u64, Flags)> {
    let mut cursor = StreamCursor::default();
    guests
        .iter()
        .map(|&g| {
            let a = tl.assign(&mut cursor, g).unwrap();
            (a.host, a.epoch, a.flags)
        })
        .collect()
}

/// The guest writes its TSC to 0 three times (KVM list, 2012): offsets
/// -100, -104 and -108, events 1, 2, 3 after each write. Every event is
/// explained by all three epochs; the stream's order puts each in its own.
#[test]
fn guest_resetting_its_tsc_three_times_maps_each_event_to_its_epoch() {
    let mut tl = VcpuTimeline::default();
    for at in [100, 104, 108] {
        tl.offset_change(change(at, unscaled(-(at as i64))))
            .unwrap();
    }
    let got = run(&tl, &[1, 2, 3, 1, 2, 3, 1, 2, 3]);
    let order = Flags::RESOLVED_BY_ORDER;
    let want: Vec<_> = [0u64, 1, 2]
        .iter()
        .flat_map(|&e| (1..=3).map(move |g| (100 + 4 * e + g, e, order)))
        .collect();
    assert_eq!(got, want);
}

/// Same, with events 1, 2, 3, 1, 2, 3 and the last exit and first entry
/// known: the gaps around each write are in no epoch.
#[test]
fn known_exits_and_entries_narrow_the_epochs() {
    let mut tl = VcpuTimeline::default();
    tl.offset_change(change(1000, unscaled(-1000))).unwrap();
    for (exit, at, entry) in [(1035, 1040, 1042), (1075, 1080, 1083)] {
        let params = unscaled(-(at as i64));
        let last_exit = Some(exit);
        tl.offset_change(OffsetChange {
            new_start: at,
            params,
            old_end: last_exit,
        })
        .unwrap();
        assert!(matches!(
            tl.first_entry(entry, params),
            Ok(Entry::Matched(_))
        ));
    }
    let bounds: Vec<_> = tl.epochs().map(|e| (e.host_start, e.host_end)).collect();
    assert_eq!(
        bounds,
        [
            (Some(1000), Some(1035)),
            (Some(1042), Some(1075)),
            (Some(1083), None)
        ]
    );
    let got = run(&tl, &[10, 20, 30, 10, 20, 30]);
    let hosts: Vec<_> = got.iter().map(|&(h, e, _)| (h, e)).collect();
    assert_eq!(
        hosts,
        [
            (1010, 0),
            (1020, 0),
            (1030, 0),
            (1050, 1),
            (1060, 1),
            (1070, 1)
        ]
    );
    // Guest TSC 1 is host 1041 under epoch 1 (before its first entry), 1081
    // under epoch 2 (also before its entry), 1001 under epoch 0: only 0.
    let mut cursor = StreamCursor::default();
    let a = tl.assign(&mut cursor, 1).unwrap();
    assert_eq!((a.host, a.epoch, a.flags), (1001, 0, Flags::NONE));
    // Guest TSC 37: host 1037 (epoch 0, after its exit), 1077 (epoch 1, after
    // its exit), 1117 (epoch 2): only epoch 2 explains it.
    let a = tl.assign(&mut cursor, 37).unwrap();
    assert_eq!((a.host, a.epoch, a.flags), (1117, 2, Flags::NONE));
}

#[test]
fn forward_jumps_are_unambiguous_and_skipped_guest_time_is_outside() {
    let mut tl = VcpuTimeline::default();
    tl.bootstrap(unscaled(0)).unwrap();
    tl.offset_change(change(1000, unscaled(1_000_000))).unwrap();
    tl.offset_change(change(2000, unscaled(5_000_000))).unwrap();
    let got = run(&tl, &[500, 1_001_500, 1_001_999, 5_002_000, 9_000_000]);
    assert_eq!(
        got,
        [
            (500, 0, Flags::NONE),
            (1500, 1, Flags::NONE),
            (1999, 1, Flags::NONE),
            (2000, 2, Flags::NONE),
            (4_000_000, 2, Flags::NONE),
        ]
    );
    // Guest TSC 5000 was skipped by the jump: host 5000 under epoch 0 is
    // past its end, and it is centuries away under the others.
    let mut cursor = StreamCursor::default();
    let a = tl.assign(&mut cursor, 5000).unwrap();
    assert_eq!((a.host, a.epoch, a.flags), (5000, 0, Flags::OUTSIDE_EPOCH));
    assert_eq!(
        cursor,
        StreamCursor::default(),
        "an outlier moves no cursor"
    );
}

#[test]
fn scaling_change_converts_each_side_with_its_own_ratio() {
    let mut tl = VcpuTimeline::default();
    tl.offset_change(change(1000, unscaled(-1000))).unwrap();
    // From host 2000 the guest runs at 2x (SVM, 32 frac bits) and continues
    // from guest 1000: guest = 2 * host - 3000.
    let double = TscParams::new((-3000i64) as u64, 2 << 32, 32).unwrap();
    tl.offset_change(change(2000, double)).unwrap();
    assert_eq!(double.guest_from_host(2000), 1000);
    let got = run(&tl, &[999, 1000, 1002, 1003, 3000]);
    assert_eq!(
        got,
        [
            (1999, 0, Flags::NONE),
            (2000, 1, Flags::NONE),
            (2001, 1, Flags::NONE),
            // Odd guest TSCs fall between two host ticks: rounded up.
            (2002, 1, Flags::NONE),
            (3000, 1, Flags::NONE),
        ]
    );
    // Back to 1x at host 4000, guest TSC rewound to 2000: guest TSCs 2000..=4999
    // are explained by both scaled epoch 1 and epoch 2.
    tl.offset_change(change(4000, unscaled(-2000))).unwrap();
    let mut cursor = StreamCursor::default();
    let a = tl.assign(&mut cursor, 2500).unwrap();
    assert_eq!((a.host, a.epoch), (2750, 1));
    assert_eq!(a.flags, Flags::RESOLVED_BY_ORDER);
    let a = tl.assign(&mut cursor, 2400).unwrap();
    assert_eq!((a.host, a.epoch), (4400, 2));
}

#[test]
fn unknown_start_reaches_back_and_a_bootstrap_needs_an_empty_timeline() {
    let mut tl = VcpuTimeline::default();
    tl.bootstrap(unscaled(-7)).unwrap();
    assert_eq!(tl.bootstrap(unscaled(0)), Err(TimelineError::NotEmpty));
    tl.offset_change(change(5000, unscaled(1 << 40))).unwrap();
    let first = tl.epoch(0).unwrap();
    assert_eq!((first.host_start, first.host_end), (None, Some(5000)));
    let got = run(&tl, &[0, 4992, (1 << 40) + 5000]);
    assert_eq!(
        got,
        [
            (7, 0, Flags::NONE),
            (4999, 0, Flags::NONE),
            (5000, 1, Flags::NONE)
        ]
    );
}

#[test]
fn an_entry_with_other_parameters_reveals_a_missed_change() {
    let mut tl = VcpuTimeline::default();
    assert_eq!(
        tl.first_entry(500, unscaled(-10)),
        Ok(Entry::MissedChange(0))
    );
    assert_eq!(tl.first_entry(600, unscaled(-10)), Ok(Entry::Matched(0)));
    assert_eq!(
        tl.first_entry(900, unscaled(50)),
        Ok(Entry::MissedChange(1))
    );
    let bounds: Vec<_> = tl.epochs().map(|e| (e.host_start, e.host_end)).collect();
    assert_eq!(bounds, [(None, Some(900)), (Some(900), None)]);
    assert_eq!(
        tl.offset_change(change(800, unscaled(0))),
        Err(TimelineError::OutOfOrder {
            at: 800,
            start: 900
        })
    );
}

#[test]
fn rewriting_the_same_offset_keeps_the_epoch() {
    let mut tl = VcpuTimeline::default();
    tl.offset_change(change(10, unscaled(5))).unwrap();
    let same = TscParams::new(5, 1 << 32, 32).unwrap();
    assert_eq!(tl.offset_change(change(20, same)), Ok(0));
    assert_eq!(tl.epochs().len(), 1);
}

#[test]
fn history_is_bounded_and_dropped_epochs_are_counted() {
    let mut tl = VcpuTimeline::new(cap(3));
    for i in 0..10u64 {
        // Forward jumps of 1e9 guest ticks per 1000 host ticks: no overlap.
        tl.offset_change(change(1000 * i, unscaled(1_000_000_000 * i as i64)))
            .unwrap();
    }
    assert_eq!(tl.dropped(), 7);
    let seqs: Vec<_> = tl.epochs().map(|e| e.seq).collect();
    assert_eq!(seqs, [7, 8, 9]);
    assert!(tl.epoch(6).is_none());
    // An event of dropped epoch 2 (host 2500) has no candidate left.
    let mut cursor = StreamCursor::default();
    let a = tl.assign(&mut cursor, 2_000_002_500).unwrap();
    assert!(a.flags.contains(Flags::OUTSIDE_EPOCH), "{a:?}");
    // An event of epoch 8 is still exact.
    let a = tl.assign(&mut cursor, 8_000_008_500).unwrap();
    assert_eq!((a.host, a.epoch, a.flags), (8500, 8, Flags::NONE));
}

#[test]
fn a_cursor_on_a_dropped_epoch_still_assigns() {
    let mut tl = VcpuTimeline::new(cap(2));
    tl.offset_change(change(0, unscaled(0))).unwrap();
    let mut cursor = StreamCursor::default();
    tl.assign(&mut cursor, 10).unwrap();
    for i in 1..5u64 {
        tl.offset_change(change(100 * i, unscaled(1000 * i as i64)))
            .unwrap();
    }
    let a = tl.assign(&mut cursor, 4450).unwrap();
    assert_eq!((a.host, a.epoch, a.flags), (450, 4, Flags::NONE));
}

#[test]
fn empty_timeline_is_an_error() {
    let tl = VcpuTimeline::default();
    let mut cursor = StreamCursor::default();
    assert_eq!(tl.assign(&mut cursor, 5), Err(TimelineError::NoEpoch(5)));
}

#[test]
fn backwards_host_time_is_flagged() {
    let mut tl = VcpuTimeline::default();
    tl.offset_change(change(0, unscaled(0))).unwrap();
    let got = run(&tl, &[50, 40]);
    assert_eq!(got, [(50, 0, Flags::NONE), (40, 0, Flags::BACKWARDS)]);
}

// ---- The lookup against a plain reference, on random histories ----

/// Candidates written out from the definition: the first host TSC in the
/// epoch at or after the smallest one reaching `g`, if it reads `g` or is
/// past the epoch's first host TSC (then `g` fell between two readings).
fn reference_candidates(tl: &VcpuTimeline, g: u64) -> Vec<(u64, u64)> {
    tl.epochs()
        .filter_map(|e| {
            let (lo, hi) = reference_range(e)?;
            let h = e.params.host_from_guest(g).ok()?.max(lo);
            let d = g.wrapping_sub(e.params.offset()) as u128;
            (h <= hi && (e.params.scaled(h) == d || h > lo)).then_some((e.seq, h))
        })
        .collect()
}

fn reference_range(e: &Epoch) -> Option<(u64, u64)> {
    let hi = match (e.host_start, e.host_end) {
        (_, Some(end)) => end.checked_sub(1)?,
        (Some(s), None) => s.saturating_add(HORIZON),
        (None, None) => u64::MAX,
    };
    let lo = match e.host_start {
        Some(s) => s,
        None if e.host_end.is_some() => hi.saturating_sub(HORIZON),
        None => 0,
    };
    (lo <= hi).then_some((lo, hi))
}

/// No candidate: the written-out rule for an event outside every epoch.
/// The nearest epoch by the distance from its range to the host TSC it
/// converts `g` to; the earlier one on a tie.
fn reference_nearest(tl: &VcpuTimeline, g: u64) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64, u64)> = None;
    for e in tl.epochs() {
        let (Some((lo, hi)), Ok(h)) = (reference_range(e), e.params.host_from_guest(g)) else {
            continue;
        };
        let distance = if h < lo { lo - h } else { h.saturating_sub(hi) };
        if best.is_none_or(|(d, _, _)| distance < d) {
            best = Some((distance, h, e.seq));
        }
    }
    best.map(|(_, h, seq)| (h, seq))
}

fn reference_assign(
    tl: &VcpuTimeline,
    cursor: &mut (Option<u64>, u64),
    g: u64,
) -> Option<(u64, u64, Flags)> {
    let c = reference_candidates(tl, g);
    let (from, last) = (cursor.0.unwrap_or(0), cursor.1);
    let (seq, h, mut flags) = match c.len() {
        0 => return None,
        1 => (c[0].0, c[0].1, Flags::NONE),
        _ => {
            let pick = c
                .iter()
                .find(|&&(s, h)| s >= from && h >= last)
                .or_else(|| c.iter().find(|&&(s, _)| s >= from))
                .unwrap_or(&c[c.len() - 1]);
            (pick.0, pick.1, Flags::RESOLVED_BY_ORDER)
        }
    };
    if cursor.0.is_some() && h < last {
        flags |= Flags::BACKWARDS;
    }
    *cursor = (Some(seq), h);
    Some((h, seq, flags))
}

#[derive(Clone, Debug)]
enum Op {
    /// Offset change `dt` after the previous one: guest TSC set to `value`
    /// (small values collide, as when a guest rewrites its TSC), maybe scaled.
    Change {
        dt: u64,
        value: u64,
        scale: Option<u64>,
        exit_back: Option<u64>,
    },
    /// First entry `dt` after the latest start, with the latest parameters.
    Entry { dt: u64 },
    /// A guest event: host TSC `host` under the params of epoch `pick`, jittered.
    Event { host: u64, pick: usize, jitter: i8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..300, 0u64..400, prop::option::of(1u64 << 31..3u64 << 31), prop::option::of(0u64..20))
            .prop_map(|(dt, value, scale, exit_back)| Op::Change { dt, value, scale, exit_back }),
        1 => (0u64..20).prop_map(|dt| Op::Entry { dt }),
        4 => (0u64..4000, any::<usize>(), any::<i8>())
            .prop_map(|(host, pick, jitter)| Op::Event { host, pick, jitter }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn lookup_matches_the_reference(
        cap_n in 1usize..6,
        bootstrap in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut tl = VcpuTimeline::new(cap(cap_n));
        if bootstrap {
            tl.bootstrap(unscaled(-5)).unwrap();
        }
        let (mut now, mut cursor, mut reference) = (100u64, StreamCursor::default(), (None, 0));
        for op in ops {
            match op {
                Op::Change { dt, value, scale, exit_back } => {
                    now += dt;
                    let ratio = scale.unwrap_or(1 << 32);
                    let scaled = TscParams::new(0, ratio, 32).unwrap().guest_from_host(now);
                    let params = TscParams::new(value.wrapping_sub(scaled), ratio, 32).unwrap();
                    let last_exit = exit_back.map(|b| now.saturating_sub(b));
                    tl.offset_change(OffsetChange { new_start: now, params, old_end: last_exit }).unwrap();
                }
                Op::Entry { dt } => {
                    if let Some(latest) = tl.latest().copied() {
                        let at = latest.host_start.unwrap_or(now) + dt;
                        tl.first_entry(at, latest.params).unwrap();
                        now = now.max(at);
                    }
                }
                Op::Event { host, pick, jitter } => {
                    let Some(e) = tl.epochs().nth(pick % tl.epochs().len().max(1)).copied() else {
                        continue;
                    };
                    let g = e.params.guest_from_host(host).wrapping_add(jitter as i64 as u64);
                    let got = tl.assign(&mut cursor, g);
                    match (got, reference_assign(&tl, &mut reference, g)) {
                        (Ok(got), Some(want)) => prop_assert_eq!((got.host, got.epoch, got.flags), want),
                        (Ok(got), None) => prop_assert_eq!(
                            (got.host, got.epoch, got.flags),
                            {
                                let (h, seq) = reference_nearest(&tl, g).unwrap();
                                (h, seq, Flags::OUTSIDE_EPOCH)
                            }
                        ),
                        (Err(TimelineError::NoEpoch(_)), None) => prop_assert!(
                            tl.epochs().all(|e| reference_range(e).is_none()
                                || e.params.host_from_guest(g).is_err())
                        ),
                        (got, want) => prop_assert!(false, "{got:?} vs {want:?}"),
                    }
                    prop_assert_eq!((cursor.epoch(), cursor.last_host()), reference);
                }
            }
        }
    }
}

/// A last exit reported after the change itself cannot end the old epoch
/// (the vCPU was not running at the change): the change's own time does.
#[test]
fn a_last_exit_after_the_change_is_not_the_end() {
    let mut tl = VcpuTimeline::default();
    tl.offset_change(change(1000, unscaled(-1000))).unwrap();
    tl.offset_change(OffsetChange {
        new_start: 1040,
        params: unscaled(-1040),
        old_end: Some(1045),
    })
    .unwrap();
    // An exit exactly at the change ends the epoch there too.
    tl.offset_change(OffsetChange {
        new_start: 1080,
        params: unscaled(-1080),
        old_end: Some(1080),
    })
    .unwrap();
    let bounds: Vec<_> = tl.epochs().map(|e| (e.host_start, e.host_end)).collect();
    assert_eq!(
        bounds,
        [
            (Some(1000), Some(1040)),
            (Some(1040), Some(1080)),
            (Some(1080), None)
        ]
    );
}

/// Only the first entry after a change refines the epoch's start; a later
/// entry with the same parameters (the vCPU re-entering after an exit) must
/// not move it, or the guest time in between would fall out of the epoch.
#[test]
fn a_second_entry_does_not_move_the_start() {
    let mut tl = VcpuTimeline::default();
    tl.offset_change(change(1000, unscaled(-1000))).unwrap();
    assert_eq!(tl.first_entry(1002, unscaled(-1000)), Ok(Entry::Matched(0)));
    assert_eq!(tl.first_entry(1500, unscaled(-1000)), Ok(Entry::Matched(0)));
    let latest = tl.latest().unwrap();
    assert_eq!((latest.seq, latest.host_start), (0, Some(1002)));
    // Guest TSC 100 is host 1100, between the two entries: still explained.
    let mut cursor = StreamCursor::default();
    let a = tl.assign(&mut cursor, 100).unwrap();
    assert_eq!((a.host, a.epoch, a.flags), (1100, 0, Flags::NONE));
}

#[test]
fn latest_is_the_newest_epoch() {
    let mut tl = VcpuTimeline::default();
    assert_eq!(tl.latest(), None);
    tl.offset_change(change(10, unscaled(-10))).unwrap();
    tl.offset_change(change(20, unscaled(-20))).unwrap();
    let latest = tl.latest().unwrap();
    assert_eq!((latest.seq, latest.params), (1, unscaled(-20)));
    assert_eq!(latest.host_start, Some(20));
}

/// Epochs 0 `[1000, 1900)` (offset 0; its last exit at 1900), 1 `[2000,
/// 3000)` (offset 51), 2 `[3000, 3001)` (one host tick, offset 1e6) and 3
/// from 3001 (offset 2e6, far from every event below).
fn gaps_and_a_one_tick_epoch() -> VcpuTimeline {
    let mut tl = VcpuTimeline::default();
    tl.offset_change(change(1000, unscaled(0))).unwrap();
    tl.offset_change(OffsetChange {
        new_start: 2000,
        params: unscaled(51),
        old_end: Some(1900),
    })
    .unwrap();
    tl.offset_change(change(3000, unscaled(1_000_000))).unwrap();
    tl.offset_change(change(3001, unscaled(2_000_000))).unwrap();
    let bounds: Vec<_> = tl.epochs().map(|e| (e.host_start, e.host_end)).collect();
    assert_eq!(
        bounds,
        [
            (Some(1000), Some(1900)),
            (Some(2000), Some(3000)),
            (Some(3000), Some(3001)),
            (Some(3001), None)
        ]
    );
    tl
}

/// An epoch one host tick long explains the one guest TSC read in it.
#[test]
fn a_one_tick_epoch_explains_its_tick() {
    let tl = gaps_and_a_one_tick_epoch();
    assert_eq!(run(&tl, &[1_003_000]), [(3000, 2, Flags::NONE)]);
}

/// An event no epoch explains is placed by the epoch whose host range is
/// nearest the host TSC that epoch converts it to, ties to the earlier.
#[test]
fn an_event_outside_every_epoch_goes_to_the_nearest() {
    let tl = gaps_and_a_one_tick_epoch();
    let outside = |g| {
        let a = tl.assign(&mut StreamCursor::default(), g).unwrap();
        assert_eq!(a.flags, Flags::OUTSIDE_EPOCH, "guest {g}");
        (a.host, a.epoch)
    };
    // Past epoch 0's end by 11; before epoch 1's start by 141.
    assert_eq!(outside(1910), (1910, 0));
    // Past epoch 0's end by 141; before epoch 1's start by 11.
    assert_eq!(outside(2040), (1989, 1));
    // 76 from both: the earlier epoch.
    assert_eq!(outside(1975), (1975, 0));
    // One tick past the one-tick epoch.
    assert_eq!(outside(1_003_001), (3001, 2));
}
