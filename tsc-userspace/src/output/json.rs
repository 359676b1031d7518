//! JSON lines; the object is described in the [module documentation](super).

use std::io::{self, Write};

use super::{
    EventWriter, FlushPolicy, Resolved, WriteContext,
    sink::Sink,
    value::{push_i64, push_json_str, push_json_value, push_u64},
};
use crate::merge::{MergeItem, SourceKind};

/// Writes items as JSON objects, one per line.
#[derive(Debug)]
pub struct JsonWriter<W: Write> {
    sink: Sink<W>,
}

impl<W: Write> JsonWriter<W> {
    /// A writer to `out`.
    pub fn new(out: W, flush: FlushPolicy) -> Self {
        Self {
            sink: Sink::new(out, flush),
        }
    }

    /// The underlying writer (flush first to see everything).
    pub fn get_ref(&self) -> &W {
        self.sink.get_ref()
    }

    fn line(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) {
        let r = Resolved::new(ctx.sources, item);
        let buf = &mut self.sink.buf;
        let kind = r.source.map(|s| &s.info().kind);
        let (source, vm, vm_pid) = match kind {
            Some(SourceKind::Host) => ("host", None, None),
            Some(SourceKind::Guest { vm_name, vm_pid }) => ("guest", Some(vm_name), Some(*vm_pid)),
            None => ("unknown", None, None),
        };
        buf.extend_from_slice(b"{\"source\":\"");
        buf.extend_from_slice(source.as_bytes());
        buf.extend_from_slice(b"\",\"vm\":");
        match vm {
            Some(name) => push_json_str(buf, name),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"vm_pid\":");
        opt_u64(buf, vm_pid.map(u64::from));
        buf.extend_from_slice(b",\"cpu\":");
        push_u64(buf, u64::from(item.cpu));
        buf.extend_from_slice(b",\"vcpu\":");
        opt_u64(buf, item.vcpu.map(u64::from));
        buf.extend_from_slice(b",\"event\":");
        match &r.event {
            Some(e) => push_event_name(buf, &e.format.system, &e.format.name),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"id\":");
        opt_u64(buf, r.id.map(u64::from));
        buf.extend_from_slice(b",\"host_tsc\":");
        push_u64(buf, item.host_tsc);
        buf.extend_from_slice(b",\"ns\":");
        push_u64(buf, ctx.clock.tsc_to_ns(item.host_tsc));
        buf.extend_from_slice(b",\"guest_tsc\":");
        opt_u64(buf, item.guest_tsc);
        buf.extend_from_slice(b",\"epoch\":");
        opt_u64(buf, item.epoch);
        buf.extend_from_slice(b",\"pid\":");
        match r.pid {
            Some(pid) => push_i64(buf, i64::from(pid)),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"comm\":");
        match r.comm {
            Some(comm) => push_json_str(buf, comm),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"fields\":");
        match &r.event {
            Some(event) => {
                buf.push(b'{');
                for (i, (field, value)) in event.fields().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    push_json_str(buf, field.name());
                    buf.push(b':');
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
}
