//! Pinning the calling thread, for tests whose events must land in one
//! CPU's ring buffer (or in a chosen one's).

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Runs `f` with the calling thread pinned to `cpu`, then gives the thread
/// back the CPUs it had.
pub fn on_cpu<T>(cpu: u32, f: impl FnOnce() -> T) -> T {
    let me = Pid::from_raw(0);
    let before = sched_getaffinity(me).expect("sched_getaffinity");
    let mut one = CpuSet::new();
    one.set(cpu as usize).expect("a CPU number within CpuSet");
    sched_setaffinity(me, &one).unwrap_or_else(|e| panic!("pinning to CPU {cpu}: {e}"));
    let result = f();
    sched_setaffinity(me, &before).expect("restoring the CPU mask");
    result
}
