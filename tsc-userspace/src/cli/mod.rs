//! Command-line interface: one module per sub-command.

mod agent;
mod convert;
mod demo;
mod doctor;
mod dump;
mod host;
mod logging;
mod offsets;
mod record_finish;
mod vmm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Put KVM host and guest kernel traces on one timeline, live.
///
/// A KVM guest's TSC is the host's shifted (and maybe scaled) by a per-vCPU
/// offset that changes at runtime. tsc-tracer follows every change from the
/// kernel and converts each guest timestamp with the offset in force when
/// the event happened.
#[derive(Parser)]
#[command(name = "tsc-tracer", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    log: logging::Verbosity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run inside a guest: stream its kernel trace to a tsc-tracer host.
    Agent(agent::Args),
    /// Merge guest and host kernel traces into one timeline, live.
    Host(host::Args),
    Demo(demo::Args),
    /// Show the TSC offset of every vCPU of every VM on this host.
    Offsets(offsets::Args),
    /// Check what this host allows (privileges, mounts, KVM, TSC) and how
    /// its KVM behaves, with a fix for each problem.
    Doctor(doctor::Args),
    /// Convert guest TSC values to host TSC values (and nanoseconds).
    Convert(convert::Args),
    /// Assemble the trace.dat files of a recording whose session died.
    RecordFinish(record_finish::Args),
    /// Ask a running session to write its flight recorder (SIGUSR1).
    Dump(dump::Args),
    /// A scriptable toy VMM for tests and demos (commands on stdin).
    #[command(hide = true)]
    Vmm(vmm::Args),
}

/// Parses the command line, sets up logging and runs the sub-command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo is a first screen: only problems on top of its own story.
    let Cli { log, command } = cli;
    let quiet = log.quiet || (matches!(command, Command::Demo(_)) && log.verbose == 0);
    logging::init(log.verbose, quiet);
    let result = match command {
        Command::Agent(args) => agent::run(args),
        Command::Host(args) => host::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Offsets(args) => offsets::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Convert(args) => convert::run(args),
        Command::RecordFinish(args) => record_finish::run(args),
        Command::Dump(args) => dump::run(args),
        Command::Vmm(args) => vmm::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tsc-tracer: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
