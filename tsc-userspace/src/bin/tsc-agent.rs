//! `tsc-agent`: the guest agent alone, the same code and options as
//! `tsc-tracer agent` without the host side (no eBPF, no KVM). Builds with
//! stable Rust: `cargo build --release -p tsc-userspace --no-default-features
//! --bin tsc-agent`.

// The very files `tsc-tracer agent` uses, so the two cannot drift.
#[path = "../cli/agent.rs"]
mod agent;
#[path = "../cli/logging.rs"]
mod logging;

use std::process::ExitCode;

use clap::Parser;

/// Stream this machine's kernel trace to a tsc-tracer host, which puts it on
/// one timeline with the host's own (run it inside a KVM guest).
#[derive(Parser)]
#[command(name = "tsc-agent", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    log: logging::Verbosity,
    #[command(flatten)]
    agent: agent::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log.verbose, cli.log.quiet);
    match agent::run(cli.agent) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tsc-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
