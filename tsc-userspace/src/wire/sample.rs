//! Paired (TSC, CLOCK_MONOTONIC) readings: what lets the host tie a guest's
//! TSC to its own and to the guest's clock.

use bytes::BufMut;

use super::{WireError, read::Reader};

/// One paired reading: `clock_ns` was read between `tsc_before` and
/// `tsc_after`, all on guest CPU `cpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscSample {
    /// CPU the three readings were taken on (from `rdtscp`'s TSC_AUX).
    pub cpu: u32,
    /// TSC read just before the clock.
    pub tsc_before: u64,
    /// CLOCK_MONOTONIC in nanoseconds.
    pub clock_ns: u64,
    /// TSC read just after the clock.
    pub tsc_after: u64,
}

/// Encoded size of a [`TscSample`].
pub(crate) const SAMPLE_LEN: usize = 32;

/// How many attempts [`TscSample::take`] makes to get both TSC reads on one CPU.
const MIGRATION_RETRIES: usize = 16;

/// Reads this CPU's time stamp counter.
#[cfg(target_arch = "x86_64")]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64 and touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(target_arch = "x86_64")]
fn rdtscp() -> (u64, u32) {
    let mut aux = 0u32;
    // SAFETY: rdtscp writes only `aux`, a valid local; every x86_64 CPU
    // Linux supports for this tool has it.
    let tsc = unsafe { core::arch::x86_64::__rdtscp(&mut aux) };
    (tsc, aux)
}

impl TscSample {
    /// Takes one reading. Linux keeps the CPU number in TSC_AUX's low 12
    /// bits; a reading whose two TSC reads came from different CPUs (the
    /// thread migrated) is retaken.
    #[cfg(target_arch = "x86_64")]
    pub fn take() -> Self {
        let mut sample = Self::take_once().0;
        for _ in 0..MIGRATION_RETRIES {
            let (s, same_cpu) = Self::take_once();
            sample = s;
            if same_cpu {
                break;
            }
        }
        sample
    }

    #[cfg(target_arch = "x86_64")]
    fn take_once() -> (Self, bool) {
        let (tsc_before, aux_before) = rdtscp();
        let clock = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC);
        let (tsc_after, aux_after) = rdtscp();
        // CLOCK_MONOTONIC cannot fail on Linux; a zero marks the impossible.
        let clock_ns = clock
            .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        let sample = Self {
            cpu: aux_after & 0xfff,
            tsc_before,
            clock_ns,
            tsc_after,
        };
        (sample, aux_before == aux_after)
    }

    /// The `count` narrowest of `tries` readings (smallest TSC window first).
    #[cfg(target_arch = "x86_64")]
    pub fn take_best(count: usize, tries: usize) -> Vec<Self> {
        let mut all: Vec<Self> = (0..tries.max(count)).map(|_| Self::take()).collect();
        all.sort_by_key(|s| s.tsc_after.wrapping_sub(s.tsc_before));
        all.truncate(count);
        all
    }

    pub(crate) fn put(&self, dst: &mut impl BufMut) {
        dst.put_u32_le(self.cpu);
        dst.put_u32_le(0);
        dst.put_u64_le(self.tsc_before);
        dst.put_u64_le(self.clock_ns);
        dst.put_u64_le(self.tsc_after);
    }

    pub(crate) fn get(r: &mut Reader) -> Result<Self, WireError> {
        let cpu = r.u32("sample cpu")?;
        r.reserved_u32("sample reserved")?;
        Ok(Self {
            cpu,
            tsc_before: r.u64("sample tsc_before")?,
            clock_ns: r.u64("sample clock_ns")?,
            tsc_after: r.u64("sample tsc_after")?,
        })
    }
}
