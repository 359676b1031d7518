//! Assembling a recording's trace.dat files from its spill files and
//! metadata: at the end of a session, or with `tsc-tracer record-finish`
//! after a crash (everything spilled before it is kept).

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufWriter},
    path::{Path, PathBuf},
};

use super::{
    dat::{CpuData, DatFile, Formats},
    meta::{GuestMeta, RecordingMeta, StreamMeta},
    options::{DatOption, GuestVcpu, TimeShiftCpu},
    spill::{cpu_file, read_pages, spilled_len},
    timeshift::{CpuPlan, identity, plan_cpu, timeline_of},
};
use crate::tracefs::PageLayout;

/// The host file's name.
pub const HOST_FILE: &str = "host.dat";
/// The trace clock of every file.
const CLOCK: &str = "x86-tsc";

/// Errors assembling.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// Reading the spill or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The metadata is not one this version wrote.
    #[error("{0}")]
    Meta(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> AssembleError {
    let what = what.into();
    move |source| AssembleError::Io { what, source }
}

/// One guest file written.
#[derive(Clone, Debug)]
pub struct GuestSummary {
    /// File name.
    pub file: String,
    /// Guest CPUs written in host TSC (not as TIME_SHIFT samples).
    pub rewritten_cpus: Vec<u32>,
    /// Events left out of rewritten CPUs.
    pub skipped_events: u64,
    /// Pages left out while recording.
    pub skipped_pages: u64,
}

/// What assembly wrote.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// The recording directory.
    pub dir: PathBuf,
    /// Whether host.dat was written.
    pub host: bool,
    /// The guest files.
    pub guests: Vec<GuestSummary>,
    /// Bytes of trace.dat written.
    pub bytes: u64,
    /// Why the recording stopped early, if it did.
    pub stopped: Option<String>,
}

/// Assembles the recording in `dir`.
pub fn assemble(dir: &Path) -> Result<Summary, AssembleError> {
    let meta = RecordingMeta::load(dir).map_err(io_err(format!(
        "reading the recording's metadata in {}",
        dir.display()
    )))?;
    let mut summary = Summary {
        dir: dir.to_path_buf(),
        stopped: meta.stopped.clone(),
        ..Summary::default()
    };
    let host_id = meta.host.as_ref().map_or(0, |h| h.trace_id);
    let mut guest_options = Vec::new();
    for guest in &meta.guests {
        let (dat, g) = guest_file(dir, &meta, guest, host_id)?;
        summary.bytes += write(dir, &guest.file, &dat)?;
        summary.guests.push(g);
        guest_options.push(DatOption::Guest {
            name: guest.name.clone(),
            trace_id: guest.stream.trace_id,
            vcpus: guest
                .cpus
                .iter()
                .map(|c| GuestVcpu {
                    cpu: c.cpu,
                    tid: c.tid,
                })
                .collect(),
        });
    }
    if let Some(host) = &meta.host {
        let cpus = stream_cpus(dir, host);
        let mut dat = dat_file(host, &meta, cpus);
        dat.options.extend(guest_options);
        summary.bytes += write(dir, HOST_FILE, &dat)?;
        summary.host = true;
    }
    fs::write(dir.join("README"), super::readme::text(&meta))
        .map_err(io_err(format!("writing {}/README", dir.display())))?;
    Ok(summary)
}

fn write(dir: &Path, name: &str, dat: &DatFile) -> Result<u64, AssembleError> {
    let path = dir.join(name);
    let what = format!("writing {}", path.display());
    let file = File::create(&path).map_err(io_err(what.clone()))?;
    let mut out = BufWriter::new(file);
    dat.write_to(&mut out).map_err(io_err(what))
}

/// The CPU data of a stream as spilled.
fn stream_cpus(dir: &Path, s: &StreamMeta) -> Vec<CpuData> {
    let sdir = dir.join(&s.dir);
    (0..s.cpus)
        .map(|cpu| {
            let path = cpu_file(&sdir, cpu);
            let len = spilled_len(&path, u64::from(s.page_size));
            CpuData::File { path, len }
        })
        .collect()
}

/// The file of a stream with the options both kinds share.
fn dat_file(s: &StreamMeta, meta: &RecordingMeta, cpus: Vec<CpuData>) -> DatFile {
    let mut ftrace = Vec::new();
    let mut systems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (system, text) in &s.formats {
        if system == "ftrace" {
            ftrace.push(text.clone());
        } else {
            systems
                .entry(system.clone())
                .or_default()
                .push(text.clone());
        }
    }
    let mut options = Vec::new();
    if let Some(t) = meta.tsc2nsec {
        options.push(DatOption::Tsc2Nsec(t));
        if meta.offset_ns != 0 {
            options.push(DatOption::Offset(meta.offset_ns));
        }
    }
    options.extend([
        DatOption::TraceClock(format!("[{CLOCK}]")),
        DatOption::Uname(s.uname.clone()),
        DatOption::Version(format!("tsc-tracer {}", env!("CARGO_PKG_VERSION"))),
        DatOption::CpuCount(cpus.len() as u32),
        DatOption::TraceId(s.trace_id),
    ]);
    DatFile {
        page_size: s.page_size,
        formats: Formats {
            header_page: s.header_page.clone(),
            header_event: s.header_event.clone(),
            ftrace,
            systems: systems.into_iter().collect(),
        },
        cmdlines: s.cmdlines.clone(),
        clock: CLOCK.to_string(),
        options,
        cpus,
    }
}

fn guest_file(
    dir: &Path,
    meta: &RecordingMeta,
    guest: &GuestMeta,
    host_id: u64,
) -> Result<(DatFile, GuestSummary), AssembleError> {
    let s = &guest.stream;
    let layout = PageLayout::parse(&s.header_page)
        .map_err(|e| AssembleError::Meta(format!("{}: header_page: {e}", guest.file)))?;
    let sdir = dir.join(&s.dir);
    let mut summary = GuestSummary {
        file: guest.file.clone(),
        rewritten_cpus: Vec::new(),
        skipped_events: 0,
        skipped_pages: guest.skipped_pages,
    };
    let mut cpus = Vec::new();
    let mut shifts = Vec::new();
    for cpu in 0..s.cpus {
        let path = cpu_file(&sdir, cpu);
        let page_size = s.page_size as usize;
        let timeline = guest
            .cpus
            .iter()
            .find(|c| c.cpu == cpu)
            .and_then(|c| Some((guest.vm_pid?, c.vcpu_id?)))
            .and_then(|(pid, vcpu)| meta.epochs(pid, vcpu))
            .and_then(|epochs| timeline_of(&epochs).ok());
        let plan = plan_cpu(&layout, || read_pages(&path, page_size), timeline.as_ref())
            .map_err(io_err(format!("reading {}", path.display())))?;
        match plan {
            CpuPlan::Shift(shift) => {
                let len = spilled_len(&path, u64::from(s.page_size));
                cpus.push(CpuData::File { path, len });
                shifts.push(shift);
            }
            CpuPlan::Rewritten { pages, skipped } => {
                summary.rewritten_cpus.push(cpu);
                summary.skipped_events += skipped;
                cpus.push(CpuData::Pages(pages));
                shifts.push(identity());
            }
        }
    }
    let mut dat = dat_file(s, meta, cpus);
    dat.options.push(time_shift(host_id, shifts));
    Ok((dat, summary))
}

/// The guest file's TIME_SHIFT: flags 0 (step), one entry per guest CPU.
fn time_shift(host_id: u64, cpus: Vec<TimeShiftCpu>) -> DatOption {
    DatOption::TimeShift {
        peer_trace_id: host_id,
        flags: 0,
        cpus,
    }
}
