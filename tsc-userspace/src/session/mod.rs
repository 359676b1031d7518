//! The live session: the I/O around the [`Correlator`]. It loads the
//! kernel programs and follows every vCPU's offsets
//! ([`crate::offsets::monitor`]), listens for guest agents
//! ([`crate::ingest`]), reads the host's own trace ([`host`]), and feeds
//! what each delivers to the correlator as it arrives; a tick releases
//! what the merge window allows and refreshes the clock calibration.
//!
//! Agents are admitted (or refused) by the correlator itself: a
//! connection's Hello comes through the same queue as everything else and
//! waits for the correlator's answer, so a binding lives with its agent.

pub mod host;
mod memory;
mod status;

use std::{
    future::Future,
    time::{Duration, Instant},
};

pub use crate::correlator::{Summary, VmSpec};

use crate::{
    clock::{Clock, ClockError, read_tsc},
    correlator::{Correlator, CorrelatorConfig, HostPageError, ticks},
    ebpf::LoadOptions,
    ingest::{Ingest, IngestConfig, IngestError, IngestItem, SockAddr},
    offsets::{
        journal::{self, JournalError, JournalOptions, LiveJournal},
        monitor::{Monitor, MonitorError, MonitorOptions},
    },
    output::EventWriter,
    page_reader::Read,
    tracefs::{EventName, TracefsError},
    wire::Endpoint,
};
use host::HostTrace;
use status::StatusLine;

/// Errors that stop a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The kernel side could not start.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// The host clock could not be calibrated.
    #[error("calibrating the host clock: {0}")]
    Clock(#[from] ClockError),
    /// No listener could be bound.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The host trace instance could not be set up.
    #[error("host trace: {0}")]
    Tracefs(#[from] TracefsError),
    /// A `--vm` names a process with no VM.
    #[error(
        "--vm {0}: no KVM VM with vCPUs in that process (is the pid right? `tsc-tracer offsets` lists VMs)"
    )]
    UnknownVm(u32),
    /// The merge's source registry is full (2^32 sources).
    #[error(transparent)]
    Sources(#[from] crate::merge::MergeError),
    /// Writing the output failed.
    #[error("writing the timeline: {0}")]
    Output(#[source] std::io::Error),
    /// The offset journal could not be read or opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What a session is asked to do.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Where agents connect.
    pub listen: Vec<Endpoint>,
    /// VMs named by the user.
    pub vms: Vec<VmSpec>,
    /// Host events; `None` traces the default kvm events of the bound VMs'
    /// threads.
    pub host_events: Option<Vec<EventName>>,
    /// Trace `host_events` only in the bound VMs' threads, as the default
    /// events are (else they are traced system-wide).
    pub host_events_vm_only: bool,
    /// Show the once-a-second status line on stderr when it is a terminal.
    pub status_line: bool,
    /// Also log the status counters this often (whatever stderr is).
    pub status_every: Option<Duration>,
    /// How long an event may wait for slower streams before it is written.
    pub window: Duration,
    /// How long before its Hello an agent's TSC samples may be.
    pub bind_slack: Duration,
    /// How often every host CPU's buffer is read, partly filled pages
    /// included (see [`host::DEFAULT_FLUSH`]).
    pub host_flush: Duration,
    /// Kernel programs.
    pub load: LoadOptions,
    /// Agent connections.
    pub ingest: IngestConfig,
    /// The offset journal: restored from at start, appended to (None: off).
    pub journal: Option<JournalOptions>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            vms: Vec::new(),
            host_events: None,
            host_events_vm_only: false,
            status_line: true,
            status_every: None,
            window: Duration::from_secs(1),
            bind_slack: Duration::from_secs(2),
            host_flush: host::DEFAULT_FLUSH,
            load: LoadOptions::default(),
            ingest: IngestConfig::default(),
            journal: None,
        }
    }
}

/// A running session.
pub struct Session {
    monitor: Monitor,
    ingest: Ingest,
    host: HostTrace,
    correlator: Correlator,
    journal: LiveJournal,
    status: StatusLine,
    trimmer: memory::Trimmer,
    last_clock_refresh: Instant,
    last_comms: Instant,
    /// `--record DIR` (record: see `crate::record::live`).
    recorder: Option<crate::record::Recorder>,
    /// `--flight-recorder SIZE` (flight: see `crate::flight`).
    flight: Option<crate::flight::FlightRecorder>,
}

/// How often host task names are re-read from `saved_cmdlines`.
const COMMS_REFRESH: Duration = Duration::from_secs(1);
/// How often the clock calibration is refreshed (bounds drift).
const CLOCK_REFRESH: Duration = crate::clock::REFRESH_PERIOD;
/// How often the window is checked when nothing arrives.
const TICK: Duration = Duration::from_millis(50);
/// A backstop behind the host readers' exact watermarks: should a reader
/// stall, its CPUs still stop holding the merge back this long behind now.
const HOST_LAG: Duration = Duration::from_millis(300);

impl Session {
    /// Starts everything: kernel programs, clock, listeners, host trace.
    /// Must run inside a tokio runtime.
    pub async fn start(options: SessionOptions) -> Result<Self, SessionError> {
        crate::clock::stability::warn_if_unstable();
        let clock = Clock::calibrate()?;
        let monitor = Monitor::start(MonitorOptions {
            load: options.load.clone(),
            ..MonitorOptions::default()
        })?;
        let (events, filter) = match &options.host_events {
            Some(events) => (events.clone(), options.host_events_vm_only),
            None => (default_host_events(), true),
        };
        let host = HostTrace::start(&events, filter, options.host_flush)?;
        let config = CorrelatorConfig {
            vms: options.vms.clone(),
            window: options.window,
            bind_slack: options.bind_slack,
            ..CorrelatorConfig::default()
        };
        let mut correlator = Correlator::new(config, clock, host.info())?;
        // The journal's history of the VMs still running first, then the
        // live snapshot on top of it.
        if let Some(options) = &options.journal {
            correlator.restore(&journal::live::restore(options)?.records, &vmm_cmdline);
        }
        let mut journal = LiveJournal::open(options.journal.clone())?;
        let (snapshot, now) = (monitor.map().snapshot(), read_tsc());
        journal.record(&snapshot, correlator.clock(), now);
        correlator.offsets(&snapshot, now, &vmm_cmdline);
        for spec in &options.vms {
            if correlator
                .vms()
                .get(spec.pid)
                .is_none_or(|vm| vm.vcpus.is_empty())
            {
                return Err(SessionError::UnknownVm(spec.pid));
            }
        }
        let ingest_config = IngestConfig {
            ask_consumer: true,
            ..options.ingest.clone()
        };
        let ingest = Ingest::bind(&options.listen, ingest_config).await?;
        Ok(Self {
            monitor,
            ingest,
            host,
            correlator,
            journal,
            status: StatusLine::new(options.status_line, options.status_every),
            trimmer: memory::Trimmer::new(),
            last_clock_refresh: Instant::now(),
            last_comms: Instant::now(),
            recorder: None,
            flight: None,
        })
    }

    /// The addresses agents can connect to.
    pub fn local_addrs(&self) -> &[SockAddr] {
        self.ingest.local_addrs()
    }

    /// Records the session into `rec` as trace.dat files (`--record`).
    pub fn record_into(&mut self, mut rec: crate::record::Recorder) {
        let (host, clock) = (self.host.instance(), self.correlator.clock());
        crate::record::live::start(&mut rec, host, clock); // record
        let snapshot = self.monitor.map().snapshot();
        let vms = self.correlator.vms();
        crate::record::live::offsets(&mut rec, &snapshot, |pid| vms.get(pid)); // record
        self.recorder = Some(rec);
    }

    /// Keeps the newest pages in `flight`, dumped on SIGUSR1
    /// (`--flight-recorder`).
    pub fn flight_recorder(&mut self, mut flight: crate::flight::FlightRecorder) {
        flight.start(self.host.instance(), self.correlator.clock()); // flight
        self.flight = Some(flight);
    }

    /// The host clock (TSC to CLOCK_MONOTONIC ns).
    pub fn clock(&self) -> &Clock {
        self.correlator.clock()
    }

    /// Runs until `shutdown` completes, writing the timeline to `sink`;
    /// then flushes everything held and returns what happened.
    pub async fn run(
        mut self,
        sink: &mut (dyn EventWriter + Send),
        shutdown: impl Future<Output = ()>,
    ) -> Result<Summary, SessionError> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        let mut dump_requests = crate::signal::DumpRequests::new(); // flight
        loop {
            let step = tokio::select! {
                () = &mut shutdown => break,
                events = self.monitor.next() => events.map(|e| self.on_offsets(&e)).map_err(SessionError::from),
                Some(item) = self.ingest.next_item() => self.on_ingest(item, sink),
                Some(read) = self.host.pages.recv() => self.on_host_read(read, sink),
                _ = tick.tick() => {
                    self.on_tick();
                    Ok(())
                }
                () = dump_requests.recv() => {
                    self.on_dump_request(); // flight
                    Ok(())
                }
            };
            let step = step.and_then(|()| {
                self.correlator
                    .release(read_tsc(), sink)
                    .map(drop)
                    .map_err(SessionError::Output)
            });
            match step {
                Ok(()) => {}
                // Whoever read the timeline is gone (`| head`): a normal end.
                Err(SessionError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    tracing::info!("the output was closed; stopping");
                    let mut summary = self.finish(&mut crate::output::Discard).await?;
                    summary.output_closed = true;
                    return Ok(summary);
                }
                Err(e) => return Err(e),
            }
        }
        self.finish(sink).await
    }

    /// SIGUSR1: the flight recorder writes what it holds.
    fn on_dump_request(&mut self) {
        let Some(flight) = &mut self.flight else {
            tracing::warn!("SIGUSR1: there is no flight recorder to dump (--flight-recorder SIZE)");
            return;
        };
        let vms = self.correlator.vms();
        if let Err(e) = flight.dump(|pid| vms.get(pid)) {
            tracing::error!("flight recorder: cannot write a dump: {e}");
        }
    }

    fn on_offsets(&mut self, events: &[crate::offsets::OffsetEvent]) {
        let now = read_tsc();
        self.journal.record(events, self.correlator.clock(), now);
        let follow = self.correlator.offsets(events, now, &vmm_cmdline);
        if let Some(rec) = &mut self.recorder {
            let vms = self.correlator.vms();
            crate::record::live::offsets(rec, events, |pid| vms.get(pid)); // record
        }
        if follow {
            // New vCPU threads of bound VMs are followed by event-fork;
            // this covers threads created before the VM was bound.
            self.follow_bound_vms();
        }
    }

    fn on_ingest(
        &mut self,
        item: IngestItem,
        sink: &mut (dyn EventWriter + Send),
    ) -> Result<(), SessionError> {
        match item {
            IngestItem::Hello(admission) => self.on_hello(admission),
            IngestItem::Events(page) => {
                if let Some(rec) = &mut self.recorder {
                    rec.guest_page(page.conn, page.cpu, page.bytes()); // record
                }
                if let Some(flight) = &mut self.flight {
                    flight.guest_page(page.conn, page.cpu, page.bytes()); // flight
                }
                self.correlator
                    .guest_page(&page, sink)
                    .map_err(SessionError::Output)?
            }
            IngestItem::Lost {
                conn,
                cpu,
                new,
                total,
            } => {
                self.correlator.guest_lost(new);
                tracing::warn!(
                    "agent {conn}: the guest lost {new} events on CPU {cpu} ({total} in all)"
                );
            }
            IngestItem::BadPage { conn, cpu, error } => {
                tracing::warn!("agent {conn}: skipped a page of CPU {cpu}: {error}");
            }
            IngestItem::Closed {
                conn,
                peer,
                outcome,
            } => {
                self.correlator.guest_closed(conn);
                if let Some(rec) = &mut self.recorder {
                    rec.guest_closed(conn); // record
                }
                if let Some(flight) = &mut self.flight {
                    flight.guest_closed(conn); // flight
                }
                match outcome {
                    Ok(reason) => tracing::info!("agent {conn} ({peer}) left: {reason}"),
                    Err(err) => tracing::warn!("agent {conn} ({peer}) dropped: {err}"),
                }
            }
            IngestItem::TscSample { conn, sample, .. } => {
                self.correlator.guest_alive(conn, sample.tsc_before);
            }
            IngestItem::Drained {
                conn,
                cpu,
                tsc_cpu,
                guest_tsc,
            } => self.correlator.guest_drained(conn, cpu, tsc_cpu, guest_tsc),
            IngestItem::Connected(_) | IngestItem::Page { .. } | IngestItem::Cmdlines { .. } => {}
        }
        Ok(())
    }

    fn on_hello(&mut self, admission: crate::ingest::Admission) {
        let info = &admission.info;
        let mut bound = None;
        let decision = match self.correlator.admit(info) {
            Ok(binding) => {
                bound = Some((binding.pid, binding.name.clone()));
                tracing::info!(
                    "agent {} {:?} ({}) traces VM {} (pid {}), bound by {}",
                    info.id,
                    info.hello.agent_name,
                    info.peer,
                    binding.name,
                    binding.pid,
                    binding.by
                );
                Ok(())
            }
            Err(reason) => {
                tracing::warn!("agent {} ({}) refused: {reason}", info.id, info.peer);
                Err(reason)
            }
        };
        if let (Some(rec), Some((pid, name))) = (&mut self.recorder, &bound) {
            let vm = self.correlator.vms().get(*pid);
            crate::record::live::guest_connected(rec, info.id, &info.hello, *pid, name, vm); // record
        }
        if let (Some(flight), Some((pid, name))) = (&mut self.flight, &bound) {
            flight.guest_connected(info.id, &info.hello, *pid, name); // flight
        }
        let admitted = decision.is_ok();
        admission.answer(decision);
        if admitted {
            self.follow_bound_vms();
        }
    }

    fn on_host_read(
        &mut self,
        read: Read,
        sink: &mut (dyn EventWriter + Send),
    ) -> Result<(), SessionError> {
        let page = match read {
            Read::Page(page) => page,
            Read::Drained(marks) => {
                // Host TSC read just before a read found the CPU empty:
                // its exact watermark, no conversion.
                for mark in marks {
                    self.correlator.host_drained(mark.cpu, mark.guest_tsc);
                }
                return Ok(());
            }
        };
        let cpu = page.cpu;
        if let Some(rec) = &mut self.recorder {
            rec.host_page(cpu, &page.data); // record
        }
        if let Some(flight) = &mut self.flight {
            flight.host_page(cpu, &page.data); // flight
        }
        match self.correlator.host_page(cpu, &page.data, sink) {
            Ok(()) => Ok(()),
            Err(HostPageError::Output(e)) => Err(SessionError::Output(e)),
            Err(err @ HostPageError::Page(_)) => {
                tracing::warn!("CPU {cpu}: {err}");
                Ok(())
            }
        }
    }

    fn follow_bound_vms(&mut self) {
        let bound = self.correlator.bound_vms();
        if let Err(err) = self.host.follow_vms(&bound) {
            tracing::warn!("following the bound VMs' threads on the host: {err}");
        }
    }

    fn on_tick(&mut self) {
        let lag = ticks(self.correlator.clock(), HOST_LAG);
        self.correlator.host_read(read_tsc().saturating_sub(lag));
        if self.last_comms.elapsed() >= COMMS_REFRESH {
            self.learn_host_comms();
        }
        if self.last_clock_refresh.elapsed() >= CLOCK_REFRESH {
            let mut clock = *self.correlator.clock();
            match clock.refresh() {
                Ok(()) => self.correlator.set_clock(clock),
                Err(err) => tracing::warn!("refreshing the host clock: {err}"),
            }
            self.last_clock_refresh = Instant::now();
        }
        self.status.maybe_draw(&self.correlator);
        self.status.maybe_log(&self.correlator);
        self.trimmer.maybe_trim();
    }

    /// Host task names from the kernel's `saved_cmdlines`.
    fn learn_host_comms(&mut self) {
        self.last_comms = Instant::now();
        match self.host.saved_cmdlines() {
            Ok(comms) => self
                .correlator
                .host_comms(comms.iter().map(|(&pid, comm)| (pid, comm.as_str()))),
            Err(err) => tracing::debug!("reading saved_cmdlines: {err}"),
        }
    }

    async fn finish(
        mut self,
        sink: &mut (dyn EventWriter + Send),
    ) -> Result<Summary, SessionError> {
        self.host.stop().await;
        while let Ok(read) = self.host.pages.try_recv() {
            self.on_host_read(read, sink)?;
        }
        self.ingest.shutdown();
        while let Some(item) = self.ingest.next_item().await {
            self.on_ingest(item, sink)?;
        }
        self.status.finish(&self.correlator);
        if let Some(rec) = self.recorder.take() {
            let comms = self.host.saved_cmdlines().ok();
            let vms = self.correlator.vms();
            crate::record::live::finish(rec, |pid| vms.get(pid), comms); // record
        }
        self.correlator.finish(sink).map_err(SessionError::Output)
    }
}

/// A VMM's command line (vsock CIDs), empty when it cannot be read.
fn vmm_cmdline(pid: u32) -> Vec<String> {
    crate::process::cmdline(pid).unwrap_or_default()
}

fn default_host_events() -> Vec<EventName> {
    host::DEFAULT_HOST_EVENTS
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect()
}
