//! The set of guest TSCs an epoch can explain, as a modular interval, and
//! the overlaps between such sets. This is what makes the common lookup
//! O(1): membership is a subtraction and a compare, no division.

use tsc_common::tsc::TscParams;

/// Guest TSCs `lo, lo + 1, ..., lo + len` (mod 2^64): exactly those whose
/// inverse under an epoch's parameters lands in its host range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GuestArc {
    lo: u64,
    len: u64,
}

/// An inclusive range `lo..=hi` of positions inside one arc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    lo: u64,
    hi: u64,
}

impl Span {
    /// Whether position `k` lies in the span.
    pub(super) fn contains(&self, k: u64) -> bool {
        self.lo <= k && k <= self.hi
    }

    /// The smallest span covering both.
    fn cover(a: Option<Span>, b: Option<Span>) -> Option<Span> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Span {
                lo: a.lo.min(b.lo),
                hi: a.hi.max(b.hi),
            }),
            (a, b) => a.or(b),
        }
    }

    fn clip(lo: u64, hi: u64, max: u64) -> Option<Span> {
        (lo <= max && lo <= hi).then(|| Span {
            lo,
            hi: hi.min(max),
        })
    }

    /// The smallest span covering all of `spans`.
    pub(super) fn cover_all(spans: impl IntoIterator<Item = Option<Span>>) -> Option<Span> {
        spans.into_iter().fold(None, Span::cover)
    }
}

impl GuestArc {
    /// The guest TSCs some host TSC in `host_lo..=host_hi` reads as, plus
    /// those a faster-than-host guest TSC skips between two such readings
    /// (the inverse rounds them up to the next host TSC): with
    /// `d = g - offset`, exactly `scaled(host_lo) <= d <= scaled(host_hi)`.
    /// `None` when the range is empty or its scaled values pass 2^64.
    pub(super) fn of(params: &TscParams, host_lo: u64, host_hi: u64) -> Option<Self> {
        if host_lo > host_hi {
            return None;
        }
        let d_lo = params.scaled(host_lo);
        let d_hi = params.scaled(host_hi).min(u64::MAX as u128);
        if d_lo > d_hi {
            return None;
        }
        Some(Self {
            lo: (d_lo as u64).wrapping_add(params.offset()),
            len: (d_hi - d_lo) as u64,
        })
    }

    /// Position of `guest` inside the arc, or `None` when it is outside.
    #[inline]
    pub(super) fn position(&self, guest: u64) -> Option<u64> {
        let k = guest.wrapping_sub(self.lo);
        (k <= self.len).then_some(k)
    }

    /// The span of positions of `self` that `other` also covers (the
    /// smallest span holding their intersection, which may be two pieces).
    pub(super) fn overlap(&self, other: &Self) -> Option<Span> {
        let start = other.lo.wrapping_sub(self.lo);
        let end = start as u128 + other.len as u128;
        if end <= u64::MAX as u128 {
            return Span::clip(start, end as u64, self.len);
        }
        // 2^64 <= end < 2^65: its low 64 bits are end - 2^64.
        let wrapped_end = end as u64;
        Span::cover(
            Span::clip(start, u64::MAX, self.len),
            Span::clip(0, wrapped_end, self.len),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(lo: u64, len: u64) -> GuestArc {
        GuestArc { lo, len }
    }

    #[test]
    fn arc_runs_from_the_first_to_the_last_reading() {
        // 1.5x: hosts 10..=20 read 20, 21, 23, 24, ..., 35 (offset 5).
        let p = TscParams::new(5, 3 << 47, 48).unwrap();
        let a = GuestArc::of(&p, 10, 20).unwrap();
        for g in 0..60u64 {
            assert_eq!(a.position(g).is_some(), (20..=35).contains(&g), "guest {g}");
        }
        // 0.5x: hosts 11..=20 read 5 (host 10 does too), 6, ..., 10.
        let half = TscParams::new(0, 1 << 31, 32).unwrap();
        let a = GuestArc::of(&half, 11, 20).unwrap();
        assert_eq!(
            (a.position(4), a.position(5), a.position(10)),
            (None, Some(0), Some(5))
        );
        assert_eq!(a.position(11), None);
    }

    #[test]
    fn overlap_handles_wrapping_arcs() {
        let near_top = arc(u64::MAX - 9, 19); // MAX-9 ..= 9
        assert_eq!(
            near_top.overlap(&arc(5, 100)),
            Some(Span { lo: 15, hi: 19 })
        );
        assert_eq!(arc(0, 100).overlap(&near_top), Some(Span { lo: 0, hi: 9 }));
        // Both pieces of a wrapping other inside self: covered as one span.
        assert_eq!(
            arc(0, u64::MAX).overlap(&near_top),
            Some(Span {
                lo: 0,
                hi: u64::MAX
            })
        );
        assert_eq!(arc(50, 10).overlap(&arc(61, 5)), None);
        assert_eq!(
            arc(50, 10).overlap(&arc(60, 5)),
            Some(Span { lo: 10, hi: 10 })
        );
    }
}
