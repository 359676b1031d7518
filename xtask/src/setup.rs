//! Installs what the build and the tests need, idempotently.
//!
//! The recipe, as measured on this project's build machines: the eBPF object
//! is built by the installed `nightly` with `-Z build-std=core`, and
//! bpf-linker must use the same LLVM as that nightly (bpf-linker 0.13 from
//! crates.io defaults to a newer LLVM that does not match), so it is built
//! against the nightly's own libLLVM.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::shell::{self, step};

/// The bpf-linker release known to build here (newer ones want rustc 1.98).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything `run` and `build` need.
pub fn all() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    perfetto_python()?;
    mounts()
}

/// The programs the integration tests run, as (program, Debian package).
/// A test that needs one fails, naming `cargo xtask setup`, when it is
/// missing; no test installs anything.
const TEST_TOOLS: &[(&str, &str)] = &[
    // `trace-cmd report` reads the trace.dat files we write (tests/tracefs.rs).
    ("trace-cmd", "trace-cmd"),
    // `bpftool btf dump` checks the BTF resolver (tests/btf.rs).
    ("bpftool", "bpftool"),
    // KernelShark opens recordings (tests/record_kernelshark.rs) under a
    // virtual X server, driven by xdotool; `import` (ImageMagick) takes
    // the screenshot in docs/.
    ("kernelshark", "kernelshark"),
    ("Xvfb", "xvfb"),
    ("xdotool", "xdotool"),
    ("import", "imagemagick"),
];

/// What `cargo xtask setup` does: `all`, plus the programs the tests run.
pub fn with_test_tools() -> Result<()> {
    all()?;
    debian_packages(TEST_TOOLS)
}

/// What `cargo xtask test` needs: `with_test_tools`, plus cargo-fuzz.
pub fn for_tests() -> Result<()> {
    with_test_tools()?;
    cargo_fuzz()
}

/// What `cargo xtask fuzz` needs: `all` (the fuzz crate builds the host
/// library, eBPF object included), plus cargo-fuzz.
pub fn for_fuzzing() -> Result<()> {
    all()?;
    cargo_fuzz()
}

/// cargo-fuzz, which `cargo xtask test` runs the fuzz targets with.
fn cargo_fuzz() -> Result<()> {
    if shell::output(shell::command("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    step("installing cargo-fuzz (cargo install cargo-fuzz)");
    shell::run(shell::command("cargo").args(["install", "cargo-fuzz"]))
        .context("could not install cargo-fuzz")
}

/// The PyPI `perfetto` and `protobuf` packages, which the Perfetto tests
/// decode traces with (`perfetto_trace_pb2`, the official schema), in a
/// venv of their own under `~/.local/share/tsc-tracer/venv` (the system
/// Python stays untouched; `tests/perfetto.rs` runs that venv's python3).
fn perfetto_python() -> Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = Path::new(&home).join(".local/share/tsc-tracer/venv");
    let python = venv.join("bin/python3");
    let python = python.to_str().context("a HOME that is not UTF-8")?;
    let import = [
        "-c",
        "import perfetto.protos.perfetto.trace.perfetto_trace_pb2",
    ];
    if shell::output(shell::command(python).args(import)).is_some() {
        return Ok(());
    }
    step(&format!(
        "installing the Python perfetto and protobuf packages (pip, in {})",
        venv.display()
    ));
    shell::run(shell::command("python3").args(["-m", "venv"]).arg(&venv))
        .context("could not make a Python venv (is python3-venv installed?)")?;
    shell::run(
        shell::command(python).args(["-m", "pip", "install", "--quiet", "perfetto", "protobuf"]),
    )
    .context("could not install perfetto and protobuf from PyPI")
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = shell::output(shell::command("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF programs")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly toolchain: the eBPF programs need one (rustup toolchain install nightly)"
        );
    }
    let installed = shell::output(shell::command("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    step("installing rust-src for the nightly toolchain (for -Z build-std=core)");
    shell::run(shell::command("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("could not install rust-src for nightly")
}

fn bpf_linker() -> Result<()> {
    let linker = shell::cargo_home().join("bin/bpf-linker");
    if linker.exists() && shell::output(shell::command("bpf-linker").arg("--version")).is_some() {
        return Ok(());
    }
    let llvm = nightly_libllvm()?;
    let major = llvm_major(&llvm)?;
    let prefix = llvm_prefix(&llvm)?;
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({}); about a minute",
        llvm.display()
    ));
    shell::run(
        shell::command("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("could not build bpf-linker against the nightly's LLVM")
}

/// The nightly toolchain's `lib/libLLVM.so.MAJOR.MINOR-rust-...`.
fn nightly_libllvm() -> Result<PathBuf> {
    let sysroot = shell::output(shell::nightly_rustc().args(["--print", "sysroot"]))
        .context("could not ask the nightly rustc for its sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let found = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        });
    found.with_context(|| {
        format!(
            "no libLLVM.so.* in {}: is the nightly complete?",
            lib.display()
        )
    })
}

/// 22 from `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn llvm_major(lib: &Path) -> Result<u32> {
    let name = lib.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {name}"))
}

/// A prefix whose `lib/` holds the two names bpf-linker's build looks for.
/// It must outlive the build: the binary finds libLLVM through an rpath here.
fn llvm_prefix(llvm: &Path) -> Result<PathBuf> {
    let name = llvm.file_name().context("libLLVM has no file name")?;
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let prefix = home.join(".local/share/tsc-tracer/llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in [lib.join("libLLVM.so"), lib.join(name)] {
        let _ = fs::remove_file(&link);
        symlink(llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(prefix)
}

/// Pseudo-filesystems the session needs, mounted where the kernel documents them.
const MOUNTS: &[(&str, &str)] = &[
    ("tracefs", "/sys/kernel/tracing"),
    ("debugfs", "/sys/kernel/debug"),
    ("bpf", "/sys/fs/bpf"),
];

fn mounts() -> Result<()> {
    let table = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    for (fstype, target) in MOUNTS {
        let mounted = table.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, at, ty) = (f.next(), f.next(), f.next());
            at == Some(target) && ty == Some(fstype)
        });
        if mounted {
            continue;
        }
        step(&format!("mounting {fstype} on {target}"));
        shell::run(shell::command("mount").args(["-t", fstype, fstype, target]))
            .with_context(|| format!("could not mount {fstype} on {target} (are you root?)"))?;
    }
    Ok(())
}

/// Installs the Debian packages whose program is not found, with one
/// `apt-get update` first; does nothing when every program is there.
fn debian_packages(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| !installed(program))
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        shell::run(
            shell::command("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    step("apt-get update (to install the tools the tests run)");
    apt(&["update", "-qq"]).context("apt-get update failed (are you root?)")?;
    step(&format!(
        "installing {} from Debian (apt-get)",
        missing.join(", ")
    ));
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    apt(&args).with_context(|| format!("could not install {}", missing.join(", ")))
}

/// Whether `program` is on PATH or in an sbin directory (Debian puts
/// bpftool in /usr/sbin, which a normal user's PATH lacks).
fn installed(program: &str) -> bool {
    which::which(program).is_ok()
        || ["/usr/local/sbin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| Path::new(dir).join(program).is_file())
}
