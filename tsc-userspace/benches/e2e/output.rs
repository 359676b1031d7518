//! The session's output file, and when each byte of it was written.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Write},
    path::Path,
    sync::{Arc, Mutex},
};

use tsc_userspace::output::OutputFormat;

use crate::{load, measure::mono_ns};

/// Per write(2) to the file: bytes written so far and the CLOCK_MONOTONIC
/// time it returned.
pub type Writes = Arc<Mutex<Vec<(u64, u64)>>>;

/// The file the session writes its timeline to, noting when each write
/// returned. Costs the session one clock read per write(2) (a batch of
/// lines), nothing per event.
pub struct TimedFile {
    file: File,
    written: u64,
    writes: Writes,
}

impl TimedFile {
    pub fn create(path: &Path) -> (Self, Writes) {
        let writes = Writes::default();
        let file = File::create(path).expect("creating the output");
        let timed = Self {
            file,
            written: 0,
            writes: writes.clone(),
        };
        (timed, writes)
    }
}

impl Write for TimedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        let now = mono_ns();
        self.written += n as u64;
        if let Ok(mut writes) = self.writes.lock() {
            writes.push((self.written, now));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// What the output holds.
pub struct Output {
    /// Lines of the host's events.
    pub host_lines: u64,
    /// Lines of guest events.
    pub guest_lines: u64,
    /// Per marker sequence number: when its line was written.
    pub written: Vec<Option<u64>>,
    /// Lines that are not in host-time order (their `(+delta)` is
    /// negative, or their `host_tsc` below the previous line's).
    pub out_of_order: u64,
    json: bool,
    last_tsc: u64,
}

/// Reads the output back (text or JSON lines) and times each marker line
/// by the write that carried its last byte.
pub fn read(path: &Path, writes: &Writes, sent: u64, format: OutputFormat) -> Output {
    let writes = writes.lock().expect("writes").clone();
    let mut out = Output {
        host_lines: 0,
        guest_lines: 0,
        written: vec![None; sent as usize],
        out_of_order: 0,
        json: format == OutputFormat::Json,
        last_tsc: 0,
    };
    let mut reader = BufReader::new(File::open(path).expect("the output"));
    let mut line = Vec::new();
    let mut offset = 0u64;
    while reader
        .read_until(b'\n', &mut line)
        .expect("reading the output")
        > 0
    {
        offset += line.len() as u64;
        out.count(&line, offset - 1, &writes);
        line.clear();
    }
    out
}

impl Output {
    fn count(&mut self, line: &[u8], last_byte: u64, writes: &[(u64, u64)]) {
        let (host, marker): (&[u8], &[u8]) = if self.json {
            (b"{\"source\":\"host\"", b"\"buf\":\"e2e:")
        } else {
            (b"host:", b"buf=e2e:")
        };
        if line.starts_with(host) {
            self.host_lines += 1;
        } else {
            self.guest_lines += 1;
        }
        if self.out_of_order(line) {
            self.out_of_order += 1;
        }
        let Some(at) = load::find(line, marker) else {
            return;
        };
        let Some((seq, _)) = load::parse(&line[at + marker.len()..]) else {
            return;
        };
        let i = writes.partition_point(|&(end, _)| end <= last_byte);
        if let (Some(slot), Some(&(_, t))) = (self.written.get_mut(seq as usize), writes.get(i)) {
            *slot = Some(t);
        }
    }
}

impl Output {
    fn out_of_order(&mut self, line: &[u8]) -> bool {
        if !self.json {
            return load::find(line, b": (-").is_some();
        }
        const KEY: &[u8] = b"\"host_tsc\":";
        let Some(at) = load::find(line, KEY) else {
            return false;
        };
        let digits = &line[at + KEY.len()..];
        let end = digits
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        let tsc = std::str::from_utf8(&digits[..end])
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let back = tsc < self.last_tsc;
        self.last_tsc = self.last_tsc.max(tsc);
        back
    }
}
