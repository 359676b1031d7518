//! `trace-cmd report`-like text lines; the format is described in the
//! [module documentation](super).

use std::io::{self, Write};

use super::last_comm::LastComm;
use super::{
    ClockMode, EventWriter, FlushPolicy, Resolved, WriteContext,
    sink::Sink,
    value::{push_i64, push_text, push_text_value, push_u64, push_u64_padded},
};
use crate::merge::{MergeItem, SourceId};

/// Width `SOURCE:` is padded to, so that `host` and short VM names align.
const LABEL_WIDTH: usize = 6;
/// Width `COMM-PID` is right-aligned to, as `trace-cmd report` does.
const TASK_WIDTH: usize = 16;

/// Writes items as text lines.
#[derive(Debug)]
pub struct TextWriter<W: Write> {
    sink: Sink<W>,
    clock: ClockMode,
    /// The previous line's time stamp, in the unit printed.
    prev: Option<u64>,
    /// The last line's `SOURCE: COMM-PID [` as written, and what it was
    /// made of: consecutive events mostly come from one task, whose
    /// prefix is then copied rather than padded and escaped again.
    prefix: Prefix,
}

/// A cached line prefix and its key.
#[derive(Debug, Default)]
struct Prefix {
    /// Source, whether it was known, and pid.
    key: Option<(SourceId, bool, Option<i32>)>,
    /// The comm it was written with.
    comm: LastComm,
    text: Vec<u8>,
}

impl Prefix {
    fn matches(&self, key: (SourceId, bool, Option<i32>), comm: Option<&str>) -> bool {
        self.key == Some(key) && self.comm.is(comm)
    }

    fn set(&mut self, key: (SourceId, bool, Option<i32>), comm: Option<&str>, text: &[u8]) {
        self.key = Some(key);
        self.comm.set(comm);
        self.text.clear();
        self.text.extend_from_slice(text);
    }
}

impl<W: Write> TextWriter<W> {
    /// A writer to `out`.
    pub fn new(out: W, clock: ClockMode, flush: FlushPolicy) -> Self {
        Self {
            sink: Sink::new(out, flush),
            clock,
            prev: None,
            prefix: Prefix::default(),
        }
    }

    /// The underlying writer (flush first to see everything).
    pub fn get_ref(&self) -> &W {
        self.sink.get_ref()
    }

    fn line(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) {
        let r = Resolved::new(ctx.sources, item);
        let buf = &mut self.sink.buf;
        let key = (item.source, r.source.is_some(), r.pid);
        if self.prefix.matches(key, r.comm) {
            buf.extend_from_slice(&self.prefix.text);
        } else {
            let start = buf.len();
            push_prefix(buf, &r, item);
            self.prefix.set(key, r.comm, &buf[start..]);
        }
        push_u64_padded(buf, u64::from(item.cpu), 3);
        buf.extend_from_slice(b"] ");
        let now = match self.clock {
            ClockMode::Ns => {
                let ns = ctx.clock.tsc_to_ns(item.host_tsc);
                push_u64(buf, ns / 1_000_000_000);
                buf.push(b'.');
                push_u64_padded(buf, ns % 1_000_000_000, 9);
                ns
            }
            ClockMode::Tsc => {
                push_u64(buf, item.host_tsc);
                item.host_tsc
            }
        };
        let delta = self.prev.map_or(0, |p| i128::from(now) - i128::from(p));
        self.prev = Some(now);
        buf.extend_from_slice(if delta < 0 { b": (" } else { b": (+" });
        push_i64(
            buf,
            delta.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
        );
        buf.extend_from_slice(b") ");
        push_event(buf, &r, item);
        push_flags(buf, item);
        buf.push(b'\n');
    }
}

/// `SOURCE: COMM-PID [`, padded.
fn push_prefix(buf: &mut Vec<u8>, r: &Resolved<'_>, item: &MergeItem) {
    let start = buf.len();
    match r.source {
        Some(s) => buf.extend_from_slice(s.label().as_bytes()),
        None => {
            buf.push(b'?');
            push_u64(buf, u64::from(item.source.0));
        }
    }
    buf.push(b':');
    let label_len = buf.len() - start;
    buf.resize(buf.len() + LABEL_WIDTH.saturating_sub(label_len), b' ');
    push_task(buf, r.comm, r.pid);
    buf.extend_from_slice(b" [");
}

/// ` COMM-PID`, right-aligned.
fn push_task(buf: &mut Vec<u8>, comm: Option<&str>, pid: Option<i32>) {
    let comm = comm.unwrap_or("<...>");
    let mut itoa = itoa::Buffer::new();
    let pid = pid.map_or("?", |p| itoa.format(p));
    let len = comm.len() + 1 + pid.len();
    buf.resize(buf.len() + 1 + TASK_WIDTH.saturating_sub(len), b' ');
    push_text(buf, comm.as_bytes());
    buf.push(b'-');
    buf.extend_from_slice(pid.as_bytes());
}

/// `system:name: field=value ...`, or the unknown-format form.
fn push_event(buf: &mut Vec<u8>, r: &Resolved<'_>, item: &MergeItem) {
    let Some(event) = &r.event else {
        buf.extend_from_slice(b"<unknown id ");
        match r.id {
            Some(id) => push_u64(buf, u64::from(id)),
            None => buf.push(b'?'),
        }
        buf.extend_from_slice(b">: len=");
        push_u64(buf, item.data.payload().len() as u64);
        return;
    };
    buf.extend_from_slice(event.format.system.as_bytes());
    buf.push(b':');
    buf.extend_from_slice(event.format.name.as_bytes());
    buf.push(b':');
    for (field, value) in event.fields() {
        buf.push(b' ');
        buf.extend_from_slice(field.name().as_bytes());
        buf.push(b'=');
        push_text_value(buf, value);
    }
}

fn push_flags(buf: &mut Vec<u8>, item: &MergeItem) {
    if item.flags.is_empty() {
        return;
    }
    for (i, name) in item.flags.names().enumerate() {
        buf.extend_from_slice(if i == 0 { b" [" } else { b"," });
        buf.extend_from_slice(name.as_bytes());
    }
    buf.push(b']');
}

impl<W: Write> EventWriter for TextWriter<W> {
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
