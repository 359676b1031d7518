//! The heart of a session, with no I/O: every VM's vCPU epochs, which agent
//! traces which VM, the conversion of each guest timestamp with the epoch it
//! belongs to, and the merge of all streams into one timeline written to an
//! [`EventWriter`].
//!
//! The session ([`crate::session`]) reads the kernel, the sockets and the
//! host's tracefs and feeds what they deliver here as typed inputs:
//!
//! | input | method |
//! |---|---|
//! | offset events of the kernel side | [`Correlator::offsets`] |
//! | an agent's Hello (bind it or refuse it) | [`Correlator::admit`] |
//! | a guest page / drained CPU / keep-alive / lost count / bye | [`Correlator::guest_page`], [`Correlator::guest_drained`], [`Correlator::guest_alive`], [`Correlator::guest_lost`], [`Correlator::guest_closed`] |
//! | a host page, a host CPU read empty, all host CPUs read | [`Correlator::host_page`], [`Correlator::host_drained`], [`Correlator::host_read`] |
//! | time passing | [`Correlator::release`] |
//! | the end | [`Correlator::finish`] |
//!
//! Every input that carries time carries it (host TSC): the correlator
//! never reads a clock, so its tests replay exact histories. Its only
//! outside view of time is the [`Clock`] it is given (host TSC to
//! `CLOCK_MONOTONIC` ns), which the session refreshes with
//! [`Correlator::set_clock`].
//!
//! A guest event's place: its CPU maps to a vCPU by APIC id (from the
//! Hello); the vCPU's [`VcpuTimeline`](crate::timeline::VcpuTimeline)
//! assigns it to an epoch (O(1) through the stream's cursor); a vCPU the
//! session never saw converts with the VM's current offset, flagged
//! `outside-epoch`; a VM whose hypervisor ignored the offset KVM was asked
//! for flags every event `offset-not-applied`. Nothing is dropped.

pub mod bind;
mod guest;
mod stats;
pub mod vms;

use std::{collections::HashMap, io, sync::Arc, time::Duration};

use bytes::Bytes;

pub use bind::{Binding, BoundBy, VmSpec};
use guest::Guest;
pub use stats::{Counts, Summary};
pub use vms::{VmState, Vms};

use crate::{
    clock::Clock,
    ingest::{ConnId, ConnectionInfo, EventPage},
    merge::{
        EventData, MergeConfig, MergeError, MergeItem, Merger, SourceId, SourceInfo, SourceKind,
        Sources,
    },
    offsets::{OffsetEvent, journal::JournalRecord},
    output::{EventWriter, WriteContext},
    tracefs::{FormatSet, LostEvents, Page, PageLayout},
};

/// How a correlator decides and waits.
#[derive(Clone, Debug)]
pub struct CorrelatorConfig {
    /// VMs named by the user (`--vm PID[=NAME]`).
    pub vms: Vec<VmSpec>,
    /// How long an event may wait for slower streams before it is written.
    pub window: Duration,
    /// How long before its Hello an agent's TSC samples may be.
    pub bind_slack: Duration,
    /// How far behind its keep-alive an agent's page reads may be: a
    /// keep-alive at guest TSC `g` promises nothing older than `g` minus
    /// this on any of its CPUs.
    pub agent_lag: Duration,
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        Self {
            vms: Vec::new(),
            window: Duration::from_secs(1),
            bind_slack: Duration::from_secs(2),
            agent_lag: Duration::from_millis(200),
        }
    }
}

/// The host's own trace, as events are decoded from it.
#[derive(Clone, Debug)]
pub struct HostTraceInfo {
    /// How logs call it (the tracefs instance's name).
    pub name: String,
    /// Its ring-buffer page layout.
    pub layout: PageLayout,
    /// The formats of its events.
    pub formats: Arc<FormatSet>,
    /// The CPUs it reads: each is a merge stream.
    pub cpus: Vec<u32>,
}

/// VM and vCPU epochs, bound agents, conversion and merge: see the module
/// doc.
pub struct Correlator {
    config: CorrelatorConfig,
    clock: Clock,
    vms: Vms,
    guests: HashMap<ConnId, Guest>,
    sources: Sources,
    merger: Merger,
    host: SourceId,
    host_layout: PageLayout,
    host_cpus: Vec<u32>,
    counts: Counts,
    /// Sources of agents that left, dropped once their last event is out.
    departed: Vec<SourceId>,
}

impl Correlator {
    /// A correlator with no VMs and no agents yet.
    pub fn new(
        config: CorrelatorConfig,
        clock: Clock,
        host: HostTraceInfo,
    ) -> Result<Self, MergeError> {
        let mut sources = Sources::new();
        let source = sources.add(SourceInfo {
            kind: SourceKind::Host,
            name: host.name,
            formats: host.formats,
            kernel_release: None,
        })?;
        let mut merger = Merger::new(MergeConfig::new(ticks(&clock, config.window)));
        // Every host CPU holds the merge back until its first read says
        // how far it has got.
        for &cpu in &host.cpus {
            merger.advance(source, cpu, 0);
        }
        Ok(Self {
            config,
            clock,
            vms: Vms::default(),
            guests: HashMap::new(),
            sources,
            merger,
            host: source,
            host_layout: host.layout,
            host_cpus: host.cpus,
            counts: Counts::default(),
            departed: Vec::new(),
        })
    }

    /// The clock conversions use.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A refreshed calibration of the same clock.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Every VM as the correlator knows it.
    pub fn vms(&self) -> &Vms {
        &self.vms
    }

    /// Applies the kernel side's offset events; `now` is the host TSC they
    /// were received at (the boundary of a change that carries none), and
    /// `cmdline` reads a new VMM's command line (for vsock CIDs). Returns
    /// true when one of them concerns a VM an agent is bound to (its
    /// threads may have changed).
    pub fn offsets(
        &mut self,
        events: &[OffsetEvent],
        now: u64,
        cmdline: &dyn Fn(u32) -> Vec<String>,
    ) -> bool {
        for event in events {
            self.vms.apply(event, &self.clock, now, cmdline);
        }
        let guests = &self.guests;
        let in_use = |pid| guests.values().any(|g| g.binding.pid == pid);
        let touches_bound = events.iter().any(|e| in_use(e.pid));
        self.vms.reap(in_use);
        touches_bound
    }

    /// Gives back the epoch history a previous session journaled, before
    /// the live snapshot is applied: `records` are those of the VMs still
    /// alive (see [`crate::offsets::journal::Restore`]), in the order
    /// written, each placed at its recorded boundary, so an agent's events
    /// from before the restart convert with the epochs they belong to.
    /// Returns how many records were applied.
    pub fn restore(
        &mut self,
        records: &[JournalRecord],
        cmdline: &dyn Fn(u32) -> Vec<String>,
    ) -> usize {
        for record in records {
            self.vms.apply_at(&record.event, &record.boundary, cmdline);
        }
        records.len()
    }

    /// Binds the agent of `info` to a VM and opens its CPU streams, or says
    /// why it is refused (the reason is sent to the agent).
    pub fn admit(&mut self, info: &ConnectionInfo) -> Result<&Binding, String> {
        let slack = ticks(&self.clock, self.config.bind_slack);
        let binding = bind::bind(
            &bind::Admission::of(info),
            &self.config.vms,
            &self.vms.candidates(),
            slack,
        )?;
        let source = self
            .sources
            .add(SourceInfo {
                kind: SourceKind::Guest {
                    vm_name: binding.name.clone(),
                    vm_pid: binding.pid,
                },
                name: info.peer.to_string(),
                formats: info.guest.shared_formats(),
                kernel_release: Some(info.hello.kernel_release.clone()),
            })
            .map_err(|e| e.to_string())?;
        self.guests
            .insert(info.id, Guest::new(source, binding, &info.hello));
        // Until its keep-alives or pages say otherwise, the merge waits for
        // the agent's CPUs rather than write host events its backlog may
        // precede.
        if let Some(sample) = info.hello.samples.first() {
            self.guest_alive(info.id, sample.tsc_before);
        }
        Ok(&self.guests[&info.id].binding)
    }

    /// Converts a page of a bound agent's events and hands them to the
    /// merge; an event that cannot wait (late) is written to `out` at once.
    pub fn guest_page(&mut self, page: &EventPage, out: &mut dyn EventWriter) -> io::Result<()> {
        let Some(guest) = self.guests.get_mut(&page.conn) else {
            return Ok(());
        };
        let vm = self.vms.get(guest.binding.pid);
        let (merger, sources, clock) = (&mut self.merger, &mut self.sources, &self.clock);
        let mut n = 0;
        let result = guest.convert(page, vm, sources, |item, sources| {
            n += 1;
            match merger.push(item) {
                Some(now) => write(out, sources, clock, &now),
                None => Ok(()),
            }
        });
        self.counts.guest_events += n;
        result
    }

    /// A keep-alive's TSC sample `guest_tsc`: the agent has read every CPU's
    /// buffer at least once in the last `agent_lag`, so none of its CPU
    /// streams will bring anything older; quiet ones stop holding the merge
    /// back.
    pub fn guest_alive(&mut self, conn: ConnId, guest_tsc: u64) {
        let Some(guest) = self.guests.get(&conn) else {
            return;
        };
        let Some(vm) = self.vms.get(guest.binding.pid) else {
            return;
        };
        let lag = ticks(&self.clock, self.config.agent_lag);
        for (cpu, host) in guest.hosts_of(vm, guest_tsc) {
            self.merger
                .advance(guest.source, cpu, host.saturating_sub(lag));
        }
    }

    /// An exact watermark (protocol version 2): guest CPU `cpu`'s buffer was
    /// read empty when guest CPU `tsc_cpu`'s TSC read `guest_tsc`, after
    /// every page sent before. Nothing older will come from `cpu`, so its
    /// stream stops holding the merge back up to there at once.
    pub fn guest_drained(&mut self, conn: ConnId, cpu: u32, tsc_cpu: u32, guest_tsc: u64) {
        let Some(guest) = self.guests.get(&conn) else {
            return;
        };
        let Some(vm) = self.vms.get(guest.binding.pid) else {
            return;
        };
        if let Some(host) = guest.host_of(vm, tsc_cpu, guest_tsc) {
            self.merger.advance(guest.source, cpu, host);
        }
    }

    /// The guest's kernel lost `new` events on one of its CPUs.
    pub fn guest_lost(&mut self, new: u64) {
        self.counts.guest_lost += new;
    }

    /// The agent's connection ended: its streams stop holding the merge
    /// back; what it sent still comes out in order.
    pub fn guest_closed(&mut self, conn: ConnId) {
        if let Some(guest) = self.guests.remove(&conn) {
            self.merger.close_source(guest.source);
            self.departed.push(guest.source);
        }
    }

    /// Hands the events of a page of the host's CPU `cpu` to the merge.
    pub fn host_page(
        &mut self,
        cpu: u32,
        data: &Bytes,
        out: &mut dyn EventWriter,
    ) -> Result<(), HostPageError> {
        let page = Page::parse(&self.host_layout, data).map_err(HostPageError::Page)?;
        if let LostEvents::Count(n) = page.lost_events() {
            self.counts.host_lost += n;
        }
        for raw in page.events().filter_map(Result::ok) {
            let Some(data) = EventData::from_page(data, raw.data) else {
                continue;
            };
            let item = MergeItem::host(self.host, cpu, raw.ts, data);
            self.sources.learn_comms(&item);
            self.counts.host_events += 1;
            if let Some(now) = self.merger.push(item) {
                write(out, &self.sources, &self.clock, &now).map_err(HostPageError::Output)?;
            }
        }
        Ok(())
    }

    /// Every host CPU has been read up to host TSC `tsc`: nothing older
    /// will come from the host.
    pub fn host_read(&mut self, tsc: u64) {
        for &cpu in &self.host_cpus {
            self.merger.advance(self.host, cpu, tsc);
        }
    }

    /// Host CPU `cpu` was read empty just after host TSC `tsc`: nothing
    /// older will come from it.
    pub fn host_drained(&mut self, cpu: u32, tsc: u64) {
        if self.host_cpus.contains(&cpu) {
            self.merger.advance(self.host, cpu, tsc);
        }
    }

    /// Host task names (pid -> comm), e.g. from `saved_cmdlines`.
    pub fn host_comms<'a>(&mut self, comms: impl IntoIterator<Item = (i32, &'a str)>) {
        self.sources.set_comms(self.host, comms);
    }

    /// Writes what the merge releases at host TSC `now`, and forgets the
    /// departed agents nothing is held of any more. Returns how many events
    /// were written (flushed when any).
    pub fn release(&mut self, now: u64, out: &mut dyn EventWriter) -> io::Result<u64> {
        let clock = &self.clock;
        let to_ns = |tsc| clock.tsc_to_ns(tsc);
        let to_boottime = |tsc| clock.tsc_to_boottime_ns(tsc);
        let ctx = WriteContext {
            sources: &self.sources,
            clock: &to_ns,
            boottime: Some(&to_boottime),
        };
        let n = self.merger.pop_ready(now, |item| out.write(&ctx, &item))?;
        if n > 0 {
            out.flush()?;
        }
        self.forget_departed();
        Ok(n as u64)
    }

    /// Writes everything still held, in order, and says what happened.
    pub fn finish(mut self, out: &mut dyn EventWriter) -> io::Result<Summary> {
        let clock = &self.clock;
        let to_ns = |tsc| clock.tsc_to_ns(tsc);
        let to_boottime = |tsc| clock.tsc_to_boottime_ns(tsc);
        let ctx = WriteContext {
            sources: &self.sources,
            clock: &to_ns,
            boottime: Some(&to_boottime),
        };
        self.merger.flush_all(|item| out.write(&ctx, &item))?;
        out.flush()?;
        Ok(self.summary())
    }

    /// What happened so far.
    pub fn summary(&self) -> Summary {
        Summary::new(&self.counts, &self.merger)
    }

    /// Events held in the merge now.
    pub fn held(&self) -> usize {
        self.merger.held()
    }

    /// Connected, bound agents.
    pub fn agents(&self) -> usize {
        self.guests.len()
    }

    /// The VMM pids agents are bound to, each once, sorted.
    pub fn bound_vms(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.guests.values().map(|g| g.binding.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
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
}

/// Why a host page was not taken in whole.
#[derive(Debug, thiserror::Error)]
pub enum HostPageError {
    /// The page does not decode; it is skipped, nothing else is affected.
    #[error("skipping a host page: {0}")]
    Page(#[source] crate::tracefs::PageError),
    /// Writing an event that could not wait failed.
    #[error("writing the timeline: {0}")]
    Output(#[source] io::Error),
}

fn write(
    out: &mut dyn EventWriter,
    sources: &Sources,
    clock: &Clock,
    item: &MergeItem,
) -> io::Result<()> {
    let to_ns = |tsc| clock.tsc_to_ns(tsc);
    let to_boottime = |tsc| clock.tsc_to_boottime_ns(tsc);
    out.write(
        &WriteContext {
            sources,
            clock: &to_ns,
            boottime: Some(&to_boottime),
        },
        item,
    )
}

/// Host TSC ticks in `d`.
pub fn ticks(clock: &Clock, d: Duration) -> u64 {
    (clock.tsc_khz() as u128 * d.as_micros() / 1000) as u64
}

#[cfg(test)]
mod tests;
