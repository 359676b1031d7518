//! Soak and churn: the real session for a chosen time at 20k guest
//! events/s while VMs come and go, vCPUs are hot-plugged, offsets change,
//! agents are replaced and their connections cut, and hostile peers
//! connect every second. Prints a row a minute and a verdict (see
//! `soak.rs` for what runs and what is measured).
//!
//! Needs root (tracefs, eBPF, /dev/kvm); prints a loud SKIPPED without it.
//! Run: `cargo bench -p tsc-userspace --bench soak -- --minutes 30`
//! (`--rate N` markers/s, default 20000; `--sample-secs N`, default 60;
//! `--keep` keeps the logs).
//!
//! Where memory goes: `SOAK_HEAPTRACK=FILE` runs the session under
//! heaptrack's preload library, writing its raw data to FILE; then
//! `/usr/lib/heaptrack/libexec/heaptrack_interpret < FILE | gzip > h.gz`
//! and `heaptrack_print -f h.gz` (`-M massif.out` for the heap over time).

#[path = "soak.rs"]
mod soak;

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("\n*** soak: SKIPPED: needs root (tracefs, eBPF, /dev/kvm) ***\n");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{flag} {v}: a number"))
            })
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = soak::Config::minutes(value("--minutes").unwrap_or(30), dir.path().into());
    if let Some(rate) = value("--rate") {
        config.rate = rate;
    }
    if let Some(secs) = value("--sample-secs") {
        config.sample_every = std::time::Duration::from_secs(secs);
    }
    println!(
        "soak: {} min at {} markers/s; logs in {}; load average {}",
        config.duration.as_secs() / 60,
        config.rate,
        dir.path().display(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("{}", soak::report::header());
    let outcome = soak::run(&config, |s| println!("{}", soak::report::row(s)));
    println!("{}", soak::report::summary(&outcome));
    println!(
        "load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let growth = soak::report::rss_growth_kb(&outcome);
    let exactly_once = outcome.duplicates == 0
        && outcome.phantoms == 0
        && soak::report::unexplained(&outcome) == 0;
    let flat = outcome.start.session.fds == outcome.end.session.fds
        && outcome.start.instances == outcome.end.instances
        && outcome.instances_left == 0
        && outcome.pins_left == 0;
    println!(
        "goal: RSS growth <= 2 MB: {}; fds and instances flat: {}; every good event out exactly once: {}",
        if growth <= 2048 { "yes" } else { "NO" },
        if flat { "yes" } else { "NO" },
        if exactly_once { "yes" } else { "NO" }
    );
    if args.iter().any(|a| a == "--keep") {
        println!("logs kept in {}", dir.keep().display());
    }
}
