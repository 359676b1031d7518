//! Typed payloads for the events Perfetto has messages for: the scheduler
//! and task events its trace processor builds threads and slices from, and
//! `ftrace:print` (trace_marker text, so atrace-style markers become slices).
//!
//! Each kernel field goes into the message field of the same name; a kernel
//! field the message lacks (6.x's `sched_process_exit.group_dead`), or whose
//! value does not fit it, is handed back for the `tsc_tracer_extra`
//! companion event, so nothing is lost.

use super::{
    generic,
    proto::{
        GenericField, Payload, PrintFtraceEvent, SchedProcessExitFtraceEvent,
        SchedProcessFreeFtraceEvent, SchedSwitchFtraceEvent, SchedWakeFtraceEvent,
        TaskNewtaskFtraceEvent, TaskRenameFtraceEvent,
    },
};
use crate::tracefs::{Event, Value};

/// The typed payload of `event`, if Perfetto has one; fields it cannot hold
/// are appended to `extra`.
pub(super) fn typed(event: &Event<'_>, extra: &mut Vec<GenericField>) -> Option<Payload> {
    let mut payload = empty(&event.format.system, &event.format.name)?;
    for (field, value) in event.fields() {
        // A field beyond the record stays unset (JSON shows it as null).
        let taken = set(&mut payload, field.name(), value.as_ref().ok().copied());
        if !taken {
            extra.push(generic::field(field.name(), value));
        }
    }
    Some(payload)
}

/// An empty payload for `system:name`, if typed.
fn empty(system: &str, name: &str) -> Option<Payload> {
    Some(match (system, name) {
        ("ftrace", "print") => Payload::Print(Default::default()),
        ("sched", "sched_switch") => Payload::SchedSwitch(Default::default()),
        ("sched", "sched_wakeup") => Payload::SchedWakeup(Default::default()),
        ("sched", "sched_waking") => Payload::SchedWaking(Default::default()),
        ("sched", "sched_wakeup_new") => Payload::SchedWakeupNew(Default::default()),
        ("sched", "sched_process_exit") => Payload::SchedProcessExit(Default::default()),
        ("sched", "sched_process_free") => Payload::SchedProcessFree(Default::default()),
        ("task", "task_newtask") => Payload::TaskNewtask(Default::default()),
        ("task", "task_rename") => Payload::TaskRename(Default::default()),
        _ => return None,
    })
}

/// Sets field `name` to `v` (`None`: out of record, nothing to set). False
/// when the message has no such field or `v` does not fit it.
fn set(payload: &mut Payload, name: &str, v: Option<Value<'_>>) -> bool {
    match payload {
        Payload::Print(e) => print(e, name, v),
        Payload::SchedSwitch(e) => switch(e, name, v),
        Payload::SchedWakeup(e) | Payload::SchedWaking(e) | Payload::SchedWakeupNew(e) => {
            wake(e, name, v)
        }
        Payload::SchedProcessExit(e) => exit(e, name, v),
        Payload::SchedProcessFree(e) => free(e, name, v),
        Payload::TaskNewtask(e) => newtask(e, name, v),
        Payload::TaskRename(e) => rename(e, name, v),
        Payload::Generic(_) => false,
    }
}

fn print(e: &mut PrintFtraceEvent, name: &str, v: Option<Value<'_>>) -> bool {
    match name {
        "ip" => put_u64(&mut e.ip, v),
        "buf" => put_str(&mut e.buf, v),
        _ => false,
    }
}

fn switch(e: &mut SchedSwitchFtraceEvent, name: &str, v: Option<Value<'_>>) -> bool {
    match name {
        "prev_comm" => put_str(&mut e.prev_comm, v),
        "prev_pid" => put_i32(&mut e.prev_pid, v),
        "prev_prio" => put_i32(&mut e.prev_prio, v),
        // The kernel's bits as they are: the trace processor decodes them
        // by the machine's kernel release (hence `utsname.release`).
        "prev_state" => put_i64(&mut e.prev_state, v),
        "next_comm" => put_str(&mut e.next_comm, v),
        "next_pid" => put_i32(&mut e.next_pid, v),
        "next_prio" => put_i32(&mut e.next_prio, v),
        _ => false,
    }
}

fn wake(e: &mut SchedWakeFtraceEvent, name: &str, v: Option<Value<'_>>) -> bool {
    match name {
        "comm" => put_str(&mut e.comm, v),
        "pid" => put_i32(&mut e.pid, v),
        "prio" => put_i32(&mut e.prio, v),
        "success" => put_i32(&mut e.success, v),
        "target_cpu" => put_i32(&mut e.target_cpu, v),
        _ => false,
    }
}

fn exit(e: &mut SchedProcessExitFtraceEvent, name: &str, v: Option<Value<'_>>) -> bool {
    match name {
        "comm" => put_str(&mut e.comm, v),
        "pid" => put_i32(&mut e.pid, v),
        "prio" => put_i32(&mut e.prio, v),
        _ => false,
    }
}

fn free(e: &mut SchedProcessFreeFtraceEvent, name: &str, v: Option<Value<'_>>) -> bool {
    match name {
        "comm" => put_str(&mut e.comm, v),
        "pid" => put_i32(&mut e.pid, v),
        "prio" => put_i32(&mut e.prio, v),
        _ => false,
    }
}

fn newtask(e: &mut TaskNewtaskFtraceEvent, name: &str, v: Option<Value<'_>>) -> bool {
    match name {
        "pid" => put_i32(&mut e.pid, v),
        "comm" => put_str(&mut e.comm, v),
        "clone_flags" => put_u64(&mut e.clone_flags, v),
        "oom_score_adj" => put_i32(&mut e.oom_score_adj, v),
        _ => false,
    }
}

fn rename(e: &mut TaskRenameFtraceEvent, name: &str, v: Option<Value<'_>>) -> bool {
    match name {
        "pid" => put_i32(&mut e.pid, v),
        "oldcomm" => put_str(&mut e.oldcomm, v),
        "newcomm" => put_str(&mut e.newcomm, v),
        "oom_score_adj" => put_i32(&mut e.oom_score_adj, v),
        _ => false,
    }
}

fn put_str(slot: &mut Option<String>, v: Option<Value<'_>>) -> bool {
    match v {
        None => true,
        Some(Value::Str(s)) => {
            *slot = Some(String::from_utf8_lossy(s).into_owned());
            true
        }
        Some(_) => false,
    }
}

/// The integer of a signed or unsigned field (not a pointer, array or text).
fn integer(v: Value<'_>) -> Option<i128> {
    match v {
        Value::Signed(v) => Some(i128::from(v)),
        Value::Unsigned(v) => Some(i128::from(v)),
        _ => None,
    }
}

fn put_int<T: TryFrom<i128>>(slot: &mut Option<T>, v: Option<Value<'_>>) -> bool {
    let Some(v) = v else { return true };
    match integer(v).and_then(|v| T::try_from(v).ok()) {
        Some(v) => {
            *slot = Some(v);
            true
        }
        None => false,
    }
}

fn put_i32(slot: &mut Option<i32>, v: Option<Value<'_>>) -> bool {
    put_int(slot, v)
}

fn put_i64(slot: &mut Option<i64>, v: Option<Value<'_>>) -> bool {
    put_int(slot, v)
}

fn put_u64(slot: &mut Option<u64>, v: Option<Value<'_>>) -> bool {
    match v {
        // `unsigned long ip` may be typed a pointer by its declaration.
        Some(Value::Pointer(p)) => {
            *slot = Some(p);
            true
        }
        v => put_int(slot, v),
    }
}
