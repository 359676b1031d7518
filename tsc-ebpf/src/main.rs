//! Kernel programs of tsc-tracer.
//!
//! `kvm_write_tsc_offset` keeps the always-current offsets map (the source of
//! truth, right even when the ring buffer overflows) and pushes one change
//! record per call. The BTF tracepoint programs on `kvm_exit` and `kvm_entry`
//! keep a small per-vCPU state (last exit time, change sequence) and push one
//! entry record on the first entry after a change, or for a vCPU never seen,
//! with the offset and ratio read from `struct kvm_vcpu`. Their common path is
//! one struct read and one map lookup; they log nothing (aya-log would cost
//! thousands of verified instructions), counters say what went wrong. Every
//! decision they take is in `tsc_common::vcpu_state`, tested on the host.
#![no_std]
#![no_main]

mod vcpu;

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tsc_common::{
    record::{OffsetRecord, VcpuKey, VcpuOffset, WriteTscOffsetLayout, counter, kind},
    vcpu_state::VcpuState,
};

/// Tracepoint field offsets, overridden by userspace from the event's
/// `format` file so a kernel that moves a field does not silently break us.
#[unsafe(no_mangle)]
static WRITE_TSC_OFFSET_LAYOUT: WriteTscOffsetLayout = WriteTscOffsetLayout::DEFAULT;

/// `(VMM tgid, vcpu_id)` -> last requested offset. Userspace sizes it.
#[map]
static OFFSETS: HashMap<VcpuKey, VcpuOffset> = HashMap::with_max_entries(16384, 0);

/// `(VMM tgid, vcpu_id)` -> what the entry/exit programs remember. Shares
/// the offsets map's capacity; userspace sizes it.
#[map]
static VCPU_STATE: HashMap<VcpuKey, VcpuState> = HashMap::with_max_entries(16384, 0);

/// Offset-change and entry records for userspace. Userspace sizes it.
#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// See `tsc_common::record::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[tracepoint(category = "kvm", name = "kvm_write_tsc_offset")]
pub fn kvm_write_tsc_offset(ctx: TracePointContext) -> u32 {
    bump(counter::EVENTS);
    // Reading the tracepoint's own record cannot fault; if it ever does we
    // only lose this event, which the EVENTS/record-count gap will show.
    let _ = try_write_tsc_offset(&ctx);
    0
}

fn try_write_tsc_offset(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: read_volatile keeps the compiler from folding the default in;
    // the loader rewrites this global before the program is loaded.
    let layout = unsafe { core::ptr::read_volatile(&WRITE_TSC_OFFSET_LAYOUT) };
    // SAFETY: offsets come from the tracepoint's format file (or the verified default).
    let (vcpu_id, prev, next) = unsafe {
        (
            ctx.read_at::<u32>(layout.vcpu_id as usize)?,
            ctx.read_at::<u64>(layout.prev as usize)?,
            ctx.read_at::<u64>(layout.next as usize)?,
        )
    };
    let key = VcpuKey {
        tgid: ctx.tgid(),
        vcpu_id,
    };
    // SAFETY: the value is copied out at once; a concurrent update can at worst
    // give a stale seq, and KVM serialises offset writes of one vCPU.
    let seq = unsafe { OFFSETS.get(key) }.map_or(1, |old| old.seq + 1);
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let value = VcpuOffset {
        offset: next,
        prev,
        seq,
        ktime_ns,
    };
    if OFFSETS.insert(key, value, 0).is_err() {
        bump(counter::MAP_FULL);
        warn!(
            ctx,
            "offsets map full: vcpu {} of tgid {} not tracked", vcpu_id, key.tgid
        );
    }
    let last_exit_ns = note_change(&key, seq);
    push(OffsetRecord {
        kind: kind::WRITE_TSC_OFFSET,
        tgid: key.tgid,
        pid: ctx.pid(),
        vcpu_id,
        seq,
        prev,
        next,
        ktime_ns,
        last_exit_ns,
    });
    Ok(())
}

/// Tells the entry program a change is pending; returns the vCPU's last
/// exit time (0: unknown), which ends the epoch the change closes.
fn note_change(key: &VcpuKey, seq: u64) -> u64 {
    match VCPU_STATE.get_ptr_mut(key) {
        // SAFETY: a map value pointer; KVM serialises a vCPU's offset writes
        // with its runs (vcpu->mutex), and a lost race is re-reported anyway.
        Some(state) => unsafe {
            (*state).on_change(seq);
            (*state).last_exit_ns
        },
        None => {
            if VCPU_STATE.insert(key, VcpuState::changed(seq), 0).is_err() {
                bump(counter::MAP_FULL);
            }
            0
        }
    }
}

/// Pushes a record, counting it when the ring buffer is full.
fn push<T: 'static>(record: T) {
    match RECORDS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(0);
        }
        None => bump(counter::RINGBUF_FULL),
    }
}

fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and tracepoint programs do not nest on a CPU.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
