//! `tsc-tracer host`: the live correlation session.

use std::{fs::File, io, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tsc_userspace::{
    flight::FlightRecorder,
    output::{
        self, ClockMode, FlushPolicy, OutputFormat, Rotating,
        rotate::{ByteSize, RotatePolicy},
    },
    record,
    session::{Session, SessionOptions, VmSpec},
    signal::Shutdown,
    tracefs::EventName,
    wire::Endpoint,
};

/// The port agents connect to when none is given.
pub const DEFAULT_PORT: u16 = 7170;
const DEFAULT_VSOCK_PORT: u32 = DEFAULT_PORT as u32;

/// Merge guest and host kernel traces into one timeline, live.
///
/// Loads the kernel programs that follow every vCPU's TSC offset, accepts
/// guest agents (`tsc-tracer agent --connect ...` inside each guest) on the
/// listeners, binds each to its VM (--vm, its vsock CID, or its TSC
/// readings), converts every guest timestamp with the offset in force when
/// the event happened, merges them with the host's own kvm events and writes
/// one timeline ordered by host time as events arrive. Stop with Ctrl-C.
#[derive(clap::Args)]
pub struct Args {
    /// Where agents connect: tcp:ADDR:PORT or vsock:PORT (repeatable).
    /// Default: tcp:127.0.0.1:7170 and vsock:7170.
    #[arg(long, value_name = "ENDPOINT")]
    listen: Vec<String>,
    /// Bind agents to this VM: its VMM's pid, and the name its events carry
    /// (repeatable; with several, each agent's --name picks its VM).
    #[arg(long, value_name = "PID[=NAME]")]
    vm: Vec<VmSpec>,
    /// Host events to trace, as SYSTEM:NAME,... (default: the kvm events of
    /// the bound VMs' threads).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    host_events: Option<Vec<EventName>>,
    /// Output format. `perfetto` writes a Perfetto trace (binary: give
    /// -o FILE) to open at ui.perfetto.dev; its timestamps are always host
    /// CLOCK_BOOTTIME nanoseconds, whatever --clock says. `none`: only the
    /// recording (with --record).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Timestamps in host nanoseconds (CLOCK_MONOTONIC) or host TSC ticks.
    #[arg(long, value_enum, default_value_t = ClockMode::Ns)]
    clock: ClockMode,
    /// Write the timeline here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Reorder window in milliseconds: how long an event waits for slower
    /// streams before it is written (later arrivals are flagged "late").
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    window_ms: u64,
    /// Milliseconds between reads of every host CPU's buffer, partly filled
    /// pages included. A guest event is written once every host CPU's
    /// watermark passed it, so this bounds the latency: for the lowest
    /// (about 2 ms), give 1 here and to the agents' --flush-ms.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    flush_ms: u64,
    /// Also record the session into DIR as trace.dat files for trace-cmd
    /// and KernelShark (docs/RECORDING.md). DIR must be new or empty.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Record into DIR even when it is not empty.
    #[arg(long, requires = "record")]
    force: bool,
    /// Cut -o FILE into pieces FILE.0001, FILE.0002, ... and --record DIR
    /// into DIR/0001/, DIR/0002/, ... once a piece reaches SIZE (512M,
    /// 64K: powers of 1024), each a whole file or recording of its own.
    #[arg(long, value_name = "SIZE")]
    rotate_size: Option<ByteSize>,
    /// Start a new piece when the current one is this old (1h, 30min).
    #[arg(long, value_name = "DURATION")]
    rotate_every: Option<humantime::Duration>,
    /// Pieces kept (the oldest are deleted; 0 keeps all). Default 10.
    #[arg(long, value_name = "N")]
    rotate_keep: Option<usize>,
    /// Flight recorder: keep the newest SIZE of trace pages in memory
    /// (512M, 64K) and write them out as a recording under --flight-dir
    /// on SIGUSR1 (`tsc-tracer dump`); the session goes on.
    #[arg(long, value_name = "SIZE")]
    flight_recorder: Option<ByteSize>,
    /// Where flight recorder dumps go, as flight-YYYYmmddTHHMMSSZ/.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_FLIGHT_DIR)]
    flight_dir: PathBuf,
    /// The offset journal.
    #[command(flatten)]
    journal: super::offsets::JournalArgs,
    /// Agents must prove this shared key (HMAC-SHA256 challenge-response;
    /// docs/PROTOCOL.md) on every listener, vsock included; give each agent
    /// the same file with its --key-file. At least 32 bytes, raw or hex,
    /// readable by its owner only (chmod 600). Required for a TCP listener
    /// on an address other than loopback.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Listen on a non-loopback TCP address without --key-file: every peer
    /// that reaches it can send this session guest traces.
    #[arg(long, conflicts_with = "key_file")]
    insecure: bool,
    /// Where to pin the offsets map for `tsc-tracer offsets` to read.
    #[arg(long, value_name = "PATH", default_value = tsc_userspace::ebpf::DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
    /// Also log the session's counters (agents, events in and out, late,
    /// lost) as a `status: key=value ...` line every SECS seconds, for
    /// long sessions whose stderr goes to a log (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    status_secs: u64,
}

/// Where flight recorder dumps go by default.
const DEFAULT_FLIGHT_DIR: &str = "/var/lib/tsc-tracer/flight";

/// `--format`: the live output's, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// `trace-cmd report`-like lines.
    Text,
    /// One JSON object per line.
    Json,
    /// A Perfetto trace (binary protobuf; use `-o FILE`).
    Perfetto,
    /// No live output (with --record).
    None,
}

/// Runs `tsc-tracer host`.
pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<ExitCode> {
    if args.format == Format::None && args.record.is_none() && args.flight_recorder.is_none() {
        anyhow::bail!("--format none writes nothing: it is for --record DIR or --flight-recorder");
    }
    let rotation = rotation(&args)?;
    if args.format == Format::Perfetto
        && args.output.is_none()
        && io::IsTerminal::is_terminal(&io::stdout())
    {
        anyhow::bail!("--format perfetto is binary: write it to a file with -o FILE");
    }
    // Refused before anything starts: a non-empty DIR is named at once.
    let recorder = match (&args.record, rotation) {
        (Some(dir), Some(policy)) => {
            Some(record::Recorder::create_rotating(dir, args.force, policy)?)
        }
        (Some(dir), None) => Some(record::Recorder::create(dir, args.force)?),
        (None, _) => None,
    };
    let record_pieces = recorder.as_ref().and_then(record::Recorder::pieces);
    let listen = listeners(&args.listen)?;
    let key = match &args.key_file {
        Some(path) => Some(Arc::new(tsc_userspace::auth::SharedKey::from_file(path)?)),
        None => None,
    };
    let ingest = tsc_userspace::ingest::IngestConfig {
        key,
        insecure: args.insecure,
        ..Default::default()
    };
    // Refused before the kernel programs load, with the reason.
    tsc_userspace::ingest::check_listeners(&listen, &ingest).await?;
    let options = SessionOptions {
        listen,
        vms: args.vm,
        host_events: args.host_events,
        window: Duration::from_millis(args.window_ms),
        host_flush: Duration::from_millis(args.flush_ms.max(1)),
        journal: args.journal.options(),
        ingest,
        load: tsc_userspace::ebpf::LoadOptions {
            pin_path: Some(args.pin_path.clone()),
            ..Default::default()
        },
        status_every: (args.status_secs > 0).then(|| Duration::from_secs(args.status_secs)),
        ..SessionOptions::default()
    };
    // Before the session says where agents connect: a signal sent once
    // that line is out must stop it.
    let signals = Shutdown::install();
    let mut session = Session::start(options)
        .await
        .context("starting the session")?;
    if let Some(recorder) = recorder {
        tracing::info!("recording into {}", recorder.dir().display());
        session.record_into(recorder);
    }
    if let Some(size) = args.flight_recorder {
        session.flight_recorder(FlightRecorder::new(size.0, &args.flight_dir));
        tracing::info!(
            "flight recorder: the newest {size} of trace in memory; `tsc-tracer dump` (or kill -USR1 {}) writes it under {}",
            std::process::id(),
            args.flight_dir.display()
        );
    }
    for addr in session.local_addrs() {
        tracing::info!(
            "agents connect with: tsc-agent --connect {} (or tsc-tracer agent)",
            agent_hint(addr)
        );
    }
    let mut writer = live_writer(args.format, args.output.as_deref(), args.clock, rotation)?;
    if let Some((signal, pieces)) = record_pieces {
        // Each piece's Perfetto trace: the events released while it is
        // the recording's current piece.
        let what = format!("{}/NNNN/{}", pieces.base().display(), record::PERFETTO_FILE);
        let path = move |n| pieces.path(n).join(record::PERFETTO_FILE);
        let copy = Rotating::following(
            signal,
            path,
            OutputFormat::Perfetto,
            args.clock,
            FlushPolicy::Batch,
        );
        writer = Box::new(output::Tee::new(writer, what, Box::new(copy)));
    } else if let Some(dir) = &args.record {
        // The recording's Perfetto trace: the same events as the live output.
        let path = dir.join(record::PERFETTO_FILE);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let copy = output::writer(OutputFormat::Perfetto, args.clock, FlushPolicy::Batch, file);
        writer = Box::new(output::Tee::new(writer, path.display().to_string(), copy));
    }
    let shutdown = async {
        match signals {
            Ok(signals) => {
                let signal = signals.recv().await;
                tracing::info!("{signal}: flushing and stopping");
            }
            Err(err) => tracing::warn!("waiting for signals: {err}; stopping"),
        }
    };
    let summary = session.run(writer.as_mut(), shutdown).await?;
    tracing::info!(
        "done: {} guest and {} host events; {} written in order, {} late, {} by window expiry; lost {} guest / {} host",
        summary.guest_events,
        summary.host_events,
        summary.emitted,
        summary.late,
        summary.forced,
        summary.guest_lost,
        summary.host_lost
    );
    Ok(ExitCode::SUCCESS)
}

/// `--rotate-*`: the policy, when asked for.
fn rotation(args: &Args) -> Result<Option<RotatePolicy>> {
    let every = args.rotate_every.map(std::time::Duration::from);
    let policy = RotatePolicy::new(args.rotate_size.map(|s| s.0), every, args.rotate_keep);
    match policy {
        None if args.rotate_keep.is_some() => {
            anyhow::bail!("--rotate-keep needs --rotate-size or --rotate-every")
        }
        Some(_) if args.output.is_none() && args.record.is_none() => {
            anyhow::bail!("--rotate-size and --rotate-every cut -o FILE or --record DIR: give one")
        }
        Some(p) if p.every == Some(std::time::Duration::ZERO) => {
            anyhow::bail!("--rotate-every must be longer than 0")
        }
        p => Ok(p),
    }
}

/// The live output: `--format` to -o FILE (in pieces with rotation) or
/// stdout.
fn live_writer(
    format: Format,
    output: Option<&std::path::Path>,
    clock: ClockMode,
    rotation: Option<RotatePolicy>,
) -> Result<Box<dyn output::EventWriter + Send>> {
    let format = match format {
        Format::Text => OutputFormat::Text,
        Format::Json => OutputFormat::Json,
        Format::Perfetto => OutputFormat::Perfetto,
        Format::None => return Ok(Box::new(output::Discard)),
    };
    let out: Box<dyn io::Write + Send> = match (output, rotation) {
        (Some(path), Some(policy)) => {
            let rotating = Rotating::new(path, policy, format, clock, FlushPolicy::Batch)
                .with_context(|| format!("listing the pieces of {}", path.display()))?;
            return Ok(Box::new(rotating));
        }
        (Some(path), None) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        (None, _) => Box::new(io::stdout()),
    };
    Ok(output::writer(format, clock, FlushPolicy::Batch, out))
}

/// `tcp:A:P` and `vsock:[CID:]P`; the defaults when none.
fn listeners(specs: &[String]) -> Result<Vec<Endpoint>> {
    if specs.is_empty() {
        return Ok(vec![
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: DEFAULT_PORT,
            },
            Endpoint::Vsock {
                cid: u32::MAX,
                port: DEFAULT_VSOCK_PORT,
            },
        ]);
    }
    specs
        .iter()
        .map(|s| {
            let spec = match s.strip_prefix("vsock:") {
                Some(port) if !port.contains(':') => format!("vsock:any:{port}"),
                _ => s.clone(),
            };
            spec.parse::<Endpoint>().map_err(anyhow::Error::from)
        })
        .collect()
}

fn agent_hint(addr: &tsc_userspace::ingest::SockAddr) -> String {
    match addr {
        tsc_userspace::ingest::SockAddr::Tcp(a) => format!("tcp:{}:{}", a.ip(), a.port()),
        tsc_userspace::ingest::SockAddr::Vsock { port, .. } => format!("vsock:2:{port}"),
    }
}
