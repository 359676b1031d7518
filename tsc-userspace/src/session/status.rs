//! The once-a-second status line on stderr while a session runs on a
//! terminal, and (`--status-secs`) the same counters logged as a line of
//! `key=value` pairs every so often, for sessions whose stderr is a log.

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
    /// Log the counters this often (`None`: never).
    log_every: Option<Duration>,
    last_log: Instant,
}

impl StatusLine {
    /// Drawn only when asked for and stderr is a terminal.
    pub(super) fn new(wanted: bool, log_every: Option<Duration>) -> Self {
        Self {
            last: Instant::now(),
            last_total: 0,
            tty: wanted && std::io::stderr().is_terminal(),
            log_every,
            last_log: Instant::now(),
        }
    }

    /// Logs the counters when `log_every` has passed since the last time.
    pub(super) fn maybe_log(&mut self, correlator: &Correlator) {
        if self
            .log_every
            .is_some_and(|every| self.last_log.elapsed() >= every)
        {
            self.last_log = Instant::now();
            log(correlator);
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

    /// Logs the counters one last time (if asked to log them), then ends
    /// the terminal's line before the summary is printed.
    pub(super) fn finish(&self, correlator: &Correlator) {
        if self.log_every.is_some() {
            log(correlator);
        }
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// One `status:` line of `key=value` pairs, stable for scripts to parse
/// (the soak bench reads them): the correlator's counters so far.
fn log(correlator: &Correlator) {
    let s = correlator.summary();
    tracing::info!(
        "status: agents={} vms={} guest_events={} host_events={} emitted={} late={} forced={} overflowed={} guest_lost={} host_lost={} held={}",
        correlator.agents(),
        correlator.bound_vms().len(),
        s.guest_events,
        s.host_events,
        s.emitted,
        s.late,
        s.forced,
        s.overflowed,
        s.guest_lost,
        s.host_lost,
        correlator.held()
    );
}
