//! End-to-end figures for the offsets table, printed (not asserted):
//! - latency from an offset ioctl's return to the change reaching userspace
//!   (p50/p99/max over many changes, through the real ring buffer and monitor);
//! - the eBPF program's cost per invocation (BPF_ENABLE_STATS run time / count)
//!   and its verified instruction count.
//!
//! Needs root and /dev/kvm: `cargo bench -p tsc-userspace --bench offsets`.

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use tsc_userspace::{
    ebpf::LoadOptions,
    offsets::monitor::{Monitor, MonitorOptions},
    vmm::Vm,
};

const CHANGES: i64 = 5000;

fn main() {
    if !nix::unistd::Uid::effective().is_root() || !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("*** offsets bench SKIPPED: needs root and /dev/kvm ***");
        return;
    }
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let (tx, rx) = mpsc::channel::<(i64, Instant)>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let me = std::process::id();
    // The monitor runs on its own thread, as in a session.
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let options = MonitorOptions {
                load: LoadOptions {
                    pin_path: None,
                    ..LoadOptions::default()
                },
                ..MonitorOptions::default()
            };
            let mut monitor = Monitor::start(options).expect("monitor");
            ready_tx
                .send(monitor.programs().write_program_info().ok())
                .unwrap();
            loop {
                let events = monitor.next().await.expect("monitor");
                let now = Instant::now();
                for e in events.into_iter().filter(|e| e.pid == me) {
                    if tx.send((e.offset.unwrap_or_default(), now)).is_err() {
                        return;
                    }
                }
            }
        });
    });
    let info = ready_rx.recv().unwrap();
    let mut vm = Vm::new().expect("VM");
    vm.add_vcpu(0).expect("vCPU");
    let info = info.expect("program info");
    let id = info.id();
    drain(&rx, Duration::from_millis(200));

    let mut latencies = Vec::with_capacity(CHANGES as usize);
    for i in 1..=CHANGES {
        vm.vcpu(0).unwrap().set_tsc_offset(-i).expect("offset");
        let returned = Instant::now();
        loop {
            let (offset, arrived) = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("change never arrived");
            if offset == -i {
                latencies.push(arrived.saturating_duration_since(returned));
                break;
            }
        }
    }
    report_latency(&mut latencies);
    let after = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .expect("our program is still loaded");
    drop(stats);
    let runs = after.run_count() - info.run_count();
    let ns = (after.run_time() - info.run_time()).as_nanos() as u64;
    println!(
        "kvm_write_tsc_offset program: {runs} runs, {} ns per run (BPF_ENABLE_STATS), {} verified instructions",
        ns / runs.max(1),
        after
            .verified_instruction_count()
            .map_or("?".into(), |n| n.to_string()),
    );
}

fn drain(rx: &mpsc::Receiver<(i64, Instant)>, quiet: Duration) {
    while rx.recv_timeout(quiet).is_ok() {}
}

fn report_latency(latencies: &mut [Duration]) {
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "offset change -> userspace latency over {} changes: p50 {:?}, p99 {:?}, max {:?} (host: {} CPUs)",
        latencies.len(),
        pick(0.50),
        pick(0.99),
        latencies[latencies.len() - 1],
        thread::available_parallelism().map_or(0, |n| n.get()),
    );
}
