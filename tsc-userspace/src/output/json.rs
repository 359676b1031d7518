//! JSON lines; the object is described in the [module documentation](super).

use std::{
    collections::HashMap,
    io::{self, Write},
};

use super::last_comm::LastComm;
use super::{
    EventWriter, FlushPolicy, Resolved, WriteContext,
    sink::Sink,
    value::{push_i64, push_json_str, push_json_value, push_u64},
};
use crate::merge::{MergeItem, SourceId, SourceKind};

/// Writes items as JSON objects, one per line.
#[derive(Debug)]
pub struct JsonWriter<W: Write> {
    sink: Sink<W>,
    /// What is the same for every event of a source, or of an event format
    /// of a source, written once and copied: the line is mostly keys and
    /// names that would otherwise be escaped and formatted per event.
    compiled: HashMap<FormatKey, Compiled, foldhash::fast::RandomState>,
    /// The last `,"pid":..,"comm":..,"fields":` written, and its key.
    task: Task,
}

/// A source (known or not), an event id (when known) and whether its format
/// is known. Source ids are never reused and a source's formats never
/// change, so this names one compiled form for the session's life.
type FormatKey = (SourceId, bool, Option<u16>, bool);

/// Bound on compiled forms kept (sources come and go in a long session).
const MAX_COMPILED: usize = 4096;

/// The constant parts of an event's line.
#[derive(Debug)]
struct Compiled {
    /// `{"source":..,"vm":..,"vm_pid":..,"cpu":`.
    head: Vec<u8>,
    /// `,"event":..,"id":..,"host_tsc":`.
    event: Vec<u8>,
    /// Per own field, in order: `"name":`, with a `,` before all but the
    /// first.
    keys: Vec<Vec<u8>>,
}

impl Compiled {
    fn new(r: &Resolved<'_>) -> Self {
        let mut head = Vec::new();
        let kind = r.source.map(|s| &s.info().kind);
        let (source, vm, vm_pid) = match kind {
            Some(SourceKind::Host) => ("host", None, None),
            Some(SourceKind::Guest { vm_name, vm_pid }) => ("guest", Some(vm_name), Some(*vm_pid)),
            None => ("unknown", None, None),
        };
        head.extend_from_slice(b"{\"source\":\"");
        head.extend_from_slice(source.as_bytes());
        head.extend_from_slice(b"\",\"vm\":");
        match vm {
            Some(name) => push_json_str(&mut head, name),
            None => head.extend_from_slice(b"null"),
        }
        head.extend_from_slice(b",\"vm_pid\":");
        opt_u64(&mut head, vm_pid.map(u64::from));
        head.extend_from_slice(b",\"cpu\":");
        let mut event = Vec::new();
        event.extend_from_slice(b",\"event\":");
        match &r.event {
            Some(e) => push_event_name(&mut event, &e.format.system, &e.format.name),
            None => event.extend_from_slice(b"null"),
        }
        event.extend_from_slice(b",\"id\":");
        opt_u64(&mut event, r.id.map(u64::from));
        event.extend_from_slice(b",\"host_tsc\":");
        let keys = r
            .event
            .iter()
            .flat_map(|e| e.format.own_fields())
            .enumerate()
            .map(|(i, field)| {
                let mut key = Vec::new();
                if i > 0 {
                    key.push(b',');
                }
                push_json_str(&mut key, field.name());
                key.push(b':');
                key
            })
            .collect();
        Self { head, event, keys }
    }
}

/// The last task written and its `,"pid":..,"comm":..,"fields":`.
#[derive(Debug, Default)]
struct Task {
    key: Option<(SourceId, Option<i32>)>,
    comm: LastComm,
    text: Vec<u8>,
}

impl Task {
    fn write(&mut self, buf: &mut Vec<u8>, source: SourceId, pid: Option<i32>, comm: Option<&str>) {
        let key = Some((source, pid));
        if self.key == key && self.comm.is(comm) {
            buf.extend_from_slice(&self.text);
            return;
        }
        let start = buf.len();
        buf.extend_from_slice(b",\"pid\":");
        match pid {
            Some(pid) => push_i64(buf, i64::from(pid)),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"comm\":");
        match comm {
            Some(comm) => push_json_str(buf, comm),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"fields\":");
        self.key = key;
        self.comm.set(comm);
        self.text.clear();
        self.text.extend_from_slice(&buf[start..]);
    }
}

impl<W: Write> JsonWriter<W> {
    /// A writer to `out`.
    pub fn new(out: W, flush: FlushPolicy) -> Self {
        Self {
            sink: Sink::new(out, flush),
            compiled: HashMap::default(),
            task: Task::default(),
        }
    }

    /// The underlying writer (flush first to see everything).
    pub fn get_ref(&self) -> &W {
        self.sink.get_ref()
    }

    fn line(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) {
        let r = Resolved::new(ctx.sources, item);
        let key = (item.source, r.source.is_some(), r.id, r.event.is_some());
        if self.compiled.len() >= MAX_COMPILED && !self.compiled.contains_key(&key) {
            self.compiled.clear();
        }
        let compiled = self
            .compiled
            .entry(key)
            .or_insert_with(|| Compiled::new(&r));
        let buf = &mut self.sink.buf;
        buf.extend_from_slice(&compiled.head);
        push_u64(buf, u64::from(item.cpu));
        buf.extend_from_slice(b",\"vcpu\":");
        opt_u64(buf, item.vcpu.map(u64::from));
        buf.extend_from_slice(&compiled.event);
        push_u64(buf, item.host_tsc);
        buf.extend_from_slice(b",\"ns\":");
        push_u64(buf, ctx.clock.tsc_to_ns(item.host_tsc));
        buf.extend_from_slice(b",\"guest_tsc\":");
        opt_u64(buf, item.guest_tsc);
        buf.extend_from_slice(b",\"epoch\":");
        opt_u64(buf, item.epoch);
        self.task.write(buf, item.source, r.pid, r.comm);
        match &r.event {
            Some(event) => {
                buf.push(b'{');
                for (key, (_, value)) in compiled.keys.iter().zip(event.fields()) {
                    buf.extend_from_slice(key);
                    push_json_value(buf, value);
                }
                buf.push(b'}');
            }
            None => {
                buf.extend_from_slice(b"null");
                buf.extend_from_slice(b",\"payload_len\":");
                push_u64(buf, item.data.payload().len() as u64);
            }
        }
        buf.extend_from_slice(b",\"flags\":");
        buf.push(b'[');
        for (i, name) in item.flags.names().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.push(b'"');
            buf.extend_from_slice(name.as_bytes());
            buf.push(b'"');
        }
        buf.extend_from_slice(b"]}\n");
    }
}

/// `"system:name"`.
fn push_event_name(buf: &mut Vec<u8>, system: &str, name: &str) {
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if plain(system) && plain(name) {
        buf.push(b'"');
        buf.extend_from_slice(system.as_bytes());
        buf.push(b':');
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'"');
    } else {
        push_json_str(buf, &format!("{system}:{name}"));
    }
}

fn opt_u64(buf: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => push_u64(buf, v),
        None => buf.extend_from_slice(b"null"),
    }
}

impl<W: Write> EventWriter for JsonWriter<W> {
    fn write(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) -> io::Result<()> {
        self.line(ctx, item);
        self.sink.line_done()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }

    fn held_bytes(&self) -> u64 {
        self.sink.buf.len() as u64
    }
}
