//! Paired (TSC, CLOCK_MONOTONIC) readings: what lets the host tie a guest's
//! TSC to its own and to the guest's clock.

use bytes::BufMut;

use super::{WireError, read::Reader};

/// One paired reading: `clock_ns` was read between `tsc_before` and
/// `tsc_after`, all on guest CPU `cpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscSample {
    /// CPU the three readings were taken on (from `rdtscp`'s TSC_AUX, or
    /// from getcpu on a CPU without RDTSCP; see [`TscMethod`]).
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

/// The CPU number of a sample whose CPU could not be read (no CPU has it).
pub const UNKNOWN_CPU: u32 = u32::MAX;

/// Reads this CPU's time stamp counter.
#[cfg(target_arch = "x86_64")]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64 and touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// How a sample reads the TSC and learns which CPU it was read on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscMethod {
    /// `rdtscp`: the TSC and TSC_AUX in one instruction. Linux writes
    /// `node << 12 | cpu` to TSC_AUX (`setup_getcpu()` in
    /// arch/x86/kernel/cpu/common.c, `vdso_encode_cpunode()` in
    /// arch/x86/include/asm/segment.h).
    Rdtscp,
    /// `lfence; rdtsc; lfence`, with the CPU from getcpu before and after:
    /// for CPUs without RDTSCP, such as QEMU's `qemu64` and `kvm64` models,
    /// where `rdtscp` raises #UD (SIGILL).
    Rdtsc,
}

#[cfg(target_arch = "x86_64")]
impl TscMethod {
    /// The method for this CPU: [`TscMethod::Rdtscp`] where CPUID says it
    /// has the instruction. CPUID is asked once per process.
    pub fn detect() -> Self {
        static METHOD: std::sync::OnceLock<TscMethod> = std::sync::OnceLock::new();
        *METHOD.get_or_init(|| {
            if cpu_has_rdtscp() {
                Self::Rdtscp
            } else {
                Self::Rdtsc
            }
        })
    }
}

/// CPUID leaf 0x8000_0001, EDX bit 27: RDTSCP (Intel SDM vol. 2A, CPUID;
/// the kernel's `X86_FEATURE_RDTSCP`, word 1 bit 27 in
/// arch/x86/include/asm/cpufeatures.h).
#[cfg(target_arch = "x86_64")]
pub fn cpu_has_rdtscp() -> bool {
    use core::arch::x86_64::__cpuid;
    const EXT_FEATURES: u32 = 0x8000_0001;
    const RDTSCP_BIT: u32 = 1 << 27;
    // Leaf 0x8000_0000 reports the highest extended leaf: checked first.
    let max_ext = __cpuid(0x8000_0000).eax;
    max_ext >= EXT_FEATURES && __cpuid(EXT_FEATURES).edx & RDTSCP_BIT != 0
}

#[cfg(target_arch = "x86_64")]
fn rdtscp() -> (u64, u32) {
    let mut aux = 0u32;
    // SAFETY: only reached with TscMethod::Rdtscp where CPUID confirmed it
    // (`take_with`); rdtscp writes only `aux`, a valid local.
    let tsc = unsafe { core::arch::x86_64::__rdtscp(&mut aux) };
    (tsc, aux)
}

/// `rdtsc` that neither starts before earlier instructions finish nor lets
/// later ones start before it (the fences `rdtscp` has on one side).
#[cfg(target_arch = "x86_64")]
fn rdtsc_fenced() -> u64 {
    use core::arch::x86_64::_mm_lfence;
    // SAFETY: lfence (SSE2, part of x86_64) and rdtsc have no preconditions
    // and touch no memory.
    unsafe {
        _mm_lfence();
        let tsc = core::arch::x86_64::_rdtsc();
        _mm_lfence();
        tsc
    }
}

/// The CPU this thread runs on (`sched_getcpu`, the vDSO's getcpu).
fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory we own.
    u32::try_from(unsafe { libc::sched_getcpu() }).ok()
}

fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; a zero marks the impossible.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl TscSample {
    /// Takes one reading with this CPU's [`TscMethod`]. A reading whose two
    /// TSC reads came from different CPUs (the thread migrated) is retaken.
    #[cfg(target_arch = "x86_64")]
    pub fn take() -> Self {
        Self::take_with(TscMethod::detect())
    }

    /// Takes one reading with `method`; [`TscMethod::Rdtscp`] on a CPU
    /// without the instruction (where it would raise SIGILL) reads with
    /// [`TscMethod::Rdtsc`] instead.
    #[cfg(target_arch = "x86_64")]
    pub fn take_with(method: TscMethod) -> Self {
        let method = match (method, TscMethod::detect()) {
            (TscMethod::Rdtscp, TscMethod::Rdtsc) => TscMethod::Rdtsc,
            _ => method,
        };
        let mut sample = Self::take_once(method).0;
        for _ in 0..MIGRATION_RETRIES {
            let (s, same_cpu) = Self::take_once(method);
            sample = s;
            if same_cpu {
                break;
            }
        }
        sample
    }

    #[cfg(target_arch = "x86_64")]
    fn take_once(method: TscMethod) -> (Self, bool) {
        match method {
            TscMethod::Rdtscp => {
                let (tsc_before, aux_before) = rdtscp();
                let clock_ns = monotonic_ns();
                let (tsc_after, aux_after) = rdtscp();
                let sample = Self {
                    cpu: aux_after & 0xfff,
                    tsc_before,
                    clock_ns,
                    tsc_after,
                };
                (sample, aux_before == aux_after)
            }
            TscMethod::Rdtsc => {
                let cpu_before = current_cpu();
                let tsc_before = rdtsc_fenced();
                let clock_ns = monotonic_ns();
                let tsc_after = rdtsc_fenced();
                let cpu_after = current_cpu();
                let sample = Self {
                    cpu: cpu_after.unwrap_or(UNKNOWN_CPU),
                    tsc_before,
                    clock_ns,
                    tsc_after,
                };
                (sample, cpu_after.is_some() && cpu_before == cpu_after)
            }
        }
    }

    /// The `count` narrowest of `tries` readings (smallest TSC window first).
    #[cfg(target_arch = "x86_64")]
    pub fn take_best(count: usize, tries: usize) -> Vec<Self> {
        let method = TscMethod::detect();
        let mut all: Vec<Self> = (0..tries.max(count))
            .map(|_| Self::take_with(method))
            .collect();
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The methods this CPU can run (`rdtscp` raises SIGILL where CPUID
    /// says it is missing).
    fn methods() -> Vec<TscMethod> {
        let mut methods = vec![TscMethod::Rdtsc];
        if cpu_has_rdtscp() {
            methods.push(TscMethod::Rdtscp);
        }
        methods
    }

    fn cpuinfo_flags() -> Vec<String> {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("flags"))
            .expect("a flags line");
        let flags = line.split_once(':').unwrap().1;
        flags.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn cpuid_agrees_with_the_kernels_rdtscp_flag() {
        let flags = cpuinfo_flags();
        assert!(flags.iter().any(|f| f == "tsc"), "{flags:?}");
        let kernel = flags.iter().any(|f| f == "rdtscp");
        assert_eq!(cpu_has_rdtscp(), kernel, "CPUID vs /proc/cpuinfo");
        let expected = if kernel {
            TscMethod::Rdtscp
        } else {
            TscMethod::Rdtsc
        };
        assert_eq!(TscMethod::detect(), expected);
    }

    #[test]
    fn both_methods_read_monotonic_brackets() {
        for method in methods() {
            let mut last: Option<TscSample> = None;
            for _ in 0..1000 {
                let s = TscSample::take_with(method);
                assert!(s.tsc_before < s.tsc_after, "{method:?}: {s:?}");
                assert!(s.clock_ns > 0, "{method:?}: {s:?}");
                if let Some(prev) = last {
                    // One thread, one after the other: every reading is later.
                    assert!(s.tsc_before > prev.tsc_after, "{method:?}: {prev:?} {s:?}");
                    assert!(s.clock_ns >= prev.clock_ns, "{method:?}: {prev:?} {s:?}");
                }
                last = Some(s);
            }
        }
    }

    /// CPUs this thread may run on.
    fn allowed_cpus() -> Vec<usize> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the call writes
        // at most size_of::<cpu_set_t>() bytes into it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    fn pin_to(cpu: usize) {
        // SAFETY: as above; pid 0 is the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_setaffinity(0, size, &set), 0, "pin to {cpu}");
        }
    }

    #[test]
    fn both_methods_name_the_cpu_the_thread_runs_on() {
        // A thread of its own: the pinning dies with it.
        std::thread::spawn(|| {
            let cpus = allowed_cpus();
            assert!(!cpus.is_empty());
            for &cpu in &cpus {
                pin_to(cpu);
                for method in methods() {
                    let s = TscSample::take_with(method);
                    assert_eq!(s.cpu as usize, cpu, "{method:?}: {s:?}");
                }
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn take_and_take_best_name_the_cpu_too() {
        std::thread::spawn(|| {
            let cpu = *allowed_cpus().last().unwrap();
            pin_to(cpu);
            assert_eq!(TscSample::take().cpu as usize, cpu);
            for s in TscSample::take_best(4, 16) {
                assert_eq!(s.cpu as usize, cpu, "{s:?}");
            }
        })
        .join()
        .unwrap();
    }
}
