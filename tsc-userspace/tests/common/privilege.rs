//! Whether a privileged test may run, and what it does when it cannot. The
//! one definition for the integration tests (`tests/common`) and the
//! library's unit tests (`src/clock/freq.rs` includes this file).

use std::path::Path;

/// Set by `cargo xtask test`: a privileged test that cannot run is a failure.
pub const REQUIRE_PRIVILEGED: &str = "TSC_TRACER_REQUIRE_PRIVILEGED";

/// True when this process can use /dev/kvm, BPF and tracefs (root). When it
/// cannot, the test must return early: under `cargo xtask test` that panics,
/// under a plain `cargo test` it prints a loud notice and skips.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let kvm = Path::new("/dev/kvm").exists();
    allowed(
        test,
        root && kvm,
        &format!("root and /dev/kvm (root: {root}, /dev/kvm: {kvm})"),
    )
}

/// Like [`privileged`], for a test that needs root but no VM.
pub fn root(test: &str) -> bool {
    allowed(test, nix::unistd::Uid::effective().is_root(), "root")
}

fn allowed(test: &str, can: bool, needs: &str) -> bool {
    if can {
        return true;
    }
    let why = format!("{test} needs {needs}");
    if std::env::var_os(REQUIRE_PRIVILEGED).is_some() {
        panic!("{why}; under `cargo xtask test` privileged tests must run");
    }
    eprintln!("\n*** SKIPPED: {why}. Run `cargo xtask test` as root to run it. ***\n");
    false
}
