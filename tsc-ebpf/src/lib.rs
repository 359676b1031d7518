//! Host-side view of the eBPF crate: empty. The programs live in `main.rs`
//! and are built for `bpfel-unknown-none` by `tsc-userspace`'s build script.
#![no_std]
