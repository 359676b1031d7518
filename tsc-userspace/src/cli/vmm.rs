//! `tsc-tracer vmm`: a scriptable toy VMM for tests and demos.
//!
//! Reads one command per line on stdin and answers each with one line on
//! stdout; the protocol is in [`tsc_userspace::vmm::script`].

use std::{
    io::{self, BufRead, Write},
    process::ExitCode,
};

use anyhow::Context;
use tsc_userspace::vmm::script::Interpreter;

/// Options of `tsc-tracer vmm` (none: everything comes on stdin).
#[derive(clap::Args)]
pub struct Args {}

/// Answers commands until `quit` or end of input.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    let mut interpreter = Interpreter::new();
    let stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    for line in stdin.lines() {
        let line = line.context("reading a command from stdin")?;
        let (answer, quit) = interpreter.answer(&line);
        tracing::debug!(command = %line, %answer, "vmm");
        writeln!(stdout, "{answer}").context("writing an answer to stdout")?;
        stdout.flush().context("flushing stdout")?;
        if quit {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
