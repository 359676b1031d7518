//! `cargo xtask mutants`: mutation testing of the core with cargo-mutants.
//!
//! cargo-mutants changes the code one operator at a time and reports the
//! changes ("mutants") no unit test notices. The core is the code where a
//! wrong line silently converts or orders a timestamp wrongly; the default
//! module list below names it. Runs use unit tests only (`cargo test --lib`)
//! so they fit on two cores, one package at a time (cargo-mutants tests the
//! package that owns the mutated file). Exclusions, each with its reason,
//! live in `.cargo/mutants.toml`; the surviving mutants we keep on purpose
//! are listed in `docs/MUTANTS.md`. Not part of `cargo xtask test`: a full
//! run takes hours on a loaded machine.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use crate::shell::{self, step};

/// The cargo-mutants release known to build with rustc 1.95.
const CARGO_MUTANTS_VERSION: &str = "27.1.0";

/// The core: files (globs from the workspace root) mutated by default.
const DEFAULT_MODULES: &[&str] = &[
    "tsc-common/src/tsc.rs",
    "tsc-common/src/vcpu_state.rs",
    "tsc-userspace/src/correlator/*.rs",
    "tsc-userspace/src/timeline.rs",
    "tsc-userspace/src/timeline/*.rs",
    "tsc-userspace/src/merge/merger.rs",
    "tsc-userspace/src/wire/read.rs",
    "tsc-userspace/src/wire/frame.rs",
    "tsc-userspace/src/tracefs/page.rs",
];

/// Options of `cargo xtask mutants`.
#[derive(clap::Args)]
pub struct Args {
    /// A file or glob from the workspace root (e.g.
    /// `tsc-userspace/src/timeline.rs`); repeatable. Default: the core.
    #[arg(long = "module", value_name = "PATH")]
    pub modules: Vec<String>,
    /// Run only shard K of N (`0/4` ... `3/4`), for long runs split over time.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Parallel builds (each is a full copy of the tree unless --in-place).
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Seconds a mutant's tests may run before it counts as a timeout
    /// (default: cargo-mutants' own, from the baseline run).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Mutate this tree and build in its own target/ instead of a scratch
    /// copy: no from-scratch build (the eBPF object is reused), but do not
    /// edit the tree while it runs. cargo-mutants restores every file.
    #[arg(long)]
    pub in_place: bool,
    /// Skip the mutants the previous run (same package) caught or found
    /// unviable: re-test only the misses after adding tests.
    #[arg(long)]
    pub iterate: bool,
    /// Only the mutants whose name matches this regex (cargo-mutants `--re`).
    #[arg(long, value_name = "REGEX")]
    pub re: Option<String>,
    /// Only the unit tests whose name contains this (e.g. `timeline::`);
    /// repeatable (a test runs when it matches any). Faster, but a mutant
    /// caught only by another module's tests is reported missed: re-run
    /// the misses without it before counting them.
    #[arg(long, value_name = "FILTER")]
    pub tests: Vec<String>,
    /// Skip the unmutated baseline build and test (cargo-mutants
    /// `--baseline=skip`): for re-runs of a few mutants on a tree whose
    /// tests were just seen to pass. Needs `--timeout`.
    #[arg(long, requires = "timeout")]
    pub skip_baseline: bool,
    /// Only list the mutants, run nothing.
    #[arg(long)]
    pub list: bool,
}

/// Installs cargo-mutants if missing, then runs it package by package.
pub fn run(args: Args) -> Result<()> {
    cargo_mutants()?;
    let modules: Vec<String> = if args.modules.is_empty() {
        DEFAULT_MODULES.iter().map(|m| m.to_string()).collect()
    } else {
        args.modules.clone()
    };
    let mut failed = Vec::new();
    for (package, files) in by_package(&modules)? {
        step(&format!(
            "cargo mutants on {package}: {} (unit tests only; results in target/mutants/{package})",
            files.join(" ")
        ));
        let output = shell::workspace_root()
            .join("target/mutants")
            .join(&package);
        std::fs::create_dir_all(&output)
            .with_context(|| format!("could not create {}", output.display()))?;
        let mut cmd = shell::command("cargo");
        cmd.args(mutants_args(&package, &files, &args))
            // A caught mutant needs no minimal failing case (shrinking takes
            // minutes), and its failures must not land in the tree as
            // proptest-regressions files.
            .env("PROPTEST_MAX_SHRINK_ITERS", "0")
            .env("PROPTEST_DISABLE_FAILURE_PERSISTENCE", "1");
        if let Err(err) = shell::run(&mut cmd) {
            // cargo-mutants exits non-zero when a mutant survives: go on
            // with the other packages and fail at the end.
            failed.push(format!("{package}: {err:#}"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "missed mutants or errors (see target/mutants/*/mutants.out/missed.txt):\n{}",
            failed.join("\n")
        );
    }
    Ok(())
}

/// The package owning each path: its first component, a workspace member.
fn by_package(modules: &[String]) -> Result<BTreeMap<String, Vec<String>>> {
    let root = shell::workspace_root();
    let mut packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for module in modules {
        let module = module.trim_start_matches("./").to_string();
        let package = module
            .split('/')
            .next()
            .filter(|p| root.join(p).join("Cargo.toml").exists())
            .with_context(|| {
                format!("{module}: not under a workspace package (e.g. tsc-userspace/src/...)")
            })?;
        // A directory means every file under it.
        let module = if root.join(&module).is_dir() {
            format!("{}/**/*.rs", module.trim_end_matches('/'))
        } else {
            module.clone()
        };
        packages
            .entry(package.to_string())
            .or_default()
            .push(module);
    }
    Ok(packages)
}

/// `cargo mutants ...` for one package.
fn mutants_args(package: &str, files: &[String], args: &Args) -> Vec<String> {
    let mut out: Vec<String> = vec![
        "mutants".into(),
        "--package".into(),
        package.into(),
        "--output".into(),
        format!("target/mutants/{package}"),
    ];
    for file in files {
        out.extend(["--file".into(), file.clone()]);
    }
    if let Some(shard) = &args.shard {
        out.extend(["--shard".into(), shard.clone()]);
    }
    if let Some(timeout) = args.timeout {
        out.extend(["--timeout".into(), timeout.to_string()]);
    }
    if args.in_place {
        // One tree, so one job (cargo-mutants refuses --jobs here).
        out.push("--in-place".into());
    } else {
        out.extend(["--jobs".into(), args.jobs.to_string()]);
    }
    if let Some(re) = &args.re {
        out.extend(["--re".into(), re.clone()]);
    }
    if args.iterate {
        out.push("--iterate".into());
    }
    if args.skip_baseline {
        out.push("--baseline=skip".into());
    }
    if args.list {
        out.push("--list".into());
    }
    // Unit tests only: the integration tests need root, VMs and minutes.
    // As a cargo arg, not after `--`: cargo-mutants passes `--` args to the
    // test phase only, so its build phase (`cargo test --no-run`) would
    // still build and link every integration test for each mutant.
    out.push("--cargo-arg=--lib".into());
    if !args.tests.is_empty() {
        // `cargo test --lib -- A B`: the second `--` hands the filters to
        // the test binary, which takes several (cargo takes one).
        out.extend(["--".into(), "--".into()]);
        out.extend(args.tests.iter().cloned());
    }
    out
}

fn cargo_mutants() -> Result<()> {
    if shell::output(shell::command("cargo").args(["mutants", "--version"])).is_some() {
        return Ok(());
    }
    step(&format!(
        "installing cargo-mutants {CARGO_MUTANTS_VERSION} (cargo install cargo-mutants --locked)"
    ));
    shell::run(shell::command("cargo").args([
        "install",
        "cargo-mutants",
        "--locked",
        "--version",
        CARGO_MUTANTS_VERSION,
    ]))
    .context("could not install cargo-mutants")
}
