//! The live side of a recording: the session hands it pages and facts as
//! they come; it appends pages to spill files and keeps the metadata file
//! current. It has no I/O loop of its own and does no per-event work.
//!
//! Faults: the first write that fails (a full disk, a vanished DIR) stops
//! the recording, logged once; every later call is a no-op, so the live
//! output and the guests go on. A guest whose Hello a reader could choke on
//! (header or format text too large or unparsable) is not recorded; a page
//! larger than its stream's page size, or whose header does not parse, is
//! skipped and counted.
//!
//! A reconnecting agent gets a new file, numbered (`VM-AGENT-2.dat`): each
//! connection has its own Hello (formats, CPUs) and its own stream, and
//! one trace.dat can hold only one set of formats.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::{
    meta::{EpochMeta, GuestCpuMeta, GuestMeta, RecordingMeta, SPILL_DIR, StreamMeta, VcpuEpochs},
    options::Tsc2Nsec,
    rotate::{Rotation, only_pieces},
    spill::SpillStream,
};
use crate::{
    output::rotate::{PieceSignal, Pieces, RotatePolicy},
    timeline::Epoch,
    tracefs::Tracefs,
    tracefs::{EventFormat, Page, PageLayout},
    wire::Hello,
};

/// Largest header or format text accepted from a guest.
pub const MAX_FORMAT_TEXT: usize = 64 * 1024;
/// Largest page size accepted from a guest.
pub const MAX_PAGE_SIZE: u32 = 1 << 20;
/// Pages between checks that the recording directory still exists.
const CHECK_EVERY: u32 = 64;
/// The offsets log in a recording.
pub const OFFSETS_FILE: &str = "offsets.jsonl";

/// Errors starting a recording.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// DIR exists and holds files.
    #[error("{0} is not empty (use --force to record into it anyway)")]
    NotEmpty(PathBuf),
    /// DIR could not be made or written.
    #[error("cannot record into {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Where one host stream is: its spill files and its pages' layout.
struct Stream {
    spill: SpillStream,
    layout: PageLayout,
    page_size: usize,
}

impl Stream {
    /// Appends a page; `false` when it was skipped as unreadable.
    fn page(&mut self, cpu: u32, data: &[u8]) -> io::Result<bool> {
        if data.len() > self.page_size || Page::parse(&self.layout, data).is_err() {
            return Ok(false);
        }
        self.spill.append(cpu, data)?;
        Ok(true)
    }
}

/// A guest's binding, as the session knows it when the agent connects.
#[derive(Clone, Debug, Default)]
pub struct GuestBinding {
    /// The VMM process, when bound.
    pub vm_pid: Option<u32>,
    /// The VM's name (the VMM's comm or `--vm` name).
    pub vm_name: String,
    /// Guest CPU -> vCPU -> host thread.
    pub cpus: Vec<GuestCpuMeta>,
}

/// Records one session into a directory.
pub struct Recorder {
    dir: PathBuf,
    meta: RecordingMeta,
    host: Option<Stream>,
    guests: HashMap<u64, (usize, Stream)>,
    offsets: Option<File>,
    stopped: bool,
    /// Pages since the directory was last seen to exist.
    unchecked: u32,
    /// Guests not recorded because of their Hello.
    pub refused_guests: u64,
    /// `--rotate-*`: the pieces (see [`super::rotate`]).
    rotation: Option<Rotation>,
    /// Where a finished piece's host task names are read.
    cmdlines: Option<Tracefs>,
}

impl Recorder {
    /// Starts a recording in `dir`, which must be new or empty unless `force`.
    pub fn create(dir: &Path, force: bool) -> Result<Self, RecorderError> {
        let io_err = |source| RecorderError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if let Ok(mut entries) = fs::read_dir(dir)
            && entries.next().is_some()
            && !force
        {
            return Err(RecorderError::NotEmpty(dir.to_path_buf()));
        }
        let meta = RecordingMeta {
            version: 1,
            ..RecordingMeta::default()
        };
        let offsets = start_dir(dir, &meta).map_err(io_err)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            host: None,
            guests: HashMap::new(),
            offsets: Some(offsets),
            stopped: false,
            unchecked: 0,
            refused_guests: 0,
            rotation: None,
            cmdlines: None,
        })
    }

    /// Starts a recording cut into pieces `base/0001/`, ... by `policy`
    /// ([`super::rotate`]). `base` must hold nothing but pieces (an
    /// earlier run's, continued) unless `force`.
    pub fn create_rotating(
        base: &Path,
        force: bool,
        policy: RotatePolicy,
    ) -> Result<Self, RecorderError> {
        if !force && !only_pieces(base) {
            return Err(RecorderError::NotEmpty(base.to_path_buf()));
        }
        let mut rotation = Rotation::new(base, policy).map_err(|source| RecorderError::Io {
            path: base.to_path_buf(),
            source,
        })?;
        let mut rec = Self::create(&rotation.dir(), false)?;
        rotation.started();
        rec.rotation = Some(rotation);
        Ok(rec)
    }

    /// Where host task names are read when a piece ends (the session's
    /// own are given at the end, [`Recorder::host_cmdlines`]).
    pub fn host_cmdlines_from(&mut self, tracefs: Tracefs) {
        self.cmdlines = Some(tracefs);
    }

    /// With rotation: the number of the piece being written (for writers
    /// that follow it) and how pieces are named.
    pub fn pieces(&self) -> Option<(PieceSignal, Pieces)> {
        let r = self.rotation.as_ref()?;
        Some((r.signal(), r.pieces().clone()))
    }

    /// The recording's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VMs of the recorded guests.
    pub fn vm_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.meta.guests.iter().filter_map(|g| g.vm_pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Whether a write failed and the recording stopped.
    pub fn stopped(&self) -> Option<&str> {
        self.meta.stopped.as_deref()
    }

    /// The host trace started: its headers, formats and CPU count.
    pub fn host_started(&mut self, stream: StreamMeta) {
        let Ok(layout) = PageLayout::parse(&stream.header_page) else {
            self.stop(io::Error::other("the host's header_page does not parse"));
            return;
        };
        let dir = self.dir.join(SPILL_DIR).join("host");
        let page_size = stream.page_size as usize;
        let result = SpillStream::create(dir, page_size).map(|spill| Stream {
            spill,
            layout,
            page_size,
        });
        let mut stream = stream;
        stream.dir = format!("{SPILL_DIR}/host");
        stream.trace_id = trace_id();
        self.meta.host = Some(stream);
        match result {
            Ok(s) => self.host = Some(s),
            Err(e) => self.stop(e),
        }
        self.save();
    }

    /// The host's task names, for its cmdlines section.
    pub fn host_cmdlines(&mut self, cmdlines: String) {
        if let Some(host) = &mut self.meta.host {
            host.cmdlines = cmdlines;
            self.save();
        }
    }

    /// Host TSC -> ns, for both readers (see `docs/RECORDING.md`).
    pub fn set_clock(&mut self, tsc2nsec: Tsc2Nsec, offset_ns: i64) {
        if tsc2nsec.mult > i32::MAX as u32 || tsc2nsec.shift > 32 {
            tracing::warn!(
                "recording: TSC -> ns {tsc2nsec:?} is not one the readers take; the files keep TSC counts"
            );
            return;
        }
        self.meta.tsc2nsec = Some(tsc2nsec);
        self.meta.offset_ns = offset_ns;
        self.save();
    }

    /// One host page (`wire::Page.data`).
    pub fn host_page(&mut self, cpu: u32, data: &[u8]) {
        if self.stopped || !self.dir_still_there() {
            return;
        }
        self.rotate_if_due();
        if let Some(host) = &mut self.host {
            match host.page(cpu, data) {
                Ok(true) => self.spilled(data.len()),
                Ok(false) => {}
                Err(e) => self.stop(e),
            }
        }
    }

    /// A guest agent connected (connection `conn`).
    pub fn guest_connected(&mut self, conn: u64, hello: &Hello, binding: GuestBinding) {
        if self.stopped {
            return;
        }
        let Some((stream, layout)) = guest_stream(hello) else {
            tracing::warn!(
                agent = %hello.agent_name,
                "not recording this guest: its headers or formats are not ones a trace.dat reader can take"
            );
            self.refused_guests += 1;
            return;
        };
        let base = file_stem(&binding.vm_name, &hello.agent_name);
        let taken = self
            .meta
            .guests
            .iter()
            .filter(|g| g.file.starts_with(&base))
            .count();
        let file = match taken {
            0 => format!("{base}.dat"),
            n => format!("{base}-{}.dat", n + 1),
        };
        let name = file.trim_end_matches(".dat").to_string();
        let mut stream = stream;
        stream.dir = format!("{SPILL_DIR}/guest-{conn}");
        stream.trace_id = trace_id();
        let spill = SpillStream::create(self.dir.join(&stream.dir), stream.page_size as usize);
        let index = self.meta.guests.len();
        let page_size = stream.page_size as usize;
        self.meta.guests.push(GuestMeta {
            file,
            name,
            vm_pid: binding.vm_pid,
            stream,
            cpus: binding.cpus,
            skipped_pages: 0,
        });
        match spill {
            Ok(spill) => {
                self.guests.insert(
                    conn,
                    (
                        index,
                        Stream {
                            spill,
                            layout,
                            page_size,
                        },
                    ),
                );
            }
            Err(e) => self.stop(e),
        }
        self.save();
    }

    /// One guest page, as received (`EventPage::bytes()`).
    pub fn guest_page(&mut self, conn: u64, cpu: u32, data: &[u8]) {
        if self.stopped || !self.dir_still_there() {
            return;
        }
        if self.guests.contains_key(&conn) {
            self.rotate_if_due();
        }
        let Some((index, stream)) = self.guests.get_mut(&conn) else {
            return;
        };
        match stream.page(cpu, data) {
            Ok(true) => self.spilled(data.len()),
            Ok(false) => self.meta.guests[*index].skipped_pages += 1,
            Err(e) => self.stop(e),
        }
    }

    /// The agent's connection ended.
    pub fn guest_closed(&mut self, conn: u64) {
        if self.guests.remove(&conn).is_some() {
            self.save();
        }
    }

    /// A vCPU's epochs (replacing what was recorded for it).
    pub fn vcpu_epochs<'a>(
        &mut self,
        vm_pid: u32,
        vcpu_id: u32,
        epochs: impl Iterator<Item = &'a Epoch>,
    ) {
        let epochs: Vec<EpochMeta> = epochs.map(EpochMeta::of).collect();
        match self
            .meta
            .vcpus
            .iter_mut()
            .find(|v| v.vm_pid == vm_pid && v.vcpu_id == vcpu_id)
        {
            Some(v) if v.epochs == epochs => return,
            Some(v) => v.epochs = epochs,
            None => self.meta.vcpus.push(VcpuEpochs {
                vm_pid,
                vcpu_id,
                epochs,
            }),
        }
        self.save();
    }

    /// One offset event, as an `offsets --json` line (no newline).
    pub fn offset_event(&mut self, json: &str) {
        if self.stopped {
            return;
        }
        if let Some(f) = &mut self.offsets
            && let Err(e) = writeln!(f, "{json}")
        {
            self.stop(e);
        }
    }

    /// Assembles the trace.dat files; returns what was written (with
    /// rotation: of the last piece, after every earlier one is assembled).
    pub fn finish(mut self) -> Result<super::assemble::Summary, super::AssembleError> {
        self.guests.clear();
        self.host = None;
        self.save();
        if let Some(rotation) = &mut self.rotation {
            rotation.wait();
        }
        super::assemble(&self.dir)
    }

    fn spilled(&mut self, len: usize) {
        if let Some(r) = &mut self.rotation {
            r.spilled(len);
        }
    }

    fn rotate_if_due(&mut self) {
        if self.rotation.as_ref().is_some_and(Rotation::due) {
            self.rotate();
        }
    }

    /// Ends the current piece and goes on in the next with every open
    /// stream and the epochs so far (see [`super::rotate`]).
    fn rotate(&mut self) {
        let Some(mut rotation) = self.rotation.take() else {
            return;
        };
        let comms = self.cmdlines.as_ref().map(Tracefs::saved_cmdlines);
        if let (Some(Ok(comms)), Some(host)) = (comms, &mut self.meta.host) {
            host.cmdlines = super::live::cmdlines_text(comms);
        }
        self.save();
        if self.stopped {
            self.rotation = Some(rotation);
            return;
        }
        let dir = rotation.next();
        let mut meta = RecordingMeta {
            version: 1,
            host: self.meta.host.clone(),
            guests: Vec::new(),
            vcpus: self.meta.vcpus.clone(),
            tsc2nsec: self.meta.tsc2nsec,
            offset_ns: self.meta.offset_ns,
            stopped: None,
        };
        if let Some(host) = &mut meta.host {
            host.trace_id = trace_id();
        }
        let mut open: Vec<_> = self.guests.values_mut().collect();
        open.sort_by_key(|(index, _)| *index);
        for (index, _) in open {
            let mut guest = self.meta.guests[*index].clone();
            guest.skipped_pages = 0;
            guest.stream.trace_id = trace_id();
            *index = meta.guests.len();
            meta.guests.push(guest);
        }
        self.dir = dir;
        self.meta = meta;
        match self.reopen() {
            Ok(()) => {
                self.unchecked = 0;
                rotation.started();
                tracing::info!("recording into {}", self.dir.display());
            }
            Err(e) => self.stop(e),
        }
        self.rotation = Some(rotation);
    }

    /// The current directory's files and every open stream's spill files.
    fn reopen(&mut self) -> io::Result<()> {
        self.offsets = Some(start_dir(&self.dir, &self.meta)?);
        if let (Some(host), Some(meta)) = (&mut self.host, &self.meta.host) {
            host.spill = SpillStream::create(self.dir.join(&meta.dir), host.page_size)?;
        }
        for (index, stream) in self.guests.values_mut() {
            let dir = self.dir.join(&self.meta.guests[*index].stream.dir);
            stream.spill = SpillStream::create(dir, stream.page_size)?;
        }
        Ok(())
    }

    /// Writes into files of a removed directory succeed and are lost: look
    /// for it every [`CHECK_EVERY`] pages (a `stat`, not per event).
    fn dir_still_there(&mut self) -> bool {
        self.unchecked += 1;
        if self.unchecked < CHECK_EVERY {
            return true;
        }
        self.unchecked = 0;
        match fs::metadata(self.dir.join(SPILL_DIR)) {
            Ok(_) => true,
            Err(e) => {
                self.stop(io::Error::new(e.kind(), "the recording directory is gone"));
                false
            }
        }
    }

    fn save(&mut self) {
        if self.stopped {
            return;
        }
        if let Err(e) = self.meta.save(&self.dir) {
            self.stop(e);
        }
    }

    fn stop(&mut self, e: io::Error) {
        if self.stopped {
            return;
        }
        let msg = format!("recording into {} stopped: {e}", self.dir.display());
        tracing::error!("{msg}; the live output goes on");
        self.meta.stopped = Some(msg);
        self.stopped = true;
        self.host = None;
        self.guests.clear();
        self.offsets = None;
        // Best effort: the directory may be gone.
        let _ = self.meta.save(&self.dir);
    }
}

/// Makes a recording directory's spill directory, offsets log and
/// metadata; returns the offsets log.
fn start_dir(dir: &Path, meta: &RecordingMeta) -> io::Result<File> {
    fs::create_dir_all(dir.join(SPILL_DIR))?;
    let offsets = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(OFFSETS_FILE))?;
    meta.save(dir)?;
    Ok(offsets)
}

/// The stream a Hello describes, if a reader can take it.
fn guest_stream(hello: &Hello) -> Option<(StreamMeta, PageLayout)> {
    let texts = [&hello.header_page, &hello.header_event];
    if hello.page_size == 0
        || hello.page_size > MAX_PAGE_SIZE
        || texts.iter().any(|t| t.len() > MAX_FORMAT_TEXT)
    {
        return None;
    }
    // The file has one page size: the pages must be what header_page says.
    let layout = PageLayout::parse(&hello.header_page).ok()?;
    if layout.page_size() != hello.page_size as usize {
        return None;
    }
    let mut formats = Vec::new();
    for e in &hello.events {
        let clean = |s: &str| {
            !s.is_empty() && s.len() < 256 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        };
        if e.format.len() > MAX_FORMAT_TEXT || !clean(&e.system) || !clean(&e.name) {
            return None;
        }
        let parsed = EventFormat::parse(&e.system, &e.format).ok()?;
        if parsed.name != e.name || u32::from(parsed.id) != e.id {
            return None;
        }
        formats.push((e.system.clone(), e.format.clone()));
    }
    let cpus = hello.cpus.iter().map(|c| c.cpu + 1).max().unwrap_or(0);
    if cpus > 4096 {
        return None;
    }
    let stream = StreamMeta {
        dir: String::new(),
        page_size: hello.page_size,
        header_page: hello.header_page.clone(),
        header_event: hello.header_event.clone(),
        formats,
        cmdlines: String::new(),
        cpus,
        uname: format!("Linux {} {} x86_64", hello.hostname, hello.kernel_release),
        trace_id: 0,
    };
    Some((stream, layout))
}

/// A file name stem from VM and agent names: `[A-Za-z0-9_.-]`, others `_`.
pub fn file_stem(vm: &str, agent: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect()
    };
    match (clean(vm), clean(agent)) {
        (v, a) if v.is_empty() => format!("guest-{a}"),
        (v, a) if a.is_empty() => v,
        (v, a) => format!("{v}-{a}"),
    }
}

/// A random trace id (`trace-cmd record` picks a random one too).
fn trace_id() -> u64 {
    let mut b = [0u8; 8];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(40)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        record::{RecordingMeta, StreamMeta},
        tracefs::PageBuilder,
    };

    fn page(hello: &Hello) -> Vec<u8> {
        let mut b = PageBuilder::new(PageLayout::parse(&hello.header_page).unwrap());
        b.push(1000, &[1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        b.finish().to_vec()
    }

    #[test]
    fn a_rotating_recording_is_pieces_each_with_the_open_guests() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("rec");
        // An earlier run's piece: continued after, and counted as kept.
        fs::create_dir_all(base.join("0004")).unwrap();
        let policy = RotatePolicy::new(Some(1), None, Some(3)).unwrap();
        let mut rec = Recorder::create_rotating(&base, false, policy).unwrap();
        let (signal, pieces) = rec.pieces().unwrap();
        assert_eq!(signal.current(), 5);
        let hello = crate::demo::hello("g", &[0]);
        // The host's task names are read when a piece ends.
        let tracefs = tempfile::tempdir().unwrap();
        fs::write(tracefs.path().join("saved_cmdlines"), "42 vcpu-thread\n").unwrap();
        rec.host_cmdlines_from(Tracefs::at(tracefs.path()));
        rec.host_started(StreamMeta {
            page_size: hello.page_size,
            header_page: hello.header_page.clone(),
            header_event: hello.header_event.clone(),
            cpus: 1,
            ..StreamMeta::default()
        });
        rec.guest_connected(1, &hello, GuestBinding::default());
        let page = page(&hello);
        // One byte per piece: each page starts a new one.
        for _ in 0..4 {
            rec.guest_page(1, 0, &page);
        }
        assert_eq!(signal.current(), 8);
        rec.finish().unwrap();
        assert_eq!(pieces.existing().unwrap(), vec![6, 7, 8]);
        for n in [6, 7, 8] {
            let dir = pieces.path(n);
            let meta = RecordingMeta::load(&dir).unwrap();
            assert_eq!(meta.guests.len(), 1, "piece {n}");
            assert_eq!(meta.guests[0].file, "guest-g.dat");
            if n < 8 {
                assert_eq!(meta.host.unwrap().cmdlines, "42 vcpu-thread\n");
            }
            let dat = fs::metadata(dir.join("guest-g.dat")).unwrap().len();
            assert!(dat > u64::from(hello.page_size), "piece {n} is assembled");
            assert!(dir.join("README").exists());
        }
        // Not pieces: refused unless forced.
        fs::write(base.join("notes"), "x").unwrap();
        assert!(Recorder::create_rotating(&base, false, policy).is_err());
        assert!(Recorder::create_rotating(&base, true, policy).is_ok());
    }

    #[test]
    fn a_dir_with_files_is_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x"), "x").unwrap();
        let err = Recorder::create(dir.path(), false).err().unwrap();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
        assert!(Recorder::create(dir.path(), true).is_ok());
        let empty = tempfile::tempdir().unwrap();
        assert!(Recorder::create(empty.path(), false).is_ok());
        assert!(Recorder::create(&empty.path().join("new/deeper"), false).is_ok());
    }

    #[test]
    fn oversized_pages_and_unreadable_hellos_are_left_out_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::create(dir.path(), false).unwrap();
        let hello = crate::demo::hello("g", &[0]);
        rec.guest_connected(1, &hello, GuestBinding::default());
        rec.guest_page(1, 0, &page(&hello));
        rec.guest_page(1, 0, &vec![0u8; hello.page_size as usize + 1]);
        let mut bad = hello.clone();
        bad.events[0].format = "x".repeat(MAX_FORMAT_TEXT + 1);
        rec.guest_connected(2, &bad, GuestBinding::default());
        assert_eq!(rec.refused_guests, 1);
        rec.guest_closed(1);
        let meta = RecordingMeta::load(dir.path()).unwrap();
        assert_eq!(meta.guests.len(), 1);
        assert_eq!(meta.guests[0].skipped_pages, 1);
        let spilled = dir
            .path()
            .join(&meta.guests[0].stream.dir)
            .join("cpu0.pages");
        assert_eq!(
            fs::metadata(spilled).unwrap().len(),
            u64::from(hello.page_size)
        );
    }

    #[test]
    fn a_vanished_dir_stops_the_recording_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        let mut rec = Recorder::create(&path, false).unwrap();
        let hello = crate::demo::hello("g", &[0]);
        fs::remove_dir_all(&path).unwrap();
        rec.guest_connected(1, &hello, GuestBinding::default());
        assert!(
            rec.stopped().unwrap().contains("stopped"),
            "{:?}",
            rec.stopped()
        );
        // Later calls are no-ops, not errors.
        rec.guest_page(1, 0, &page(&hello));
        rec.offset_event("{}");
        assert!(!path.exists(), "nothing made it again");
    }

    #[test]
    fn a_dir_removed_while_pages_flow_stops_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        let mut rec = Recorder::create(&path, false).unwrap();
        let hello = crate::demo::hello("g", &[0]);
        rec.guest_connected(1, &hello, GuestBinding::default());
        let page = page(&hello);
        rec.guest_page(1, 0, &page);
        assert!(rec.stopped().is_none());
        fs::remove_dir_all(&path).unwrap();
        for _ in 0..CHECK_EVERY {
            rec.guest_page(1, 0, &page);
        }
        assert!(
            rec.stopped().is_some_and(|s| s.contains("gone")),
            "{:?}",
            rec.stopped()
        );
    }
}
