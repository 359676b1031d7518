//! Running commands and saying what we do.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Announces a step on stderr, so a user sees what setup is doing.
pub fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// The workspace root (this crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `$CARGO_HOME`, where `cargo install` puts binaries.
pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// A command with `$CARGO_HOME/bin` on PATH (bpf-linker lives there) and run
/// from the workspace root.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    let bin = cargo_home().join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
    if !paths.contains(&bin) {
        paths.insert(0, bin);
    }
    if let Ok(joined) = env::join_paths(paths) {
        cmd.env("PATH", joined);
    }
    cmd.current_dir(workspace_root());
    cmd
}

/// A cargo command on the installed nightly toolchain.
pub fn nightly_cargo() -> Command {
    nightly("cargo")
}

/// The nightly `rustc`.
pub fn nightly_rustc() -> Command {
    nightly("rustc")
}

/// `PROGRAM +nightly`. The outer `cargo` (stable) leaves RUSTUP_TOOLCHAIN
/// and RUSTC in the environment; they would win over `+nightly` for rustc.
fn nightly(program: &str) -> Command {
    let mut cmd = command(program);
    for key in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(key);
    }
    cmd.arg("+nightly");
    cmd
}

/// Runs a command to completion, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo ARGS` with the current (stable) toolchain.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(command("cargo").args(args))
}

/// Runs a command and returns its stdout, or None if it could not run or failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
