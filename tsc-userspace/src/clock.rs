//! Host TSC <-> host `CLOCK_MONOTONIC` nanoseconds, and host TSC ->
//! `CLOCK_BOOTTIME` nanoseconds (for Perfetto, which reads ftrace
//! timestamps as BOOTTIME).
//!
//! # Method, and why
//!
//! The target is `CLOCK_MONOTONIC` (what the `mono` trace clock,
//! `bpf_ktime_get_ns` and `clock_gettime` report), so the clock is
//! calibrated against it directly with paired samples: `rdtsc`,
//! `clock_gettime(CLOCK_MONOTONIC)` (the vDSO, which itself reads the TSC),
//! `rdtsc`, keeping the narrowest of many brackets and taking its midpoint.
//! On this kind of machine a bracket is a few tens of ticks, so one sample
//! pins the TSC <-> ns relation to about ten nanoseconds.
//!
//! The perf mmap page (`time_mult`/`time_shift`/`time_zero`, what
//! `trace-cmd --tsc2nsec` uses) describes `sched_clock`, not `CLOCK_MONOTONIC`:
//! it has its own zero (so an offset would have to be measured with paired
//! samples anyway) and its own rate, the nominal `tsc_khz`, while the
//! timekeeper runs MONOTONIC at that rate corrected by NTP and by the
//! rounding of its tick interval (tens of ppb, tens of ns per second). It
//! also does not exist where `sched_clock` is not the TSC, which includes
//! this project's machines (KVM guests on kvm-clock: no `cap_user_time`).
//! So the page is used only for what it is exact about, the kernel's
//! `tsc_khz`, when sysfs has no `tsc_freq_khz`; failing both, the frequency
//! is measured against `CLOCK_MONOTONIC_RAW`. The frequency is reported and
//! used to reject implausible rates, never to convert.
//!
//! The rate itself is measured: [`Clock::calibrate`] samples twice
//! [`CALIBRATION_SPAN`] apart (0.1 s: about 0.2 ppm). [`Clock::refresh`]
//! takes a new sample, re-anchors on it and re-measures the rate from a base
//! sample at least half a second old (the base moves on every
//! [`RATE_BASE_SPAN`]), so after a few seconds the rate is good to a few
//! ppb and the error stays within tens of nanoseconds with a refresh every
//! second or so. The privileged test `tests/clock.rs` measures it against
//! the kernel's own `mono` trace clock.
//!
//! `CLOCK_BOOTTIME` is MONOTONIC plus the time the machine was suspended:
//! the same rate, a different zero that jumps on resume. It gets its own
//! line, calibrated, refreshed and checked exactly like MONOTONIC's (paired
//! `rdtsc`/`clock_gettime(CLOCK_BOOTTIME)`/`rdtsc` samples, its rate
//! measured, never derived from MONOTONIC's), so a resume is picked up by
//! the next refresh rather than assumed away. `tests/clock.rs` measures it
//! against the kernel's `boot` trace clock the same way.
//!
//! Conversions are integer: `ns = anchor_ns + ((tsc - anchor_tsc) * mult) >> 40`,
//! rounding down; [`Clock::ns_to_tsc`] returns the first TSC at or after a
//! nanosecond, so `tsc_to_ns(ns_to_tsc(n)) == n` while a tick is shorter
//! than a nanosecond (any TSC above 1 GHz).

mod freq;
mod sample;
pub mod stability;

use std::{io, time::Duration};

pub use freq::FreqSource;
use sample::Against;
pub use sample::{Sample, read_tsc};

/// Fraction bits of [`Clock`]'s nanoseconds-per-tick multiplier.
const SHIFT: u32 = 40;
/// Bracketed samples per calibration point; the narrowest wins.
const TRIES: usize = 64;
/// Time between the two samples of [`Clock::calibrate`].
pub const CALIBRATION_SPAN: Duration = Duration::from_millis(100);
/// Samples at least this far apart (ns) re-measure the rate.
const MIN_RATE_SPAN_NS: u64 = 500_000_000;
/// How long a rate base sample serves before the next refresh replaces it.
pub const RATE_BASE_SPAN: Duration = Duration::from_secs(8);
/// A measured rate further than this from `tsc_khz` is not trusted.
const MAX_RATE_DEVIATION_PPM: u128 = 500;

/// Errors calibrating the clock.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// A kernel interface failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A kernel value could not be understood.
    #[error("{what}: unexpected value {value:?}")]
    Malformed {
        /// Where it came from.
        what: String,
        /// What it was.
        value: String,
    },
    /// The TSC did not advance during calibration, or implausibly.
    #[error("TSC calibration failed: {0}")]
    Calibration(String),
    /// `clock_gettime` (of `CLOCK_MONOTONIC`, `_RAW` or `CLOCK_BOOTTIME`) failed.
    #[error("clock_gettime: {0}")]
    ClockGettime(io::Error),
    /// No sample was taken.
    #[error("no TSC/clock sample could be taken")]
    NoSample,
}

/// Converts host TSC values to `CLOCK_MONOTONIC` nanoseconds and back, and
/// to `CLOCK_BOOTTIME` nanoseconds ([`Clock::tsc_to_boottime_ns`]).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    mono: Line,
    boot: Line,
    tsc_khz: u64,
    source: FreqSource,
}

/// The TSC against one kernel clock: an anchor sample, the sample the rate
/// was last measured from, and that rate.
#[derive(Clone, Copy, Debug)]
struct Line {
    anchor: Sample,
    rate_base: Sample,
    mult: u64,
}

impl Line {
    fn tsc_to_ns(&self, tsc: u64) -> u64 {
        let delta = tsc.wrapping_sub(self.anchor.tsc) as i64 as i128;
        let ns = self.anchor.ns as i128 + ((delta * self.mult as i128) >> SHIFT);
        ns.clamp(0, u64::MAX as i128) as u64
    }

    fn ns_to_tsc(&self, ns: u64) -> u64 {
        let scaled = (ns as i128 - self.anchor.ns as i128) << SHIFT;
        let mult = self.mult as i128;
        let ticks = scaled.div_euclid(mult) + i128::from(scaled.rem_euclid(mult) != 0);
        (self.anchor.tsc as i128 + ticks).clamp(0, u64::MAX as i128) as u64
    }
}

/// `ns << SHIFT / ticks`, the multiplier of a rate measured between two samples.
fn measured_mult(from: &Sample, to: &Sample) -> Option<u64> {
    let ticks = to.tsc.checked_sub(from.tsc).filter(|&t| t > 0)?;
    let ns = to.ns.checked_sub(from.ns)?;
    u64::try_from(((ns as u128) << SHIFT) / ticks as u128).ok()
}

/// `round(ticks * 10^6 / ns)`: kHz from two `CLOCK_MONOTONIC_RAW` samples.
fn measured_khz(from: &Sample, to: &Sample) -> Option<u64> {
    let ticks = to.tsc.checked_sub(from.tsc)? as u128;
    let ns = to.ns.checked_sub(from.ns).filter(|&n| n > 0)? as u128;
    u64::try_from((ticks * 1_000_000 + ns / 2) / ns).ok()
}

impl Clock {
    /// Reads (or measures) the TSC frequency and measures the TSC rate
    /// against `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` over
    /// [`CALIBRATION_SPAN`].
    pub fn calibrate() -> Result<Self, ClockError> {
        let stated = freq::stated_tsc_khz()?;
        let (mono0, boot0, raw0) = (
            sample::take(Against::Monotonic, TRIES)?,
            sample::take(Against::Boottime, TRIES)?,
            sample::take(Against::MonotonicRaw, TRIES)?,
        );
        std::thread::sleep(CALIBRATION_SPAN);
        let (raw1, boot1, mono1) = (
            sample::take(Against::MonotonicRaw, TRIES)?,
            sample::take(Against::Boottime, TRIES)?,
            sample::take(Against::Monotonic, TRIES)?,
        );
        let (tsc_khz, source) = match stated {
            Some(stated) => stated,
            None => {
                let khz = measured_khz(&raw0, &raw1)
                    .ok_or_else(|| calibration("the TSC did not advance"))?;
                (khz, FreqSource::Measured)
            }
        };
        let line = |from: Sample, to: Sample| {
            measured_mult(&from, &to)
                .map(|mult| Line {
                    anchor: to,
                    rate_base: from,
                    mult,
                })
                .ok_or_else(|| calibration("the TSC did not advance"))
        };
        let clock = Self {
            mono: line(mono0, mono1)?,
            boot: line(boot0, boot1)?,
            tsc_khz,
            source,
        };
        for (line, name) in [(&clock.mono, "MONOTONIC"), (&clock.boot, "BOOTTIME")] {
            if !clock.plausible(line.mult) {
                return Err(calibration(&format!(
                    "TSC runs {} ppb off {tsc_khz} kHz against CLOCK_{name}",
                    clock.ppb(line.mult)
                )));
            }
        }
        tracing::debug!(tsc_khz, ?source, rate_ppb = clock.rate_ppb(), anchor = ?mono1, boot_anchor = ?boot1, "TSC clock calibrated");
        Ok(clock)
    }

    /// A clock that runs at exactly `tsc_khz` from `anchor`, with nothing
    /// measured: for replaying recorded inputs and for tests, where a
    /// conversion must not depend on the machine. Its BOOTTIME is its
    /// MONOTONIC (same anchor).
    pub fn fixed(anchor: Sample, tsc_khz: u64) -> Self {
        let line = Line {
            anchor,
            rate_base: anchor,
            mult: 0,
        };
        let mut clock = Self {
            mono: line,
            boot: line,
            tsc_khz: tsc_khz.max(1),
            source: FreqSource::Given,
        };
        let mult = clock.nominal_mult() as u64;
        clock.mono.mult = mult;
        clock.boot.mult = mult;
        clock
    }

    /// Re-anchors on new samples, and re-measures the rates from bases at
    /// least half a second old. Call it every second or so.
    pub fn refresh(&mut self) -> Result<(), ClockError> {
        let now = sample::take(Against::Monotonic, TRIES)?;
        let boot = sample::take(Against::Boottime, TRIES)?;
        self.mono = self.refreshed(self.mono, now, "MONOTONIC");
        self.boot = self.refreshed(self.boot, boot, "BOOTTIME");
        Ok(())
    }

    fn refreshed(&self, mut line: Line, now: Sample, name: &str) -> Line {
        let span = now.ns.saturating_sub(line.rate_base.ns);
        if span >= MIN_RATE_SPAN_NS {
            match measured_mult(&line.rate_base, &now) {
                Some(mult) if self.plausible(mult) => line.mult = mult,
                _ => tracing::warn!(
                    ?now, base = ?line.rate_base,
                    "TSC rate against CLOCK_{name} is implausible; keeping the previous one"
                ),
            }
            if span >= RATE_BASE_SPAN.as_nanos() as u64 {
                line.rate_base = now;
            }
        }
        line.anchor = now;
        line
    }

    fn nominal_mult(&self) -> u128 {
        (1_000_000u128 << SHIFT) / self.tsc_khz.max(1) as u128
    }

    fn plausible(&self, mult: u64) -> bool {
        let nominal = self.nominal_mult();
        (mult as u128).abs_diff(nominal) * 1_000_000 <= nominal * MAX_RATE_DEVIATION_PPM
    }

    /// `CLOCK_MONOTONIC` nanoseconds at host TSC `tsc` (saturating at 0 and
    /// `u64::MAX`).
    pub fn tsc_to_ns(&self, tsc: u64) -> u64 {
        self.mono.tsc_to_ns(tsc)
    }

    /// The first host TSC at which `CLOCK_MONOTONIC` reads `ns` or later.
    pub fn ns_to_tsc(&self, ns: u64) -> u64 {
        self.mono.ns_to_tsc(ns)
    }

    /// `CLOCK_BOOTTIME` nanoseconds at host TSC `tsc` (saturating), from
    /// its own paired samples: the clock Perfetto reads ftrace timestamps as.
    pub fn tsc_to_boottime_ns(&self, tsc: u64) -> u64 {
        self.boot.tsc_to_ns(tsc)
    }

    /// The first host TSC at which `CLOCK_BOOTTIME` reads `ns` or later.
    pub fn boottime_ns_to_tsc(&self, ns: u64) -> u64 {
        self.boot.ns_to_tsc(ns)
    }

    /// The TSC frequency in kHz, as the kernel has it.
    pub fn tsc_khz(&self) -> u64 {
        self.tsc_khz
    }

    /// Where [`Clock::tsc_khz`] was read.
    pub fn freq_source(&self) -> FreqSource {
        self.source
    }

    /// The sample `CLOCK_MONOTONIC` conversions are anchored on.
    pub fn anchor(&self) -> Sample {
        self.mono.anchor
    }

    /// The sample `CLOCK_BOOTTIME` conversions are anchored on.
    pub fn boottime_anchor(&self) -> Sample {
        self.boot.anchor
    }

    /// How much longer a tick is in `CLOCK_MONOTONIC` than `tsc_khz` says,
    /// in parts per billion (NTP's correction plus calibration error).
    pub fn rate_ppb(&self) -> i64 {
        self.ppb(self.mono.mult)
    }

    fn ppb(&self, mult: u64) -> i64 {
        let nominal = self.nominal_mult() as i128;
        ((mult as i128 - nominal) * 1_000_000_000 / nominal.max(1)) as i64
    }
}

/// The tightest of `tries` bracketed (`rdtsc`, `CLOCK_MONOTONIC`, `rdtsc`)
/// samples, taken now.
pub fn sample_monotonic(tries: usize) -> Result<Sample, ClockError> {
    sample::take(Against::Monotonic, tries)
}

/// The tightest of `tries` bracketed (`rdtsc`, `CLOCK_BOOTTIME`, `rdtsc`)
/// samples, taken now.
pub fn sample_boottime(tries: usize) -> Result<Sample, ClockError> {
    sample::take(Against::Boottime, tries)
}

fn calibration(why: &str) -> ClockError {
    ClockError::Calibration(why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(anchor_tsc: u64, anchor_ns: u64, khz: u64) -> Clock {
        let mult = ((1_000_000u128 << SHIFT) / khz as u128) as u64;
        let anchor = Sample {
            tsc: anchor_tsc,
            ns: anchor_ns,
            width: 0,
        };
        let line = Line {
            anchor,
            rate_base: anchor,
            mult,
        };
        Clock {
            mono: line,
            boot: line,
            tsc_khz: khz,
            source: FreqSource::Sysfs,
        }
    }

    #[test]
    fn converts_with_the_anchor_and_rate() {
        // 2 GHz: 2 ticks per ns, both sides of the anchor.
        let c = clock(1_000_000, 1_000_000, 2_000_000);
        assert_eq!(c.tsc_to_ns(1_000_000), 1_000_000);
        assert_eq!(c.tsc_to_ns(1_002_000), 1_001_000);
        assert_eq!(c.tsc_to_ns(1_002_001), 1_001_000);
        assert_eq!(c.tsc_to_ns(998_000), 999_000);
        assert_eq!(c.tsc_to_ns(997_999), 998_999);
        assert_eq!(c.tsc_to_ns(0), 500_000);
        assert_eq!(c.ns_to_tsc(1_001_000), 1_002_000);
        assert_eq!(c.ns_to_tsc(999_000), 998_000);
        assert_eq!(c.ns_to_tsc(0), 0);
        // Before the epoch of CLOCK_MONOTONIC: saturates.
        assert_eq!(clock(1_000_000, 10, 1_000_000).tsc_to_ns(0), 0);
    }

    #[test]
    fn ns_round_trips_through_the_first_tsc() {
        let c = clock(77_777_777_777, 1_234_567_890, 2_596_128);
        for ns in (1_234_000_000..1_236_000_000).step_by(997) {
            let tsc = c.ns_to_tsc(ns);
            assert_eq!(c.tsc_to_ns(tsc), ns);
            assert!(c.tsc_to_ns(tsc - 1) < ns);
        }
    }

    #[test]
    fn rates_and_frequencies_from_sample_pairs() {
        let s = |tsc, ns| Sample { tsc, ns, width: 0 };
        assert_eq!(
            measured_khz(&s(1_000, 0), &s(2_596_129_000, 1_000_000_000)),
            Some(2_596_128)
        );
        assert_eq!(
            measured_mult(&s(0, 0), &s(1 << 20, 1 << 19)),
            Some(1 << (SHIFT - 1))
        );
        assert_eq!(measured_mult(&s(5, 0), &s(5, 10)), None);
        assert_eq!(measured_khz(&s(5, 10), &s(9, 10)), None);
    }

    #[test]
    fn calibrated_clock_agrees_with_clock_gettime() {
        let mut c = Clock::calibrate().unwrap();
        assert_eq!(c.tsc_to_ns(c.anchor().tsc), c.anchor().ns);
        c.refresh().unwrap();
        let s = sample::take(Against::Monotonic, 16).unwrap();
        // A self-check only (the method against itself): within 1 us.
        assert!(c.tsc_to_ns(s.tsc).abs_diff(s.ns) < 1_000, "{s:?}");
        let b = sample::take(Against::Boottime, 16).unwrap();
        assert!(c.tsc_to_boottime_ns(b.tsc).abs_diff(b.ns) < 1_000, "{b:?}");
        assert_eq!(
            c.tsc_to_boottime_ns(c.boottime_anchor().tsc),
            c.boottime_anchor().ns
        );
    }

    #[test]
    fn boottime_is_its_own_line() {
        // Same rate, BOOTTIME 5 s ahead (a suspended machine): each converts
        // with its own anchor.
        let mut c = clock(1_000_000, 1_000_000, 2_000_000);
        c.boot.anchor.ns += 5_000_000_000;
        assert_eq!(c.tsc_to_ns(1_002_000), 1_001_000);
        assert_eq!(c.tsc_to_boottime_ns(1_002_000), 5_001_001_000);
        assert_eq!(c.boottime_ns_to_tsc(5_001_001_000), 1_002_000);
    }
}
