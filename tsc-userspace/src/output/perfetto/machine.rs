//! Perfetto machines: the host, and one per guest source, each announced by
//! a `SystemInfo` packet and naming its tasks in `ProcessTree` packets.

use std::collections::{HashMap, HashSet};

use super::{
    packet,
    proto::{Data, Process, ProcessTree, SystemInfo, Thread, TracePacket, Utsname},
};
use crate::merge::{Source, SourceId, SourceKind};

/// What the writer says about the host machine and how it looks up host
/// tasks. [`HostMachine::this`] reads this machine; tests make their own.
#[derive(Debug, Clone)]
pub struct HostMachine {
    /// `uname -s`.
    pub sysname: String,
    /// `uname -r`: the trace processor decodes `prev_state` by it.
    pub release: String,
    /// `uname -v`.
    pub version: String,
    /// `uname -m`.
    pub machine: String,
    /// The machine's name (its host name).
    pub name: String,
    /// Online CPUs.
    pub num_cpus: Option<u32>,
    /// The process (tgid) of a host task, so threads group under processes.
    pub tgid_of: fn(i32) -> Option<i32>,
    /// The host threads running a VMM's vCPUs, as `(vcpu_id, tid)`.
    pub vcpu_threads_of: fn(u32) -> Vec<(u32, i32)>,
}

impl HostMachine {
    /// This machine: its `uname` (from `/proc/sys/kernel`), tgids from
    /// `/proc`, vCPU threads from KVM's debugfs (`vcpuN/pid`).
    pub fn this() -> Self {
        let kernel = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            sysname: kernel("ostype"),
            release: kernel("osrelease"),
            version: kernel("version"),
            machine: std::env::consts::ARCH.to_owned(),
            name: kernel("hostname"),
            num_cpus: std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok()),
            tgid_of: |tid| {
                let tgid = crate::process::tgid(u32::try_from(tid).ok()?).ok()?;
                i32::try_from(tgid).ok()
            },
            vcpu_threads_of: |pid| crate::kvm::Debugfs::default().vcpu_threads(pid),
        }
    }

    /// The host's `SystemInfo` packet: the first of every trace.
    pub(super) fn system_info(&self) -> TracePacket {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        packet::packet(
            None,
            Data::SystemInfo(SystemInfo {
                utsname: Some(Utsname {
                    sysname: some(&self.sysname),
                    version: some(&self.version),
                    release: some(&self.release),
                    machine: some(&self.machine),
                }),
                num_cpus: self.num_cpus,
                machine_name: some(&self.name),
            }),
        )
    }
}

/// One machine of the trace.
#[derive(Debug, Default)]
pub(super) struct Machine {
    /// `TracePacket.machine_id`: `None` for the host.
    pub(super) id: Option<u32>,
    /// The name each task was last given in a `ProcessTree`.
    named: HashMap<i32, String>,
    /// Tasks whose name is fixed (vCPU threads): events do not rename them.
    pinned: HashSet<i32>,
    /// Processes already announced.
    processes: HashSet<i32>,
    /// What the next `ProcessTree` packet holds, and its time.
    pending: ProcessTree,
    pending_ts: Option<u64>,
}

impl Machine {
    /// Names task `pid` `comm` as of `ts`, if it was not so named already,
    /// under process `tgid` when known.
    fn name_task(&mut self, pid: i32, comm: &str, ts: u64, tgid: Option<i32>) {
        // The idle task is the trace processor's own (`swapper`).
        if pid <= 0 || self.pinned.contains(&pid) || self.named.get(&pid).is_some_and(|c| c == comm)
        {
            return;
        }
        self.named.insert(pid, comm.to_owned());
        if let Some(tgid) = tgid
            && self.processes.insert(tgid)
        {
            self.pending.processes.push(Process {
                pid: Some(tgid),
                cmdline: Vec::new(),
                cmdline_is_comm: None,
            });
        }
        self.pending.threads.push(Thread {
            tid: Some(pid),
            name: Some(comm.to_owned()),
            tgid,
        });
        self.pending_ts.get_or_insert(ts);
    }

    /// Names process `pid` with a fixed command line.
    fn pin_process(&mut self, pid: i32, cmdline: String) {
        self.processes.insert(pid);
        self.pending.processes.push(Process {
            pid: Some(pid),
            cmdline: vec![cmdline],
            cmdline_is_comm: Some(false),
        });
    }

    /// Names thread `tid` of process `pid` `name` for good, unless it is
    /// already.
    fn pin_thread(&mut self, pid: i32, tid: i32, name: String) {
        if tid <= 0 || !self.pinned.insert(tid) {
            return;
        }
        // A name an event gave it before is superseded: dropped if not
        // written yet, else overridden by this later packet.
        self.pending.threads.retain(|t| t.tid != Some(tid));
        self.pending.threads.push(Thread {
            tid: Some(tid),
            name: Some(name),
            tgid: Some(pid),
        });
    }

    /// The pending `ProcessTree` packet, if any.
    fn take_tree(&mut self) -> Option<TracePacket> {
        if self.pending.processes.is_empty() && self.pending.threads.is_empty() {
            return None;
        }
        let tree = std::mem::take(&mut self.pending);
        let mut p = packet::packet(self.id, Data::ProcessTree(tree));
        p.timestamp = self.pending_ts.take();
        Some(p)
    }
}

/// Every machine, by the source it shows.
#[derive(Debug)]
pub(super) struct Machines {
    host: HostMachine,
    /// Index into `list` of each source's machine.
    by_source: HashMap<SourceId, usize>,
    list: Vec<Machine>,
    /// The host machine's index, once a host source was seen.
    host_index: Option<usize>,
    next_id: u32,
    /// Host tasks seen, with their process when `/proc` said.
    host_tasks: HashMap<i32, Option<i32>>,
    /// Each bound VMM (pid) and its VM's name.
    vmms: HashMap<i32, String>,
}

impl Machines {
    pub(super) fn new(host: HostMachine) -> Self {
        Self {
            host,
            by_source: HashMap::new(),
            list: Vec::new(),
            host_index: None,
            next_id: 1,
            host_tasks: HashMap::new(),
            vmms: HashMap::new(),
        }
    }

    pub(super) fn host(&self) -> &HostMachine {
        &self.host
    }

    /// The machine of `id` (whose registry entry is `source`), made on first
    /// sight: a guest's `SystemInfo` packet goes to `out` then, and its VMM
    /// and vCPU threads are named on the host machine.
    pub(super) fn of(&mut self, id: SourceId, source: Option<&Source>, out: &mut Vec<u8>) -> usize {
        if let Some(&i) = self.by_source.get(&id) {
            return i;
        }
        let kind = source.map(|s| &s.info().kind);
        let i = match kind {
            Some(SourceKind::Host) => self.host_machine(),
            Some(SourceKind::Guest { vm_name, vm_pid }) => {
                let i = self.guest(
                    vm_name,
                    source.and_then(|s| s.info().kernel_release.as_deref()),
                    out,
                );
                self.name_vmm(i, vm_name, *vm_pid);
                i
            }
            // Removed before its events were written: a machine of its own,
            // rather than lending them to another.
            None => self.guest(&format!("unknown source {id}"), None, out),
        };
        self.by_source.insert(id, i);
        i
    }

    fn host_machine(&mut self) -> usize {
        *self.host_index.get_or_insert_with(|| {
            self.list.push(Machine::default());
            self.list.len() - 1
        })
    }

    fn guest(&mut self, name: &str, release: Option<&str>, out: &mut Vec<u8>) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        let info = SystemInfo {
            utsname: Some(Utsname {
                sysname: Some("Linux".to_owned()),
                version: None,
                release: release.filter(|r| !r.is_empty()).map(str::to_owned),
                machine: Some("x86_64".to_owned()),
            }),
            num_cpus: None,
            machine_name: Some(name.to_owned()),
        };
        packet::encode(out, &packet::packet(Some(id), Data::SystemInfo(info)));
        self.list.push(Machine {
            id: Some(id),
            ..Machine::default()
        });
        self.list.len() - 1
    }

    /// On the host machine: the VMM process, named after its VM and guest
    /// machine, and its vCPU threads as `VM vCPU N`.
    fn name_vmm(&mut self, guest: usize, vm_name: &str, vm_pid: u32) {
        let Ok(pid) = i32::try_from(vm_pid) else {
            return;
        };
        let machine_id = self.list[guest].id.unwrap_or(0);
        let host = self.host_machine();
        let cmdline = format!("{vm_name}: VMM of guest machine {machine_id}");
        self.list[host].pin_process(pid, cmdline);
        self.vmms.insert(pid, vm_name.to_owned());
        self.name_vcpus(pid);
    }

    /// Names the vCPU threads of VMM `pid` that have run (KVM records a
    /// vCPU's thread at its first `KVM_RUN`).
    fn name_vcpus(&mut self, pid: i32) {
        let (Some(vm_name), Some(host)) = (self.vmms.get(&pid), self.host_index) else {
            return;
        };
        let Ok(vmm) = u32::try_from(pid) else { return };
        for (vcpu, tid) in (self.host.vcpu_threads_of)(vmm) {
            self.list[host].pin_thread(pid, tid, format!("{vm_name} vCPU {vcpu}"));
        }
    }

    /// Task `pid` of machine `i` was seen at `ts`, named `comm` if known.
    /// A host task seen for the first time is looked up in `/proc`: its
    /// process groups it, and a new thread of a VMM may be a vCPU's.
    pub(super) fn saw_task(&mut self, i: usize, pid: i32, comm: Option<&str>, ts: u64) {
        let mut tgid = None;
        if Some(i) == self.host_index && pid > 0 {
            tgid = match self.host_tasks.get(&pid) {
                Some(&tgid) => tgid,
                None => {
                    let tgid = (self.host.tgid_of)(pid);
                    self.host_tasks.insert(pid, tgid);
                    if let Some(vmm) = tgid.filter(|t| self.vmms.contains_key(t)) {
                        self.name_vcpus(vmm);
                    }
                    tgid
                }
            };
        }
        if let Some(comm) = comm {
            self.list[i].name_task(pid, comm, ts, tgid);
        }
    }

    /// The `TracePacket.machine_id` of machine `i`.
    pub(super) fn id(&self, i: usize) -> Option<u32> {
        self.list[i].id
    }

    /// Every pending `ProcessTree` packet, to `out`.
    pub(super) fn drain_trees(&mut self, out: &mut Vec<u8>) {
        for m in &mut self.list {
            if let Some(p) = m.take_tree() {
                packet::encode(out, &p);
            }
        }
    }
}
