//! `tsc-tracer dump`: ask a running session to write its flight recorder.

use std::{fs, process::ExitCode};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Ask a running `tsc-tracer host --flight-recorder SIZE` to write the
/// trace it holds as a recording (under its --flight-dir).
///
/// Sends it SIGUSR1, as `kill -USR1 PID` does; the session goes on and
/// logs the directory it writes. Without PID, the one running session.
#[derive(clap::Args)]
pub struct Args {
    /// The session's pid (default: the only `tsc-tracer host` running).
    pid: Option<i32>,
}

/// Runs `tsc-tracer dump`.
pub fn run(args: Args) -> Result<ExitCode> {
    let pid = match args.pid {
        Some(pid) if is_session(pid) => pid,
        Some(pid) => bail!("process {pid} is not a running `tsc-tracer host`"),
        None => only_session()?,
    };
    kill(Pid::from_raw(pid), Signal::SIGUSR1)
        .with_context(|| format!("sending SIGUSR1 to {pid}"))?;
    println!(
        "asked tsc-tracer host (pid {pid}) to write its flight recorder; its log names the directory"
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether `pid` runs `tsc-tracer host` (its program's name and first
/// argument).
fn is_session(pid: i32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    let program = args.next().unwrap_or_default();
    let name = program.rsplit(|&b| b == b'/').next().unwrap_or_default();
    name == b"tsc-tracer" && args.any(|a| a == b"host")
}

/// The one `tsc-tracer host` running.
fn only_session() -> Result<i32> {
    let sessions: Vec<i32> = fs::read_dir("/proc")
        .context("listing /proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&pid| is_session(pid))
        .collect();
    match sessions.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no `tsc-tracer host` is running"),
        many => bail!(
            "several `tsc-tracer host` are running ({many:?}): name one, `tsc-tracer dump PID`"
        ),
    }
}
