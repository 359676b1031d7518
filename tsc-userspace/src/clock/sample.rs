//! Paired readings of the TSC and a kernel clock (`CLOCK_MONOTONIC`,
//! `CLOCK_BOOTTIME`, `CLOCK_MONOTONIC_RAW`).

use core::arch::x86_64::{_mm_lfence, _rdtsc};

use super::ClockError;

/// The TSC, read in program order (`lfence; rdtsc`), as the vDSO and the
/// kernel's `x86-tsc` trace clock read it.
#[inline]
pub fn read_tsc() -> u64 {
    // SAFETY: lfence and rdtsc exist on every x86_64 CPU and have no
    // memory-safety preconditions.
    unsafe {
        _mm_lfence();
        _rdtsc()
    }
}

/// One `(TSC, kernel clock)` pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// TSC midway between the reads bracketing `clock_gettime`.
    pub tsc: u64,
    /// The kernel clock's nanoseconds (`CLOCK_MONOTONIC` unless said otherwise).
    pub ns: u64,
    /// TSC ticks between the two bracketing reads (the uncertainty of `tsc`
    /// is half of it).
    pub width: u64,
}

/// The clocks a [`Sample`] pairs the TSC with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Against {
    /// `CLOCK_MONOTONIC`: what conversions target.
    Monotonic,
    /// `CLOCK_MONOTONIC_RAW`: the clocksource's nominal rate, for measuring
    /// the TSC frequency.
    MonotonicRaw,
    /// `CLOCK_BOOTTIME`: MONOTONIC plus time suspended; what Perfetto reads
    /// ftrace timestamps as.
    Boottime,
}

fn clock_ns(against: Against) -> Result<u64, ClockError> {
    let id = match against {
        Against::Monotonic => libc::CLOCK_MONOTONIC,
        Against::MonotonicRaw => libc::CLOCK_MONOTONIC_RAW,
        Against::Boottime => libc::CLOCK_BOOTTIME,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Err(ClockError::ClockGettime(std::io::Error::last_os_error()));
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The tightest of `tries` bracketed samples (`rdtsc`, `clock_gettime`,
/// `rdtsc`): an interrupt or preemption widens a bracket, so the narrowest
/// one is the one to trust.
pub fn take(against: Against, tries: usize) -> Result<Sample, ClockError> {
    let mut best: Option<Sample> = None;
    for _ in 0..tries.max(1) {
        let before = read_tsc();
        let ns = clock_ns(against)?;
        let after = read_tsc();
        let width = after.wrapping_sub(before);
        if best.is_none_or(|b| width < b.width) {
            best = Some(Sample {
                tsc: before + width / 2,
                ns,
                width,
            });
        }
    }
    best.ok_or(ClockError::NoSample)
}
