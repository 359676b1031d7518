//! The merged timeline as a Perfetto trace (`--format perfetto`), for the
//! Perfetto UI (ui.perfetto.dev, "Open trace file") and its trace
//! processor (SQL).
//!
//! # The file
//! A `Trace` (upstream `protos/perfetto/trace/trace.proto`): a sequence of
//! `TracePacket`s, each written as field 1 of `Trace` (key, length,
//! message). Packets are appended whole as the merge releases events, so
//! the file is a valid trace after every flush, and a session killed
//! mid-write leaves a prefix whose whole packets all decode.
//!
//! - **Machines.** The first packet is the host's `SystemInfo` (45):
//!   `utsname` (sysname, version, release, machine; the trace processor
//!   decodes `prev_state` by the release) and `machine_name` (the host
//!   name). Each guest source (one agent) is a machine of its own: all its
//!   packets carry `machine_id` (98), numbered 1, 2, ... in the order their
//!   first event is written, and its first packet is its `SystemInfo`:
//!   `machine_name` the VM's name, `utsname.release` the guest kernel's
//!   release from the agent's Hello. Guest machines have no
//!   `ClockSnapshot`: their timestamps are already host time. Each machine
//!   is its own packet sequence (`trusted_packet_sequence_id` = 1 +
//!   `machine_id`).
//! - **Time.** Every timestamp is host `CLOCK_BOOTTIME` nanoseconds (the
//!   clock the trace processor reads ftrace timestamps as, the bundles'
//!   `ftrace_clock` being unset), converted from the event's host TSC by
//!   [`WriteContext::boottime`](super::WriteContext::boottime), the
//!   session's BOOTTIME calibration ([`crate::clock`]).
//! - **Events.** `ftrace_events` (1) packets: one `FtraceEventBundle` per
//!   machine and CPU per flush (`cpu` always set: a host CPU, or the guest
//!   CPU on a guest machine), each `FtraceEvent` with `timestamp` and `pid`
//!   (`common_pid`). Typed payloads where Perfetto has them: `print` (3,
//!   trace_marker text: atrace `B|pid|name` / `E|pid` become slices),
//!   `sched_switch` (4, `prev_state` as the kernel's bits), `sched_wakeup`
//!   (17), `sched_waking` (20), `sched_wakeup_new` (114), `task_newtask`
//!   (235), `task_rename` (236), `sched_process_exit` (238),
//!   `sched_process_free` (240). Every other event, kvm ones included, is a
//!   `GenericFtraceEvent` (327) named after the event (without its system)
//!   with every field: `int_value` for signed integers, `uint_value` for
//!   unsigned ones and pointers, `str_value` for text (lossy UTF-8) and for
//!   arrays and other bytes (their JSON text); no value for a field beyond
//!   the record. An event of unknown format is a generic `tsc_tracer_unknown`
//!   with `id` (when known) and `payload_len`, and no pid.
//! - **Nothing lost.** An event's flags (`resolved-by-order`,
//!   `outside-epoch`, `backwards`, `offset-not-applied`, `late`: every
//!   name [`Flags::names`](crate::Flags::names) gives) are the field
//!   `tsc_tracer_flags` (comma-separated names, as in the text output) of a
//!   generic event. A typed event cannot hold it, nor a kernel field its
//!   message lacks (6.x's `sched_process_exit.group_dead`): when it has
//!   either, a generic `tsc_tracer_extra` event follows it in the same
//!   bundle, same timestamp and pid, holding `tsc_tracer_of`
//!   (`system:name`), those fields, and `tsc_tracer_flags`. In the trace
//!   processor both are rows of the `ftrace_event` table with their fields
//!   as args; a query for flagged events is
//!   `SELECT * FROM ftrace_event JOIN args USING (arg_set_id) WHERE key GLOB '*tsc_tracer_flags'`.
//! - **Tasks.** `ProcessTree` (2) packets per machine name every task that
//!   is an event's pid and that its source's command-name table names (the
//!   host's `saved_cmdlines` and sched events, the guest's agent and sched
//!   events), once and again when renamed. Host tasks are grouped under
//!   their processes (tgid from `/proc` when first seen); a guest's tasks
//!   are named but not grouped (the agent does not send tgids).
//! - **vCPU threads.** On the host machine, each guest's VMM process is
//!   named `VM: VMM of guest machine N` and its vCPU threads (KVM debugfs
//!   `vcpuN/pid`, read when the guest's first event is written and again
//!   whenever a new thread of the VMM shows in the host's events; a vCPU
//!   has a thread there once it has run) are named `VM vCPU N`, so the host thread running guest machine N's CPU is found
//!   by name beside the guest machine's CPU tracks. Names given this way
//!   stay: the trace processor ranks `ProcessTree` names above the ones
//!   sched events carry.
//!
//! # Why prost with hand-written messages
//! The messages are plain Rust structs with `prost` derives (`proto.rs`),
//! for exactly the fields written, each citing its upstream `.proto`. No
//! protoc and no build-time code generation (nothing to install, nothing
//! generated to review), and the wire encoding is prost's, which is well
//! kept and exact. The alternatives: generated bindings of the whole
//! upstream schema (thousands of messages, a protoc build step), or a
//! hand-rolled varint writer (the same struct-per-message work, minus the
//! tested encoder).

mod generic;
mod machine;
mod packet;
mod proto;
mod sched;

use std::io::{self, Write};

pub use generic::{EXTRA_EVENT, FLAGS_FIELD, OF_FIELD, UNKNOWN_EVENT};
pub use machine::HostMachine;

use super::{EventWriter, FlushPolicy, Resolved, WriteContext, sink::Sink};
use crate::merge::MergeItem;
use packet::Bundles;
use proto::{FtraceEvent, Payload};

/// Events held in bundles past which they are written out before the next
/// flush (bounds the memory a long batch takes).
const MAX_HELD: usize = 4096;

/// Writes items as a Perfetto trace; the file is described in the
/// [module documentation](self).
#[derive(Debug)]
pub struct PerfettoWriter<W: Write> {
    sink: Sink<W>,
    machines: machine::Machines,
    bundles: Bundles,
    policy: FlushPolicy,
    warned_no_boottime: bool,
}

impl<W: Write> PerfettoWriter<W> {
    /// A writer to `out` describing this machine as the host.
    pub fn new(out: W, flush: FlushPolicy) -> Self {
        Self::with_host(out, flush, HostMachine::this())
    }

    /// A writer to `out` with `host` as the host machine.
    pub fn with_host(out: W, flush: FlushPolicy, host: HostMachine) -> Self {
        let mut sink = Sink::new(out, flush);
        packet::encode(&mut sink.buf, &host.system_info());
        Self {
            sink,
            machines: machine::Machines::new(host),
            bundles: Bundles::default(),
            policy: flush,
            warned_no_boottime: false,
        }
    }

    /// The host machine as written.
    pub fn host(&self) -> &HostMachine {
        self.machines.host()
    }

    /// The underlying writer (flush first to see everything).
    pub fn get_ref(&self) -> &W {
        self.sink.get_ref()
    }

    fn timestamp(&mut self, ctx: &WriteContext<'_>, tsc: u64) -> u64 {
        match ctx.boottime {
            Some(boot) => boot.tsc_to_ns(tsc),
            None => {
                if !self.warned_no_boottime {
                    self.warned_no_boottime = true;
                    tracing::warn!(
                        "no CLOCK_BOOTTIME conversion given: Perfetto timestamps are the session clock's"
                    );
                }
                ctx.clock.tsc_to_ns(tsc)
            }
        }
    }

    fn add(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) {
        let ts = self.timestamp(ctx, item.host_tsc);
        let r = Resolved::new(ctx.sources, item);
        let m = self.machines.of(item.source, r.source, &mut self.sink.buf);
        if let Some(pid) = r.pid {
            self.machines.saw_task(m, pid, r.comm, ts);
        }
        let machine_id = self.machines.id(m);
        let event = |payload| FtraceEvent {
            timestamp: Some(ts),
            pid: r.pid.map(|p| p as u32),
            event: Some(payload),
        };
        let mut push = |payload| {
            self.bundles
                .push(item.source, machine_id, item.cpu, event(payload));
        };
        let Some(e) = &r.event else {
            let len = item.data.payload().len();
            push(Payload::Generic(generic::unknown(r.id, len, item.flags)));
            return;
        };
        let mut extra = Vec::new();
        match sched::typed(e, &mut extra) {
            Some(payload) => {
                push(payload);
                if let Some(companion) = generic::extra(e, extra, item.flags) {
                    push(Payload::Generic(companion));
                }
            }
            None => push(Payload::Generic(generic::event(e, item.flags))),
        }
    }

    /// Pending names and bundles, as packets, to the sink's buffer.
    fn drain(&mut self) {
        self.machines.drain_trees(&mut self.sink.buf);
        self.bundles.drain(&mut self.sink.buf);
    }
}

impl<W: Write> EventWriter for PerfettoWriter<W> {
    fn write(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) -> io::Result<()> {
        self.add(ctx, item);
        if self.policy == FlushPolicy::EveryEvent || self.bundles.held() >= MAX_HELD {
            self.drain();
            return self.sink.line_done();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain();
        self.sink.flush()
    }

    fn held_bytes(&self) -> u64 {
        (self.sink.buf.len() + self.bundles.held_bytes()) as u64
    }
}

impl<W: Write> Drop for PerfettoWriter<W> {
    /// What is held goes to the sink, which writes it out as it drops.
    fn drop(&mut self) {
        self.drain();
    }
}

#[cfg(test)]
mod tests;
