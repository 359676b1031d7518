//! `tsc-tracer`: live KVM host/guest trace correlation by TSC.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
