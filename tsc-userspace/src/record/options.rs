//! The trace.dat options this project writes, encoded as trace-cmd 3.1.6
//! reads them in `handle_options()` (lib/trace-cmd/trace-input.c).
//!
//! Every option is `u16 id, u32 size, size bytes`, little-endian. A short
//! option makes `handle_options()` fail and with it the whole file, so each
//! encoding here is exactly what the reader consumes.

/// Option and section ids (`enum { TRACECMD_OPTION_DONE, ... }` in
/// lib/trace-cmd/include/private/trace-cmd-private.h).
pub mod id {
    /// End of an options list (its 8 bytes: offset of the next list, 0).
    pub const DONE: u16 = 0;
    /// One trace buffer's CPU data (`handle_buffer_option()`).
    pub const BUFFER: u16 = 3;
    /// Text of `trace_clock`, the current clock in brackets.
    pub const TRACECLOCK: u16 = 4;
    /// `uname` text.
    pub const UNAME: u16 = 5;
    /// Signed nanoseconds added to every timestamp, as text.
    pub const OFFSET: u16 = 7;
    /// Number of CPUs.
    pub const CPUCOUNT: u16 = 8;
    /// The producing tool's version text.
    pub const VERSION: u16 = 9;
    /// This file's trace id.
    pub const TRACEID: u16 = 11;
    /// Guest clock -> host clock samples (`tsync_cpu_offsets_load()`).
    pub const TIME_SHIFT: u16 = 12;
    /// A guest recorded beside this host file (`trace_guest_load()`).
    pub const GUEST: u16 = 13;
    /// TSC -> ns multiplier and shift.
    pub const TSC2NSEC: u16 = 14;
    /// Section: the string table (section descriptions).
    pub const STRINGS: u16 = 15;
    /// Section: header_page and header_event.
    pub const HEADER_INFO: u16 = 16;
    /// Section: the ftrace system's formats.
    pub const FTRACE_EVENTS: u16 = 17;
    /// Section: the other systems' formats.
    pub const EVENT_FORMATS: u16 = 18;
    /// Section: kallsyms.
    pub const KALLSYMS: u16 = 19;
    /// Section: printk formats.
    pub const PRINTK: u16 = 20;
    /// Section: pid -> comm lines.
    pub const CMDLINES: u16 = 21;
}

/// One vCPU of a guest, as the host file's GUEST option lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestVcpu {
    /// Guest CPU number (the CPU index in the guest file).
    pub cpu: u32,
    /// Host thread id running it (debugfs `kvm/PID-FD/vcpuN/pid`).
    pub tid: u32,
}

/// One time-shift sample: from guest TSC `time` on, host = ((guest *
/// scaling) >> fraction) + offset (`timestamp_correction_calc()`, step mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeShiftSample {
    /// Guest timestamp the sample applies from.
    pub time: i64,
    /// Added after scaling (host = guest + offset when unscaled).
    pub offset: i64,
    /// Multiplier (1 when unscaled; never 0).
    pub scaling: i64,
    /// Right shift after the multiply (0 when unscaled).
    pub fraction: i64,
}

impl TimeShiftSample {
    /// An unscaled sample: host = guest + `offset` from guest `time` on.
    pub fn unscaled(time: i64, offset: i64) -> Self {
        Self {
            time,
            offset,
            scaling: 1,
            fraction: 0,
        }
    }
}

/// The samples of one guest CPU (at least one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeShiftCpu {
    /// In increasing `time`.
    pub samples: Vec<TimeShiftSample>,
}

/// TSC -> ns as the reader computes it: `mul_u64_u32_shr(tsc, mult, shift)`
/// (`timestamp_calc()`); `offset` is stored but 3.1.6 does not apply it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tsc2Nsec {
    /// Nanoseconds per tick, times 2^shift; below 2^31 (a C `int` in the
    /// reader's `struct tsc2nsec`).
    pub mult: u32,
    /// At most 32 (the reader's multiply assumes it).
    pub shift: u32,
    /// Written as trace-cmd writes it; unused by the reader.
    pub offset: u64,
}

impl Tsc2Nsec {
    /// The reader's conversion, bit for bit (its `mul_u64_u32_shr()`,
    /// wrapping like the C).
    pub fn ns(&self, tsc: u64) -> u64 {
        let mul = u64::from(self.mult);
        let (al, ah) = (tsc & 0xffff_ffff, tsc >> 32);
        let mut ret = al.wrapping_mul(mul) >> self.shift;
        if ah != 0 {
            ret = ret.wrapping_add(ah.wrapping_mul(mul) << (32 - self.shift));
        }
        ret
    }
}

/// An option this project writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatOption {
    /// `TRACECLOCK`: e.g. `[x86-tsc]`.
    TraceClock(String),
    /// `UNAME`.
    Uname(String),
    /// `OFFSET`: nanoseconds added to every timestamp (after TSC2NSEC).
    Offset(i64),
    /// `CPUCOUNT`.
    CpuCount(u32),
    /// `VERSION`.
    Version(String),
    /// `TRACEID`.
    TraceId(u64),
    /// `TIME_SHIFT`, in the guest file: the host file's trace id, the
    /// protocol flags (0: step) and each guest CPU's samples.
    TimeShift {
        /// Trace id of the host file.
        peer_trace_id: u64,
        /// `TRACECMD_TSYNC_FLAG_INTERPOLATE` (1) or 0.
        flags: u32,
        /// Indexed by guest CPU.
        cpus: Vec<TimeShiftCpu>,
    },
    /// `GUEST`, in the host file.
    Guest {
        /// Guest name (as KernelShark shows it).
        name: String,
        /// Trace id of the guest file.
        trace_id: u64,
        /// Every guest CPU and its host thread.
        vcpus: Vec<GuestVcpu>,
    },
    /// `TSC2NSEC`.
    Tsc2Nsec(Tsc2Nsec),
}

impl DatOption {
    /// The option's id.
    pub fn id(&self) -> u16 {
        match self {
            Self::TraceClock(_) => id::TRACECLOCK,
            Self::Uname(_) => id::UNAME,
            Self::Offset(_) => id::OFFSET,
            Self::CpuCount(_) => id::CPUCOUNT,
            Self::Version(_) => id::VERSION,
            Self::TraceId(_) => id::TRACEID,
            Self::TimeShift { .. } => id::TIME_SHIFT,
            Self::Guest { .. } => id::GUEST,
            Self::Tsc2Nsec(_) => id::TSC2NSEC,
        }
    }

    /// The option's data (without id and size).
    pub fn data(&self) -> Vec<u8> {
        let mut d = Vec::new();
        match self {
            // Strings carry their NUL, as trace-record.c's add_uname() does.
            Self::TraceClock(s) | Self::Uname(s) | Self::Version(s) => cstr(&mut d, s),
            Self::Offset(ns) => cstr(&mut d, &ns.to_string()),
            Self::CpuCount(n) => d.extend_from_slice(&n.to_le_bytes()),
            Self::TraceId(t) => d.extend_from_slice(&t.to_le_bytes()),
            Self::TimeShift {
                peer_trace_id,
                flags,
                cpus,
            } => time_shift(&mut d, *peer_trace_id, *flags, cpus),
            Self::Guest {
                name,
                trace_id,
                vcpus,
            } => {
                cstr(&mut d, name);
                d.extend_from_slice(&trace_id.to_le_bytes());
                d.extend_from_slice(&(vcpus.len() as u32).to_le_bytes());
                for v in vcpus {
                    d.extend_from_slice(&v.cpu.to_le_bytes());
                    d.extend_from_slice(&v.tid.to_le_bytes());
                }
            }
            Self::Tsc2Nsec(t) => {
                d.extend_from_slice(&t.mult.to_le_bytes());
                d.extend_from_slice(&t.shift.to_le_bytes());
                d.extend_from_slice(&t.offset.to_le_bytes());
            }
        }
        d
    }
}

fn cstr(d: &mut Vec<u8>, s: &str) {
    d.extend_from_slice(s.as_bytes());
    d.push(0);
}

/// `tsync_cpu_offsets_load()`: per CPU the count then the times, offsets
/// and scalings; then, for every CPU, the fractions.
fn time_shift(d: &mut Vec<u8>, peer: u64, flags: u32, cpus: &[TimeShiftCpu]) {
    d.extend_from_slice(&peer.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&(cpus.len() as u32).to_le_bytes());
    let put = |d: &mut Vec<u8>, v: i64| d.extend_from_slice(&v.to_le_bytes());
    for cpu in cpus {
        d.extend_from_slice(&(cpu.samples.len() as u32).to_le_bytes());
        cpu.samples.iter().for_each(|s| put(d, s.time));
        cpu.samples.iter().for_each(|s| put(d, s.offset));
        cpu.samples.iter().for_each(|s| put(d, s.scaling));
    }
    for cpu in cpus {
        cpu.samples.iter().for_each(|s| put(d, s.fraction));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_shift_layout_is_what_the_reader_walks() {
        let opt = DatOption::TimeShift {
            peer_trace_id: 7,
            flags: 0,
            cpus: vec![TimeShiftCpu {
                samples: vec![TimeShiftSample::unscaled(10, -3)],
            }],
        };
        let d = opt.data();
        // 8 id + 4 flags + 4 cpus + (4 count + 3 * 8) + 8 fraction.
        assert_eq!(d.len(), 8 + 4 + 4 + 4 + 24 + 8);
        assert_eq!(&d[16..20], &1u32.to_le_bytes());
        assert_eq!(&d[28..36], &(-3i64).to_le_bytes());
        assert_eq!(&d[36..44], &1i64.to_le_bytes());
    }

    #[test]
    fn tsc2nsec_matches_the_c_multiply() {
        let t = Tsc2Nsec {
            mult: 3 << 30,
            shift: 31,
            offset: 0,
        };
        // 1.5 ns per tick.
        assert_eq!(t.ns(1000), 1500);
        assert_eq!(t.ns(1 << 40), 3 << 39);
    }
}
