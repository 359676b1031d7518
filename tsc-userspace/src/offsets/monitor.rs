//! Keeps an [`OffsetMap`] current from the kernel, live.
//!
//! Sources, in order of trust: the kernel offsets map (always right, even
//! after a ring-buffer overflow), the ring buffer (every change, in order,
//! unless it overflowed), debugfs (VMs that existed before us, and the
//! effective offset after each change), pidfds (VM exits).

use std::{
    collections::VecDeque,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::Interest, io::unix::AsyncFd, sync::mpsc};
use tsc_common::record::{EntryRecord, OffsetRecord, VcpuKey, VcpuOffset};

use super::{
    Change, EventKind, OffsetEvent, OffsetMap, OffsetSource, Update,
    boundary::{self, BoundaryTracker, Record},
};
use crate::{
    ebpf::{Counters, LoadError, LoadOptions, Logger, Programs},
    kvm::{Debugfs, KvmError},
    process::{self, ProcessId},
};

/// How long a change waits for its vCPU's debugfs directory to appear (KVM
/// fires the tracepoint at vCPU creation before it creates the directory).
const READBACK_WAIT: Duration = Duration::from_millis(250);
/// How often pending read-backs are retried.
const READBACK_RETRY: Duration = Duration::from_millis(5);
/// How often the overflow counter is checked when nothing else happens.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Errors of the monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The programs could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// debugfs could not be read at start.
    #[error("finding running VMs: {0}")]
    Bootstrap(#[from] KvmError),
    /// Registering a descriptor with tokio failed.
    #[error("polling {what}: {source}")]
    Poll {
        /// Which descriptor.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Reading the kernel counters failed.
    #[error("reading the eBPF counters: {0}")]
    Counters(#[from] aya::maps::MapError),
}

/// Options of the monitor.
#[derive(Clone, Debug, Default)]
pub struct MonitorOptions {
    /// How to load the programs.
    pub load: LoadOptions,
    /// KVM debugfs reader.
    pub debugfs: Debugfs,
    /// Changes kept per vCPU (0: the default).
    pub history: usize,
    /// An offsets map pinned by another session, read at start for the
    /// offsets KVM was asked for before we started (debugfs only shows the
    /// effective ones).
    pub read_pinned: Option<std::path::PathBuf>,
}

/// A change waiting for its effective-offset read-back.
struct Pending {
    event: OffsetEvent,
    deadline: Instant,
}

/// The live offsets table and the machinery that keeps it current.
pub struct Monitor {
    // Field order is drop order: the polled descriptors go before the programs.
    records: AsyncFd<RingBuf<MapData>>,
    logger: Option<AsyncFd<Logger>>,
    programs: Programs,
    map: OffsetMap,
    debugfs: Debugfs,
    exits_tx: mpsc::UnboundedSender<ProcessId>,
    exits_rx: mpsc::UnboundedReceiver<ProcessId>,
    queue: VecDeque<Pending>,
    ringbuf_full_seen: u64,
    edges: BoundaryTracker,
    /// Fraction bits of the host's TSC scaling ratios, once debugfs showed
    /// them (None: no scaling seen, ratios are taken as unity).
    frac_bits: Option<u32>,
}

impl Monitor {
    /// Loads the programs, then reads the VMs that already run from debugfs.
    /// Must be called inside a tokio runtime. Loading comes first so that no
    /// change between the two is missed.
    pub fn start(options: MonitorOptions) -> Result<Self, MonitorError> {
        // Read another session's pin before ours may replace it.
        let pinned = options
            .read_pinned
            .as_deref()
            .map(read_pinned)
            .unwrap_or_default();
        let mut programs = Programs::load(&options.load)?;
        let records = programs.take_records().ok_or(LoadError::NoMap("RECORDS"))?;
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns it.
        let records = unsafe { AsyncFd::register_with_interest(records, Interest::READABLE) }
            .map_err(|e| MonitorError::Poll {
                what: "the offsets ring buffer",
                source: e.into_parts().1,
            })?;
        let logger = programs.take_logger().and_then(|logger| {
            // SAFETY: as above, the logger owns its ring buffer's fd.
            unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }.ok()
        });
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let history = if options.history == 0 {
            super::DEFAULT_HISTORY
        } else {
            options.history
        };
        let mut monitor = Self {
            records,
            logger,
            ringbuf_full_seen: programs.counters()?.ringbuf_full,
            programs,
            map: OffsetMap::new(history),
            debugfs: options.debugfs,
            exits_tx,
            exits_rx,
            queue: VecDeque::new(),
            edges: BoundaryTracker::default(),
            frac_bits: None,
        };
        monitor.bootstrap(&pinned)?;
        Ok(monitor)
    }

    /// The table as it is now.
    pub fn map(&self) -> &OffsetMap {
        &self.map
    }

    /// The kernel programs' counters.
    pub fn counters(&self) -> Result<Counters, MonitorError> {
        Ok(self.programs.counters()?)
    }

    /// The loaded programs.
    pub fn programs(&self) -> &Programs {
        &self.programs
    }

    /// Where the offsets map is pinned.
    pub fn pin_path(&self) -> Option<&std::path::Path> {
        self.programs.pin_path()
    }

    /// Waits for the next events (at least one), in the order they happened.
    pub async fn next(&mut self) -> Result<Vec<OffsetEvent>, MonitorError> {
        loop {
            let ready = self.take_ready();
            if !ready.is_empty() {
                return Ok(ready);
            }
            let tick = if self.queue.is_empty() {
                HOUSEKEEPING
            } else {
                READBACK_RETRY
            };
            tokio::select! {
                guard = self.records.readable_mut() => {
                    let mut guard = guard.map_err(|source| MonitorError::Poll { what: "the offsets ring buffer", source })?;
                    let records = drain(guard.get_inner_mut());
                    guard.clear_ready();
                    for record in records {
                        self.on_record(&record);
                    }
                    self.check_overflow()?;
                }
                Some(process) = self.exits_rx.recv() => self.on_exit(process),
                () = logs_ready(&mut self.logger) => {}
                () = tokio::time::sleep(tick) => self.check_overflow()?,
            }
        }
    }

    fn bootstrap(&mut self, pinned: &[(VcpuKey, VcpuOffset)]) -> Result<(), MonitorError> {
        for vm in self.debugfs.vms()? {
            let Some(process) = self.track_vm(vm.pid) else {
                continue;
            };
            let vcpus = match self.debugfs.vcpus(&vm) {
                Ok(v) => v,
                Err(KvmError::Gone(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            for v in vcpus {
                self.frac_bits = self.frac_bits.or(v.scaling.map(|s| s.frac_bits));
                self.map
                    .bootstrap_vcpu(process.pid, v.vcpu_id, v.tsc_offset, v.scaling);
                let key = VcpuKey {
                    tgid: process.pid,
                    vcpu_id: v.vcpu_id,
                };
                if let Some((_, asked)) = pinned.iter().find(|(k, _)| *k == key) {
                    let change = from_map(asked);
                    self.map.apply(Update {
                        pid: process.pid,
                        vcpu_id: v.vcpu_id,
                        change,
                    });
                    self.map
                        .set_effective(process.pid, v.vcpu_id, v.tsc_offset, v.scaling);
                }
            }
        }
        Ok(())
    }

    /// Registers the VM of `pid` and watches for its exit. None when the
    /// process is already gone.
    fn track_vm(&mut self, pid: u32) -> Option<ProcessId> {
        let process = ProcessId::of(pid).ok()?;
        if self
            .map
            .vms()
            .get(&pid)
            .is_some_and(|vm| vm.process == process)
        {
            return Some(process);
        }
        let comm = process::comm(pid).unwrap_or_else(|_| "?".into());
        if let Some(stale) = self.map.ensure_vm(process, &comm) {
            self.push_ready(stale);
        }
        watch_exit(process, self.exits_tx.clone());
        Some(process)
    }

    fn on_record(&mut self, record: &Record) {
        let edge = self.edges.apply(record.key(), &record.boundary());
        match record {
            Record::Write(write) => self.on_write(write, &edge),
            Record::Entry(entry) => self.on_entry(entry, &edge),
        }
    }

    fn on_write(&mut self, record: &OffsetRecord, edge: &boundary::Boundary) {
        let change = Change {
            seq: record.seq,
            offset: record.next as i64,
            prev: record.prev as i64,
            ktime_ns: record.ktime_ns,
            source: OffsetSource::Tracepoint,
        };
        self.apply(record.tgid, record.vcpu_id, change, Placed::Boundary(edge));
    }

    /// A first entry after a change (or first seen): the vCPU's own offset,
    /// and the exact start of its epoch.
    fn on_entry(&mut self, record: &EntryRecord, edge: &boundary::Boundary) {
        if self.track_vm(record.tgid).is_none() {
            return; // the VMM is gone: its exit is or will be reported
        }
        let scaling = boundary::scaling(record.l1_tsc_scaling_ratio, self.frac_bits);
        let effective = record.l1_tsc_offset as i64;
        if let Some((event, warn)) =
            self.map
                .entered(record.tgid, record.vcpu_id, effective, scaling)
        {
            if warn {
                warn_not_applied(&event, effective);
            }
            self.push_ready(event.with_boundary(edge));
        }
    }

    fn apply(&mut self, pid: u32, vcpu_id: u32, change: Change, placed: Placed<'_>) {
        let gone = self.track_vm(pid).is_none();
        if gone {
            // The VMM exited before we could look at it: show the change
            // under an unknown identity, then its exit.
            self.map.ensure_vm(ProcessId { pid, start_time: 0 }, "?");
        }
        if let Some(mut event) = self.map.apply(Update {
            pid,
            vcpu_id,
            change,
        }) {
            match placed {
                Placed::Boundary(edge) => event = event.with_boundary(edge),
                Placed::Reread { missed } => place_reread(&mut event, change.ktime_ns, missed),
            }
            self.queue.push_back(Pending {
                event,
                deadline: Instant::now() + READBACK_WAIT,
            });
        }
        if gone && let Some(exit) = self.map.remove_vm(pid) {
            self.push_ready(exit);
        }
    }

    fn on_exit(&mut self, process: ProcessId) {
        if self
            .map
            .vms()
            .get(&process.pid)
            .is_some_and(|vm| vm.process == process)
            && let Some(event) = self.map.remove_vm(process.pid)
        {
            self.programs.forget_tgid(process.pid);
            self.edges.forget(process.pid);
            self.push_ready(event);
        }
    }

    /// Queues an event that needs no read-back, behind the pending ones.
    fn push_ready(&mut self, event: OffsetEvent) {
        self.queue.push_back(Pending {
            event,
            deadline: Instant::now(),
        });
    }

    /// Pops events from the head of the queue whose read-back is done or
    /// timed out, so events stay in order.
    fn take_ready(&mut self) -> Vec<OffsetEvent> {
        let mut ready = Vec::new();
        while let Some(mut head) = self.queue.pop_front() {
            let waiting = Instant::now() < head.deadline;
            if !waiting || !needs_readback(&head.event) || self.readback(&mut head.event) {
                ready.push(head.event);
            } else {
                self.queue.push_front(head);
                break;
            }
        }
        ready
    }

    /// Reads the effective offset for a change event. True when done: read,
    /// or not attributable to this change because the vCPU moved on (debugfs
    /// would show a later offset; the event then keeps `effective_offset`
    /// null rather than a value that may belong to another change).
    fn readback(&mut self, event: &mut OffsetEvent) -> bool {
        let Some(vcpu) = event.vcpu else { return true };
        let key = VcpuKey {
            tgid: event.pid,
            vcpu_id: vcpu,
        };
        let current = || self.programs.kernel_seq(key);
        if current() != event.seq {
            return true;
        }
        let state = match self.debugfs.vcpu(event.pid, vcpu) {
            Ok(state) => state,
            Err(KvmError::Gone(_)) => return false,
            Err(err) => {
                tracing::warn!("reading back vCPU {vcpu} of pid {}: {err}", event.pid);
                return true;
            }
        };
        if current() != event.seq {
            return true;
        }
        self.frac_bits = self.frac_bits.or(state.scaling.map(|s| s.frac_bits));
        event.effective_offset = Some(state.tsc_offset);
        event.ratio = state.scaling.map(|s| s.ratio);
        event.frac_bits = state.scaling.map(|s| s.frac_bits);
        if self.map.vcpu(event.pid, vcpu).map(|v| v.seq) == event.seq
            && self
                .map
                .set_effective(event.pid, vcpu, state.tsc_offset, state.scaling)
        {
            warn_not_applied(event, state.tsc_offset);
        }
        true
    }

    /// After an overflow, re-reads the kernel map so nothing stays wrong.
    fn check_overflow(&mut self) -> Result<(), MonitorError> {
        let full = self.programs.counters()?.ringbuf_full;
        if full == self.ringbuf_full_seen {
            return Ok(());
        }
        tracing::warn!(
            "the offsets ring buffer overflowed ({} records lost); re-reading the kernel offsets map",
            full - self.ringbuf_full_seen
        );
        self.ringbuf_full_seen = full;
        for (key, value) in self.programs.read_offsets() {
            let change = from_map(&value);
            let known = self.map.vcpu(key.tgid, key.vcpu_id).map_or(0, |v| v.seq);
            if value.seq > known {
                let missed = value.seq - known;
                if missed > 1 {
                    tracing::warn!(
                        "vCPU {} of pid {}: {} offset changes were lost in the overflow; \
                         the last one is placed at its kernel time, the epochs between are unknown \
                         (boundary_uncertain)",
                        key.vcpu_id,
                        key.tgid,
                        missed - 1
                    );
                }
                self.apply(key.tgid, key.vcpu_id, change, Placed::Reread { missed });
            }
        }
        Ok(())
    }
}

/// Where a change's epoch starts.
#[derive(Clone, Copy)]
enum Placed<'a> {
    /// A ring-buffer record, paired into its vCPU's boundary.
    Boundary(&'a boundary::Boundary),
    /// Re-read from the kernel map after an overflow, `missed` changes
    /// after the last one the ring buffer delivered (more than one: the
    /// changes between were lost).
    Reread { missed: u64 },
}

/// Places a change re-read from the kernel map after an overflow. The map
/// keeps the kernel time of the last change: that is where its epoch
/// starts, not when it was read. With `missed` > 1 the changes before it
/// were lost, so the epochs between (and the previous one's end) are
/// unknown; without a kernel time the start is unknown too.
fn place_reread(event: &mut OffsetEvent, ktime_ns: u64, missed: u64) {
    event.new_start_ns = (ktime_ns != 0).then_some(ktime_ns);
    event.old_end_ns = None;
    event.boundary_uncertain = missed > 1 || ktime_ns == 0;
}

/// A change as the kernel offsets map holds it (the last one per vCPU).
fn from_map(value: &VcpuOffset) -> Change {
    Change {
        seq: value.seq,
        offset: value.offset as i64,
        prev: value.prev as i64,
        ktime_ns: value.ktime_ns,
        source: OffsetSource::Map,
    }
}

/// Entries of an offsets map pinned by another session; empty when there is
/// none or it cannot be read (then debugfs alone is used).
fn read_pinned(path: &std::path::Path) -> Vec<(VcpuKey, VcpuOffset)> {
    let Ok(data) = MapData::from_pin(path) else {
        return Vec::new();
    };
    match aya::maps::HashMap::<_, VcpuKey, VcpuOffset>::try_from(aya::maps::Map::HashMap(data)) {
        Ok(map) => map.iter().filter_map(Result::ok).collect(),
        Err(err) => {
            tracing::warn!("ignoring the map pinned at {}: {err}", path.display());
            Vec::new()
        }
    }
}

fn needs_readback(event: &OffsetEvent) -> bool {
    matches!(event.event, EventKind::Change | EventKind::VcpuAdded)
        && event.effective_offset.is_none()
}

fn warn_not_applied(event: &OffsetEvent, effective: i64) {
    tracing::warn!(
        "VM {} (pid {}): KVM was asked for TSC offset {} on vCPU {} but the vCPU holds {}; \
         this hypervisor does not apply offsets as asked (e.g. the PVM backend). \
         Guest timestamps are converted with the offset the vCPU holds. \
         Said once per VM.",
        event.comm,
        event.pid,
        event.offset.unwrap_or_default(),
        event.vcpu.unwrap_or_default(),
        effective
    );
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<Record> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        match Record::parse(&item) {
            Some(record) => out.push(record),
            None => tracing::warn!(
                "dropping a malformed or unknown {}-byte record from the ring buffer",
                item.len()
            ),
        }
    }
    out
}

/// Copies an offset-change record out of the ring buffer (see [`Record::parse`]).
pub fn parse_record(bytes: &[u8]) -> Option<OffsetRecord> {
    match Record::parse(bytes)? {
        Record::Write(record) => Some(record),
        Record::Entry(_) => None,
    }
}

async fn logs_ready(logger: &mut Option<AsyncFd<Logger>>) {
    match logger {
        Some(fd) => {
            if let Ok(mut guard) = fd.readable_mut().await {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
        None => std::future::pending().await,
    }
}

/// Sends `process` on `tx` when it exits, using a pidfd (exact, no polling).
fn watch_exit(process: ProcessId, tx: mpsc::UnboundedSender<ProcessId>) {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, process.pid as libc::pid_t, 0) };
    if raw < 0 {
        // Already gone: report the exit now.
        let _ = tx.send(process);
        return;
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    // The pidfd names the pid; a reused pid would be a different pidfd, but
    // the process may have been replaced between ProcessId::of and here.
    if !process.is_alive() {
        let _ = tx.send(process);
        return;
    }
    tokio::spawn(async move {
        debug_assert!(fd.as_raw_fd() >= 0);
        // SAFETY: the AsyncFd owns the pidfd until it is dropped.
        if let Ok(afd) = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            let _ = afd.readable().await;
        }
        let _ = tx.send(process);
    });
}

#[cfg(test)]
mod reread_tests {
    use super::*;

    fn event() -> OffsetEvent {
        let mut map = OffsetMap::default();
        map.ensure_vm(
            ProcessId {
                pid: 1,
                start_time: 1,
            },
            "vmm",
        );
        let change = from_map(&VcpuOffset {
            offset: 5,
            prev: 0,
            seq: 3,
            ktime_ns: 0,
        });
        map.apply(Update {
            pid: 1,
            vcpu_id: 0,
            change,
        })
        .expect("a new vCPU")
    }

    #[test]
    fn a_reread_change_starts_at_the_maps_kernel_time_and_says_when_that_is_unsure() {
        let mut e = event();
        place_reread(&mut e, 7_000_000_123, 1);
        assert_eq!(e.source, Some(OffsetSource::Map));
        assert_eq!(
            (e.new_start_ns, e.boundary_uncertain),
            (Some(7_000_000_123), false)
        );
        // Two changes lost: the last one's time is exact, what came between is not.
        place_reread(&mut e, 7_000_000_123, 2);
        assert_eq!(
            (e.new_start_ns, e.boundary_uncertain),
            (Some(7_000_000_123), true)
        );
        // No kernel time: placed when received, and said.
        place_reread(&mut e, 0, 1);
        assert_eq!((e.new_start_ns, e.boundary_uncertain), (None, true));
    }
}
