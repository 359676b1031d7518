//! `tsc-tracer demo`: a real toy VM, its guest's `rdtsc` readings sent
//! through the real wire into a live session, and the merged timeline.

mod story;

use std::{
    io,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use tsc_userspace::{
    demo::{self, DemoAgent, Observer, Placements, Reading, ToyGuest},
    ingest::SockAddr,
    output::{self, ClockMode, FlushPolicy, OutputFormat},
    session::{Session, SessionOptions, VmSpec},
    signal::shutdown as shutdown_signal,
    tracefs::EventName,
    wire::Endpoint,
};

/// The name the toy VM's events carry.
const VM_NAME: &str = "toy-vm";
/// The host events shown: what the toy guest's exits fire (PVM fires
/// neither kvm_entry nor kvm_exit; `kvm_mmio` shows each stored reading).
const HOST_EVENTS: [&str; 3] = [
    "kvm:kvm_write_tsc_offset",
    "kvm:kvm_mmio",
    "kvm:kvm_userspace_exit",
];
/// Time the session's offsets monitor gets to see the new offsets before
/// the first reading arrives (it reads each back from debugfs).
const SETTLE: Duration = Duration::from_millis(500);
/// Time the session gets, once the agent is in, to start tracing the VM's
/// threads on the host (so the offset changes show in the timeline).
const FOLLOW: Duration = Duration::from_millis(300);
/// Longest wait for the last readings to come out of the merge window.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// See it work in seconds: a real toy VM's TSC readings and the host's kvm events on one timeline.
///
/// Starts a real (tiny) VM on /dev/kvm in this process, asks KVM for a TSC
/// offset on each of its vCPUs, and runs a guest program that reads the
/// TSC (`rdtsc`) and reports each reading to the host. A demo agent sends
/// the readings, as `tsc_demo:rdtsc` trace events stamped with the guest's
/// own TSC, through the real agent protocol into a live `tsc-tracer host`
/// session in this process. The session converts each guest timestamp to
/// host time with the offset of its vCPU, merges it with the host kernel's
/// kvm events of the VM, and prints one timeline.
///
/// Read the timeline like `trace-cmd report`: `toy-vm:` lines are the
/// guest's, `host:` lines the host kernel's; each guest reading is followed
/// by the host's `kvm:kvm_mmio` whose `val` is the same number (the host
/// trapping the guest's store of it). Afterwards the demo checks every
/// reading against the host's rdtsc taken just before and after the
/// KVM_RUN that produced it, and explains what you saw.
///
/// The timeline goes to stdout, the story around it to stderr. Exit status
/// 0 when every reading came out once, at the right host time. Needs root
/// (eBPF, tracefs); `tsc-tracer doctor` says what is missing.
#[derive(clap::Args)]
pub struct Args {
    /// How long the guest keeps taking readings.
    #[arg(long, default_value_t = 3, value_name = "N")]
    seconds: u64,
    /// Timeline format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Timestamps in host nanoseconds (CLOCK_MONOTONIC) or host TSC ticks.
    #[arg(long, value_enum, default_value_t = ClockMode::Ns)]
    clock: ClockMode,
    /// The TSC offset asked for vCPU 0; vCPU n gets n+1 times it.
    #[arg(long, default_value_t = -123_456_789, allow_hyphen_values = true, value_name = "TICKS")]
    offset: i64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=4))]
    vcpus: u32,
    /// Readings each vCPU takes per round (each one is a KVM_RUN).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    readings: u64,
    /// Pause between rounds, in milliseconds.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    interval_ms: u64,
}

/// Runs `tsc-tracer demo`.
pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

/// One vCPU's offset: asked for, and what KVM reads back.
#[derive(Clone, Copy, Debug)]
pub struct Offset {
    vcpu: u32,
    asked: i64,
    readback: i64,
}

/// What the guest side did.
struct Driven {
    readings: Vec<Reading>,
    offsets: Vec<Offset>,
    /// Stopped by a signal before the end.
    interrupted: bool,
    // Kept alive until the session has ended, so the VM outlives its events.
    _guest: ToyGuest,
}

async fn run_async(args: Args) -> Result<ExitCode> {
    let ids: Vec<u32> = (0..args.vcpus).collect();
    let guest = ToyGuest::new(&ids).context("creating the toy VM on /dev/kvm")?;
    let pid = std::process::id();
    let session = Session::start(session_options(pid)?)
        .await
        .context("starting the session (`tsc-tracer doctor` says what this host lacks)")?;
    let endpoint = tcp_endpoint(session.local_addrs())?;
    let tsc_khz = session.clock().tsc_khz();
    story::intro(pid, args.vcpus, &endpoint, &HOST_EVENTS);
    let placements = Placements::default();
    let timeline = output::writer(args.format, args.clock, FlushPolicy::Batch, io::stdout());
    let mut writer = Observer::new(timeline, placements.clone());
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    let signals = tokio::spawn(async move {
        if shutdown_signal().await.is_ok() {
            on_signal.cancel();
        }
    });
    let session_done = stop.clone();
    let session_stop = stop.clone().cancelled_owned();
    let (summary, driven) = tokio::join!(
        async {
            let summary = session.run(&mut writer, session_stop).await;
            // The session can end on its own (stdout closed): stop the guest.
            session_done.cancel();
            summary
        },
        drive(guest, &endpoint, &args, &placements, stop)
    );
    signals.abort();
    let summary = summary.context("running the session")?;
    if summary.output_closed {
        return Ok(ExitCode::SUCCESS);
    }
    let driven = driven?;
    let verdict = story::Verdict::new(
        &driven.readings,
        &placements.snapshot(),
        &driven.offsets,
        driven.interrupted,
    );
    story::outro(&verdict, &summary, &driven.offsets, tsc_khz);
    Ok(if verdict.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn session_options(pid: u32) -> Result<SessionOptions> {
    let host_events = HOST_EVENTS
        .iter()
        .map(|e| e.parse::<EventName>())
        .collect::<Result<Vec<_>, _>>()
        .context("the demo's host events")?;
    Ok(SessionOptions {
        listen: vec![Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        }],
        vms: vec![VmSpec {
            pid,
            name: Some(VM_NAME.into()),
        }],
        host_events: Some(host_events),
        host_events_vm_only: true,
        status_line: false,
        window: Duration::from_millis(500),
        ..SessionOptions::default()
    })
}

fn tcp_endpoint(addrs: &[SockAddr]) -> Result<Endpoint> {
    addrs
        .iter()
        .find_map(|addr| match addr {
            SockAddr::Tcp(a) => Some(Endpoint::Tcp {
                host: a.ip().to_string(),
                port: a.port(),
            }),
            SockAddr::Vsock { .. } => None,
        })
        .context("the session has no TCP listener")
}

/// The guest side: connect, set offsets, take readings for a while, send
/// them, wait until they are all out, then stop the session.
async fn drive(
    guest: ToyGuest,
    endpoint: &Endpoint,
    args: &Args,
    placements: &Placements,
    stop: CancellationToken,
) -> Result<Driven> {
    let result = drive_guest(guest, endpoint, args, placements, &stop).await;
    stop.cancel();
    result
}

async fn drive_guest(
    mut guest: ToyGuest,
    endpoint: &Endpoint,
    args: &Args,
    placements: &Placements,
    stop: &CancellationToken,
) -> Result<Driven> {
    let hello = demo::hello(VM_NAME, guest.vcpus());
    let mut agent = DemoAgent::connect(endpoint, hello)
        .await
        .context("the demo agent connecting to the session")?;
    tokio::time::sleep(FOLLOW).await;
    let mut offsets = Vec::new();
    for (k, &vcpu) in (1i64..).zip(guest.vcpus().to_vec().iter()) {
        let asked = args.offset.saturating_mul(k);
        let readback = guest
            .set_offset(vcpu, asked)
            .with_context(|| format!("setting vCPU {vcpu}'s TSC offset"))?;
        offsets.push(Offset {
            vcpu,
            asked,
            readback,
        });
    }
    story::offsets(&offsets);
    story::timeline_header();
    tokio::time::sleep(SETTLE).await;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut readings = Vec::new();
    while Instant::now() < deadline && !stop.is_cancelled() {
        let per_vcpu = args.readings;
        let (back, round) = tokio::task::spawn_blocking(move || {
            let round = guest.run(per_vcpu);
            (guest, round)
        })
        .await
        .context("the guest's thread")?;
        guest = back;
        let round = round.context("running the guest")?;
        agent.send(&round).await.context("sending readings")?;
        readings.extend(round);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
            () = stop.cancelled() => {}
        }
    }
    let interrupted = stop.is_cancelled();
    if interrupted {
        // The session is already flushing; what is in flight is not waited for.
        drop(agent);
    } else {
        agent.bye().await.context("the demo agent's Bye")?;
    }
    if !interrupted && !placements.wait_for(readings.len(), DRAIN_LIMIT).await {
        tracing::warn!(
            "only {} of {} readings came out within {DRAIN_LIMIT:?}",
            placements.count(),
            readings.len()
        );
    }
    Ok(Driven {
        readings,
        offsets,
        interrupted,
        _guest: guest,
    })
}
