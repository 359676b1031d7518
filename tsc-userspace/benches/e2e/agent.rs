//! The real `tsc-tracer agent` as a child process, and the VM it is bound
//! to. Shared with the soak bench (`benches/soak` includes this file by
//! path).

use std::process::{Child, Command, Stdio};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tsc_userspace::{agent::sysinfo, vmm};

/// The binary every child runs.
pub const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");

/// How an agent is started.
pub struct AgentArgs<'a> {
    /// The session's (or a relay's) loopback TCP port.
    pub port: u16,
    /// `--name`: picks its VM among the session's `--vm PID=NAME`.
    pub name: &'a str,
    /// `--buffer-kb` (0: its default).
    pub buffer_kb: u32,
    /// `--retry`.
    pub retry: u32,
    /// `--flush-ms` (None: its default).
    pub flush_ms: Option<u64>,
    /// Where its log goes.
    pub stderr: Stdio,
}

/// Kills the agent if the bench panics half way.
pub struct AgentGuard(pub Option<Child>);

impl AgentGuard {
    /// The agent's pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `tsc-tracer -q agent` tracing only the rare
/// `sched:sched_process_exec` besides the markers (`ftrace:print`).
pub fn spawn(args: AgentArgs<'_>) -> AgentGuard {
    let child = Command::new(BINARY)
        .args([
            "-q",
            "agent",
            "--connect",
            &format!("tcp:127.0.0.1:{}", args.port),
        ])
        .args(["--name", args.name, "--events", "sched:sched_process_exec"])
        .args(["--retry", &args.retry.to_string()])
        .args(
            (args.buffer_kb > 0)
                .then(|| ["--buffer-kb".to_owned(), args.buffer_kb.to_string()])
                .into_iter()
                .flatten(),
        )
        .args(
            args.flush_ms
                .map(|ms| ["--flush-ms".to_owned(), ms.to_string()])
                .into_iter()
                .flatten(),
        )
        .stderr(args.stderr)
        .spawn()
        .expect("starting the agent");
    AgentGuard(Some(child))
}

/// SIGTERM: the agent flushes what it holds, says Bye and exits. Returns
/// the CPU seconds it used in all its life (its rusage, from wait4).
pub fn stop(agent: &mut AgentGuard) -> f64 {
    let Some(child) = agent.0.take() else {
        return 0.0;
    };
    let pid = child.id() as i32;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it and `status`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped (its `Child` is dropped
    // without waiting); both pointers are valid.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "waiting for the agent");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the agent failed: wait status {status:#x}"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A VM (`tsc-tracer vmm`) with one vCPU per CPU of this machine, with its
/// APIC id: an agent running on this machine maps its CPUs to vCPUs by
/// APIC id, as in a real guest.
pub fn vm_like_this_machine() -> vmm::Child {
    let mut vm = vmm::Child::spawn(BINARY).expect("starting a VMM");
    vm.vm().expect("creating the VM");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    for apic in sysinfo::parse_apic_ids(&cpuinfo).into_values() {
        vm.vcpu(apic).expect("creating a vCPU");
    }
    vm
}
