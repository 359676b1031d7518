//! The Perfetto trace messages this writer emits, hand-written for exactly
//! the fields it sets. Field numbers and types are upstream's (perfetto v50+,
//! checked against v54): each message names the `.proto` file it mirrors,
//! under `protos/perfetto/` in github.com/google/perfetto. All are `proto2`
//! `optional`s upstream, hence `Option` here: a field is on the wire only
//! when set, as upstream's own writers do.

/// `Trace.packet` (field 1 of `Trace`, `trace/trace.proto`): each packet
/// is written as this field, so a file is a concatenation of them.
pub const TRACE_PACKET_FIELD: u32 = 1;

/// `FtraceEventBundle.event` (field 2): the events of a bundle.
pub const BUNDLE_EVENT_FIELD: u32 = 2;

/// `trace/trace_packet.proto`: `TracePacket`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TracePacket {
    #[prost(uint64, optional, tag = "8")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    pub trusted_packet_sequence_id: Option<u32>,
    #[prost(uint32, optional, tag = "98")]
    pub machine_id: Option<u32>,
    #[prost(oneof = "Data", tags = "1, 2, 45")]
    pub data: Option<Data>,
}

/// `trace/trace_packet.proto`: the `TracePacket.data` oneof, the members used.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Data {
    #[prost(message, tag = "1")]
    FtraceEvents(FtraceEventBundle),
    #[prost(message, tag = "2")]
    ProcessTree(ProcessTree),
    #[prost(message, tag = "45")]
    SystemInfo(SystemInfo),
}

/// `common/system_info.proto`: `Utsname`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Utsname {
    #[prost(string, optional, tag = "1")]
    pub sysname: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub version: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub release: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub machine: Option<String>,
}

/// `common/system_info.proto`: `SystemInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SystemInfo {
    #[prost(message, optional, tag = "1")]
    pub utsname: Option<Utsname>,
    #[prost(uint32, optional, tag = "8")]
    pub num_cpus: Option<u32>,
    #[prost(string, optional, tag = "17")]
    pub machine_name: Option<String>,
}

/// `trace/ps/process_tree.proto`: `ProcessTree`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessTree {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<Process>,
    #[prost(message, repeated, tag = "2")]
    pub threads: Vec<Thread>,
}

/// `trace/ps/process_tree.proto`: `ProcessTree.Process`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    #[prost(string, repeated, tag = "3")]
    pub cmdline: Vec<String>,
    #[prost(bool, optional, tag = "9")]
    pub cmdline_is_comm: Option<bool>,
}

/// `trace/ps/process_tree.proto`: `ProcessTree.Thread`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Thread {
    #[prost(int32, optional, tag = "1")]
    pub tid: Option<i32>,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(int32, optional, tag = "3")]
    pub tgid: Option<i32>,
}

/// `trace/ftrace/ftrace_event_bundle.proto`: `FtraceEventBundle`. No
/// `ftrace_clock`: unset means BOOTTIME, which the timestamps are.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FtraceEventBundle {
    #[prost(uint32, optional, tag = "1")]
    pub cpu: Option<u32>,
    #[prost(message, repeated, tag = "2")] // BUNDLE_EVENT_FIELD
    pub event: Vec<FtraceEvent>,
}

/// `trace/ftrace/ftrace_event.proto`: `FtraceEvent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FtraceEvent {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "2")]
    pub pid: Option<u32>,
    #[prost(oneof = "Payload", tags = "3, 4, 17, 20, 114, 235, 236, 238, 240, 327")]
    pub event: Option<Payload>,
}

/// `trace/ftrace/ftrace_event.proto`: the `FtraceEvent.event` oneof, the
/// members used.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Payload {
    #[prost(message, tag = "3")]
    Print(PrintFtraceEvent),
    #[prost(message, tag = "4")]
    SchedSwitch(SchedSwitchFtraceEvent),
    #[prost(message, tag = "17")]
    SchedWakeup(SchedWakeFtraceEvent),
    #[prost(message, tag = "20")]
    SchedWaking(SchedWakeFtraceEvent),
    #[prost(message, tag = "114")]
    SchedWakeupNew(SchedWakeFtraceEvent),
    #[prost(message, tag = "235")]
    TaskNewtask(TaskNewtaskFtraceEvent),
    #[prost(message, tag = "236")]
    TaskRename(TaskRenameFtraceEvent),
    #[prost(message, tag = "238")]
    SchedProcessExit(SchedProcessExitFtraceEvent),
    #[prost(message, tag = "240")]
    SchedProcessFree(SchedProcessFreeFtraceEvent),
    #[prost(message, tag = "327")]
    Generic(GenericFtraceEvent),
}

/// `trace/ftrace/ftrace.proto`: `PrintFtraceEvent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PrintFtraceEvent {
    #[prost(uint64, optional, tag = "1")]
    pub ip: Option<u64>,
    #[prost(string, optional, tag = "2")]
    pub buf: Option<String>,
}

/// `trace/ftrace/sched.proto`: `SchedSwitchFtraceEvent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SchedSwitchFtraceEvent {
    #[prost(string, optional, tag = "1")]
    pub prev_comm: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub prev_pid: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    pub prev_prio: Option<i32>,
    #[prost(int64, optional, tag = "4")]
    pub prev_state: Option<i64>,
    #[prost(string, optional, tag = "5")]
    pub next_comm: Option<String>,
    #[prost(int32, optional, tag = "6")]
    pub next_pid: Option<i32>,
    #[prost(int32, optional, tag = "7")]
    pub next_prio: Option<i32>,
}

/// `trace/ftrace/sched.proto`: `SchedWakeupFtraceEvent`,
/// `SchedWakingFtraceEvent` and `SchedWakeupNewFtraceEvent`, which have the
/// same fields with the same numbers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SchedWakeFtraceEvent {
    #[prost(string, optional, tag = "1")]
    pub comm: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub pid: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    pub prio: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    pub success: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    pub target_cpu: Option<i32>,
}

/// `trace/ftrace/sched.proto`: `SchedProcessExitFtraceEvent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SchedProcessExitFtraceEvent {
    #[prost(string, optional, tag = "1")]
    pub comm: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub pid: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    pub prio: Option<i32>,
}

/// `trace/ftrace/sched.proto`: `SchedProcessFreeFtraceEvent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SchedProcessFreeFtraceEvent {
    #[prost(string, optional, tag = "1")]
    pub comm: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub pid: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    pub prio: Option<i32>,
}

/// `trace/ftrace/task.proto`: `TaskNewtaskFtraceEvent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskNewtaskFtraceEvent {
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    #[prost(string, optional, tag = "2")]
    pub comm: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    pub clone_flags: Option<u64>,
    #[prost(int32, optional, tag = "4")]
    pub oom_score_adj: Option<i32>,
}

/// `trace/ftrace/task.proto`: `TaskRenameFtraceEvent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskRenameFtraceEvent {
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    #[prost(string, optional, tag = "2")]
    pub oldcomm: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub newcomm: Option<String>,
    #[prost(int32, optional, tag = "4")]
    pub oom_score_adj: Option<i32>,
}

/// `trace/ftrace/generic.proto`: `GenericFtraceEvent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GenericFtraceEvent {
    #[prost(string, optional, tag = "1")]
    pub event_name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub field: Vec<GenericField>,
}

/// `trace/ftrace/generic.proto`: `GenericFtraceEvent.Field`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GenericField {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(oneof = "GenericValue", tags = "3, 4, 5")]
    pub value: Option<GenericValue>,
}

/// `trace/ftrace/generic.proto`: the `GenericFtraceEvent.Field.value` oneof
/// (`str_value`, `int_value`, `uint_value`).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum GenericValue {
    #[prost(string, tag = "3")]
    Str(String),
    #[prost(int64, tag = "4")]
    Int(i64),
    #[prost(uint64, tag = "5")]
    Uint(u64),
}
