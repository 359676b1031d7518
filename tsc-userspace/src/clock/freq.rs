//! The TSC frequency as the kernel states it, where it does.

use std::{fs, io, path::Path, ptr::NonNull};

use super::ClockError;

/// Where the kernel exposes `tsc_khz` directly (not on every kernel).
const SYSFS_TSC_KHZ: &str = "/sys/devices/system/cpu/cpu0/tsc_freq_khz";

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreqSource {
    /// `/sys/devices/system/cpu/cpu0/tsc_freq_khz`.
    Sysfs,
    /// The perf mmap page's `time_mult`/`time_shift`: the kernel's
    /// `cyc2ns` scale, computed from its `tsc_khz`.
    PerfPage,
    /// Measured against `CLOCK_MONOTONIC_RAW` (the clocksource's nominal
    /// rate, no NTP) during calibration: neither of the above exists (as on
    /// a KVM guest whose `sched_clock` is kvm-clock).
    Measured,
    /// Given by the caller ([`Clock::fixed`](crate::clock::Clock::fixed)):
    /// a replay or a test.
    Given,
}

/// The TSC frequency in kHz as the kernel states it, if it does.
pub(super) fn stated_tsc_khz() -> Result<Option<(u64, FreqSource)>, ClockError> {
    if let Some(khz) = read_sysfs(Path::new(SYSFS_TSC_KHZ))? {
        return Ok(Some((khz, FreqSource::Sysfs)));
    }
    match perf_time_scale() {
        Ok(Some((mult, shift))) => Ok(Some((khz_from_cyc2ns(mult, shift)?, FreqSource::PerfPage))),
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::debug!("perf mmap page unavailable: {e}");
            Ok(None)
        }
    }
}

fn read_sysfs(path: &Path) -> Result<Option<u64>, ClockError> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ClockError::Malformed {
                what: path.display().to_string(),
                value: text.trim().to_owned(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClockError::Io {
            what: path.display().to_string(),
            source: e,
        }),
    }
}

/// The kernel sets `ns = cyc * mult >> shift` with `mult` rounded from
/// `(10^6 << shift) / tsc_khz`; inverting and rounding recovers `tsc_khz`
/// exactly while `mult` keeps more than ~30 significant bits (it does).
fn khz_from_cyc2ns(mult: u32, shift: u16) -> Result<u64, ClockError> {
    if mult == 0 || shift >= 64 {
        return Err(ClockError::Malformed {
            what: "perf mmap page time_mult/time_shift".into(),
            value: format!("{mult}/{shift}"),
        });
    }
    let num = 1_000_000u128 << shift;
    Ok(((num + mult as u128 / 2) / mult as u128) as u64)
}

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER0` (stable uapi).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    bp_addr: u64,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_DUMMY: u64 = 9;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const ATTR_DISABLED: u64 = 1;

/// Byte offsets in `struct perf_event_mmap_page` (stable uapi).
mod page {
    pub const LOCK: usize = 8;
    pub const CAPABILITIES: usize = 40;
    pub const TIME_SHIFT: usize = 50;
    pub const TIME_MULT: usize = 52;
    /// `cap_user_time` is bit 3 of `capabilities`.
    pub const CAP_USER_TIME: u64 = 1 << 3;
}

/// An mmapped perf page, unmapped and closed on drop.
struct PerfPage {
    base: NonNull<u8>,
    len: usize,
    _fd: std::os::fd::OwnedFd,
}

impl Drop for PerfPage {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl PerfPage {
    /// Opens a disabled dummy software event on this thread and maps its page.
    fn open() -> Result<Self, ClockError> {
        let attr = PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_DUMMY,
            flags: ATTR_DISABLED,
            ..Default::default()
        };
        // SAFETY: attr is a valid perf_event_attr of the size it declares.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                0,
                -1,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(perf_err("perf_event_open"));
        }
        // SAFETY: the syscall returned a new file descriptor we now own.
        let fd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        // SAFETY: sysconf has no preconditions.
        let len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: mapping the event's first page read-only, as perf allows.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(perf_err("mmap of the perf page"));
        }
        let base = NonNull::new(base.cast()).ok_or_else(|| perf_err("mmap"))?;
        Ok(Self { base, len, _fd: fd })
    }

    fn read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: offsets are inside the first page and aligned for T; the
        // kernel writes concurrently, hence volatile.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(offset).cast::<T>()) }
    }

    /// `(capabilities, time_mult, time_shift)` under the page's seqlock.
    fn time_scale(&self) -> (u64, u32, u16) {
        loop {
            let seq: u32 = self.read(page::LOCK);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let caps = self.read(page::CAPABILITIES);
            let mult = self.read(page::TIME_MULT);
            let shift = self.read(page::TIME_SHIFT);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            if self.read::<u32>(page::LOCK) == seq {
                return (caps, mult, shift);
            }
        }
    }
}

fn perf_err(what: &str) -> ClockError {
    ClockError::Io {
        what: what.to_owned(),
        source: io::Error::last_os_error(),
    }
}

/// The kernel's TSC-to-ns scale from the perf mmap page (the method
/// `trace-cmd --tsc2nsec` uses); `None` without `cap_user_time` (the
/// kernel's `sched_clock` is not the TSC).
fn perf_time_scale() -> Result<Option<(u32, u16)>, ClockError> {
    let page = PerfPage::open()?;
    let (caps, mult, shift) = page.time_scale();
    Ok((caps & page::CAP_USER_TIME != 0).then_some((mult, shift)))
}

/// The integration tests' privilege check: one definition for both.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tests/common/privilege.rs"]
mod privilege;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyc2ns_inverts_to_the_kernels_khz() {
        // What clocks_calc_mult_shift gives for 2596128 kHz with shift 32
        // would be (10^6 << 32) / 2596128 rounded.
        for khz in [2_596_128u64, 1_000_000, 3_999_999, 5_200_000] {
            for shift in [24u16, 28, 31, 32] {
                let mult = ((1_000_000u128 << shift) + khz as u128 / 2) / khz as u128;
                // The kernel picks the shift so that mult fits 32 bits.
                let Ok(mult) = u32::try_from(mult) else {
                    continue;
                };
                assert_eq!(khz_from_cyc2ns(mult, shift).unwrap(), khz, "{khz} {shift}");
            }
        }
        assert!(khz_from_cyc2ns(0, 32).is_err());
    }

    #[test]
    fn sysfs_value_is_parsed_and_absence_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tsc_freq_khz");
        assert!(read_sysfs(&path).unwrap().is_none());
        fs::write(&path, "2596128\n").unwrap();
        assert_eq!(read_sysfs(&path).unwrap(), Some(2_596_128));
        fs::write(&path, "fast\n").unwrap();
        assert!(read_sysfs(&path).is_err());
    }

    #[test]
    fn perf_page_opens_and_any_scale_is_plausible() {
        // perf_event_open needs privilege (perf_event_paranoid) unless root.
        if !privilege::root("perf_page_opens_and_any_scale_is_plausible") {
            return;
        }
        // Without cap_user_time (a guest on kvm-clock, like this project's
        // machines) there is no scale; with it, 100 MHz .. 10 GHz.
        if let Some((mult, shift)) = perf_time_scale().unwrap() {
            let khz = khz_from_cyc2ns(mult, shift).unwrap();
            assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
        }
    }
}
