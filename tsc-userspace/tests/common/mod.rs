//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::Path;

/// Set by `cargo xtask test`: a privileged test that cannot run is a failure.
pub const REQUIRE_PRIVILEGED: &str = "TSC_TRACER_REQUIRE_PRIVILEGED";

/// True when this process can use /dev/kvm, BPF and tracefs (root). When it
/// cannot, the test must return early: under `cargo xtask test` that panics,
/// under a plain `cargo test` it prints a loud notice and skips.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let kvm = Path::new("/dev/kvm").exists();
    if root && kvm {
        return true;
    }
    let why = format!("{test} needs root and /dev/kvm (root: {root}, /dev/kvm: {kvm})");
    if std::env::var_os(REQUIRE_PRIVILEGED).is_some() {
        panic!("{why}; under `cargo xtask test` privileged tests must run");
    }
    eprintln!("\n*** SKIPPED: {why}. Run `cargo xtask test` as root to run it. ***\n");
    false
}
