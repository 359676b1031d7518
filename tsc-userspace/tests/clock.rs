//! The TSC clock against the kernel's own clocks: one syscall event recorded
//! by three private tracefs instances enabled in this order: `x86-tsc`,
//! `mono`, `x86-tsc`. Tracepoint probes run in registration order, so the
//! kernel reads the TSC, then MONOTONIC, then the TSC again for each event:
//! the converted TSC pair brackets the kernel's MONOTONIC reading. The same
//! with the `boot` trace clock measures the CLOCK_BOOTTIME conversion.
mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use tsc_userspace::clock::{Clock, Sample, sample_boottime, sample_monotonic};

const TRACEFS: &str = "/sys/kernel/tracing/instances";
const EVENT: &str = "events/syscalls/sys_enter_getppid";

/// Private tracefs instances, removed on drop (also on panic).
struct Instances {
    paths: Vec<PathBuf>,
}

impl Instances {
    /// One instance per clock, recording `getppid` calls, in raw format
    /// (nanosecond timestamps for `mono`), enabled in the given order. No
    /// filter: a filter moves the timestamp after its evaluation.
    fn new(clocks: &[&str]) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let mut instances = Self { paths: Vec::new() };
        for clock in clocks {
            let name = format!(
                "tsc-clock-test-{}-{}-{clock}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let path = Path::new(TRACEFS).join(name);
            fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
            instances.paths.push(path.clone());
            write(&path.join("trace_clock"), clock);
            write(&path.join("options/raw"), "1");
        }
        for path in &instances.paths {
            write(&path.join(EVENT).join("enable"), "1");
        }
        instances
    }

    /// Stops recording and returns each instance's timestamps.
    fn finish(&self) -> Vec<Vec<u64>> {
        for path in &self.paths {
            write(&path.join(EVENT).join("enable"), "0");
        }
        self.paths
            .iter()
            .map(|p| timestamps(&p.join("trace")))
            .collect()
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = fs::write(path.join(EVENT).join("enable"), "0");
            common::remove_instance_dir(path);
        }
    }
}

fn write(path: &Path, value: &str) {
    fs::write(path, value)
        .unwrap_or_else(|e| panic!("writing {value:?} to {}: {e}", path.display()));
}

/// This thread's events from raw format lines: `PID CPU TS type: ...`.
fn timestamps(trace: &Path) -> Vec<u64> {
    let tid = nix::unistd::gettid().as_raw().to_string();
    let text = fs::read_to_string(trace).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == tid).then_some(())?;
            words.nth(1)?.parse().ok()
        })
        .collect()
}

/// Errors of one run, in ns.
#[derive(Default)]
struct Errors {
    /// Kernel side: how far the `mono` timestamp fell outside the converted
    /// `x86-tsc` bracket (0 inside).
    outside: Vec<i64>,
    /// Kernel side: `mono` minus the middle of the converted bracket.
    mid: Vec<i64>,
    /// Kernel side: width of the converted bracket.
    width: Vec<i64>,
    /// vDSO side: `tsc_to_ns` of a fresh tight sample minus its MONOTONIC.
    vdso: Vec<i64>,
}

const BURST: usize = 4;

/// The kernel clock a run measures the conversion to.
#[derive(Clone, Copy)]
enum Target {
    /// `mono` / `CLOCK_MONOTONIC` / [`Clock::tsc_to_ns`].
    Mono,
    /// `boot` / `CLOCK_BOOTTIME` / [`Clock::tsc_to_boottime_ns`].
    Boot,
}

impl Target {
    fn trace_clock(self) -> &'static str {
        match self {
            Self::Mono => "mono",
            Self::Boot => "boot",
        }
    }

    fn convert(self, clock: &Clock, tsc: u64) -> u64 {
        match self {
            Self::Mono => clock.tsc_to_ns(tsc),
            Self::Boot => clock.tsc_to_boottime_ns(tsc),
        }
    }

    fn sample(self) -> Sample {
        match self {
            Self::Mono => sample_monotonic(16).unwrap(),
            Self::Boot => sample_boottime(16).unwrap(),
        }
    }
}

/// Makes `events` bursts of getppid calls `gap` apart, refreshing the clock
/// every `refresh` (if any). Each event's TSCs are converted with the clock
/// as it was when the event happened (as a live tracer would). Only the last
/// call of each burst counts: the first ones run cold and slow.
fn measure(target: Target, events: usize, gap: Duration, refresh: Option<Duration>) -> Errors {
    let mut clock = Clock::calibrate().unwrap();
    let instances = Instances::new(&["x86-tsc", target.trace_clock(), "x86-tsc"]);
    let mut clocks = Vec::with_capacity(events);
    let mut errors = Errors::default();
    let mut refreshed = Instant::now();
    for _ in 0..events {
        if refresh.is_some_and(|r| refreshed.elapsed() >= r) {
            clock.refresh().unwrap();
            refreshed = Instant::now();
        }
        for _ in 0..BURST {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        clocks.push(clock);
        let s = target.sample();
        errors
            .vdso
            .push(target.convert(&clock, s.tsc) as i64 - s.ns as i64);
        // The spacing is what is measured (drift between refreshes), not
        // a wait for anything.
        std::thread::sleep(gap);
    }
    let recorded = instances.finish();
    drop(instances);
    let [before, mono, after] = &recorded[..] else {
        unreachable!()
    };
    let n = BURST * events;
    assert_eq!(
        (before.len(), mono.len(), after.len()),
        (n, n, n),
        "every instance must see every event"
    );
    for (k, clock) in clocks.iter().enumerate() {
        let last = BURST * k + BURST - 1;
        let lo = target.convert(clock, before[last]) as i64;
        let hi = target.convert(clock, after[last]) as i64;
        let m = mono[last] as i64;
        errors.outside.push(if m < lo {
            m - lo
        } else if m > hi {
            m - hi
        } else {
            0
        });
        errors.mid.push(m - (lo + hi) / 2);
        errors.width.push(hi - lo);
    }
    errors
}

fn abs_percentile(values: &[i64], p: f64) -> i64 {
    let mut sorted: Vec<i64> = values.iter().map(|v| v.abs()).collect();
    sorted.sort_unstable();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(values: &[i64]) -> i64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

fn report(name: &str, errors: &Errors) {
    for (what, v) in [
        (
            "kernel: |clock outside converted x86-tsc bracket|",
            &errors.outside,
        ),
        ("kernel: clock - bracket middle", &errors.mid),
        ("kernel: bracket width", &errors.width),
        ("vDSO: converted - clock_gettime", &errors.vdso),
    ] {
        println!(
            "{name}: {what}: median {} ns, |p50| {} ns, |p99| {} ns, |max| {} ns (n = {})",
            median(v),
            abs_percentile(v, 0.5),
            abs_percentile(v, 0.99),
            abs_percentile(v, 1.0),
            v.len()
        );
    }
}

#[test]
fn tsc_to_ns_matches_the_kernels_mono_trace_clock() {
    if !common::privileged("tsc_to_ns_matches_the_kernels_mono_trace_clock") {
        return;
    }
    let errors = measure(
        Target::Mono,
        1000,
        Duration::from_millis(1),
        Some(Duration::from_millis(250)),
    );
    report("1 s, refresh every 250 ms", &errors);
    // The kernel's MONOTONIC reading lies inside the converted bracket.
    assert!(abs_percentile(&errors.outside, 0.5) == 0, "median outside");
    assert!(
        abs_percentile(&errors.outside, 1.0) < 1_000,
        "max error >= 1 us"
    );
    assert!(
        abs_percentile(&errors.vdso, 0.5) < 100,
        "vDSO median error >= 100 ns"
    );
    assert!(
        abs_percentile(&errors.vdso, 1.0) < 1_000,
        "vDSO max error >= 1 us"
    );
}

#[test]
fn refresh_keeps_the_error_bounded() {
    if !common::privileged("refresh_keeps_the_error_bounded") {
        return;
    }
    let gap = Duration::from_millis(10);
    let errors = measure(Target::Mono, 400, gap, Some(Duration::from_millis(500)));
    report("4 s, refresh every 500 ms", &errors);
    let unrefreshed = measure(Target::Mono, 400, gap, None);
    report("4 s, never refreshed", &unrefreshed);
    // The last second of a 4 s run is as good as the first.
    for v in [&errors.outside[300..], &errors.vdso[300..]] {
        assert!(
            abs_percentile(v, 1.0) < 1_000,
            "max error in the last second >= 1 us"
        );
    }
    assert!(
        abs_percentile(&errors.vdso[300..], 0.5) < 100,
        "median error in the last second >= 100 ns"
    );
}

#[test]
fn tsc_to_boottime_ns_matches_the_kernels_boot_trace_clock() {
    if !common::privileged("tsc_to_boottime_ns_matches_the_kernels_boot_trace_clock") {
        return;
    }
    let errors = measure(
        Target::Boot,
        1000,
        Duration::from_millis(1),
        Some(Duration::from_millis(250)),
    );
    report("BOOTTIME, 1 s, refresh every 250 ms", &errors);
    // The kernel's BOOTTIME reading lies inside the converted bracket.
    assert!(abs_percentile(&errors.outside, 0.5) == 0, "median outside");
    assert!(
        abs_percentile(&errors.outside, 1.0) < 1_000,
        "max error >= 1 us"
    );
    assert!(
        abs_percentile(&errors.vdso, 0.5) < 100,
        "vDSO median error >= 100 ns"
    );
    assert!(
        abs_percentile(&errors.vdso, 1.0) < 1_000,
        "vDSO max error >= 1 us"
    );
}
