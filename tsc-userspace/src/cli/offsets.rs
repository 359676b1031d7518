//! `tsc-tracer offsets`: the offset table, once or live.

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context, Result};
use tsc_userspace::{
    clock::{Clock, read_tsc},
    ebpf::{DEFAULT_PIN_PATH, LoadOptions},
    offsets::{
        EventKind, OffsetEvent,
        journal::{self, JournalOptions, LiveJournal},
        monitor::{Monitor, MonitorOptions},
    },
};

/// The offset journal's options, shared by `host` and `offsets --follow`.
#[derive(clap::Args, Clone, Debug)]
pub struct JournalArgs {
    /// Append every offset change and epoch boundary of every VM to this
    /// journal (rotated by size), and restore the epoch history of the VMs
    /// still running from it at start (`host`). `convert --journal` reads it.
    #[arg(long, value_name = "PATH", default_value = journal::DEFAULT_PATH)]
    pub journal: PathBuf,
    /// Do not journal offsets (nor restore from the journal).
    #[arg(long)]
    pub no_journal: bool,
    /// Size at which the journal rotates to PATH.1 (bytes, at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = journal::DEFAULT_MAX_FILE_BYTES)]
    pub journal_max_bytes: u64,
    /// Journal files kept, the one written included (at least 2): the
    /// journal never takes more than this many times --journal-max-bytes.
    #[arg(long, value_name = "N", default_value_t = journal::DEFAULT_KEEP_FILES)]
    pub journal_keep: u32,
}

impl JournalArgs {
    /// The journal to use, None when off.
    pub fn options(&self) -> Option<JournalOptions> {
        (!self.no_journal).then(|| JournalOptions {
            path: self.journal.clone(),
            max_file_bytes: self.journal_max_bytes,
            keep_files: self.journal_keep,
        })
    }
}

/// Show the TSC offset of every vCPU of every VM on this host.
///
/// Without --follow: prints the table and exits. With --follow: prints the
/// table, then every change as it happens (vCPUs created or hot-plugged,
/// offsets written by the guest or the VMM, VMs exiting) until SIGINT or
/// SIGTERM. OFFSET is what KVM was asked to set; EFFECTIVE is what the vCPU
/// holds (read back from debugfs) and is what guest timestamps are
/// converted with.
#[derive(clap::Args)]
pub struct Args {
    /// Keep running and print each change as it happens.
    #[arg(short, long)]
    follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Where to pin the kernel offsets map while following, so other
    /// processes can read it.
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "PATH")]
    pin_path: PathBuf,
    /// Changes kept per vCPU.
    #[arg(long, default_value_t = 64)]
    history: usize,
    /// With --follow: the offset journal.
    #[command(flatten)]
    journal: JournalArgs,
}

/// Runs `tsc-tracer offsets`.
pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<ExitCode> {
    let options = MonitorOptions {
        load: LoadOptions {
            pin_path: args.follow.then(|| args.pin_path.clone()),
            ..LoadOptions::default()
        },
        history: args.history,
        read_pinned: Some(args.pin_path.clone()),
        ..MonitorOptions::default()
    };
    let mut monitor = Monitor::start(options).context("starting the kernel side")?;
    let mut out = Printer {
        json: args.json,
        out: io::stdout().lock(),
    };
    let snapshot = monitor.map().snapshot();
    if !args.json {
        out.header(snapshot.is_empty())?;
    }
    for row in &snapshot {
        out.event(row)?;
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let journal = match args.journal.options() {
        Some(options) => {
            let clock = Clock::calibrate().context("calibrating the TSC clock for the journal")?;
            let mut journal =
                LiveJournal::open(Some(options)).context("opening the offset journal")?;
            journal.record(&snapshot, &clock, read_tsc());
            Some((journal, clock))
        }
        None => None,
    };
    if let Some(pin) = monitor.pin_path() {
        tracing::info!(
            "following offset changes (offsets map pinned at {}); Ctrl-C to stop",
            pin.display()
        );
    }
    follow(&mut monitor, &mut out, journal).await
}

async fn follow(
    monitor: &mut Monitor,
    out: &mut Printer<'_>,
    mut journal: Option<(LiveJournal, Clock)>,
) -> Result<ExitCode> {
    let shutdown = tsc_userspace::signal::shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            events = monitor.next() => {
                let events = events?;
                if let Some((journal, clock)) = journal.as_mut() {
                    journal.record(&events, clock, read_tsc());
                }
                for event in events {
                    if let Err(err) = out.event(&event) {
                        // A closed pipe (`| head`) is a normal way to stop.
                        if err.kind() == io::ErrorKind::BrokenPipe {
                            return Ok(ExitCode::SUCCESS);
                        }
                        return Err(err).context("writing to stdout");
                    }
                }
            }
            signal = &mut shutdown => {
                signal.context("installing the SIGINT/SIGTERM handlers")?;
                break;
            }
        }
    }
    let counters = monitor.counters()?;
    tracing::info!(
        "stopped: {} offset writes seen by the kernel program, {} records lost to a full ring buffer",
        counters.events,
        counters.ringbuf_full
    );
    Ok(ExitCode::SUCCESS)
}

struct Printer<'a> {
    json: bool,
    out: io::StdoutLock<'a>,
}

impl Printer<'_> {
    fn header(&mut self, empty: bool) -> io::Result<()> {
        if empty {
            writeln!(self.out, "# no VM with vCPUs on this host (yet)")?;
        }
        writeln!(
            self.out,
            "{:<8} {:<7} {:<16} {:>5} {:>21} {:>21} {:<17} {:>5} {:>7}",
            "EVENT", "PID", "COMM", "VCPU", "OFFSET", "EFFECTIVE", "RATIO/FRAC", "SEQ", "SOURCE"
        )?;
        self.out.flush()
    }

    fn event(&mut self, e: &OffsetEvent) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, e)?;
            writeln!(self.out)?;
        } else {
            writeln!(self.out, "{}", text(e))?;
        }
        self.out.flush()
    }
}

fn text(e: &OffsetEvent) -> String {
    let event = match e.event {
        EventKind::Snapshot => "snapshot",
        EventKind::Change => "change",
        EventKind::VcpuAdded => "added",
        EventKind::VmExit => "exit",
        EventKind::Entry => "entry",
    };
    let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    let scaling = match (e.ratio, e.frac_bits) {
        (Some(r), Some(f)) => format!("{r:#x}/{f}"),
        _ => "-".to_owned(),
    };
    let source = e.source.map_or("-".to_owned(), |s| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    });
    let applied = match (e.offset, e.effective_offset) {
        (Some(a), Some(b)) if a != b => " (not applied)",
        _ => "",
    };
    format!(
        "{:<8} {:<7} {:<16} {:>5} {:>21} {:>21} {:<17} {:>5} {:>7}{applied}",
        event,
        e.pid,
        e.comm,
        e.vcpu.map_or("-".to_owned(), |v| v.to_string()),
        opt(e.offset),
        opt(e.effective_offset),
        scaling,
        e.seq.map_or("-".to_owned(), |v| v.to_string()),
        source,
    )
}
