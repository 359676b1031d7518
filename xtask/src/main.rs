//! `cargo xtask`: the project's setup, build, run and test commands.
//!
//! Every command installs what it needs first (see `setup`), says what it is
//! doing on stderr, and fails with a message naming the missing piece.

mod fuzz;
mod mutants;
mod setup;
mod shell;
mod test;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Setup, build, run and test tsc-tracer.
#[derive(Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (nightly rust-src, bpf-linker, and the tools
    /// the tests run: trace-cmd, bpftool) and mount tracefs, debugfs and
    /// bpffs. Idempotent.
    Setup,
    /// Setup, then build `target/release/tsc-tracer` with the eBPF object
    /// embedded, and the guest agent alone, statically linked:
    /// `target/x86_64-unknown-linux-gnu/release/tsc-agent`.
    Build,
    /// Setup, build, then run `tsc-tracer ARGS` (the live host session when no ARGS).
    Run {
        /// Arguments for tsc-tracer, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then fmt, clippy (userspace and eBPF), unit, privileged
    /// integration and fuzz tests. Privileged tests must run, never skip.
    Test(test::Args),
    /// Long fuzz runs: each target of `fuzz/` (or each `--target NAME`) for
    /// `--minutes N`, printing its executions; fails on a crash.
    Fuzz(fuzz::Args),
    /// Mutation testing of the core (cargo-mutants, unit tests only; not
    /// part of `test`): every mutant no test notices is listed.
    Mutants(mutants::Args),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Setup => setup::with_test_tools().map(|()| ExitCode::SUCCESS),
        Command::Build => {
            setup::all()?;
            build_release()?;
            build_agent()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { args } => {
            setup::all()?;
            build_release()?;
            run_tracer(args)
        }
        Command::Test(args) => test::run(args).map(|()| ExitCode::SUCCESS),
        Command::Fuzz(args) => fuzz::run(args).map(|()| ExitCode::SUCCESS),
        Command::Mutants(args) => mutants::run(args).map(|()| ExitCode::SUCCESS),
    }
}

/// The main job when `cargo xtask run` gets no arguments.
const DEFAULT_RUN_ARGS: &[&str] = &["host"];

fn build_release() -> Result<()> {
    shell::step("building target/release/tsc-tracer (with the eBPF object)");
    shell::cargo(&["build", "--release", "--package", "tsc-userspace"])
}

/// Where [`build_agent`] leaves the guest agent.
const AGENT_BINARY: &str = "target/x86_64-unknown-linux-gnu/release/tsc-agent";

/// The guest agent alone: stable Rust, no eBPF, no nightly. Linked
/// statically against glibc (`+crt-static`; the only target installed
/// here is x86_64-unknown-linux-gnu), so the one file runs in any x86-64
/// Linux guest. `--target` keeps the flag off build scripts and proc
/// macros, which must stay dynamic.
fn build_agent() -> Result<()> {
    shell::step(&format!(
        "building {AGENT_BINARY} (the guest agent alone: stable Rust, static)"
    ));
    let mut cmd = shell::command("cargo");
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static").args([
        "build",
        "--release",
        "--package",
        "tsc-userspace",
        "--no-default-features",
        "--bin",
        "tsc-agent",
        "--target",
        "x86_64-unknown-linux-gnu",
    ]);
    shell::run(&mut cmd)
}

fn run_tracer(args: Vec<String>) -> Result<ExitCode> {
    let args = if args.is_empty() {
        DEFAULT_RUN_ARGS.iter().map(|s| s.to_string()).collect()
    } else {
        args
    };
    let binary = shell::workspace_root().join("target/release/tsc-tracer");
    shell::step(&format!("running {} {}", binary.display(), args.join(" ")));
    let status = std::process::Command::new(&binary).args(&args).status()?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}
