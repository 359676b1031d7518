//! `cargo xtask test`: every check CI runs, in the order that fails fastest.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{
    setup,
    shell::{self, step},
};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds each fuzz target runs for (0 skips fuzzing).
    #[arg(long, default_value_t = 30)]
    pub fuzz_seconds: u64,
    /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_test_args: Vec<String>,
}

/// The environment variable that turns a skipped privileged test into a failure.
const REQUIRE_PRIVILEGED: &str = "TSC_TRACER_REQUIRE_PRIVILEGED";

/// Runs fmt, clippy, all tests (privileged ones required) and the fuzzers.
pub fn run(args: Args) -> Result<()> {
    setup::for_tests()?;
    step("cargo fmt --check");
    shell::cargo(&["fmt", "--all", "--check"])
        .context("formatting differs: run `cargo fmt --all`")?;
    step("clippy -D warnings (userspace, xtask)");
    shell::cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "tsc-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    step("clippy -D warnings (the guest agent alone: --no-default-features, no eBPF)");
    shell::cargo(&[
        "clippy",
        "--package",
        "tsc-userspace",
        "--no-default-features",
        "--lib",
        "--bin",
        "tsc-agent",
        "--",
        "-D",
        "warnings",
    ])?;
    step("clippy -D warnings (eBPF, nightly, bpfel-unknown-none)");
    shell::run(shell::nightly_cargo().args([
        "clippy",
        "--package",
        "tsc-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("cargo test (privileged tests required)");
    let mut test = shell::command("cargo");
    test.args(["test", "--workspace", "--exclude", "tsc-ebpf"])
        .env(REQUIRE_PRIVILEGED, "1");
    if !args.cargo_test_args.is_empty() {
        test.arg("--").args(&args.cargo_test_args);
    }
    shell::run(&mut test)?;
    fuzz(args.fuzz_seconds)
}

/// Runs every target of the `fuzz/` crate (as `cargo fuzz list` names them)
/// for a bounded time each (`cargo xtask fuzz` is the long run).
fn fuzz(seconds: u64) -> Result<()> {
    if seconds == 0 {
        step("fuzzing skipped (--fuzz-seconds 0)");
        return Ok(());
    }
    crate::fuzz::run_all(&crate::fuzz::list()?, Duration::from_secs(seconds), None)
}
