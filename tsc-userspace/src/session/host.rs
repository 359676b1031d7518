//! The host's own events: a private tracefs instance on `x86-tsc`, read per
//! CPU the way the agent reads a guest's.

use std::{fs, sync::Arc, time::Duration};

use tokio::sync::mpsc;

use crate::{
    page_reader::{Read, ReadConfig, Readers},
    tracefs::{EventName, FormatSet, Instance, InstanceOptions, PageLayout, TracefsError},
};

/// The kvm events traced on the host by default, for the bound VMs' threads.
pub const DEFAULT_HOST_EVENTS: &[&str] = &[
    "kvm:kvm_entry",
    "kvm:kvm_exit",
    "kvm:kvm_userspace_exit",
    "kvm:kvm_write_tsc_offset",
];

/// How often every host CPU is read by default, partly filled pages
/// included, so a quiet CPU's watermark keeps up (wake-ups at
/// `BUFFER_PERCENT` read busy ones sooner); twice as long while every CPU
/// is idle. A guest event waits for the host CPUs' watermarks to pass it,
/// so this bounds the session's latency from below, as the agent's
/// `--flush-ms` does on the guest's side.
pub const DEFAULT_FLUSH: Duration = Duration::from_millis(10);
/// How full a host CPU's buffer gets before its reader is woken.
const BUFFER_PERCENT: u32 = 25;

/// The host's trace: instance, page pump and what decoding needs.
pub struct HostTrace {
    instance: Instance,
    readers: Option<Readers>,
    /// Pages as they are read, each CPU's followed by its exact watermark
    /// (host TSC) when a read finds it empty.
    pub pages: mpsc::Receiver<Read>,
    /// The instance's page layout.
    pub layout: PageLayout,
    /// Formats of the enabled events.
    pub formats: Arc<FormatSet>,
    /// The CPUs read (those with a buffer in the instance).
    cpus: Vec<u32>,
    /// Trace only the bound VMs' threads (the default events).
    filter_by_vm: bool,
    started: bool,
}

impl HostTrace {
    /// Creates the instance with `events`, read at least every `flush`;
    /// with `filter_by_vm` it traces nothing until
    /// [`HostTrace::follow_vms`] names the VMs.
    pub fn start(
        events: &[EventName],
        filter_by_vm: bool,
        flush: Duration,
    ) -> Result<Self, TracefsError> {
        let mut options = InstanceOptions::new("tsc-tracer-host");
        options.events = events.to_vec();
        options.buffer_size_kb = Some(4096);
        options.buffer_percent = Some(BUFFER_PERCENT);
        let instance = Instance::create(&options)?;
        if filter_by_vm {
            instance.set_tracing_on(false)?;
            // Threads the VMMs create later (hot-plugged vCPUs) are followed.
            instance.write("options/event-fork", "1")?;
        }
        let cpus = instance.cpus()?;
        let mut pipes = Vec::new();
        for &cpu in &cpus {
            pipes.push(instance.open_pipe(cpu)?.into_async()?);
        }
        let (tx, pages) = mpsc::channel(1024);
        let config = ReadConfig {
            flush,
            idle_factor: crate::page_reader::IDLE_FACTOR,
        };
        let readers = Readers::start_with_marks(pipes, tx, config);
        Ok(Self {
            layout: instance.page_layout()?,
            formats: Arc::new(instance.format_set()?),
            instance,
            cpus,
            readers: Some(readers),
            pages,
            filter_by_vm,
            started: !filter_by_vm,
        })
    }

    /// What the correlator needs to take this trace's pages.
    pub fn info(&self) -> crate::correlator::HostTraceInfo {
        crate::correlator::HostTraceInfo {
            name: self.name().to_owned(),
            layout: self.layout,
            formats: self.formats.clone(),
            cpus: self.cpus.clone(),
        }
    }

    /// Traces the threads of these VMM processes (when filtering by VM).
    pub fn follow_vms(&mut self, pids: &[u32]) -> Result<(), TracefsError> {
        if !self.filter_by_vm {
            return Ok(());
        }
        let tids: Vec<String> = pids
            .iter()
            .flat_map(|&pid| threads(pid))
            .map(|t| t.to_string())
            .collect();
        if tids.is_empty() {
            return Ok(());
        }
        self.instance.write("set_event_pid", &tids.join(" "))?;
        if !self.started {
            self.instance.set_tracing_on(true)?;
            self.started = true;
        }
        Ok(())
    }

    /// Task names the kernel saved (pid -> comm), for host events whose
    /// task no sched event has named yet.
    pub fn saved_cmdlines(&self) -> Result<std::collections::HashMap<i32, String>, TracefsError> {
        self.instance.tracefs().saved_cmdlines()
    }

    /// The instance (the recording reads its headers and formats).
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The instance's name (for messages).
    pub fn name(&self) -> &str {
        self.instance.name()
    }

    /// Stops tracing and lets the readers hand out what is left.
    pub async fn stop(&mut self) {
        let _ = self.instance.set_tracing_on(false);
        if let Some(readers) = self.readers.take() {
            readers.stop();
            readers.join().await;
        }
    }
}

/// Thread ids of a process (vCPU threads are where kvm events fire).
fn threads(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
