//! Giving the heap the session freed back to the kernel, so that a session
//! that runs for days keeps the memory it uses, not the most it ever used.
//!
//! Why: under heaptrack, a 6-minute soak (`benches/soak`: 20k events/s,
//! VM and agent churn) showed the session's live heap flat at about 3 MB
//! after start (19 MB at its peak while loading BTF and the eBPF
//! programs), yet over a 30-minute soak its RSS grew by 7.4 MB: glibc's
//! malloc keeps what the session's threads free in its per-thread arenas.
//! `malloc_trim(0)` hands the free pages of every arena back
//! (`madvise(MADV_DONTNEED)`), so RSS follows the live heap.

use std::time::{Duration, Instant};

/// How often a running session trims. A trim walks the free lists of a
/// few-MB heap: well under a millisecond.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// When the heap was last trimmed.
#[derive(Debug)]
pub(super) struct Trimmer {
    last: Instant,
}

impl Trimmer {
    /// Trims now (what starting the session freed) and starts the clock.
    pub(super) fn new() -> Self {
        trim();
        Self {
            last: Instant::now(),
        }
    }

    /// Trims when [`TRIM_EVERY`] has passed since the last time.
    pub(super) fn maybe_trim(&mut self) {
        if self.last.elapsed() >= TRIM_EVERY {
            self.last = Instant::now();
            trim();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas and returns whole
    // free pages; 0 asks it to keep no padding at the top of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries (musl) return memory on their own or have no trim.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
