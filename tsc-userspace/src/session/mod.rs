//! The live correlation session: follow every vCPU's offsets, accept guest
//! agents, convert each guest timestamp with the epoch it belongs to, and
//! merge guests' and the host's events into one timeline as they arrive.
//!
//! One task owns all state and reacts to four sources in turn: offset
//! events from the kernel ([`crate::offsets::monitor`]), items from agents
//! ([`crate::ingest`]), host pages ([`host`]), and a tick that writes out
//! what the merge window releases. Agents are admitted (or refused) by
//! [`bind`] from inside their connection task, against a copy of the VMs
//! that the session keeps current.

pub mod bind;
mod guest;
pub mod host;
mod stats;
pub mod vms;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use stats::Summary;

use crate::{
    clock::{Clock, ClockError, read_tsc},
    ebpf::LoadOptions,
    ingest::{ConnId, Ingest, IngestConfig, IngestError, IngestItem, SockAddr},
    merge::{EventData, MergeConfig, MergeItem, Merger, SourceId, SourceInfo, SourceKind, Sources},
    offsets::monitor::{Monitor, MonitorError, MonitorOptions},
    output::{EventWriter, WriteContext},
    tracefs::{EventName, Page, TracefsError},
    wire::{Endpoint, Page as WirePage},
};
use bind::{Binding, Candidate, VmSpec};
use guest::Agent;
use host::HostTrace;
use vms::Vms;

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
    /// How long an event may wait for slower streams before it is written.
    pub window: Duration,
    /// How long before its Hello an agent's TSC samples may be.
    pub bind_slack: Duration,
    /// Kernel programs.
    pub load: LoadOptions,
    /// Agent connections.
    pub ingest: IngestConfig,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            vms: Vec::new(),
            host_events: None,
            host_events_vm_only: false,
            status_line: true,
            window: Duration::from_secs(1),
            bind_slack: Duration::from_secs(2),
            load: LoadOptions::default(),
            ingest: IngestConfig::default(),
        }
    }
}

/// What the admission check in connection tasks shares with the session.
#[derive(Default)]
struct Admissions {
    specs: Vec<VmSpec>,
    candidates: Vec<Candidate>,
    slack: u64,
    bound: HashMap<ConnId, Binding>,
}

/// A running session.
pub struct Session {
    monitor: Monitor,
    clock: Clock,
    ingest: Ingest,
    host: HostTrace,
    host_source: SourceId,
    vms: Vms,
    agents: HashMap<ConnId, Agent>,
    admissions: Arc<Mutex<Admissions>>,
    sources: Sources,
    merger: Merger,
    stats: stats::Stats,
    last_clock_refresh: Instant,
    /// Sources of agents that left, dropped once their last event is out.
    departed: Vec<SourceId>,
    last_comms: Instant,
    /// `--record DIR` (record: see `crate::record::live`).
    recorder: Option<crate::record::Recorder>,
}

/// How far behind its keep-alive an agent's page reads may be: twice its
/// default flush period.
const AGENT_LAG: Duration = Duration::from_millis(200);
/// How often host task names are re-read from `saved_cmdlines`.
const COMMS_REFRESH: Duration = Duration::from_secs(1);
/// How often the clock calibration is refreshed (bounds drift).
const CLOCK_REFRESH: Duration = Duration::from_secs(10);
/// How often the window is checked when nothing arrives.
const TICK: Duration = Duration::from_millis(50);
/// Host pages are read at least this often: a host CPU stream promises
/// nothing older than this much before now.
const HOST_LAG: Duration = Duration::from_millis(300);

impl Session {
    /// Starts everything: kernel programs, clock, listeners, host trace.
    /// Must run inside a tokio runtime.
    pub async fn start(options: SessionOptions) -> Result<Self, SessionError> {
        warn_if_tsc_unstable();
        let clock = Clock::calibrate()?;
        let monitor = Monitor::start(MonitorOptions {
            load: options.load.clone(),
            ..MonitorOptions::default()
        })?;
        let mut vms = Vms::default();
        for event in monitor.map().snapshot() {
            vms.apply(&event, &clock);
        }
        for spec in &options.vms {
            if vms.get(spec.pid).is_none_or(|vm| vm.vcpus.is_empty()) {
                return Err(SessionError::UnknownVm(spec.pid));
            }
        }
        let admissions = Arc::new(Mutex::new(Admissions {
            specs: options.vms.clone(),
            candidates: vms.candidates(),
            slack: ticks(&clock, options.bind_slack),
            bound: HashMap::new(),
        }));
        let mut ingest_config = options.ingest.clone();
        ingest_config.admit = Some(admit(admissions.clone()));
        let ingest = Ingest::bind(&options.listen, ingest_config).await?;
        let (events, filter) = match &options.host_events {
            Some(events) => (events.clone(), options.host_events_vm_only),
            None => (default_host_events(), true),
        };
        let host = HostTrace::start(&events, filter)?;
        let mut sources = Sources::new();
        let host_source = sources.add(SourceInfo {
            kind: SourceKind::Host,
            name: host.name().to_owned(),
            formats: host.formats.clone(),
        })?;
        let merger = Merger::new(MergeConfig::new(ticks(&clock, options.window)));
        Ok(Self {
            monitor,
            clock,
            ingest,
            host,
            host_source,
            vms,
            agents: HashMap::new(),
            admissions,
            sources,
            merger,
            stats: stats::Stats::new(options.status_line),
            last_clock_refresh: Instant::now(),
            departed: Vec::new(),
            last_comms: Instant::now(),
            recorder: None,
        })
    }

    /// The addresses agents can connect to.
    pub fn local_addrs(&self) -> &[SockAddr] {
        self.ingest.local_addrs()
    }

    /// Records the session into `rec` as trace.dat files (`--record`).
    pub fn record_into(&mut self, mut rec: crate::record::Recorder) {
        crate::record::live::start(&mut rec, self.host.instance(), &self.clock); // record
        let snapshot = self.monitor.map().snapshot();
        crate::record::live::offsets(&mut rec, &snapshot, |pid| self.vms.get(pid)); // record
        self.recorder = Some(rec);
    }

    /// The host clock (TSC to CLOCK_MONOTONIC ns).
    pub fn clock(&self) -> &Clock {
        &self.clock
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
        loop {
            let step = tokio::select! {
                () = &mut shutdown => break,
                events = self.monitor.next() => events.map(|e| self.on_offsets(e)).map_err(SessionError::from),
                Some(item) = self.ingest.next_item() => self.on_ingest(item, sink),
                Some(page) = self.host.pages.recv() => self.on_host_page(&page, sink),
                _ = tick.tick() => {
                    self.on_tick();
                    Ok(())
                }
            };
            match step.and_then(|()| self.release(sink)) {
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

    fn on_offsets(&mut self, events: Vec<crate::offsets::OffsetEvent>) {
        for event in &events {
            self.vms.apply(event, &self.clock);
        }
        if let Some(rec) = &mut self.recorder {
            crate::record::live::offsets(rec, &events, |pid| self.vms.get(pid)); // record
        }
        let candidates = self.vms.candidates();
        let bound: Vec<u32> = self.agents.values().map(|a| a.binding.pid).collect();
        if let Ok(mut shared) = self.admissions.lock() {
            shared.candidates = candidates;
        }
        // New vCPU threads of bound VMs are followed by event-fork; this
        // covers threads created before the VM was bound.
        if events.iter().any(|e| bound.contains(&e.pid))
            && let Err(err) = self.host.follow_vms(&bound)
        {
            tracing::warn!("following the bound VMs' threads on the host: {err}");
        }
        let agents = &self.agents;
        self.vms
            .reap(|pid| agents.values().any(|a| a.binding.pid == pid));
    }

    fn on_ingest(
        &mut self,
        item: IngestItem,
        sink: &mut (dyn EventWriter + Send),
    ) -> Result<(), SessionError> {
        match item {
            IngestItem::Connected(info) => self.on_connected(&info),
            IngestItem::Events(page) => {
                let Some(agent) = self.agents.get_mut(&page.conn) else {
                    return Ok(());
                };
                if let Some(rec) = &mut self.recorder {
                    rec.guest_page(page.conn, page.cpu, page.bytes()); // record
                }
                let vm = self.vms.get(agent.binding.pid);
                for item in agent.convert(&page, vm, &mut self.sources) {
                    self.stats.guest_events += 1;
                    if let Some(now) = self.merger.push(item) {
                        write(sink, &self.sources, &self.clock, &now)?;
                    }
                }
            }
            IngestItem::Lost {
                conn,
                cpu,
                new,
                total,
            } => {
                self.stats.guest_lost += new;
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
                if let Some(agent) = self.agents.remove(&conn) {
                    self.merger.close_source(agent.source);
                    self.departed.push(agent.source);
                }
                if let Some(rec) = &mut self.recorder {
                    rec.guest_closed(conn); // record
                }
                if let Ok(mut shared) = self.admissions.lock() {
                    shared.bound.remove(&conn);
                }
                match outcome {
                    Ok(reason) => tracing::info!("agent {conn} ({peer}) left: {reason}"),
                    Err(err) => tracing::warn!("agent {conn} ({peer}) dropped: {err}"),
                }
            }
            IngestItem::TscSample { conn, sample, .. } => self.on_sample(conn, sample.tsc_before),
            IngestItem::Page { .. } | IngestItem::Cmdlines { .. } => {}
        }
        Ok(())
    }

    fn on_connected(&mut self, info: &crate::ingest::ConnectionInfo) {
        let binding = self
            .admissions
            .lock()
            .ok()
            .and_then(|s| s.bound.get(&info.id).cloned());
        let Some(binding) = binding else {
            tracing::warn!("agent {} connected without a binding; ignoring it", info.id);
            return;
        };
        let source = self.sources.add(SourceInfo {
            kind: SourceKind::Guest {
                vm_name: binding.name.clone(),
                vm_pid: binding.pid,
            },
            name: info.peer.to_string(),
            formats: Arc::new(info.guest.formats().clone()),
        });
        let source = match source {
            Ok(source) => source,
            Err(err) => {
                tracing::warn!("agent {}: {err}", info.id);
                return;
            }
        };
        tracing::info!(
            "agent {} {:?} ({}) traces VM {} (pid {}), bound by {}",
            info.id,
            info.hello.agent_name,
            info.peer,
            binding.name,
            binding.pid,
            binding.by
        );
        let pid = binding.pid;
        if let Some(rec) = &mut self.recorder {
            let vm = self.vms.get(pid);
            crate::record::live::guest_connected(rec, info.id, &info.hello, pid, &binding.name, vm); // record
        }
        self.agents
            .insert(info.id, Agent::new(source, binding, &info.hello));
        // Open the agent's CPU streams now: until its keep-alives or pages
        // say otherwise, the merge waits for them rather than writing host
        // events their backlog may precede.
        if let Some(sample) = info.hello.samples.first() {
            self.on_sample(info.id, sample.tsc_before);
        }
        let bound: Vec<u32> = self.agents.values().map(|a| a.binding.pid).collect();
        if let Err(err) = self.host.follow_vms(&bound) {
            tracing::warn!("tracing VM {pid}'s threads on the host: {err}");
        }
    }

    /// A keep-alive's TSC sample: the agent has read every CPU's buffer at
    /// least once in the last [`AGENT_LAG`], so none of its CPU streams will
    /// bring anything older; quiet ones stop holding the merge back.
    fn on_sample(&mut self, conn: ConnId, guest_tsc: u64) {
        let Some(agent) = self.agents.get(&conn) else {
            return;
        };
        let Some(vm) = self.vms.get(agent.binding.pid) else {
            return;
        };
        let lag = ticks(&self.clock, AGENT_LAG);
        for (cpu, host) in agent.hosts_of(vm, guest_tsc) {
            self.merger
                .advance(agent.source, cpu, host.saturating_sub(lag));
        }
    }

    fn on_host_page(
        &mut self,
        page: &WirePage,
        sink: &mut (dyn EventWriter + Send),
    ) -> Result<(), SessionError> {
        if let Some(rec) = &mut self.recorder {
            rec.host_page(page.cpu, &page.data); // record
        }
        let parsed = match Page::parse(&self.host.layout, &page.data) {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::warn!("skipping a host page of CPU {}: {err}", page.cpu);
                return Ok(());
            }
        };
        if let crate::tracefs::LostEvents::Count(n) = parsed.lost_events() {
            self.stats.host_lost += n;
        }
        for raw in parsed.events().filter_map(Result::ok) {
            let Some(data) = EventData::from_page(&page.data, raw.data) else {
                continue;
            };
            let item = MergeItem::host(self.host_source, page.cpu, raw.ts, data);
            self.sources.learn_comms(&item);
            self.stats.host_events += 1;
            if let Some(now) = self.merger.push(item) {
                write(sink, &self.sources, &self.clock, &now)?;
            }
        }
        Ok(())
    }

    fn on_tick(&mut self) {
        let now = read_tsc();
        let lag = ticks(&self.clock, HOST_LAG);
        for cpu in 0..self.host_cpus() {
            self.merger
                .advance(self.host_source, cpu, now.saturating_sub(lag));
        }
        if self.last_comms.elapsed() >= COMMS_REFRESH {
            self.learn_host_comms();
        }
        if self.last_clock_refresh.elapsed() >= CLOCK_REFRESH {
            if let Err(err) = self.clock.refresh() {
                tracing::warn!("refreshing the host clock: {err}");
            }
            self.last_clock_refresh = Instant::now();
        }
        self.stats
            .maybe_status(&self.merger, self.agents.len(), self.bound_vms());
        self.forget_departed();
    }

    /// A session runs for days: an agent's formats and command names go
    /// once nothing of it is held any more.
    fn forget_departed(&mut self) {
        let (merger, sources) = (&self.merger, &mut self.sources);
        self.departed.retain(|&source| {
            let held = merger.held_of(source) > 0;
            if !held {
                sources.remove(source);
            }
            held
        });
    }

    /// Host task names from the kernel's `saved_cmdlines`.
    fn learn_host_comms(&mut self) {
        self.last_comms = Instant::now();
        match self.host.saved_cmdlines() {
            Ok(comms) => {
                let comms = comms.iter().map(|(&pid, comm)| (pid, comm.as_str()));
                self.sources.set_comms(self.host_source, comms);
            }
            Err(err) => tracing::debug!("reading saved_cmdlines: {err}"),
        }
    }

    fn host_cpus(&self) -> u32 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    }

    fn bound_vms(&self) -> usize {
        let mut pids: Vec<u32> = self.agents.values().map(|a| a.binding.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids.len()
    }

    /// Writes what the merge releases now.
    fn release(&mut self, sink: &mut (dyn EventWriter + Send)) -> Result<(), SessionError> {
        let clock = &self.clock;
        let to_ns = |tsc| clock.tsc_to_ns(tsc);
        let ctx = WriteContext {
            sources: &self.sources,
            clock: &to_ns,
        };
        let n = self
            .merger
            .pop_ready(read_tsc(), |item| sink.write(&ctx, &item))
            .map_err(SessionError::Output)?;
        if n > 0 {
            sink.flush().map_err(SessionError::Output)?;
        }
        Ok(())
    }

    async fn finish(
        mut self,
        sink: &mut (dyn EventWriter + Send),
    ) -> Result<Summary, SessionError> {
        self.host.stop().await;
        while let Ok(page) = self.host.pages.try_recv() {
            self.on_host_page(&page, sink)?;
        }
        self.ingest.shutdown();
        while let Some(item) = self.ingest.next_item().await {
            self.on_ingest(item, sink)?;
        }
        let clock = &self.clock;
        let to_ns = |tsc| clock.tsc_to_ns(tsc);
        let ctx = WriteContext {
            sources: &self.sources,
            clock: &to_ns,
        };
        self.merger
            .flush_all(|item| sink.write(&ctx, &item))
            .map_err(SessionError::Output)?;
        sink.flush().map_err(SessionError::Output)?;
        if let Some(rec) = self.recorder.take() {
            let comms = self.host.saved_cmdlines().ok();
            crate::record::live::finish(rec, |pid| self.vms.get(pid), comms); // record
        }
        Ok(self.stats.summary(&self.merger))
    }
}

fn write(
    sink: &mut (dyn EventWriter + Send),
    sources: &Sources,
    clock: &Clock,
    item: &MergeItem,
) -> Result<(), SessionError> {
    let to_ns = |tsc| clock.tsc_to_ns(tsc);
    sink.write(
        &WriteContext {
            sources,
            clock: &to_ns,
        },
        item,
    )
    .map_err(SessionError::Output)
}

/// Guest timestamps are only comparable with the host's when the host TSC
/// is one stable clock: say so at start when it may not be.
fn warn_if_tsc_unstable() {
    let check = crate::doctor::system::Host::read().stability();
    if check.status != crate::doctor::Status::Ok {
        tracing::warn!(
            "{}{}",
            check.detail,
            check.fix.map(|f| format!(" ({f})")).unwrap_or_default()
        );
    }
}

fn default_host_events() -> Vec<EventName> {
    host::DEFAULT_HOST_EVENTS
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect()
}

/// Host TSC ticks in `d`.
fn ticks(clock: &Clock, d: Duration) -> u64 {
    (clock.tsc_khz() as u128 * d.as_micros() / 1000) as u64
}

fn admit(shared: Arc<Mutex<Admissions>>) -> crate::ingest::Admit {
    crate::ingest::Admit(Arc::new(move |admission| {
        let mut state = shared
            .lock()
            .map_err(|_| "the session is shutting down".to_owned())?;
        let binding = bind::bind(admission, &state.specs, &state.candidates, state.slack)?;
        state.bound.insert(admission.id, binding);
        Ok(())
    }))
}

#[cfg(test)]
mod tests;
