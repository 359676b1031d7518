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
    /// `kvm:kvm_write_tsc_offset` fired: an [`OffsetRecord`](super::OffsetRecord).
    pub const WRITE_TSC_OFFSET: u32 = 1;
    /// A vCPU entered the guest for the first time after an offset change, or
    /// for the first time we saw: an [`EntryRecord`](super::EntryRecord).
    pub const ENTRY_AFTER_CHANGE: u32 = 2;
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
    /// CLOCK_MONOTONIC nanoseconds of the vCPU's last guest exit before the
    /// change (0: unknown, e.g. `kvm_exit` never fired for it).
    pub last_exit_ns: u64,
}

/// Why an [`EntryRecord`] was pushed (bits; both may be set), see
/// [`EntryRecord::reason`].
pub mod entry_reason {
    /// The vCPU was never seen entering before.
    pub const FIRST_SEEN: u32 = 1;
    /// The offset changed since the vCPU's last reported entry.
    pub const AFTER_CHANGE: u32 = 2;
}

/// One ring-buffer record: a vCPU's first guest entry after an offset change
/// (or the first one seen), with the TSC state read from `struct kvm_vcpu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryRecord {
    /// Always [`kind::ENTRY_AFTER_CHANGE`].
    pub kind: u32,
    /// VMM process id (the vCPU thread's thread group).
    pub tgid: u32,
    /// The vCPU thread.
    pub pid: u32,
    /// KVM vCPU id, read from `kvm_vcpu.vcpu_id`.
    pub vcpu_id: u32,
    /// Sequence of the last offset change seen for the vCPU (0: none).
    pub seq: u64,
    /// The sequence reported at the vCPU's previous reported entry
    /// ([`VcpuState::NEVER`](crate::vcpu_state::VcpuState::NEVER): none).
    pub prev_reported: u64,
    /// `kvm_vcpu.arch.l1_tsc_offset`: the offset the (L1) guest sees.
    pub l1_tsc_offset: u64,
    /// `kvm_vcpu.arch.l1_tsc_scaling_ratio`.
    pub l1_tsc_scaling_ratio: u64,
    /// `kvm_vcpu.arch.tsc_offset`: the offset in use (L2's when nested).
    pub tsc_offset: u64,
    /// `kvm_vcpu.arch.tsc_scaling_ratio`.
    pub tsc_scaling_ratio: u64,
    /// CLOCK_MONOTONIC ns of the vCPU's last exit before this entry (0: unknown).
    pub last_exit_ns: u64,
    /// CLOCK_MONOTONIC ns of this entry.
    pub entry_ns: u64,
}

impl EntryRecord {
    /// Why it was pushed: [`entry_reason`] bits.
    pub const fn reason(&self) -> u32 {
        crate::vcpu_state::entry_reason(self.seq, self.prev_reported)
    }
}

/// Byte offsets the `kvm_entry`/`kvm_exit` programs read, resolved from the
/// running kernel's BTF by userspace and handed in as a global (Rust eBPF
/// has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmVcpuLayout {
    /// `kvm_vcpu.vcpu_id` (u32).
    pub vcpu_id: u32,
    /// `kvm_vcpu.arch.l1_tsc_offset` (u64), from the start of `kvm_vcpu`.
    pub l1_tsc_offset: u32,
    /// `kvm_vcpu.arch.tsc_offset` (u64).
    pub tsc_offset: u32,
    /// `kvm_vcpu.arch.l1_tsc_scaling_ratio` (u64).
    pub l1_tsc_scaling_ratio: u32,
    /// `kvm_vcpu.arch.tsc_scaling_ratio` (u64).
    pub tsc_scaling_ratio: u32,
    /// Which argument of `kvm_entry` is the vCPU (0..=2).
    pub entry_arg: u32,
    /// Which argument of `kvm_exit` is the vCPU (0..=2).
    pub exit_arg: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Indices into the per-CPU counters array.
pub mod counter {
    /// Tracepoint invocations.
    pub const EVENTS: u32 = 0;
    /// Records that could not be reserved in the ring buffer (it was full).
    pub const RINGBUF_FULL: u32 = 1;
    /// Offsets-map or vCPU-state-map updates that failed (map full).
    pub const MAP_FULL: u32 = 2;
    /// `kvm_entry`/`kvm_exit` invocations whose vCPU struct could not be read.
    pub const READ_FAILED: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
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
    // SAFETY: all are repr(C) with only integer fields and no implicit padding.
    unsafe impl aya::Pod for super::VcpuKey {}
    unsafe impl aya::Pod for super::EntryRecord {}
    unsafe impl aya::Pod for super::KvmVcpuLayout {}
    unsafe impl aya::Pod for crate::vcpu_state::VcpuState {}
    unsafe impl aya::Pod for super::VcpuOffset {}
    unsafe impl aya::Pod for super::OffsetRecord {}
    unsafe impl aya::Pod for super::WriteTscOffsetLayout {}
}
