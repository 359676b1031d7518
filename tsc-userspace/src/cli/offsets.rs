//! `tsc-tracer offsets`.
use std::process::ExitCode;

/// Options of `tsc-tracer offsets`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `tsc-tracer offsets`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
