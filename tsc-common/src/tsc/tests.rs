//! Conversion tests against a plain reference: the forward map written out
//! in `u128` modular arithmetic, and the inverse found by binary search over
//! all host TSCs (so it shares no formula with the code under test).

extern crate std;

use proptest::prelude::*;

use super::*;

const TWO_64: u128 = 1 << 64;

fn reference_forward(p: &TscParams, host: u64) -> u64 {
    let scaled = (host as u128 * p.ratio() as u128) / (1u128 << p.frac_bits());
    ((scaled % TWO_64 + p.offset() as u128) % TWO_64) as u64
}

/// Smallest host TSC whose untruncated scaled value reaches `guest - offset`.
fn reference_inverse(p: &TscParams, guest: u64) -> Result<u64, ConvertError> {
    let want = (guest as u128 + TWO_64 - p.offset() as u128) % TWO_64;
    let reaches = |h: u64| p.scaled(h) >= want;
    if !reaches(u64::MAX) {
        return Err(ConvertError::Overflow);
    }
    let (mut lo, mut hi) = (0u64, u64::MAX);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if reaches(mid) { hi = mid } else { lo = mid + 1 }
    }
    Ok(lo)
}

fn params(offset: u64, ratio: u64, frac: u32) -> TscParams {
    TscParams::new(offset, ratio, frac).unwrap()
}

/// `ceil(a / b)` for the bound statements.
fn ceil_div(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

/// Ratios that matter: anything, near 1.0, and both ends.
fn ratio_for(frac: u32) -> impl Strategy<Value = u64> {
    let one = 1u64 << frac;
    prop_oneof![
        1..=u64::MAX,
        (0u64..64).prop_map(move |d| one.saturating_add(d).max(1)),
        (0u64..64).prop_map(move |d| one.saturating_sub(d).max(1)),
        Just(1u64),
        Just(u64::MAX),
        Just(one),
    ]
}

/// Offsets anywhere, and near 0 and +/-2^63.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u64..1024).prop_map(|d| (i64::MAX as u64).wrapping_sub(d)),
        (0u64..1024).prop_map(|d| (i64::MIN as u64).wrapping_add(d)),
        (0u64..1024).prop_map(|d| d.wrapping_neg()),
        0u64..1024,
    ]
}

fn any_params() -> impl Strategy<Value = TscParams> {
    (0u32..=63)
        .prop_flat_map(|frac| (offset(), ratio_for(frac), Just(frac)))
        .prop_map(|(o, r, f)| params(o, r, f))
}

/// A guest TSC anywhere, or near the offset (just above and just below it).
fn guest_near(p: TscParams) -> impl Strategy<Value = (TscParams, u64)> {
    prop_oneof![
        any::<u64>(),
        (0u64..4096).prop_map(move |d| p.offset().wrapping_add(d)),
        (1u64..4096).prop_map(move |d| p.offset().wrapping_sub(d)),
    ]
    .prop_map(move |g| (p, g))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn forward_is_the_kernels(p in any_params(), host in any::<u64>()) {
        prop_assert_eq!(p.guest_from_host(host), reference_forward(&p, host));
    }

    #[test]
    fn inverse_is_the_smallest_reaching_host((p, g) in any_params().prop_flat_map(guest_near)) {
        prop_assert_eq!(p.host_from_guest(g), reference_inverse(&p, g));
    }

    #[test]
    fn guest_faster_than_host_round_trips_hosts(
        (p, host) in any_params()
            .prop_filter("ratio >= 1", |p| p.ratio() >= 1 << p.frac_bits())
            .prop_flat_map(|p| (Just(p), any::<u64>()))
            .prop_filter("no 64-bit wrap of the scaled TSC", |(p, h)| p.scaled(*h) < TWO_64)
    ) {
        prop_assert_eq!(p.host_from_guest(p.guest_from_host(host)), Ok(host));
    }

    #[test]
    fn guest_faster_than_host_rounds_gaps_up_within_bound(
        (p, g) in any_params()
            .prop_filter("ratio >= 1", |p| p.ratio() >= 1 << p.frac_bits())
            .prop_flat_map(guest_near)
    ) {
        if let Ok(h) = p.host_from_guest(g) {
            let want = g.wrapping_sub(p.offset()) as u128;
            let got = p.scaled(h);
            let bound = ceil_div(p.ratio() as u128, 1 << p.frac_bits()) - 1;
            prop_assert!(got >= want && got - want <= bound, "{got} vs {want}, bound {bound}");
            if got < TWO_64 {
                prop_assert_eq!(p.guest_from_host(h).wrapping_sub(g) as u128, got - want);
            }
        }
    }

    #[test]
    fn guest_slower_than_host_round_trips_guests(
        (p, g) in any_params()
            .prop_filter("ratio <= 1", |p| p.ratio() <= 1 << p.frac_bits())
            .prop_flat_map(guest_near)
    ) {
        // Every offset-relative value up to scaled(u64::MAX) is reachable;
        // only those above it have no host TSC.
        match p.host_from_guest(g) {
            Ok(h) => prop_assert_eq!(p.guest_from_host(h), g),
            Err(ConvertError::Overflow) => {
                prop_assert!(p.scaled(u64::MAX) < g.wrapping_sub(p.offset()) as u128);
            }
        }
    }

    #[test]
    fn guest_slower_than_host_returns_earliest_host_within_bound(
        (p, host) in any_params()
            .prop_filter("ratio <= 1", |p| p.ratio() <= 1 << p.frac_bits())
            .prop_flat_map(|p| (Just(p), any::<u64>()))
    ) {
        let back = p.host_from_guest(p.guest_from_host(host));
        let back = back.map_err(|e| TestCaseError::fail(std::format!("{e}")))?;
        let bound = ceil_div(1 << p.frac_bits(), p.ratio() as u128) - 1;
        prop_assert!(back <= host && (host - back) as u128 <= bound);
    }

    #[test]
    fn unscaled_is_a_bijection(offset in offset(), frac in 0u32..=63, host in any::<u64>()) {
        let p = params(offset, 1 << frac, frac);
        prop_assert!(p.is_unscaled());
        let g = p.guest_from_host(host);
        prop_assert_eq!(g, host.wrapping_add(offset));
        prop_assert_eq!(p.host_from_guest(g), Ok(host));
    }
}

#[test]
fn rejects_params_kvm_cannot_hold() {
    assert_eq!(TscParams::new(0, 1, 64), Err(ParamsError::FracBits(64)));
    assert_eq!(TscParams::new(0, 0, 48), Err(ParamsError::ZeroRatio));
    assert!(TscParams::new(0, u64::MAX, 63).is_ok());
}

#[test]
fn negative_offsets_are_twos_complement() {
    let p = TscParams::unscaled((-100i64) as u64);
    assert_eq!(p.guest_from_host(100), 0);
    assert_eq!(p.guest_from_host(99), u64::MAX);
    // A guest TSC below the offset maps to a host TSC above it, not an error.
    assert_eq!(p.host_from_guest(u64::MAX), Ok(99));
    assert_eq!(p.host_from_guest(3), Ok(103));
}

#[test]
fn offsets_near_half_range() {
    for offset in [i64::MAX as u64, i64::MIN as u64, (i64::MIN + 1) as u64] {
        let p = TscParams::unscaled(offset);
        for host in [0, 1, u64::MAX, 1 << 63, (1 << 63) - 1] {
            assert_eq!(p.host_from_guest(p.guest_from_host(host)), Ok(host));
        }
    }
}

#[test]
fn scaled_known_values() {
    // Guest at 1.5x the host rate (VMX, 48 frac bits), offset -1000.
    let p = params((-1000i64) as u64, 3 << 47, 48);
    assert_eq!(p.guest_from_host(2000), 2000);
    assert_eq!(p.guest_from_host(2001), 2001); // 3001.5 truncated, minus 1000
    assert_eq!(p.host_from_guest(2000), Ok(2000));
    // 2002 - (-1000) = 3002 = scaled(2001.33..): rounds up to host 2002 (3003).
    assert_eq!(p.host_from_guest(2002), Ok(2002));
    assert_eq!(p.guest_from_host(2002), 2003);
    // Half speed (SVM, 32 frac bits): hosts 10 and 11 both read 5.
    let half = params(0, 1 << 31, 32);
    assert_eq!((half.guest_from_host(10), half.guest_from_host(11)), (5, 5));
    assert_eq!(half.host_from_guest(5), Ok(10));
}

#[test]
fn ratio_extremes() {
    // The slowest guest TSC: one tick per 2^63 host ticks.
    let slowest = params(0, 1, 63);
    assert_eq!(slowest.guest_from_host(u64::MAX), 1);
    assert_eq!(slowest.host_from_guest(1), Ok(1 << 63));
    assert_eq!(slowest.host_from_guest(2), Err(ConvertError::Overflow));
    // The fastest: 2^64 - 1 guest ticks per host tick; the kernel truncates.
    let fastest = params(0, u64::MAX, 0);
    assert_eq!(fastest.guest_from_host(1), u64::MAX);
    assert_eq!(fastest.guest_from_host(2), u64::MAX - 1);
    assert_eq!(fastest.host_from_guest(u64::MAX), Ok(1));
    assert_eq!(fastest.host_from_guest(5), Ok(1));
    assert_eq!(fastest.host_from_guest(0), Ok(0));
}

#[test]
fn same_conversion_compares_ratios_as_fractions() {
    assert!(params(7, 1 << 32, 32).same_conversion(&TscParams::unscaled(7)));
    assert!(params(7, 3 << 31, 32).same_conversion(&params(7, 3 << 47, 48)));
    assert!(!params(7, (3 << 31) + 1, 32).same_conversion(&params(7, 3 << 47, 48)));
    assert!(!params(8, 1 << 32, 32).same_conversion(&TscParams::unscaled(7)));
}

#[test]
fn inverse_reaches_u64_max_exactly_and_overflows_one_past_it() {
    // Guest at 3/4 of the host rate: host = ceil(4 * guest / 3). The last
    // guest TSC whose host fits is 3 * 2^62 - 1 (host 2^64 - 1, the last
    // host TSC, which reads as that guest TSC); the next one needs 2^64.
    let p = params(0, 3, 2);
    let last = 3 * (1u64 << 62) - 1;
    assert_eq!(p.guest_from_host(u64::MAX), last);
    assert_eq!(p.host_from_guest(last), Ok(u64::MAX));
    assert_eq!(p.host_from_guest(last + 1), Err(ConvertError::Overflow));
}

#[test]
fn errors_say_what_is_wrong() {
    use std::string::ToString;
    assert_eq!(
        ConvertError::Overflow.to_string(),
        "the host TSC for this guest TSC exceeds 2^64 - 1"
    );
    assert_eq!(
        ParamsError::FracBits(64).to_string(),
        "TSC scaling frac bits 64 > 63"
    );
    assert_eq!(ParamsError::ZeroRatio.to_string(), "TSC scaling ratio is 0");
}
