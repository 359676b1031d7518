//! The flight recorder (`tsc-tracer host --flight-recorder SIZE`): the
//! session keeps only the newest SIZE bytes of trace in memory and, when
//! asked (SIGUSR1: `tsc-tracer dump`, or `kill -USR1 PID`), writes them
//! out as a recording that trace-cmd and KernelShark open: how to catch a
//! rare stall without storing days of trace. The session goes on.
//!
//! - **What is held.** The pages every stream delivers (the host's ring
//!   buffer pages, each guest agent's), as received, in arrival order, in
//!   a [`Ring`] bounded by their bytes: SIZE counts the encoded events,
//!   whole pages (a host page read before it filled counts its length,
//!   which is what a recording spills for it). The oldest pages go first.
//!   Beside them, what a recording needs to be read: the host's headers and
//!   formats, each guest's Hello and binding (kept while any of its pages
//!   is), and at the dump the epochs the session holds for each VM.
//! - **The dump.** `DIR/flight-YYYYmmddTHHMMSSZ/` (UTC; `-2`, `-3`, ...
//!   when two land in one second) under `--flight-dir DIR`: a
//!   [`Recorder`] directory made from those pages exactly as
//!   `--record` makes one (`host.dat`, one file per guest connection,
//!   README, spill/), written on a thread of its own so the session does
//!   not wait; its README is written last. What a page holds from before
//!   the window is in it too: the window is whole pages.
//! - **What is not in it.** The live output's formats (text, JSON,
//!   Perfetto): the dump is the recording's trace.dat files only; offset
//!   events are in the guest files' offset history, not in an
//!   `offsets.jsonl`.

mod ring;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    thread::JoinHandle,
    time::SystemTime,
};

use bytes::Bytes;

pub use ring::Ring;

use crate::{
    clock::Clock,
    correlator::VmState,
    record::{
        Recorder, StreamMeta, Tsc2Nsec,
        live::{self, binding},
        recorder::GuestBinding,
    },
    timeline::Epoch,
    tracefs::{Instance, Tracefs},
    wire::Hello,
};

/// Which stream a page is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum StreamId {
    Host,
    Guest(u64),
}

/// One page held.
#[derive(Clone, Debug)]
struct Held {
    stream: StreamId,
    cpu: u32,
    data: Bytes,
}

/// A guest connection whose pages are (or may be) held.
struct Guest {
    hello: Hello,
    binding: GuestBinding,
    open: bool,
    pages: u64,
}

/// The newest pages of every stream, and what reading them needs.
pub struct FlightRecorder {
    ring: Ring<Held>,
    dir: PathBuf,
    host: Option<StreamMeta>,
    clock: Option<(Tsc2Nsec, i64)>,
    guests: HashMap<u64, Guest>,
    dumps: Vec<JoinHandle<()>>,
    /// Where the host's task names are read at a dump.
    tracefs: Option<Tracefs>,
}

/// What a dump holds, moved to the thread that writes it.
struct Dump {
    path: PathBuf,
    host: Option<StreamMeta>,
    clock: Option<(Tsc2Nsec, i64)>,
    guests: Vec<(u64, Hello, GuestBinding)>,
    epochs: Vec<(u32, u32, Vec<Epoch>)>,
    pages: Vec<Held>,
}

impl FlightRecorder {
    /// Holds at most `limit` bytes of pages; dumps go under `dir`.
    pub fn new(limit: u64, dir: impl Into<PathBuf>) -> Self {
        Self {
            ring: Ring::new(limit),
            dir: dir.into(),
            host: None,
            clock: None,
            guests: HashMap::new(),
            dumps: Vec::new(),
            tracefs: None,
        }
    }

    /// The host trace's headers and formats, and the clock (as
    /// [`live::start`] gives a recording).
    pub fn start(&mut self, host: &Instance, clock: &Clock) {
        match live::host_stream(host) {
            Ok(stream) => self.host = Some(stream),
            Err(e) => tracing::warn!(
                "flight recorder: the host trace's formats: {e}; dumps will have no host.dat"
            ),
        }
        self.clock = live::clock_conversion(clock);
        self.tracefs = Some(host.tracefs().clone());
    }

    /// Bytes of pages held.
    pub fn bytes(&self) -> u64 {
        self.ring.bytes()
    }

    /// One host page.
    pub fn host_page(&mut self, cpu: u32, data: &Bytes) {
        self.push(StreamId::Host, cpu, data);
    }

    /// An agent was admitted and bound to VM `vm_pid` named `vm_name`.
    pub fn guest_connected(&mut self, conn: u64, hello: &Hello, vm_pid: u32, vm_name: &str) {
        let guest = Guest {
            hello: hello.clone(),
            binding: binding(hello, vm_pid, vm_name),
            open: true,
            pages: 0,
        };
        self.guests.insert(conn, guest);
    }

    /// One page of guest connection `conn` (kept only for bound agents).
    pub fn guest_page(&mut self, conn: u64, cpu: u32, data: &Bytes) {
        if let Some(g) = self.guests.get_mut(&conn) {
            g.pages += 1;
            self.push(StreamId::Guest(conn), cpu, data);
        }
    }

    /// The agent's connection ended: forgotten once its pages are.
    pub fn guest_closed(&mut self, conn: u64) {
        if let Some(g) = self.guests.get_mut(&conn) {
            g.open = false;
            if g.pages == 0 {
                self.guests.remove(&conn);
            }
        }
    }

    fn push(&mut self, stream: StreamId, cpu: u32, data: &Bytes) {
        let held = Held {
            stream,
            cpu,
            data: data.clone(),
        };
        let guests = &mut self.guests;
        self.ring.push(held, data.len() as u64, |old| {
            if let StreamId::Guest(conn) = old.stream
                && let Some(g) = guests.get_mut(&conn)
            {
                g.pages -= 1;
                if g.pages == 0 && !g.open {
                    guests.remove(&conn);
                }
            }
        });
    }

    /// Writes what is held as a recording under the flight directory, on
    /// a thread; returns its path at once (its README is written last).
    /// `vm` gives the session's state of a VM, for its epochs.
    pub fn dump<'a>(
        &mut self,
        vm: impl Fn(u32) -> Option<&'a VmState>,
    ) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = dump_path(&self.dir, SystemTime::now());
        let mut guests: Vec<(u64, Hello, GuestBinding)> = self
            .guests
            .iter()
            .filter(|(_, g)| g.pages > 0)
            .map(|(&conn, g)| (conn, g.hello.clone(), g.binding.clone()))
            .collect();
        guests.sort_by_key(|(conn, ..)| *conn);
        let mut pids: Vec<u32> = guests.iter().filter_map(|(_, _, b)| b.vm_pid).collect();
        pids.sort_unstable();
        pids.dedup();
        let epochs = pids
            .into_iter()
            .filter_map(|pid| Some((pid, vm(pid)?)))
            .flat_map(|(pid, state)| {
                state
                    .vcpus
                    .iter()
                    .map(move |(&vcpu, t)| (pid, vcpu, t.epochs().copied().collect()))
            })
            .collect();
        let mut host = self.host.clone();
        let comms = self.tracefs.as_ref().map(Tracefs::saved_cmdlines);
        if let (Some(host), Some(Ok(comms))) = (&mut host, comms) {
            host.cmdlines = live::cmdlines_text(comms);
        }
        let dump = Dump {
            path: path.clone(),
            host,
            clock: self.clock,
            guests,
            epochs,
            pages: self.ring.iter().cloned().collect(),
        };
        tracing::info!(
            "flight recorder: writing the last {} bytes ({} pages) to {}",
            self.ring.bytes(),
            self.ring.len(),
            path.display()
        );
        self.dumps.retain(|d| !d.is_finished());
        let thread = std::thread::Builder::new()
            .name("flight-dump".into())
            .spawn(move || write(dump))?;
        self.dumps.push(thread);
        Ok(path)
    }

    /// Waits for the dumps being written.
    pub fn wait(&mut self) {
        for d in self.dumps.drain(..) {
            if d.join().is_err() {
                tracing::error!("a flight recorder dump panicked");
            }
        }
    }
}

impl Drop for FlightRecorder {
    fn drop(&mut self) {
        self.wait();
    }
}

/// `DIR/flight-YYYYmmddTHHMMSSZ`, numbered when taken.
fn dump_path(dir: &Path, now: SystemTime) -> PathBuf {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let base = dir.join(format!("flight-{stamp}"));
    (1..)
        .map(|i| match i {
            1 => base.clone(),
            i => PathBuf::from(format!("{}-{i}", base.display())),
        })
        .find(|p| !p.exists())
        .unwrap_or(base)
}

/// Replays the pages into a new recording and assembles it.
fn write(dump: Dump) {
    let mut rec = match Recorder::create(&dump.path, false) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("flight recorder: {e}");
            return;
        }
    };
    if let Some(host) = dump.host {
        rec.host_started(host);
    }
    if let Some((tsc2nsec, offset)) = dump.clock {
        rec.set_clock(tsc2nsec, offset);
    }
    for (conn, hello, binding) in &dump.guests {
        rec.guest_connected(*conn, hello, binding.clone());
    }
    for (pid, vcpu, epochs) in &dump.epochs {
        rec.vcpu_epochs(*pid, *vcpu, epochs.iter());
    }
    for page in &dump.pages {
        match page.stream {
            StreamId::Host => rec.host_page(page.cpu, &page.data),
            StreamId::Guest(conn) => rec.guest_page(conn, page.cpu, &page.data),
        }
    }
    match rec.finish() {
        Ok(summary) => crate::record::readme::log_summary(&summary),
        Err(e) => tracing::error!("flight recorder: assembling {}: {e}", dump.path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_are_named_by_utc_time_and_never_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000);
        let first = dump_path(tmp.path(), t);
        assert_eq!(first.file_name().unwrap(), "flight-20261130T005320Z");
        std::fs::create_dir(&first).unwrap();
        let second = dump_path(tmp.path(), t);
        assert_eq!(second.file_name().unwrap(), "flight-20261130T005320Z-2");
    }

    #[test]
    fn a_guest_is_forgotten_once_closed_and_its_pages_evicted() {
        let mut f = FlightRecorder::new(8192, "/nonexistent");
        let hello = crate::demo::hello("g", &[0]);
        f.guest_connected(1, &hello, 42, "vm");
        let page = Bytes::from(vec![0u8; 4096]);
        f.guest_page(1, 0, &page);
        f.guest_page(7, 0, &page); // not bound: not kept
        assert_eq!(f.bytes(), 4096);
        f.guest_closed(1);
        assert!(f.guests.contains_key(&1), "its page is still held");
        f.host_page(0, &page);
        f.host_page(0, &page);
        assert!(!f.guests.contains_key(&1), "its last page went");
        assert_eq!(f.bytes(), 8192);
    }
}
