//! Which VM an agent traces.
//!
//! In order: the user said so (`--vm PID[=NAME]`), the agent came over
//! vsock from a CID that a VMM's command line names (QEMU's `guest-cid=`),
//! or the agent's TSC readings are explained by exactly one VM's vCPU
//! offsets. When two VMs explain them equally we refuse rather than guess.

use std::{fmt, str::FromStr};

use tsc_common::tsc::TscParams;

use crate::{
    ingest::{ConnectionInfo, SockAddr},
    wire::Hello,
};

/// What binding looks at of an agent's connection.
#[derive(Debug)]
pub struct Admission<'a> {
    /// Where it comes from (a vsock peer's CID names its VM).
    pub peer: SockAddr,
    /// Everything the agent said about itself.
    pub hello: &'a Hello,
    /// Host TSC when the Hello was decoded.
    pub host_tsc_at_hello: u64,
}

impl<'a> Admission<'a> {
    /// The admission of a connection.
    pub fn of(info: &'a ConnectionInfo) -> Self {
        Self {
            peer: info.peer,
            hello: &info.hello,
            host_tsc_at_hello: info.host_tsc_at_hello,
        }
    }
}

/// `--vm PID[=NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// The VMM's process id.
    pub pid: u32,
    /// The name shown for its events (default: the agent's name).
    pub name: Option<String>,
}

impl FromStr for VmSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (pid, name) = match s.split_once('=') {
            Some((pid, name)) if !name.is_empty() => (pid, Some(name.to_owned())),
            Some(_) => return Err(format!("{s:?}: the name after '=' is empty")),
            None => (s, None),
        };
        let pid = pid
            .parse()
            .map_err(|_| format!("{s:?}: expected PID or PID=NAME"))?;
        Ok(Self { pid, name })
    }
}

/// A VM an agent may be bound to, as the session knows it now.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// VMM process id.
    pub pid: u32,
    /// VMM `comm`.
    pub comm: String,
    /// VMM command line (for vsock CIDs).
    pub cmdline: Vec<String>,
    /// The conversion each vCPU is in now: (vCPU id, parameters).
    pub vcpus: Vec<(u32, TscParams)>,
}

/// How an agent was bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundBy {
    /// `--vm`.
    Explicit,
    /// The vsock peer's CID, found on the VMM's command line.
    VsockCid(u32),
    /// Its TSC readings.
    TscSignature,
}

impl fmt::Display for BoundBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundBy::Explicit => f.write_str("--vm"),
            BoundBy::VsockCid(cid) => write!(f, "vsock CID {cid}"),
            BoundBy::TscSignature => f.write_str("its TSC readings"),
        }
    }
}

/// An agent's VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// VMM process id.
    pub pid: u32,
    /// Name shown for the VM's events.
    pub name: String,
    /// How it was decided.
    pub by: BoundBy,
}

/// Decides which VM the agent of `admission` traces, or why none.
/// `slack` is how far (host TSC ticks) before the Hello the agent's samples
/// may have been taken.
pub fn bind(
    admission: &Admission<'_>,
    specs: &[VmSpec],
    vms: &[Candidate],
    slack: u64,
) -> Result<Binding, String> {
    let hello = admission.hello;
    let default_name = || {
        if hello.agent_name.is_empty() {
            hello.hostname.clone()
        } else {
            hello.agent_name.clone()
        }
    };
    if !specs.is_empty() {
        let spec = explicit(hello, specs)?;
        if !vms.iter().any(|vm| vm.pid == spec.pid) {
            return Err(format!(
                "--vm {}: no VM with vCPUs is running in that process",
                spec.pid
            ));
        }
        let name = spec.name.clone().unwrap_or_else(default_name);
        return Ok(Binding {
            pid: spec.pid,
            name,
            by: BoundBy::Explicit,
        });
    }
    if let SockAddr::Vsock { cid, .. } = admission.peer
        && let Some(vm) = vms.iter().find(|vm| names_cid(&vm.cmdline, cid))
    {
        return Ok(Binding {
            pid: vm.pid,
            name: default_name(),
            by: BoundBy::VsockCid(cid),
        });
    }
    let explaining: Vec<&Candidate> = vms
        .iter()
        .filter(|vm| explains(vm, hello, admission.host_tsc_at_hello, slack))
        .collect();
    match explaining.as_slice() {
        [vm] => Ok(Binding {
            pid: vm.pid,
            name: default_name(),
            by: BoundBy::TscSignature,
        }),
        [] => Err(format!(
            "no VM on this host explains the TSC readings of agent {:?}; start the host session with --vm PID[=NAME]",
            hello.agent_name
        )),
        several => Err(format!(
            "the TSC readings of agent {:?} are explained equally by {}: refusing to guess; \
             start the host session with --vm PID[=NAME] to name its VM",
            hello.agent_name,
            several
                .iter()
                .map(|vm| format!("{} (pid {})", vm.comm, vm.pid))
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
}

fn explicit<'a>(hello: &Hello, specs: &'a [VmSpec]) -> Result<&'a VmSpec, String> {
    let named = specs.iter().find(|s| {
        s.name
            .as_deref()
            .is_some_and(|n| n == hello.agent_name || n == hello.hostname)
    });
    match (named, specs) {
        (Some(spec), _) => Ok(spec),
        (None, [only]) => Ok(only),
        (None, _) => Err(format!(
            "agent {:?} (host {:?}) matches no --vm NAME; give each --vm a NAME equal to its agent's --name",
            hello.agent_name, hello.hostname
        )),
    }
}

/// True when a VMM command line gives the guest vsock CID `cid`
/// (QEMU: `guest-cid=N` inside a `-device vhost-vsock-...` argument).
fn names_cid(cmdline: &[String], cid: u32) -> bool {
    cmdline.iter().flat_map(|arg| arg.split(',')).any(|kv| {
        kv.strip_prefix("guest-cid=")
            .and_then(|v| v.parse::<u32>().ok())
            == Some(cid)
    })
}

/// True when every sample converts, with one of the VM's vCPUs, to a host
/// TSC in `[at_hello - slack, at_hello]`: taken before the Hello arrived
/// and not long before.
fn explains(vm: &Candidate, hello: &Hello, at_hello: u64, slack: u64) -> bool {
    let window = at_hello.saturating_sub(slack)..=at_hello;
    !hello.samples.is_empty()
        && hello.samples.iter().all(|s| {
            vm.vcpus.iter().any(|(_, p)| {
                let host = |g| p.host_from_guest(g).ok();
                matches!((host(s.tsc_before), host(s.tsc_after)), (Some(a), Some(b)) if window.contains(&a) && window.contains(&b))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TscSample;

    fn hello(name: &str, samples: &[(u64, u64)]) -> Hello {
        Hello {
            version: crate::wire::VERSION,
            agent_name: name.into(),
            hostname: format!("{name}-host"),
            kernel_release: String::new(),
            trace_clock: "x86-tsc".into(),
            page_size: 4096,
            cpus: Vec::new(),
            header_page: String::new(),
            header_event: String::new(),
            events: Vec::new(),
            samples: samples
                .iter()
                .map(|&(b, a)| TscSample {
                    cpu: 0,
                    tsc_before: b,
                    clock_ns: 0,
                    tsc_after: a,
                })
                .collect(),
        }
    }

    fn vm(pid: u32, offset: i64) -> Candidate {
        Candidate {
            pid,
            comm: format!("vmm{pid}"),
            cmdline: vec![
                "qemu".into(),
                "-device".into(),
                format!("vhost-vsock-pci,id=v,guest-cid={}", pid + 1),
            ],
            vcpus: vec![(0, TscParams::unscaled(offset as u64))],
        }
    }

    fn admission(hello: &Hello, peer: SockAddr, at: u64) -> Admission<'_> {
        Admission {
            peer,
            hello,
            host_tsc_at_hello: at,
        }
    }

    const TCP: SockAddr = SockAddr::Tcp(std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        1,
    )));

    #[test]
    fn vm_spec_parses_pid_and_name() {
        assert_eq!(
            "12".parse(),
            Ok(VmSpec {
                pid: 12,
                name: None
            })
        );
        assert_eq!(
            "12=web".parse(),
            Ok(VmSpec {
                pid: 12,
                name: Some("web".into())
            })
        );
        assert!("x=web".parse::<VmSpec>().is_err());
        assert!("12=".parse::<VmSpec>().is_err());
    }

    #[test]
    fn tsc_signature_picks_the_vm_whose_offset_explains_the_samples() {
        // Guest TSC = host - 1_000_000 in VM 10, host - 5 in VM 20.
        let h = hello("a", &[(9_000_000, 9_000_100)]);
        let vms = [vm(10, -1_000_000), vm(20, -5)];
        let got = bind(&admission(&h, TCP, 10_000_200), &[], &vms, 1_000).unwrap();
        assert_eq!(
            (got.pid, got.by, got.name.as_str()),
            (10, BoundBy::TscSignature, "a")
        );
    }

    #[test]
    fn two_vms_explaining_equally_is_a_refusal_asking_for_vm() {
        let h = hello("a", &[(100, 110)]);
        let err = bind(
            &admission(&h, TCP, 200),
            &[],
            &[vm(10, 0), vm(20, 0)],
            1_000,
        )
        .unwrap_err();
        assert!(
            err.contains("--vm PID") && err.contains("pid 10") && err.contains("pid 20"),
            "{err}"
        );
    }

    #[test]
    fn no_vm_explaining_is_a_refusal() {
        let h = hello("a", &[(100, 110)]);
        // Samples 10 s before the hello at 1 GHz are outside a 1 ms slack.
        let err = bind(
            &admission(&h, TCP, 10_000_000_100),
            &[],
            &[vm(10, 0)],
            1_000_000,
        )
        .unwrap_err();
        assert!(err.contains("no VM"), "{err}");
    }

    #[test]
    fn vsock_cid_on_the_vmm_command_line_wins_over_the_signature() {
        let h = hello("a", &[(100, 110)]);
        let peer = SockAddr::Vsock { cid: 21, port: 5 };
        let got = bind(
            &admission(&h, peer, 200),
            &[],
            &[vm(10, 0), vm(20, 0)],
            1_000,
        )
        .unwrap();
        assert_eq!((got.pid, got.by), (20, BoundBy::VsockCid(21)));
    }

    #[test]
    fn explicit_vm_by_name_or_single_and_unknown_pid_refused() {
        let h = hello("web", &[]);
        let vms = [vm(10, 0), vm(20, 0)];
        let specs: Vec<VmSpec> = vec!["10=db".parse().unwrap(), "20=web".parse().unwrap()];
        let got = bind(&admission(&h, TCP, 0), &specs, &vms, 0).unwrap();
        assert_eq!(
            (got.pid, got.name.as_str(), got.by),
            (20, "web", BoundBy::Explicit)
        );
        let single = [VmSpec {
            pid: 10,
            name: None,
        }];
        assert_eq!(
            bind(&admission(&h, TCP, 0), &single, &vms, 0).unwrap().pid,
            10
        );
        let gone = [VmSpec {
            pid: 99,
            name: None,
        }];
        assert!(
            bind(&admission(&h, TCP, 0), &gone, &vms, 0)
                .unwrap_err()
                .contains("99")
        );
        let other = hello("mail", &[]);
        assert!(
            bind(&admission(&other, TCP, 0), &specs, &vms, 0).is_err(),
            "two specs, no name match"
        );
    }
}
