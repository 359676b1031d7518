//! The workload: trace_marker writes into the agent's instance, each
//! carrying its sequence number and the CLOCK_MONOTONIC time just before
//! its write(2). Shared with the soak bench (`benches/soak`, which
//! includes this file by path: hence `super::`, not `crate::`).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::measure::mono_ns;

/// Marker texts start with this; the rest is `SEQ:SEND_NS`.
pub const TAG: &[u8] = b"e2e:";

/// What was written.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// The `trace_marker` of the agent `agent_pid`'s instance, once it exists.
pub fn agent_marker(agent_pid: u32) -> PathBuf {
    let prefix = format!("tsc-agent-{agent_pid}-");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = fs::read_dir("/sys/kernel/tracing/instances")
            .expect("tracefs instances")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        if let Some(dir) = found {
            return dir.path().join("trace_marker");
        }
        assert!(Instant::now() < deadline, "the agent made no instance");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `count` markers on `cpu`: back to back with `rate` `None`, else
/// `rate` per second in bursts every millisecond.
pub fn run(marker: &Path, cpu: usize, count: u64, rate: Option<u64>) -> Sent {
    pin_to(cpu);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(marker)
        .expect("opening trace_marker");
    let mut line = Vec::with_capacity(64);
    let start = Instant::now();
    let first_ns = mono_ns();
    let mut last_ns = first_ns;
    let mut seq = 0u64;
    while seq < count {
        let due = match rate {
            None => count,
            Some(rate) => ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(count),
        };
        while seq < due {
            last_ns = mono_ns();
            marker_text(&mut line, seq, last_ns);
            file.write_all(&line).expect("writing trace_marker");
            seq += 1;
        }
        if rate.is_some() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Sent {
        count,
        first_ns,
        last_ns,
    }
}

/// The text of marker `seq` sent at `send_ns`, into `line`.
pub fn marker_text(line: &mut Vec<u8>, seq: u64, send_ns: u64) {
    line.clear();
    line.extend_from_slice(TAG);
    line.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    line.push(b':');
    line.extend_from_slice(itoa::Buffer::new().format(send_ns).as_bytes());
}

/// Keeps the workload on one CPU so the guest's events form one busy
/// stream (see the bench's doc comment).
fn pin_to(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays in it
    // for cpu < CPU_SETSIZE; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `SEQ` and `SEND_NS` of a marker text that starts at `text` (after the
/// tag), up to the first byte that is neither a digit nor `:`.
pub fn parse(text: &[u8]) -> Option<(u64, u64)> {
    let end = text
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b':'))
        .unwrap_or(text.len());
    let text = std::str::from_utf8(&text[..end]).ok()?;
    let (seq, ns) = text.split_once(':')?;
    Some((seq.parse().ok()?, ns.parse().ok()?))
}

/// Where `needle` starts in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
