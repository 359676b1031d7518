//! `cargo xtask fuzz`: long runs of the `fuzz/` crate's targets, one after
//! the other, each reporting the executions libFuzzer did and whether it
//! crashed. `cargo xtask test` runs the same targets briefly through
//! [`run_all`].

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    setup,
    shell::{self, step},
};

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    /// Minutes each target runs for (at most, with `--runs`).
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Stop each target after this many executions (libFuzzer `-runs`),
    /// e.g. `--runs 10000000 --minutes 60` for the ten million the
    /// release checklist asks of every target.
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
    /// A target to run (repeatable); default: every target `cargo fuzz list` names.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
}

/// Runs the chosen targets for `--minutes` each; fails when one crashed.
pub fn run(args: Args) -> Result<()> {
    setup::for_fuzzing()?;
    let targets = if args.targets.is_empty() {
        list()?
    } else {
        args.targets
    };
    run_all(&targets, Duration::from_secs(args.minutes * 60), args.runs)
}

/// What one target's run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The target.
    pub target: String,
    /// Inputs executed (libFuzzer's final `stat::number_of_executed_units`),
    /// `None` when the run ended without printing its stats.
    pub executions: Option<u64>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// The crashing input libFuzzer saved, when the run found one (libFuzzer
    /// stops at the first crash, so a run has at most one).
    pub crash: Option<String>,
    /// False when the run failed in any way (a crash, a build error).
    pub success: bool,
}

/// Every target of the `fuzz/` crate, as `cargo fuzz list` names them.
pub fn list() -> Result<Vec<String>> {
    let list = shell::output(shell::nightly_cargo().args(["fuzz", "list"]))
        .context("`cargo fuzz list` failed (is cargo-fuzz installed? `cargo xtask setup`)")?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Runs each target for `time` (or until `runs` executions), one after the
/// other, prints what each did, and fails when any crashed or could not run.
pub fn run_all(targets: &[String], time: Duration, runs: Option<u64>) -> Result<()> {
    let mut outcomes = Vec::new();
    for target in targets {
        match runs {
            Some(n) => step(&format!(
                "fuzzing {target} for {n} executions or {} s",
                time.as_secs()
            )),
            None => step(&format!("fuzzing {target} for {} s", time.as_secs())),
        }
        outcomes.push(run_target(target, time, runs)?);
    }
    step("fuzzing summary");
    for outcome in &outcomes {
        eprintln!("{}", summary_line(outcome));
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.success)
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (crashing inputs in fuzz/artifacts/TARGET/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Runs one target for `time`, starting from its seeds (`fuzz/seeds/TARGET`)
/// beside its working corpus (`fuzz/corpus/TARGET`, which gets what the
/// fuzzer finds). libFuzzer's output goes on to stderr as it comes.
pub fn run_target(target: &str, time: Duration, runs: Option<u64>) -> Result<Outcome> {
    let fuzz_dir = shell::workspace_root().join("fuzz");
    let mut cmd = shell::nightly_cargo();
    cmd.args(["fuzz", "run", target]);
    let seeds = fuzz_dir.join("seeds").join(target);
    if seeds.is_dir() {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        cmd.arg(&corpus).arg(&seeds);
    }
    cmd.args([
        "--",
        &format!("-max_total_time={}", time.as_secs().max(1)),
        "-print_final_stats=1",
    ]);
    if let Some(n) = runs {
        cmd.arg(format!("-runs={n}"));
    }
    let start = Instant::now();
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    let mut stats = Stats::default();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading the fuzzer's output")?;
            eprintln!("{line}");
            stats.read(&line);
        }
    }
    let status = child.wait().context("waiting for the fuzzer")?;
    Ok(Outcome {
        target: target.to_owned(),
        executions: stats.executions,
        elapsed: start.elapsed(),
        crash: stats.crash,
        success: status.success(),
    })
}

/// What libFuzzer's output says, line by line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    executions: Option<u64>,
    crash: Option<String>,
}

impl Stats {
    fn read(&mut self, line: &str) {
        // `-print_final_stats=1`: "stat::number_of_executed_units: 123"
        // (libFuzzer's FuzzerLoop.cpp, PrintFinalStats).
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = n.trim().parse().ok();
        }
        // "artifact_prefix='...'; Test unit written to PATH" (FuzzerLoop.cpp,
        // DumpCurrentUnit / WriteUnitToFileWithPrefix).
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            self.crash = Some(path.trim().to_owned());
        }
    }
}

/// One line per target: executions, time, rate, and a crash if any.
fn summary_line(o: &Outcome) -> String {
    let secs = o.elapsed.as_secs_f64();
    let execs = o
        .executions
        .map_or_else(|| "? executions".to_owned(), |n| format!("{n} executions"));
    let rate = o
        .executions
        .filter(|_| secs > 0.0)
        .map_or_else(String::new, |n| format!(" ({:.0}/s)", n as f64 / secs));
    let result = match (&o.crash, o.success) {
        (Some(path), _) => format!("CRASH: {path}"),
        (None, true) => "0 crashes".to_owned(),
        (None, false) => "FAILED (no crashing input saved: see the output above)".to_owned(),
    };
    format!("  {:<16} {execs} in {secs:.0} s{rate}: {result}", o.target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_final_stats_and_the_crashing_input() {
        let mut stats = Stats::default();
        for line in [
            "#1048576\tpulse  cov: 812 ft: 2390 corp: 240/18Kb exec/s: 52428 rss: 61Mb",
            "==1234== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='/w/fuzz/artifacts/btf_parse/'; Test unit written to /w/fuzz/artifacts/btf_parse/crash-da39a3ee",
            "stat::number_of_executed_units: 10485760",
            "stat::average_exec_per_sec:     52428",
        ] {
            stats.read(line);
        }
        assert_eq!(
            stats,
            Stats {
                executions: Some(10_485_760),
                crash: Some("/w/fuzz/artifacts/btf_parse/crash-da39a3ee".into()),
            }
        );
    }

    #[test]
    fn summary_says_executions_rate_and_crash() {
        let mut outcome = Outcome {
            target: "page_decode".into(),
            executions: Some(1000),
            elapsed: Duration::from_secs(10),
            crash: None,
            success: true,
        };
        assert_eq!(
            summary_line(&outcome),
            "  page_decode      1000 executions in 10 s (100/s): 0 crashes"
        );
        outcome.crash = Some("fuzz/artifacts/page_decode/crash-1".into());
        outcome.success = false;
        assert!(summary_line(&outcome).ends_with("CRASH: fuzz/artifacts/page_decode/crash-1"));
    }
}
