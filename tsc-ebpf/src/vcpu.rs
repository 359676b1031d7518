//! `kvm_entry` / `kvm_exit` BTF tracepoint programs.
//!
//! Which argument is the vCPU and where its fields are differ between
//! kernels; userspace resolves both from BTF and overrides
//! [`KVM_VCPU_LAYOUT`]. The global lives in `.rodata`, which the loader
//! freezes, so the verifier sees its values as constants and prunes the
//! argument branches that do not apply.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tsc_common::{
    record::{EntryRecord, KvmVcpuLayout, VcpuKey, counter, kind},
    vcpu_state::{EntryReport, VcpuState},
};

use crate::{RECORDS, VCPU_STATE, bump};

/// Field offsets in `struct kvm_vcpu` and the vCPU argument indices, always
/// overridden by the loader (zeros would read `kvm_vcpu` offset 0).
#[unsafe(no_mangle)]
static KVM_VCPU_LAYOUT: KvmVcpuLayout = KvmVcpuLayout {
    vcpu_id: 0,
    l1_tsc_offset: 0,
    tsc_offset: 0,
    l1_tsc_scaling_ratio: 0,
    tsc_scaling_ratio: 0,
    entry_arg: 0,
    exit_arg: 0,
    _pad: 0,
};

/// One field of [`KVM_VCPU_LAYOUT`], read on its own: copying the whole
/// struct costs instructions on every path.
macro_rules! layout {
    ($field:ident) => {{
        // SAFETY: read_volatile keeps the compiler from folding the zeros
        // in; the loader rewrites the global before the programs load.
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&raw const KVM_VCPU_LAYOUT.$field) };
        value
    }};
}

#[btf_tracepoint(function = "kvm_exit")]
pub fn kvm_exit(ctx: BtfTracePointContext) -> i32 {
    let Some(key) = vcpu_key(&ctx, layout!(exit_arg)).map(|(key, _)| key) else {
        bump(counter::READ_FAILED);
        return 0;
    };
    // SAFETY: reads the clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match VCPU_STATE.get_ptr_mut(key) {
        // SAFETY: a map value pointer; only this vCPU's thread runs its exits.
        Some(state) => unsafe { (*state).on_exit(now) },
        None => {
            if VCPU_STATE.insert(key, VcpuState::exited(now), 0).is_err() {
                bump(counter::MAP_FULL);
            }
        }
    }
    0
}

#[btf_tracepoint(function = "kvm_entry")]
pub fn kvm_entry(ctx: BtfTracePointContext) -> i32 {
    let Some((key, vcpu)) = vcpu_key(&ctx, layout!(entry_arg)) else {
        bump(counter::READ_FAILED);
        return 0;
    };
    let Some(state) = VCPU_STATE.get_ptr_mut(key).or_else(|| unseen(key)) else {
        return 0;
    };
    // SAFETY: a map value pointer; only this vCPU's thread runs its entries,
    // and a change racing with us is re-reported (see `mark_reported`).
    let Some(report) = (unsafe { (*state).entry() }) else {
        return 0; // the common path ends here
    };
    report_entry(&ctx, key, vcpu, &report);
    // SAFETY: as above. Marked even if the ring buffer was full (counted),
    // so a full buffer does not cost every later entry a reservation.
    unsafe { (*state).mark_reported(&report) };
    0
}

/// Inserts the state of a vCPU never seen; its pointer, None if the map is full.
#[inline(never)]
fn unseen(key: VcpuKey) -> Option<*mut VcpuState> {
    if VCPU_STATE.insert(key, VcpuState::UNSEEN, 0).is_err() {
        bump(counter::MAP_FULL);
        return None;
    }
    VCPU_STATE.get_ptr_mut(key)
}

/// Pushes the entry record, the vCPU's TSC state read straight into it.
fn report_entry(ctx: &BtfTracePointContext, key: VcpuKey, vcpu: usize, report: &EntryReport) {
    // SAFETY: reads the clock, no preconditions.
    let entry_ns = unsafe { bpf_ktime_get_ns() };
    let Some(mut entry) = RECORDS.reserve::<EntryRecord>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is the reserved ring-buffer slot, sized for one
    // EntryRecord; it is fully written before it is submitted.
    let failed = unsafe {
        // Field by field: a whole-struct write would zero the four read
        // fields with a memset loop the verifier walks byte by byte.
        (*record).kind = kind::ENTRY_AFTER_CHANGE;
        (*record).tgid = key.tgid;
        (*record).pid = ctx.pid();
        (*record).vcpu_id = key.vcpu_id;
        (*record).seq = report.seq;
        (*record).prev_reported = report.prev_reported;
        (*record).last_exit_ns = report.last_exit_ns;
        (*record).entry_ns = entry_ns;
        // A failed read leaves 0 and is counted once: a branch per field
        // would multiply the paths the verifier walks.
        read_into(
            &raw mut (*record).l1_tsc_offset,
            vcpu,
            layout!(l1_tsc_offset),
        ) | read_into(
            &raw mut (*record).l1_tsc_scaling_ratio,
            vcpu,
            layout!(l1_tsc_scaling_ratio),
        ) | read_into(&raw mut (*record).tsc_offset, vcpu, layout!(tsc_offset))
            | read_into(
                &raw mut (*record).tsc_scaling_ratio,
                vcpu,
                layout!(tsc_scaling_ratio),
            )
    };
    entry.submit(0);
    if failed != 0 {
        bump(counter::READ_FAILED);
    }
}

/// The vCPU pointer (argument `index`) and its `(tgid, vcpu_id)` key.
#[inline(always)]
fn vcpu_key(ctx: &BtfTracePointContext, index: u32) -> Option<(VcpuKey, usize)> {
    // BTF context reads need a constant offset: one branch per possible
    // index, the verifier keeps the one the loader chose.
    let vcpu: usize = match index {
        0 => ctx.arg(0),
        1 => ctx.arg(1),
        2 => ctx.arg(2),
        _ => return None,
    };
    // SAFETY: a kernel pointer read through the fault-tolerant helper.
    let vcpu_id =
        unsafe { bpf_probe_read_kernel((vcpu + layout!(vcpu_id) as usize) as *const u32) }.ok()?;
    Some((
        VcpuKey {
            tgid: ctx.tgid(),
            vcpu_id,
        },
        vcpu,
    ))
}

/// Reads the u64 at `vcpu + offset` into `dst`; non-zero on failure (the
/// kernel then zeroes `dst`).
#[inline(always)]
unsafe fn read_into(dst: *mut u64, vcpu: usize, offset: u32) -> i64 {
    // SAFETY: the caller hands a writable u64; the source is read through
    // the fault-tolerant helper.
    unsafe {
        generated::bpf_probe_read_kernel(
            dst.cast(),
            size_of::<u64>() as u32,
            (vcpu + offset as usize) as *const core::ffi::c_void,
        )
    }
}
