//! The line protocol of `tsc-tracer vmm`: one command per line, one answer
//! line per command, `ok ...` or `err REASON`.
//!
//! | command             | answer                                                       |
//! |---------------------|--------------------------------------------------------------|
//! | `vm`                | `ok vm` (one VM per process: a second `vm` is an error)      |
//! | `vcpu ID`           | `ok vcpu ID`                                                 |
//! | `offset ID VALUE`   | `ok offset ID VALUE readback R` (R: what KVM reads back)     |
//! | `msr ID INDEX VALUE`| `ok msr ID INDEX VALUE` (INDEX and VALUE decimal or `0x` hex)|
//! | `khz ID`            | `ok khz KHZ`                                                 |
//! | `rdtsc ID N`        | `ok rdtsc BEFORE AFTER R1 R2 ... RN` (host bracket, readings)|
//! | `pid`               | `ok pid PID`                                                 |
//! | `quit`              | `ok bye`, then the process exits                             |

use std::fmt::Write as _;

use super::{Vm, VmmError};

/// The most readings one `rdtsc` command may ask for (each is a `KVM_RUN`).
pub const MAX_READINGS: u64 = 1_000_000;

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create the VM.
    Vm,
    /// Add a vCPU.
    Vcpu(u32),
    /// Set a vCPU's TSC offset exactly.
    Offset(u32, i64),
    /// Write an MSR.
    Msr(u32, u32, u64),
    /// Report the vCPU's TSC frequency.
    Khz(u32),
    /// Run the guest program for N readings.
    Rdtsc(u32, u64),
    /// Report this process's id.
    Pid,
    /// Answer and stop.
    Quit,
}

/// Why a line is not a command, or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The line does not parse.
    #[error("{0}")]
    Syntax(String),
    /// The command needs a VM and none was created.
    #[error("no VM: send `vm` first")]
    NoVm,
    /// `vm` when this process already has one.
    #[error("a VM already exists (one VM per process)")]
    VmExists,
    /// The VMM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

impl Command {
    /// Parses one line (surrounding whitespace ignored).
    pub fn parse(line: &str) -> Result<Self, ScriptError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let command = match words.as_slice() {
            ["vm"] => Self::Vm,
            ["vcpu", id] => Self::Vcpu(number(id)?),
            ["offset", id, value] => Self::Offset(number(id)?, signed(value)?),
            ["msr", id, index, value] => Self::Msr(number(id)?, number(index)?, number(value)?),
            ["khz", id] => Self::Khz(number(id)?),
            ["rdtsc", id, n] => Self::Rdtsc(number(id)?, readings(n)?),
            ["pid"] => Self::Pid,
            ["quit"] => Self::Quit,
            [] => return Err(ScriptError::Syntax("empty command".into())),
            [word, ..] => {
                return Err(ScriptError::Syntax(format!(
                    "unknown command or wrong arguments: {word:?} ({} words)",
                    words.len()
                )));
            }
        };
        Ok(command)
    }
}

fn number<T: TryFrom<u64>>(word: &str) -> Result<T, ScriptError> {
    let value = match word.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => word.parse(),
    };
    value
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| ScriptError::Syntax(format!("{word:?} is not a number in range")))
}

fn signed(word: &str) -> Result<i64, ScriptError> {
    word.parse()
        .map_err(|_| ScriptError::Syntax(format!("{word:?} is not a signed 64-bit number")))
}

fn readings(word: &str) -> Result<u64, ScriptError> {
    let n: u64 = number(word)?;
    if n > MAX_READINGS {
        return Err(ScriptError::Syntax(format!(
            "at most {MAX_READINGS} readings"
        )));
    }
    Ok(n)
}

/// Executes commands against the process's one VM.
#[derive(Debug, Default)]
pub struct Interpreter {
    vm: Option<Vm>,
}

impl Interpreter {
    /// An interpreter with no VM yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and runs one line; the answer is the line to print (without
    /// newline) and whether to stop afterwards.
    pub fn answer(&mut self, line: &str) -> (String, bool) {
        let result = Command::parse(line).and_then(|c| {
            let quit = c == Command::Quit;
            self.execute(c).map(|a| (a, quit))
        });
        match result {
            Ok((answer, quit)) => (format!("ok {answer}"), quit),
            Err(err) => (format!("err {}", one_line(&err)), false),
        }
    }

    /// Runs one command; the answer is what follows `ok `.
    pub fn execute(&mut self, command: Command) -> Result<String, ScriptError> {
        Ok(match command {
            Command::Vm => {
                if self.vm.is_some() {
                    return Err(ScriptError::VmExists);
                }
                self.vm = Some(Vm::new()?);
                "vm".into()
            }
            Command::Vcpu(id) => {
                self.vm()?.add_vcpu(id)?;
                format!("vcpu {id}")
            }
            Command::Offset(id, value) => {
                let vcpu = self.vm()?.vcpu(id)?;
                vcpu.set_tsc_offset(value)?;
                let readback = vcpu.get_tsc_offset()?;
                format!("offset {id} {value} readback {readback}")
            }
            Command::Msr(id, index, value) => {
                self.vm()?.vcpu(id)?.set_msr(index, value)?;
                format!("msr {id} {index:#x} {value}")
            }
            Command::Khz(id) => format!("khz {}", self.vm()?.vcpu(id)?.tsc_khz()?),
            Command::Rdtsc(id, n) => {
                let run = self.vm()?.vcpu(id)?.run_rdtsc(n)?;
                let mut out = format!("rdtsc {} {}", run.host_before, run.host_after);
                for r in &run.guest_readings {
                    let _ = write!(out, " {r}");
                }
                out
            }
            Command::Pid => format!("pid {}", std::process::id()),
            Command::Quit => "bye".into(),
        })
    }

    fn vm(&mut self) -> Result<&mut Vm, ScriptError> {
        self.vm.as_mut().ok_or(ScriptError::NoVm)
    }
}

/// An error and its causes on one line (answers are line-delimited).
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(Command::parse(" vm ").unwrap(), Command::Vm);
        assert_eq!(Command::parse("vcpu 7").unwrap(), Command::Vcpu(7));
        assert_eq!(
            Command::parse("offset 3 -123456789012").unwrap(),
            Command::Offset(3, -123_456_789_012)
        );
        assert_eq!(
            Command::parse("msr 1 0x10 42").unwrap(),
            Command::Msr(1, 0x10, 42)
        );
        assert_eq!(Command::parse("rdtsc 0 5").unwrap(), Command::Rdtsc(0, 5));
        assert_eq!(Command::parse("khz 2").unwrap(), Command::Khz(2));
        assert_eq!(Command::parse("pid").unwrap(), Command::Pid);
        assert_eq!(Command::parse("quit").unwrap(), Command::Quit);
    }

    #[test]
    fn rejects_bad_lines() {
        for line in [
            "",
            "vcpu",
            "vcpu x",
            "vcpu 4294967296",
            "offset 1 9223372036854775808",
            "msr 1 0x10",
            "rdtsc 0 1000001",
            "launch",
        ] {
            assert!(Command::parse(line).is_err(), "{line:?} parsed");
        }
    }

    #[test]
    fn commands_before_vm_are_errors_with_one_line_answers() {
        let mut interp = Interpreter::new();
        let (answer, quit) = interp.answer("vcpu 0");
        assert_eq!(answer, "err no VM: send `vm` first");
        assert!(!quit);
        let (answer, _) = interp.answer("bogus");
        assert!(answer.starts_with("err unknown command"), "{answer}");
        assert_eq!(
            interp.answer("pid").0,
            format!("ok pid {}", std::process::id())
        );
        assert_eq!(interp.answer("quit"), ("ok bye".to_string(), true));
    }
}
