//! Private trace instances (`instances/NAME`): created with a unique name,
//! configured, and removed when the last handle goes.

use std::{
    fmt, fs,
    io::{self, Write},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use super::{
    FormatSet, PageLayout, RawPipe, Tracefs, TracefsError,
    mount::{parse_cpu_list, read_text},
    registry,
};

/// `system:name` of a trace event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventName {
    /// Event system (`sched`).
    pub system: String,
    /// Event name (`sched_switch`).
    pub name: String,
}

impl EventName {
    /// `system:name`.
    pub fn new(system: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            system: system.into(),
            name: name.into(),
        }
    }

    /// `ftrace:print`, the event `trace_marker` writes become. Every
    /// instance records it without enabling: `tracing_mark_write()`
    /// (kernel/trace/trace.c) writes straight to the instance's buffer, and
    /// like every `ftrace` event it has no `enable` file
    /// (`TRACE_EVENT_FL_IGNORE_ENABLE`, kernel/trace/trace_export.c).
    pub fn marker() -> Self {
        Self::new("ftrace", "print")
    }

    /// Whether this is the [`EventName::marker`] event.
    pub fn is_marker(&self) -> bool {
        self.system == "ftrace" && self.name == "print"
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.system, self.name)
    }
}

/// A malformed `system:name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not SYSTEM:NAME")]
pub struct BadEventName(String);

impl FromStr for EventName {
    type Err = BadEventName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = |p: &str| !p.is_empty() && !p.contains(['/', '.', ' ']);
        match s.split_once(':') {
            Some((sys, name)) if ok(sys) && ok(name) => Ok(Self::new(sys, name)),
            _ => Err(BadEventName(s.to_string())),
        }
    }
}

impl From<(&str, &str)> for EventName {
    fn from((system, name): (&str, &str)) -> Self {
        Self::new(system, name)
    }
}

/// How to set up an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceOptions {
    /// Start of the instance's name; the pid and a counter follow
    /// (`PREFIX-PID-N`). Instances of dead processes with this prefix are
    /// removed when a new one is created.
    pub name_prefix: String,
    /// Trace clock (`x86-tsc` by default).
    pub clock: String,
    /// Per-CPU buffer size in KiB; `None` keeps the kernel's default.
    pub buffer_size_kb: Option<u32>,
    /// How full (percent) a CPU's buffer must be before a waiting reader
    /// wakes; 0 wakes on every event. `None` keeps the kernel's default (50):
    /// a reader that waits only for readiness then sees nothing of a quiet
    /// CPU, so pair it with a periodic [`super::AsyncRawPipe::try_read_page`].
    pub buffer_percent: Option<u32>,
    /// Events to enable.
    pub events: Vec<EventName>,
}

impl InstanceOptions {
    /// Options with the `x86-tsc` clock, default buffers and no events.
    pub fn new(name_prefix: impl Into<String>) -> Self {
        Self {
            name_prefix: name_prefix.into(),
            clock: "x86-tsc".into(),
            buffer_size_kb: None,
            buffer_percent: None,
            events: Vec::new(),
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A private trace instance. Cloning shares it; it is removed (tracing
/// stopped, events disabled, directory removed) when the last clone and the
/// last pipe opened from it are dropped.
#[derive(Debug, Clone)]
pub struct Instance {
    dir: Arc<InstanceDir>,
}

/// The directory itself; its drop is the removal.
#[derive(Debug)]
pub(crate) struct InstanceDir {
    tracefs: Tracefs,
    name: String,
    pub(crate) path: PathBuf,
    events: Vec<EventName>,
}

impl Instance {
    /// Creates and configures a new instance, in the mounted tracefs
    /// (mounting it if needed).
    pub fn create(opts: &InstanceOptions) -> Result<Self, TracefsError> {
        Self::create_in(&Tracefs::find_or_mount()?, opts)
    }

    /// Creates and configures a new instance in `tracefs`.
    pub fn create_in(tracefs: &Tracefs, opts: &InstanceOptions) -> Result<Self, TracefsError> {
        for event in &opts.events {
            if !tracefs.has_event(&event.system, &event.name) {
                return Err(TracefsError::UnknownEvent(event.clone()));
            }
            let dir = tracefs.root().join("events").join(&event.system);
            if !event.is_marker() && !dir.join(&event.name).join("enable").exists() {
                return Err(TracefsError::NotEnableable(event.clone()));
            }
        }
        registry::remove_stale(tracefs, &opts.name_prefix);
        let dir = Arc::new(make_dir(tracefs, &opts.name_prefix, &opts.events)?);
        let instance = Self { dir };
        // From here an error drops `instance`, which removes the directory.
        instance.configure(opts)?;
        tracing::debug!(instance = %instance.name(), "trace instance ready");
        Ok(instance)
    }

    fn configure(&self, opts: &InstanceOptions) -> Result<(), TracefsError> {
        // The clock first: changing it clears the buffers.
        if let Err(e) = self.write("trace_clock", &opts.clock) {
            let available = self.read("trace_clock").unwrap_or_default();
            return Err(match e {
                TracefsError::Io { ref cause, .. }
                    if cause.kind() == io::ErrorKind::InvalidInput =>
                {
                    TracefsError::Clock {
                        clock: opts.clock.clone(),
                        available: available.trim().to_string(),
                    }
                }
                e => e,
            });
        }
        if let Some(kb) = opts.buffer_size_kb {
            self.write("buffer_size_kb", &kb.to_string())?;
        }
        if let Some(pct) = opts.buffer_percent {
            self.write("buffer_percent", &pct.to_string())?;
        }
        for event in opts.events.iter().filter(|e| !e.is_marker()) {
            let enable = format!("events/{}/{}/enable", event.system, event.name);
            self.write(&enable, "1")?;
        }
        Ok(())
    }

    /// The instance's name (its directory under `instances/`).
    pub fn name(&self) -> &str {
        &self.dir.name
    }

    /// The instance's directory.
    pub fn path(&self) -> &Path {
        &self.dir.path
    }

    /// The tracefs it lives in.
    pub fn tracefs(&self) -> &Tracefs {
        &self.dir.tracefs
    }

    /// The events asked for at creation (all enabled but the marker event,
    /// which needs no enabling).
    pub fn events(&self) -> &[EventName] {
        &self.dir.events
    }

    /// What the instance records: its enabled events, then the marker
    /// event (`ftrace:print`) once.
    pub fn recorded_events(&self) -> Vec<EventName> {
        let enabled = self.events().iter().filter(|e| !e.is_marker());
        enabled.cloned().chain([EventName::marker()]).collect()
    }

    /// Opens the instance's `trace_marker` for writing: each write becomes
    /// one `ftrace:print` event in this instance only.
    pub fn trace_marker(&self) -> Result<TraceMarker, TracefsError> {
        let path = self.dir.path.join("trace_marker");
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| TracefsError::io(&path, e))?;
        Ok(TraceMarker {
            file,
            path,
            _instance: self.dir.clone(),
        })
    }

    /// Text of the instance's `events/header_page`.
    pub fn header_page(&self) -> Result<String, TracefsError> {
        self.read("events/header_page")
    }

    /// Text of the instance's `events/header_event`.
    pub fn header_event(&self) -> Result<String, TracefsError> {
        self.read("events/header_event")
    }

    /// Text of `events/SYSTEM/NAME/format`.
    pub fn event_format(&self, event: &EventName) -> Result<String, TracefsError> {
        self.read(&format!("events/{}/{}/format", event.system, event.name))
    }

    /// The page layout from `header_page`.
    pub fn page_layout(&self) -> Result<PageLayout, TracefsError> {
        Ok(PageLayout::parse(&self.header_page()?)?)
    }

    /// Bytes per ring-buffer page (sub-buffer): what each pipe read returns.
    pub fn page_size(&self) -> Result<usize, TracefsError> {
        Ok(self.page_layout()?.page_size())
    }

    /// Formats of the enabled events and of `ftrace:print` (what
    /// `trace_marker` writes produce).
    pub fn format_set(&self) -> Result<FormatSet, TracefsError> {
        let mut set = FormatSet::new();
        for event in self.recorded_events() {
            set.insert_text(&event.system, &self.event_format(&event)?)?;
        }
        Ok(set)
    }

    /// Online CPUs that have a buffer in this instance.
    pub fn cpus(&self) -> Result<Vec<u32>, TracefsError> {
        let online = "/sys/devices/system/cpu/online";
        let text = fs::read_to_string(online).map_err(|e| TracefsError::io(online, e))?;
        let cpus = parse_cpu_list(&text).ok_or_else(|| {
            TracefsError::io(online, io::Error::new(io::ErrorKind::InvalidData, text))
        })?;
        let per_cpu = self.dir.path.join("per_cpu");
        Ok(cpus
            .into_iter()
            .filter(|c| per_cpu.join(format!("cpu{c}")).is_dir())
            .collect())
    }

    /// Turns recording on or off (`tracing_on`). Pages already recorded stay
    /// readable; after turning it off, reading until empty flushes the
    /// partly filled last pages.
    pub fn set_tracing_on(&self, on: bool) -> Result<(), TracefsError> {
        self.write("tracing_on", if on { "1" } else { "0" })
    }

    /// Opens `per_cpu/cpuN/trace_pipe_raw` (non-blocking). Reading consumes.
    pub fn open_pipe(&self, cpu: u32) -> Result<RawPipe, TracefsError> {
        RawPipe::open(self.dir.clone(), cpu, self.page_size()?)
    }

    /// Reads a file of the instance.
    pub fn read(&self, rel: &str) -> Result<String, TracefsError> {
        read_text(&self.dir.path.join(rel))
    }

    /// Writes a file of the instance (one write, as tracefs wants).
    pub fn write(&self, rel: &str, value: &str) -> Result<(), TracefsError> {
        write_file(&self.dir.path.join(rel), value)
    }
}

impl Drop for InstanceDir {
    fn drop(&mut self) {
        match registry::remove_instance(&self.path) {
            Ok(()) => tracing::debug!(instance = %self.name, "trace instance removed"),
            Err(e) => tracing::warn!(instance = %self.name, "could not remove trace instance: {e}"),
        }
        registry::unregister(&self.path);
    }
}

fn make_dir(
    tracefs: &Tracefs,
    prefix: &str,
    events: &[EventName],
) -> Result<InstanceDir, TracefsError> {
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{pid}-{n}");
        let path = tracefs.instances_dir().join(&name);
        match fs::create_dir(&path) {
            Ok(()) => {
                registry::register(&path);
                return Ok(InstanceDir {
                    tracefs: tracefs.clone(),
                    name,
                    path,
                    events: events.to_vec(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(TracefsError::io(path, e)),
        }
    }
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), TracefsError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| TracefsError::io(path, e))?;
    file.write_all(value.as_bytes())
        .map_err(|e| TracefsError::io(path, e))
}

/// The instance's `trace_marker`, open for writing.
#[derive(Debug)]
pub struct TraceMarker {
    file: fs::File,
    path: PathBuf,
    _instance: Arc<InstanceDir>,
}

impl TraceMarker {
    /// Writes one marker: one `ftrace:print` event whose `buf` is `text`
    /// (the kernel appends a newline when it has none).
    pub fn write_marker(&mut self, text: &str) -> Result<(), TracefsError> {
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| TracefsError::io(&self.path, e))
    }
}
