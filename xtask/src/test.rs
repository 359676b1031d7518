//! `cargo xtask test`: every check CI runs, in the order that fails fastest.

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
/// for a bounded time each.
fn fuzz(seconds: u64) -> Result<()> {
    if seconds == 0 {
        step("fuzzing skipped (--fuzz-seconds 0)");
        return Ok(());
    }
    let list = shell::output(shell::nightly_cargo().args(["fuzz", "list"]))
        .context("`cargo fuzz list` failed (is cargo-fuzz installed?)")?;
    for target in list.lines().map(str::trim).filter(|t| !t.is_empty()) {
        step(&format!("fuzzing {target} for {seconds} s"));
        let mut run = shell::nightly_cargo();
        run.args(["fuzz", "run", target]);
        // Seeds kept in the repo (fuzz/seeds/TARGET) start the run beside
        // the working corpus, which gets what the fuzzer finds.
        let fuzz_dir = shell::workspace_root().join("fuzz");
        let seeds = fuzz_dir.join("seeds").join(target);
        if seeds.is_dir() {
            let corpus = fuzz_dir.join("corpus").join(target);
            std::fs::create_dir_all(&corpus)
                .with_context(|| format!("creating {}", corpus.display()))?;
            run.arg(&corpus).arg(&seeds);
        }
        shell::run(run.args(["--", &format!("-max_total_time={seconds}")])).with_context(|| {
            format!("fuzz target {target} found a failure (see fuzz/artifacts/)")
        })?;
    }
    Ok(())
}
