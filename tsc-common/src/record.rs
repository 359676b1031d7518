//! Layouts of the eBPF maps and ring-buffer records.
//!
//! These are `#[repr(C)]` with explicit padding so the kernel and userspace
//! agree byte for byte; a layout change is a change to both sides at once.

/// Key of the offsets map: one vCPU of one VMM process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VcpuKey {
    /// Thread-group id (process id) of the VMM that owns the vCPU.
    pub tgid: u32,
    /// KVM's `vcpu_id` (the APIC id on x86, not an index).
    pub vcpu_id: u32,
}

/// Value of the offsets map: the last TSC offset KVM was asked to set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuOffset {
    /// Offset the tracepoint reported as `next_tsc_offset` (two's complement).
    pub offset: u64,
    /// Offset the tracepoint reported as `previous_tsc_offset`.
    pub prev: u64,
    /// Per-vCPU change counter, starting at 1 with the first change seen.
    pub seq: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the change was seen.
    pub ktime_ns: u64,
}

/// Kinds of ring-buffer records.
pub mod kind {
    /// `kvm:kvm_write_tsc_offset` fired.
    pub const WRITE_TSC_OFFSET: u32 = 1;
}

/// One ring-buffer record: an offset change of one vCPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffsetRecord {
    /// One of [`kind`].
    pub kind: u32,
    /// VMM process id.
    pub tgid: u32,
    /// Thread that triggered the change (a vCPU thread or the VMM's main thread).
    pub pid: u32,
    /// KVM vCPU id.
    pub vcpu_id: u32,
    /// Per-vCPU sequence number, equal to the map value's `seq` after this change.
    pub seq: u64,
    /// Previous offset as the tracepoint reported it.
    pub prev: u64,
    /// New offset as the tracepoint reported it.
    pub next: u64,
    /// CLOCK_MONOTONIC nanoseconds when the change was seen.
    pub ktime_ns: u64,
}

/// Indices into the per-CPU counters array.
pub mod counter {
    /// Tracepoint invocations.
    pub const EVENTS: u32 = 0;
    /// Records that could not be reserved in the ring buffer (it was full).
    pub const RINGBUF_FULL: u32 = 1;
    /// Offsets-map updates that failed (map full).
    pub const MAP_FULL: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// Field offsets of the `kvm_write_tsc_offset` tracepoint record, read from
/// its tracefs `format` file by userspace and handed to the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteTscOffsetLayout {
    /// Byte offset of `vcpu_id` (u32).
    pub vcpu_id: u32,
    /// Byte offset of `previous_tsc_offset` (u64).
    pub prev: u32,
    /// Byte offset of `next_tsc_offset` (u64).
    pub next: u32,
    /// Keeps the struct 8-byte sized without implicit padding.
    pub _pad: u32,
}

impl WriteTscOffsetLayout {
    /// The layout on every kernel since the tracepoint gained `vcpu_id`
    /// (verified against 6.18); userspace overrides it from `format`.
    pub const DEFAULT: Self = Self {
        vcpu_id: 8,
        prev: 16,
        next: 24,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are repr(C) with only integer fields and no implicit padding.
    unsafe impl aya::Pod for super::VcpuKey {}
    unsafe impl aya::Pod for super::VcpuOffset {}
    unsafe impl aya::Pod for super::OffsetRecord {}
    unsafe impl aya::Pod for super::WriteTscOffsetLayout {}
}
