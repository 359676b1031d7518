//! Counting what the session does: a status line while it runs (on a
//! terminal) and a summary at the end.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::merge::Merger;

/// What a session did, reported at exit.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Guest events converted.
    pub guest_events: u64,
    /// Host events read.
    pub host_events: u64,
    /// Events guests' kernels reported lost.
    pub guest_lost: u64,
    /// Events the host's ring buffer lost.
    pub host_lost: u64,
    /// Events written in order.
    pub emitted: u64,
    /// Events written out of order (flagged `late`).
    pub late: u64,
    /// Events written when the window expired rather than when all streams
    /// had caught up.
    pub forced: u64,
    /// Events written early because too many were held.
    pub overflowed: u64,
    /// The session stopped because the reader of its output went away.
    pub output_closed: bool,
}

#[derive(Debug)]
pub(super) struct Stats {
    pub(super) guest_events: u64,
    pub(super) host_events: u64,
    pub(super) guest_lost: u64,
    pub(super) host_lost: u64,
    last_status: Instant,
    last_total: u64,
    tty: bool,
}

impl Stats {
    /// Counters; the status line only when asked for and on a terminal.
    pub(super) fn new(status_line: bool) -> Self {
        Self {
            guest_events: 0,
            host_events: 0,
            guest_lost: 0,
            host_lost: 0,
            last_status: Instant::now(),
            last_total: 0,
            tty: status_line && std::io::stderr().is_terminal(),
        }
    }
}

const STATUS_EVERY: Duration = Duration::from_secs(1);

impl Stats {
    /// A one-line status on stderr, once a second, only on a terminal.
    pub(super) fn maybe_status(&mut self, merger: &Merger, agents: usize, vms: usize) {
        let elapsed = self.last_status.elapsed();
        if !self.tty || elapsed < STATUS_EVERY {
            return;
        }
        let total = self.guest_events + self.host_events;
        let rate = (total - self.last_total) as f64 / elapsed.as_secs_f64();
        let s = merger.stats().total;
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[2K{agents} agents, {vms} VMs, {rate:.0} events/s, {} held, {} late, {} forced, lost {} guest / {} host",
            merger.held(),
            s.late,
            s.forced,
            self.guest_lost,
            self.host_lost
        );
        self.last_status = Instant::now();
        self.last_total = total;
    }

    pub(super) fn summary(&self, merger: &Merger) -> Summary {
        let s = merger.stats().total;
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
        Summary {
            guest_events: self.guest_events,
            host_events: self.host_events,
            guest_lost: self.guest_lost,
            host_lost: self.host_lost,
            emitted: s.emitted,
            late: s.late,
            forced: s.forced,
            overflowed: s.overflowed,
            output_closed: false,
        }
    }
}
