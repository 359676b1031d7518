//! Builds the eBPF programs (nightly, `-Z build-std=core`, bpf-linker) and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "tsc-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tsc-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
