//! With the `host` feature: builds the eBPF programs (nightly,
//! `-Z build-std=core`, bpf-linker) and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. Without it (the agent alone) there is nothing
//! to build, and neither nightly nor bpf-linker is needed.

#[cfg(feature = "host")]
fn main() -> aya_build::Result<()> {
    // aya-build forwards every line the inner cargo writes to stderr as
    // `cargo:warning=` (aya-build 0.2.0, `build_ebpf`: "Trampoline stdout to
    // cargo warnings"), so its progress lines ("Compiling ...", "Finished
    // ...") would each show as a warning. A quiet inner cargo prints only
    // what matters: rustc's diagnostics (forwarded by aya-build from the
    // JSON messages) and its own errors. A failed build still fails ours,
    // and cargo then shows everything this script printed.
    // SAFETY: build scripts run single-threaded; nothing reads the
    // environment concurrently.
    unsafe {
        std::env::set_var("CARGO_TERM_QUIET", "true");
        // Cargo refuses `term.quiet` together with `term.verbose`.
        std::env::remove_var("CARGO_TERM_VERBOSE");
    }
    let package = aya_build::Package {
        name: "tsc-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tsc-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

#[cfg(not(feature = "host"))]
fn main() {}
