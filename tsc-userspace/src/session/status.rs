//! The once-a-second status line on stderr while a session runs on a
//! terminal.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use crate::correlator::Correlator;

const STATUS_EVERY: Duration = Duration::from_secs(1);

/// When the line was last drawn, and the event total then.
#[derive(Debug)]
pub(super) struct StatusLine {
    last: Instant,
    last_total: u64,
    tty: bool,
}

impl StatusLine {
    /// Drawn only when asked for and stderr is a terminal.
    pub(super) fn new(wanted: bool) -> Self {
        Self {
            last: Instant::now(),
            last_total: 0,
            tty: wanted && std::io::stderr().is_terminal(),
        }
    }

    /// Redraws the line when a second has passed.
    pub(super) fn maybe_draw(&mut self, correlator: &Correlator) {
        let elapsed = self.last.elapsed();
        if !self.tty || elapsed < STATUS_EVERY {
            return;
        }
        let s = correlator.summary();
        let total = s.guest_events + s.host_events;
        let rate = total.saturating_sub(self.last_total) as f64 / elapsed.as_secs_f64();
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[2K{} agents, {} VMs, {rate:.0} events/s, {} held, {} late, {} forced, lost {} guest / {} host",
            correlator.agents(),
            correlator.bound_vms().len(),
            correlator.held(),
            s.late,
            s.forced,
            s.guest_lost,
            s.host_lost
        );
        self.last = Instant::now();
        self.last_total = total;
    }

    /// Ends the line before the summary is printed.
    pub(super) fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
