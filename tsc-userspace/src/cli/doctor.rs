//! `tsc-tracer doctor`: checks and explains what this host allows.

use std::{
    io::{self, Write},
    process::ExitCode,
};

use anyhow::{Context, Result};
use tsc_userspace::doctor::{self, Report, Status};

/// Check what this host allows and how its KVM behaves.
///
/// Checks privileges, tracefs/debugfs/bpffs, BTF, /dev/kvm, the kvm
/// tracepoints and TSC stability, then makes a throw-away VM to measure
/// the TSC frequency and scaling, whether KVM applies the TSC offsets it is
/// given, and whether kvm_entry fires. Exits non-zero only when something
/// stops tsc-tracer from tracing; a hypervisor's quirks are warnings.
#[derive(clap::Args)]
pub struct Args {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `tsc-tracer doctor`.
pub fn run(args: Args) -> Result<ExitCode> {
    let report = doctor::run();
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        print_text(&mut out, &report).context("writing the report")?;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(out: &mut impl Write, report: &Report) -> io::Result<()> {
    for check in &report.checks {
        let tag = match check.status {
            Status::Ok => " ok ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        writeln!(out, "[{tag}] {}: {}", check.name, check.detail)?;
        if let Some(fix) = &check.fix {
            writeln!(out, "       fix: {fix}")?;
        }
    }
    let verdict = if report.ok {
        "tsc-tracer can trace on this host"
    } else {
        "tsc-tracer cannot trace on this host until the blocking failures above are fixed"
    };
    writeln!(out, "{verdict}")
}
