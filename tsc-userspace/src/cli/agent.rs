//! `tsc-tracer agent` and `tsc-agent`: the guest side of a session.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use tracing::{info, warn};
use tsc_userspace::{
    agent::{self, Agent, AgentConfig, DEFAULT_EVENTS, RETRY_FOREVER},
    auth::SharedKey,
    tracefs::{self, EventName},
    wire::Endpoint,
};

/// Options of `tsc-tracer agent`.
#[derive(clap::Args)]
pub struct Args {
    /// The host to send to: tcp:HOST:PORT or vsock:CID:PORT (the host is CID 2).
    #[arg(long, value_name = "ADDR")]
    connect: Endpoint,
    /// Events to trace, SYSTEM:NAME, comma-separated. `ftrace:print`
    /// (`trace_marker` writes) is always recorded, listed or not.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_EVENTS)]
    events: Vec<EventName>,
    /// Name to announce to the host (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Reconnection attempts after a failure (0: fail at once). Default:
    /// retry until stopped, so the agent outlasts a restart of the host
    /// (pauses from 100 ms doubling to 5 s, with jitter).
    #[arg(long, value_name = "N")]
    retry: Option<u32>,
    /// Prove this shared key to the host, and require the host to prove it
    /// back (the host's --key-file). The file holds at least 32 bytes, raw
    /// or as hex (`openssl rand -hex 32 > FILE`), and only its owner may
    /// read it (chmod 600). See docs/PROTOCOL.md, authentication.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Per-CPU ring buffer size in KiB (default: 4096).
    #[arg(long, value_name = "KIB")]
    buffer_kb: Option<u32>,
    /// How full (percent) a CPU's ring buffer gets before the agent is woken
    /// to read it (tracefs buffer_percent; it also reads every --flush-ms).
    #[arg(long, value_name = "PCT", default_value_t = agent::DEFAULT_BUFFER_PERCENT)]
    buffer_percent: u32,
    /// Milliseconds between keep-alives. Each carries a TSC sample, which
    /// also tells the host that quiet CPUs have nothing older to send, so it
    /// bounds how long the host's merge waits for them.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    keepalive_ms: u64,
    /// Milliseconds between reads of every CPU's buffer, partly filled pages
    /// included: bounds how late a quiet CPU's events and its watermark reach
    /// the host (1 for the lowest latency, at about ten times the agent's
    /// CPU; the period doubles while every CPU is idle).
    #[arg(long, value_name = "MS", default_value_t = 10)]
    flush_ms: u64,
}

/// Runs `tsc-tracer agent` until SIGINT/SIGTERM (exit 0) or a lasting failure.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = match &args.key_file {
        Some(path) => Some(Arc::new(SharedKey::from_file(path)?)),
        None => None,
    };
    let config = AgentConfig {
        name: args.name,
        retry: args.retry.unwrap_or(RETRY_FOREVER),
        key,
        keepalive: Duration::from_millis(args.keepalive_ms.max(1)),
        flush: Duration::from_millis(args.flush_ms.max(1)),
        buffer_size_kb: args.buffer_kb,
        buffer_percent: args.buffer_percent,
        events: args.events,
        ..AgentConfig::new(args.connect)
    };
    // One thread: the agent shares the guest with what it traces.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    tracefs::install_panic_hook();
    runtime.block_on(async {
        // Before the trace instance exists: a signal sent once it does
        // must stop the agent (and remove it).
        let signals = tsc_userspace::signal::Shutdown::install();
        let agent = Agent::start(config).context("cannot set up tracing")?;
        let report = agent
            .run(async {
                match signals {
                    // Awaited outside the log macro: `info!` skips its
                    // arguments when info is off (`-q`), and the agent
                    // would then stop at once.
                    Ok(signals) => {
                        let signal = signals.recv().await;
                        info!("{signal}: stopping");
                    }
                    Err(e) => {
                        warn!("cannot watch for signals ({e}): stop the agent with SIGKILL");
                        std::future::pending::<()>().await;
                    }
                }
            })
            .await?;
        info!(
            "done: {} pages, {} bytes, {} connection(s)",
            report.pages, report.bytes, report.connections
        );
        Ok(ExitCode::SUCCESS)
    })
}
