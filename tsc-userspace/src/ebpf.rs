//! Loading and attaching the kernel programs, and access to their maps.
//!
//! The object is built by this crate's build script and embedded in the
//! binary. Tracepoint field offsets are read from the running kernel's
//! tracefs `format` file and handed to the program as a global, so a kernel
//! that moves a field does not silently feed us garbage; the `struct
//! kvm_vcpu` offsets the `kvm_entry`/`kvm_exit` programs read come from BTF
//! ([`vcpu`]).

pub mod vcpu;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tsc_common::{
    record::{KvmVcpuLayout, VcpuKey, VcpuOffset, WriteTscOffsetLayout, counter},
    vcpu_state::VcpuState,
};
pub use vcpu::{VcpuPrograms, VcpuStatus, VcpuTracepoints};

/// The eBPF object built from `tsc-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tsc-ebpf"));

/// Where the offsets map is pinned by default, for other processes to read.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/tsc-tracer/offsets";

/// Errors loading or attaching the programs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The tracepoint's format file is missing or unreadable.
    #[error("reading {path}: {source} (is tracefs mounted and KVM built in or loaded?)")]
    Format {
        /// The format file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The format file lacks a field the program reads.
    #[error("{path} has no field {field}: this kernel's kvm_write_tsc_offset is not supported")]
    MissingField {
        /// The format file.
        path: PathBuf,
        /// The missing field.
        field: &'static str,
    },
    /// The kernel refused the object (verifier, BTF, permissions).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("{what}: {source}")]
    Program {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        source: aya::programs::ProgramError,
    },
    /// A map is missing from the object or has the wrong type.
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// The underlying error.
        source: aya::maps::MapError,
    },
    /// A map is missing from the object.
    #[error("the eBPF object has no map {0}")]
    NoMap(&'static str),
    /// The running kernel's BTF does not describe what the vCPU programs read
    /// (the error names the missing type or field).
    #[error("kvm_entry/kvm_exit programs: {0}")]
    Btf(#[source] crate::btf::BtfError),
    /// aya could not read the kernel's BTF to load the BTF tracepoint programs.
    #[error("reading the kernel BTF for kvm_entry/kvm_exit: {0}")]
    KernelBtf(#[source] aya::BtfError),
    /// A tracepoint's vCPU argument is at an index the programs do not read.
    #[error("{what}'s vCPU is argument {index}; the programs read arguments 0 to 2 only")]
    VcpuArg {
        /// The tracepoint.
        what: &'static str,
        /// Its vCPU argument index.
        index: usize,
    },
    /// A `kvm_entry`/`kvm_exit` program failed to load or attach.
    #[error("{what} the {name} BTF tracepoint program: {source}")]
    VcpuProgram {
        /// What was being done.
        what: &'static str,
        /// Which program.
        name: &'static str,
        /// The underlying error.
        source: aya::programs::ProgramError,
    },
    /// Pinning the offsets map failed.
    #[error("pinning the offsets map at {path}: {source}")]
    Pin {
        /// Where.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// How to load the programs.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Mounted tracefs root, for the tracepoint's `format` file.
    pub tracefs: PathBuf,
    /// Where to pin the offsets map (None: do not pin).
    pub pin_path: Option<PathBuf>,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Capacity of the offsets map, in vCPUs.
    pub max_vcpus: u32,
    /// Whether to load the `kvm_entry`/`kvm_exit` programs.
    pub vcpu_programs: VcpuPrograms,
    /// Where they attach.
    pub vcpu_tracepoints: VcpuTracepoints,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            tracefs: PathBuf::from("/sys/kernel/tracing"),
            pin_path: Some(PathBuf::from(DEFAULT_PIN_PATH)),
            ringbuf_bytes: 256 * 1024,
            max_vcpus: 16384,
            vcpu_programs: VcpuPrograms::Auto,
            vcpu_tracepoints: VcpuTracepoints::default(),
        }
    }
}

/// Counters kept by the programs, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Tracepoint invocations.
    pub events: u64,
    /// Records lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Offsets-map or vCPU-state-map updates that failed (map full).
    pub map_full: u64,
    /// `kvm_entry`/`kvm_exit` calls whose vCPU struct could not be read.
    pub read_failed: u64,
}

/// aya-log's reader; flushing it forwards the programs' log records to `tracing`.
pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The loaded, attached programs and their maps.
pub struct Programs {
    // Keeps programs and links alive; dropping it detaches.
    ebpf: Ebpf,
    records: Option<RingBuf<MapData>>,
    /// The always-current offsets map.
    pub offsets: HashMap<MapData, VcpuKey, VcpuOffset>,
    counters: PerCpuArray<MapData, u64>,
    vcpu_state: HashMap<MapData, VcpuKey, VcpuState>,
    vcpu_status: VcpuStatus,
    logger: Option<Logger>,
    pin: Option<PinGuard>,
}

impl Programs {
    /// Loads the object, attaches `kvm:kvm_write_tsc_offset` and (see
    /// [`LoadOptions::vcpu_programs`]) `kvm_entry`/`kvm_exit`, pins the map.
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        let layout = write_tsc_offset_layout(&options.tracefs)?;
        let mut vcpu_status = VcpuStatus::Off;
        let vcpu_layout = match options.vcpu_programs {
            VcpuPrograms::Off => KvmVcpuLayout::default(),
            wanted => match vcpu::resolve(&options.vcpu_tracepoints) {
                Ok((kvm, global)) => {
                    vcpu_status = VcpuStatus::Attached(kvm);
                    global
                }
                Err(err) if wanted == VcpuPrograms::Required => return Err(err),
                Err(err) => {
                    vcpu_status = unavailable(&err);
                    KvmVcpuLayout::default()
                }
            },
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("WRITE_TSC_OFFSET_LAYOUT", &layout, true)
            .override_global("KVM_VCPU_LAYOUT", &vcpu_layout, true)
            .map_max_entries("OFFSETS", options.max_vcpus)
            .map_max_entries("VCPU_STATE", options.max_vcpus)
            .map_max_entries("RECORDS", options.ringbuf_bytes)
            .load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            // No log statement survived optimisation: nothing to forward.
            Err(err) => {
                tracing::debug!("eBPF logging not set up: {err}");
                None
            }
        };
        attach_tracepoint(
            &mut ebpf,
            "kvm_write_tsc_offset",
            "kvm",
            "kvm_write_tsc_offset",
        )?;
        if matches!(vcpu_status, VcpuStatus::Attached(_))
            && let Err(err) = vcpu::attach(&mut ebpf, &options.vcpu_tracepoints)
        {
            if options.vcpu_programs == VcpuPrograms::Required {
                return Err(err);
            }
            vcpu_status = unavailable(&err);
        }
        let records =
            RingBuf::try_from(take(&mut ebpf, "RECORDS")?).map_err(|source| LoadError::Map {
                name: "RECORDS",
                source,
            })?;
        let offsets_map = take(&mut ebpf, "OFFSETS")?;
        let pin = match &options.pin_path {
            Some(path) => Some(PinGuard::pin(&offsets_map, path)?),
            None => None,
        };
        let offsets = HashMap::try_from(offsets_map).map_err(|source| LoadError::Map {
            name: "OFFSETS",
            source,
        })?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?).map_err(|source| {
            LoadError::Map {
                name: "COUNTERS",
                source,
            }
        })?;
        let vcpu_state =
            HashMap::try_from(take(&mut ebpf, "VCPU_STATE")?).map_err(|source| LoadError::Map {
                name: "VCPU_STATE",
                source,
            })?;
        Ok(Self {
            ebpf,
            records: Some(records),
            offsets,
            counters,
            vcpu_state,
            vcpu_status,
            logger,
            pin,
        })
    }

    /// What the `kvm_entry`/`kvm_exit` programs hold for a vCPU (None: the
    /// vCPU was neither changed, nor seen exiting or entering).
    pub fn vcpu_state(&self, key: VcpuKey) -> Option<VcpuState> {
        self.vcpu_state.get(&key, 0).ok()
    }

    /// Whether `kvm_entry`/`kvm_exit` are attached, and with what layout.
    pub fn vcpu_status(&self) -> &VcpuStatus {
        &self.vcpu_status
    }

    /// Kernel facts about one loaded program (`kvm_write_tsc_offset`,
    /// `kvm_entry`, `kvm_exit`): verified instruction count, and run count
    /// and time when `aya::sys::enable_stats` is on.
    pub fn program_info(
        &self,
        name: &str,
    ) -> Result<aya::programs::ProgramInfo, aya::programs::ProgramError> {
        self.ebpf
            .program(name)
            .ok_or(aya::programs::ProgramError::NotLoaded)?
            .info()
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Counters, aya::maps::MapError> {
        let sum = |index| -> Result<u64, aya::maps::MapError> {
            Ok(self.counters.get(&index, 0)?.iter().sum())
        };
        Ok(Counters {
            events: sum(counter::EVENTS)?,
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
            map_full: sum(counter::MAP_FULL)?,
            read_failed: sum(counter::READ_FAILED)?,
        })
    }

    /// Reads the whole offsets map (the source of truth after an overflow).
    pub fn read_offsets(&self) -> Vec<(VcpuKey, VcpuOffset)> {
        self.offsets.iter().filter_map(Result::ok).collect()
    }

    /// Kernel facts about the offset-write program (run count and time when
    /// `aya::sys::enable_stats` is on, verified instruction count).
    pub fn write_program_info(
        &self,
    ) -> Result<aya::programs::ProgramInfo, aya::programs::ProgramError> {
        let prog: &TracePoint = self
            .ebpf
            .program("kvm_write_tsc_offset")
            .ok_or(aya::programs::ProgramError::NotLoaded)?
            .try_into()?;
        prog.info()
    }

    /// The kernel's sequence number for a vCPU now (None if not in the map).
    pub fn kernel_seq(&self, key: VcpuKey) -> Option<u64> {
        self.offsets.get(&key, 0).ok().map(|v| v.seq)
    }

    /// Removes the entries of a VMM that exited, so the map does not fill up.
    pub fn forget_tgid(&mut self, tgid: u32) {
        let keys: Vec<VcpuKey> = self
            .offsets
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == tgid)
            .collect();
        for key in keys {
            // Already gone is fine: the kernel side never removes, but another
            // process sharing the pin might.
            let _ = self.offsets.remove(&key);
        }
        let keys: Vec<VcpuKey> = self
            .vcpu_state
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == tgid)
            .collect();
        for key in keys {
            let _ = self.vcpu_state.remove(&key);
        }
    }

    /// Takes the offset-change ring buffer (once), to poll it.
    pub fn take_records(&mut self) -> Option<RingBuf<MapData>> {
        self.records.take()
    }

    /// Takes aya-log's reader (once), to poll it.
    pub fn take_logger(&mut self) -> Option<Logger> {
        self.logger.take()
    }

    /// Where the offsets map is pinned, if it is.
    pub fn pin_path(&self) -> Option<&Path> {
        self.pin.as_ref().map(|p| p.path.as_path())
    }
}

/// Says why the vCPU programs are not used, and goes on without them.
fn unavailable(err: &LoadError) -> VcpuStatus {
    tracing::warn!(
        "{err}; going on without them: offset changes are still followed, \
         but epoch boundaries fall at the change, not at the vCPU's exit and entry"
    );
    VcpuStatus::Unavailable(err.to_string())
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::NoMap(name))
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    name: &str,
) -> Result<(), LoadError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(LoadError::Program {
            what: "finding the program",
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| LoadError::Program {
            what: "program type",
            source,
        })?;
    prog.load().map_err(|source| LoadError::Program {
        what: "loading kvm_write_tsc_offset (verifier)",
        source,
    })?;
    prog.attach(category, name)
        .map_err(|source| LoadError::Program {
            what: "attaching to kvm:kvm_write_tsc_offset",
            source,
        })?;
    Ok(())
}

/// Reads the tracepoint's field offsets from its tracefs `format` file.
pub fn write_tsc_offset_layout(tracefs: &Path) -> Result<WriteTscOffsetLayout, LoadError> {
    let path = tracefs.join("events/kvm/kvm_write_tsc_offset/format");
    let text = fs::read_to_string(&path).map_err(|source| LoadError::Format {
        path: path.clone(),
        source,
    })?;
    let field = |field: &'static str| {
        field_offset(&text, field).ok_or_else(|| LoadError::MissingField {
            path: path.clone(),
            field,
        })
    };
    Ok(WriteTscOffsetLayout {
        vcpu_id: field("vcpu_id")?,
        prev: field("previous_tsc_offset")?,
        next: field("next_tsc_offset")?,
        _pad: 0,
    })
}

/// The `offset:N;` of `field:TYPE NAME;` in a format file.
fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let declared = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()?;
        if declared != name {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .parse()
            .ok()
    })
}

/// Removes the pin on drop, but only if it is still our map (another
/// session may have replaced it).
struct PinGuard {
    path: PathBuf,
    map_id: u32,
}

impl PinGuard {
    fn pin(map: &aya::maps::Map, path: &Path) -> Result<Self, LoadError> {
        let pin_err = |source| LoadError::Pin {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(pin_err)?;
        }
        if path.exists() {
            tracing::warn!(
                "replacing the offsets map pinned at {} (another or an older session's)",
                path.display()
            );
            fs::remove_file(path).map_err(pin_err)?;
        }
        map.pin(path).map_err(|e| pin_err(io::Error::other(e)))?;
        let map_id = MapData::from_pin(path)
            .and_then(|m| m.info())
            .map(|i| i.id())
            .unwrap_or(0);
        Ok(Self {
            path: path.to_owned(),
            map_id,
        })
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let still_ours = MapData::from_pin(&self.path)
            .ok()
            .and_then(|m| m.info().ok())
            .is_some_and(|info| info.id() == self.map_id);
        if still_ours {
            let _ = fs::remove_file(&self.path);
            if let Some(dir) = self.path.parent() {
                // Only succeeds when empty: other pins stay.
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: kvm_write_tsc_offset\nID: 83\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned int vcpu_id;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:__u64 previous_tsc_offset;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:__u64 next_tsc_offset;\toffset:24;\tsize:8;\tsigned:0;\n";

    #[test]
    fn finds_field_offsets_by_exact_name() {
        assert_eq!(field_offset(FORMAT, "vcpu_id"), Some(8));
        assert_eq!(field_offset(FORMAT, "next_tsc_offset"), Some(24));
        assert_eq!(
            field_offset(FORMAT, "tsc_offset"),
            None,
            "suffix must not match"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("events/kvm/kvm_write_tsc_offset");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("format"),
            FORMAT.replace("next_tsc_offset", "next"),
        )
        .unwrap();
        let err = write_tsc_offset_layout(tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains("no field next_tsc_offset"),
            "{err}"
        );
    }
}
