//! `tsc-tracer record-finish`: assemble a recording whose session died.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use tsc_userspace::record;

/// Assemble the trace.dat files of a recording from its spill files.
///
/// For a recording (`tsc-tracer host --record DIR`) whose session was
/// killed or crashed: every page spilled before that is kept.
#[derive(clap::Args)]
pub struct Args {
    /// The recording directory.
    dir: PathBuf,
}

/// Runs `tsc-tracer record-finish`.
pub fn run(args: Args) -> Result<ExitCode> {
    let summary = record::assemble(&args.dir)
        .with_context(|| format!("assembling the recording in {}", args.dir.display()))?;
    record::readme::log_summary(&summary);
    Ok(ExitCode::SUCCESS)
}
