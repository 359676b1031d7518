//! What the session calls: each function turns the session's own types
//! into the [`Recorder`]'s, so the session needs one call per place.

use std::fs;

use super::{
    Recorder,
    meta::{GuestCpuMeta, StreamMeta},
    options::Tsc2Nsec,
    recorder::GuestBinding,
};
use crate::{
    clock::Clock,
    correlator::VmState,
    kvm::Debugfs,
    offsets::OffsetEvent,
    tracefs::{Instance, TracefsError},
    wire::Hello,
};

/// The host trace's stream: headers and formats from its tracefs instance.
pub fn host_stream(instance: &Instance) -> Result<StreamMeta, TracefsError> {
    let mut formats = Vec::new();
    for event in instance.events() {
        formats.push((event.system.clone(), instance.event_format(event)?));
    }
    // trace_marker writes arrive as ftrace:print without being enabled.
    if !formats.iter().any(|(s, _)| s == "ftrace")
        && let Ok(print) = instance.event_format(&crate::tracefs::EventName::new("ftrace", "print"))
    {
        formats.push(("ftrace".into(), print));
    }
    Ok(StreamMeta {
        page_size: instance.page_size()? as u32,
        header_page: instance.header_page()?,
        header_event: instance.header_event()?,
        formats,
        cpus: instance.cpus()?.iter().map(|c| c + 1).max().unwrap_or(0),
        uname: uname(),
        ..StreamMeta::default()
    })
}

/// The readers' TSC -> ns for the session's clock: `mult` is the clock's
/// nanoseconds per 2^`shift` ticks, with the largest `shift` (at most 32)
/// that keeps it below 2^31 (the reader's `struct tsc2nsec` holds it in a
/// C `int`), and the offset makes the clock's anchor read as its
/// `CLOCK_MONOTONIC` ns.
pub fn clock_conversion(clock: &Clock) -> Option<(Tsc2Nsec, i64)> {
    let a = clock.anchor();
    let t = (1..=32u32).rev().find_map(|shift| {
        let ns = clock
            .tsc_to_ns(a.tsc.checked_add(1 << shift)?)
            .checked_sub(clock.tsc_to_ns(a.tsc))?;
        let mult = u32::try_from(ns).ok().filter(|&m| m <= i32::MAX as u32)?;
        Some(Tsc2Nsec {
            mult,
            shift,
            offset: 0,
        })
    })?;
    let offset = i64::try_from(i128::from(a.ns) - i128::from(t.ns(a.tsc))).ok()?;
    Some((t, offset))
}

/// An agent's binding to VM `vm_pid` named `vm_name`, as a recording
/// keeps it (guest CPU -> vCPU -> host thread).
pub fn binding(hello: &Hello, vm_pid: u32, vm_name: &str) -> GuestBinding {
    let cpus = hello
        .cpus
        .iter()
        .map(|c| GuestCpuMeta {
            cpu: c.cpu,
            vcpu_id: Some(c.apic_id),
            tid: vcpu_thread(vm_pid, c.apic_id).unwrap_or(0),
        })
        .collect();
    GuestBinding {
        vm_pid: Some(vm_pid),
        vm_name: vm_name.to_string(),
        cpus,
    }
}

/// An agent was bound to VM `vm_pid` named `vm_name`.
pub fn guest_connected(
    rec: &mut Recorder,
    conn: u64,
    hello: &Hello,
    vm_pid: u32,
    vm_name: &str,
    vm: Option<&VmState>,
) {
    rec.guest_connected(conn, hello, binding(hello, vm_pid, vm_name));
    if let Some(vm) = vm {
        vm_epochs(rec, vm_pid, vm);
    }
}

/// Offset events: logged to `offsets.jsonl`, and the epochs of the VMs
/// they touch (those `vm` knows) kept.
pub fn offsets<'a>(
    rec: &mut Recorder,
    events: &[OffsetEvent],
    vm: impl Fn(u32) -> Option<&'a VmState>,
) {
    for e in events {
        if let Ok(json) = serde_json::to_string(e) {
            rec.offset_event(&json);
        }
    }
    let mut pids: Vec<u32> = events.iter().map(|e| e.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        if let Some(state) = vm(pid) {
            vm_epochs(rec, pid, state);
        }
    }
}

/// Every vCPU's epochs of one VM.
pub fn vm_epochs(rec: &mut Recorder, vm_pid: u32, vm: &VmState) {
    for (&vcpu, timeline) in &vm.vcpus {
        rec.vcpu_epochs(vm_pid, vcpu, timeline.epochs());
    }
}

/// The host thread running a vCPU (debugfs `kvm/PID-FD/vcpuN/pid`).
pub fn vcpu_thread(vm_pid: u32, vcpu: u32) -> Option<u32> {
    Debugfs::default()
        .vms_of(vm_pid)
        .ok()?
        .iter()
        .find_map(|vm| fs::read_to_string(vm.path.join(format!("vcpu{vcpu}/pid"))).ok())?
        .trim()
        .parse()
        .ok()
}

/// `uname` as `trace-cmd record` writes it: sysname nodename release machine.
pub fn uname() -> String {
    let read = |f: &str| {
        fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} {} {} {}",
        read("ostype"),
        read("hostname"),
        read("osrelease"),
        std::env::consts::ARCH
    )
}

/// `PID COMM` lines, by pid (a trace.dat's cmdlines section).
pub fn cmdlines_text(comms: std::collections::HashMap<i32, String>) -> String {
    let mut lines: Vec<_> = comms.into_iter().collect();
    lines.sort_unstable();
    lines
        .iter()
        .map(|(pid, comm)| format!("{pid} {comm}\n"))
        .collect()
}

/// The session starts recording: the host stream and the clock.
pub fn start(rec: &mut Recorder, host: &Instance, clock: &Clock) {
    rec.host_cmdlines_from(host.tracefs().clone());
    match host_stream(host) {
        Ok(stream) => rec.host_started(stream),
        Err(e) => {
            tracing::warn!("recording: the host trace's formats: {e}; host.dat will be missing")
        }
    }
    if let Some((tsc2nsec, offset)) = clock_conversion(clock) {
        rec.set_clock(tsc2nsec, offset);
    }
}

/// The session ends: last epochs and host task names, then assembly.
pub fn finish<'a>(
    mut rec: Recorder,
    vm: impl Fn(u32) -> Option<&'a VmState>,
    host_comms: Option<std::collections::HashMap<i32, String>>,
) {
    for pid in rec.vm_pids() {
        if let Some(state) = vm(pid) {
            vm_epochs(&mut rec, pid, state);
        }
    }
    if let Some(comms) = host_comms {
        rec.host_cmdlines(cmdlines_text(comms));
    }
    let dir = rec.dir().to_path_buf();
    match rec.finish() {
        Ok(summary) => super::readme::log_summary(&summary),
        Err(e) => tracing::error!(
            "assembling the recording in {}: {e} (the pages are in its spill/; try `tsc-tracer record-finish {}`)",
            dir.display(),
            dir.display()
        ),
    }
}
