//! Drives `tsc-tracer vmm` in a child process: a real VMM with its own pid.

use std::{
    io::{self, BufRead, BufReader, Write},
    path::Path,
    process::{ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::Duration,
};

use super::RdtscRun;

/// How long [`Child::cmd`] waits for an answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why talking to the child VMM failed.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The binary could not be started.
    #[error("starting {binary} vmm: {source}")]
    Spawn {
        /// The binary's path.
        binary: String,
        /// The OS error.
        source: io::Error,
    },
    /// Writing the command to the child's stdin failed.
    #[error("sending {command:?}: {source}")]
    Send {
        /// The command.
        command: String,
        /// The OS error.
        source: io::Error,
    },
    /// The child answered `err ...`.
    #[error("{command:?} refused: {reason}")]
    Refused {
        /// The command.
        command: String,
        /// What followed `err `.
        reason: String,
    },
    /// No answer in time.
    #[error("no answer to {command:?} within {timeout:?}")]
    Timeout {
        /// The command.
        command: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The child closed its stdout (it exited).
    #[error("the VMM exited before answering {command:?}")]
    Exited {
        /// The command.
        command: String,
    },
    /// An answer that does not follow the protocol.
    #[error("{command:?}: malformed answer {answer:?}")]
    Malformed {
        /// The command.
        command: String,
        /// The answer line.
        answer: String,
    },
    /// Waiting for the child failed.
    #[error("waiting for the VMM: {0}")]
    Wait(#[source] io::Error),
}

/// A `tsc-tracer vmm` child process. Dropping it kills that child (and only
/// it) if it is still running.
#[derive(Debug)]
pub struct Child {
    process: std::process::Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
    timeout: Duration,
}

impl Child {
    /// Starts `BINARY vmm` with piped stdin/stdout (stderr is inherited).
    pub fn spawn(binary: impl AsRef<Path>) -> Result<Self, ChildError> {
        let binary = binary.as_ref();
        let spawn_err = |source| ChildError::Spawn {
            binary: binary.display().to_string(),
            source,
        };
        let mut process = Command::new(binary)
            .arg("vmm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let (stdin, stdout) = match (process.stdin.take(), process.stdout.take()) {
            (Some(stdin), Some(stdout)) => (stdin, stdout),
            _ => {
                let _ = process.kill();
                let _ = process.wait();
                return Err(spawn_err(io::Error::other("no stdio pipes")));
            }
        };
        let (tx, answers) = mpsc::channel();
        // A reader thread lets `cmd` wait with a timeout; it ends at the
        // child's EOF or when the receiver is gone.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            process,
            stdin,
            answers,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Changes how long each command waits for its answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Sends one command line; returns what followed `ok ` in the answer.
    pub fn cmd(&mut self, command: &str) -> Result<String, ChildError> {
        let send_err = |source| ChildError::Send {
            command: command.to_string(),
            source,
        };
        writeln!(self.stdin, "{command}").map_err(send_err)?;
        self.stdin.flush().map_err(send_err)?;
        let answer = match self.answers.recv_timeout(self.timeout) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Timeout) => {
                return Err(ChildError::Timeout {
                    command: command.to_string(),
                    timeout: self.timeout,
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(ChildError::Exited {
                    command: command.to_string(),
                });
            }
        };
        if let Some(rest) = answer.strip_prefix("ok") {
            return Ok(rest.trim_start().to_string());
        }
        match answer.strip_prefix("err ") {
            Some(reason) => Err(ChildError::Refused {
                command: command.to_string(),
                reason: reason.to_string(),
            }),
            None => Err(ChildError::Malformed {
                command: command.to_string(),
                answer,
            }),
        }
    }

    /// `vm`: creates the child's VM.
    pub fn vm(&mut self) -> Result<(), ChildError> {
        self.cmd("vm").map(drop)
    }

    /// `vcpu ID`: adds a vCPU.
    pub fn vcpu(&mut self, id: u32) -> Result<(), ChildError> {
        self.cmd(&format!("vcpu {id}")).map(drop)
    }

    /// `offset ID VALUE`: sets an exact offset; returns what KVM reads back.
    pub fn offset(&mut self, id: u32, offset: i64) -> Result<i64, ChildError> {
        let command = format!("offset {id} {offset}");
        let answer = self.cmd(&command)?;
        last_word(&command, &answer)
    }

    /// `msr ID INDEX VALUE`: writes an MSR.
    pub fn msr(&mut self, id: u32, index: u32, value: u64) -> Result<(), ChildError> {
        self.cmd(&format!("msr {id} {index:#x} {value}")).map(drop)
    }

    /// `khz ID`: the vCPU's TSC frequency.
    pub fn khz(&mut self, id: u32) -> Result<u32, ChildError> {
        let command = format!("khz {id}");
        let answer = self.cmd(&command)?;
        last_word(&command, &answer)
    }

    /// `rdtsc ID N`: runs the guest program. The line protocol carries the
    /// whole-run bracket only, so `brackets` is empty.
    pub fn rdtsc(&mut self, id: u32, n: u64) -> Result<RdtscRun, ChildError> {
        let command = format!("rdtsc {id} {n}");
        let answer = self.cmd(&command)?;
        let malformed = || ChildError::Malformed {
            command: command.clone(),
            answer: answer.clone(),
        };
        let mut words = answer.split_whitespace();
        if words.next() != Some("rdtsc") {
            return Err(malformed());
        }
        let numbers: Vec<u64> = words
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| malformed())?;
        let [host_before, host_after, readings @ ..] = numbers.as_slice() else {
            return Err(malformed());
        };
        Ok(RdtscRun {
            host_before: *host_before,
            guest_readings: readings.to_vec(),
            host_after: *host_after,
            brackets: Vec::new(),
        })
    }

    /// `quit`, then waits for the child to exit.
    pub fn quit(mut self) -> Result<ExitStatus, ChildError> {
        self.cmd("quit")?;
        self.process.wait().map_err(ChildError::Wait)
    }
}

fn last_word<T: std::str::FromStr>(command: &str, answer: &str) -> Result<T, ChildError> {
    answer
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| ChildError::Malformed {
            command: command.to_string(),
            answer: answer.to_string(),
        })
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            // std's kill signals exactly this child's pid.
            if let Err(err) = self.process.kill() {
                tracing::warn!(pid = self.process.id(), %err, "could not kill the VMM child");
            }
            let _ = self.process.wait();
        }
    }
}
