//! `tsc-tracer convert`: guest TSC values to host TSC (and nanoseconds).

use std::{
    io::{self, BufRead, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

mod journal;

use anyhow::{Context, Result, bail};
use tsc_common::tsc::TscParams;
use tsc_userspace::{clock::Clock, kvm::Debugfs, vmm};

/// Convert guest TSC values to host TSC values.
///
/// Prints one host TSC per guest TSC, one per line: the smallest host TSC
/// at which the guest TSC reads the value (exact without scaling). With no
/// GUEST_TSC arguments, reads them from stdin, one per line, as they come.
/// Numbers are decimal or 0x hex; OFFSET is two's complement and may be
/// negative. With --vm and --vcpu the offset and scaling are the ones KVM
/// holds for that vCPU now.
///
/// With --journal PATH --vm PID|NAME --vcpu N, converts after the fact with
/// the epochs an offset journal recorded (`tsc-tracer host` and `offsets
/// --follow` write one): each value gets the epoch in force when it was
/// taken, printed as `HOST_TSC [NS] epoch=N [flags]`, flagged as the live
/// timeline is (resolved-by-order, outside-epoch, offset-not-applied).
/// Give the values of one guest CPU in the order they were taken: when the
/// guest rewound its TSC, that order picks the epoch.
#[derive(clap::Args)]
pub struct Args {
    /// TSC offset (guest = host + offset), e.g. -123456 or 0xffff...
    #[arg(
        long,
        allow_hyphen_values = true,
        value_parser = parse_offset,
        required_unless_present = "vm",
        conflicts_with = "vm"
    )]
    offset: Option<u64>,
    /// Convert with the epochs this offset journal recorded for --vm.
    #[arg(long, requires = "vm", value_name = "PATH")]
    journal: Option<std::path::PathBuf>,
    /// TSC scaling ratio (fixed point with --frac-bits fraction bits).
    #[arg(long, value_parser = parse_u64, requires = "frac_bits", conflicts_with = "vm")]
    ratio: Option<u64>,
    /// Fraction bits of --ratio (48 on Intel VMX, 32 on AMD SVM).
    #[arg(long, requires = "ratio")]
    frac_bits: Option<u32>,
    /// Take offset and scaling from this VMM process's live KVM state
    /// (with --journal: the VM's pid or comm in the journal).
    #[arg(long, requires = "vcpu", value_name = "PID|NAME")]
    vm: Option<String>,
    /// The vCPU (KVM vcpu_id) of --vm.
    #[arg(long, requires = "vm", value_name = "N")]
    vcpu: Option<u32>,
    /// Also print the host CLOCK_MONOTONIC nanoseconds of each host TSC.
    #[arg(long)]
    ns: bool,
    /// A guest TSC value (repeatable; the same as a GUEST_TSC argument).
    #[arg(long = "guest-tsc", value_name = "T")]
    guest_tsc: Vec<String>,
    /// Guest TSC values (read from stdin when none are given).
    #[arg(value_name = "GUEST_TSC", allow_hyphen_values = true)]
    guest: Vec<String>,
}

/// Recalibrate the clock this often while streaming.
const REFRESH_EVERY: Duration = tsc_userspace::clock::REFRESH_PERIOD;

/// Runs `tsc-tracer convert`.
pub fn run(mut args: Args) -> Result<ExitCode> {
    let guest_tsc = std::mem::take(&mut args.guest_tsc);
    args.guest.splice(0..0, guest_tsc);
    let conversion = match &args.journal {
        Some(path) => Conversion::Journal(journal::History::load(
            path,
            args.vm.as_deref().unwrap_or_default(),
            args.vcpu.unwrap_or_default(),
        )?),
        None => Conversion::Fixed(params(&args)?),
    };
    let clock = match args.ns {
        true => Some(Clock::calibrate().context("calibrating the TSC clock for --ns")?),
        false => None,
    };
    let mut converter = Converter::new(conversion, clock);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = if args.guest.is_empty() {
        converter.stream(&mut io::BufReader::new(io::stdin().lock()), &mut out)
    } else {
        args.guest.iter().enumerate().try_for_each(|(i, text)| {
            converter
                .line(text, &mut out)
                .with_context(|| format!("argument {}", i + 1))
        })
    };
    match result.and_then(|()| out.flush().context("writing stdout")) {
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other.map(|()| ExitCode::SUCCESS),
    }
}

fn params(args: &Args) -> Result<TscParams> {
    if let (Some(vm), Some(vcpu)) = (&args.vm, args.vcpu) {
        let pid: u32 = vm
            .parse()
            .with_context(|| format!("--vm {vm}: a live VM is named by its pid"))?;
        let state = Debugfs::default()
            .vcpu(pid, vcpu)
            .with_context(|| format!("reading vCPU {vcpu} of VM {pid} from KVM's debugfs"))?;
        let params = match state.scaling {
            Some(s) => TscParams::new(state.tsc_offset as u64, s.ratio, s.frac_bits)
                .with_context(|| format!("KVM's scaling for vCPU {vcpu} of VM {pid}"))?,
            None => TscParams::unscaled(state.tsc_offset as u64),
        };
        if vmm::is_pvm() {
            tracing::info!(
                "PVM backend: KVM does not apply TSC offsets here; the effective offset is 0"
            );
        }
        tracing::info!(pid, vcpu, offset = state.tsc_offset, scaling = ?state.scaling, "live KVM TSC parameters");
        return Ok(params);
    }
    let Some(offset) = args.offset else {
        bail!("--offset or --vm/--vcpu is required");
    };
    match (args.ratio, args.frac_bits) {
        (Some(ratio), Some(frac)) => {
            TscParams::new(offset, ratio, frac).context("--ratio/--frac-bits")
        }
        _ => Ok(TscParams::unscaled(offset)),
    }
}

/// How values are converted.
enum Conversion {
    /// With one offset and scaling.
    Fixed(TscParams),
    /// With the epochs of a journal.
    Journal(journal::History),
}

/// Converts one value per line; keeps the clock fresh while streaming.
struct Converter {
    conversion: Conversion,
    clock: Option<Clock>,
    refreshed: Instant,
}

impl Converter {
    fn new(conversion: Conversion, clock: Option<Clock>) -> Self {
        Self {
            conversion,
            clock,
            refreshed: Instant::now(),
        }
    }

    /// Converts stdin line by line, flushing whenever the input has nothing
    /// more buffered (so a live producer sees each answer at once).
    fn stream<R: io::Read>(
        &mut self,
        input: &mut io::BufReader<R>,
        out: &mut impl Write,
    ) -> Result<()> {
        let mut line = String::new();
        for number in 1.. {
            line.clear();
            if input.read_line(&mut line).context("reading stdin")? == 0 {
                return Ok(());
            }
            self.line(line.trim(), out)
                .with_context(|| format!("stdin line {number}"))?;
            if input.buffer().is_empty() {
                out.flush().context("writing stdout")?;
            }
        }
        Ok(())
    }

    fn line(&mut self, text: &str, out: &mut impl Write) -> Result<()> {
        let guest = parse_u64(text)?;
        let (host, placed) = match &mut self.conversion {
            Conversion::Fixed(params) => (
                params
                    .host_from_guest(guest)
                    .with_context(|| format!("guest TSC {guest}"))?,
                None,
            ),
            Conversion::Journal(history) => {
                let p = history.place(guest);
                (p.host, Some(p))
            }
        };
        match self.clock.as_mut() {
            None => write!(out, "{host}"),
            Some(clock) => {
                if self.refreshed.elapsed() >= REFRESH_EVERY {
                    clock.refresh().context("refreshing the TSC clock")?;
                    self.refreshed = Instant::now();
                }
                write!(out, "{host} {}", clock.tsc_to_ns(host))
            }
        }
        .context("writing stdout")?;
        if let Some(p) = placed {
            p.write_suffix(out).context("writing stdout")?;
        }
        writeln!(out).context("writing stdout")
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// A u64 in decimal or 0x hex.
fn parse_u64(text: &str) -> Result<u64> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| {
        anyhow::anyhow!("{text:?} is not a TSC value (decimal or 0x hex, 0 to 2^64-1)")
    })
}

/// A two's complement offset: a u64, or a negative number down to -2^63
/// (or -0x...).
fn parse_offset(text: &str) -> Result<u64> {
    match text.strip_prefix('-') {
        Some(magnitude) => {
            let m =
                parse_u64(magnitude).map_err(|_| anyhow::anyhow!("{text:?} is not an offset"))?;
            if m > 1 << 63 {
                bail!("{text:?} is below -2^63");
            }
            Ok(m.wrapping_neg())
        }
        None => parse_u64(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_decimal_and_hex_and_negative_offsets() {
        assert_eq!(parse_u64("42").unwrap(), 42);
        assert_eq!(parse_u64("0xff").unwrap(), 255);
        assert_eq!(parse_u64("0XFF").unwrap(), 255);
        assert_eq!(parse_u64("18446744073709551615").unwrap(), u64::MAX);
        assert!(parse_u64("18446744073709551616").is_err());
        assert!(parse_u64("-1").is_err());
        assert!(parse_u64("").is_err());
        assert_eq!(parse_offset("-100").unwrap(), (-100i64) as u64);
        assert_eq!(parse_offset("-0x10").unwrap(), (-16i64) as u64);
        assert_eq!(parse_offset("-9223372036854775808").unwrap(), 1 << 63);
        assert!(parse_offset("-9223372036854775809").is_err());
        assert_eq!(
            parse_offset("0xffffffffffffff9c").unwrap(),
            (-100i64) as u64
        );
    }
}
