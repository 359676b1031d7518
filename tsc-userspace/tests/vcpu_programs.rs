//! The `kvm_entry`/`kvm_exit` BTF programs against the real kernel: they pass
//! the verifier with the layout resolved from this kernel's BTF, attach, and
//! stay small. (On PVM they never fire: FACTS.md.)
mod common;

use std::path::PathBuf;

use tsc_common::record::{EntryRecord, OffsetRecord, entry_reason};
use tsc_userspace::{
    btf::KvmLayout,
    ebpf::{LoadOptions, Programs, VcpuPrograms, VcpuStatus, VcpuTracepoints},
    kvm::Debugfs,
    offsets::boundary::{BoundaryTracker, Record},
    vmm::Vm,
};

/// Verified-instruction budgets: the entry/exit programs run on every guest
/// entry and exit, so growth here is a cost on every VM of the host.
const ENTRY_BUDGET: u32 = 250;
const EXIT_BUDGET: u32 = 100;

fn options(tag: &str, vcpu_programs: VcpuPrograms) -> LoadOptions {
    LoadOptions {
        pin_path: Some(PathBuf::from(format!(
            "/sys/fs/bpf/tsc-tracer-test-{}-{tag}/offsets",
            std::process::id()
        ))),
        vcpu_programs,
        ..LoadOptions::default()
    }
}

#[test]
fn entry_and_exit_programs_pass_the_verifier_and_attach() {
    if !common::privileged("entry_and_exit_programs_pass_the_verifier_and_attach") {
        return;
    }
    let programs = Programs::load(&options("vcpu", VcpuPrograms::Required))
        .expect("load with the vCPU programs required");
    let expected = KvmLayout::running_kernel().unwrap();
    assert_eq!(programs.vcpu_status(), &VcpuStatus::Attached(expected));
    let mut counts = Vec::new();
    for name in ["kvm_write_tsc_offset", "kvm_entry", "kvm_exit"] {
        let info = programs.program_info(name).unwrap();
        let insns = info
            .verified_instruction_count()
            .expect("kernel >= 5.16 reports verified instructions");
        println!("{name}: {insns} verified instructions");
        counts.push(insns);
    }
    assert!(
        counts[1] <= ENTRY_BUDGET,
        "kvm_entry: {} verified instructions",
        counts[1]
    );
    assert!(
        counts[2] <= EXIT_BUDGET,
        "kvm_exit: {} verified instructions",
        counts[2]
    );
}

/// Drains the ring buffer: the records of this process's vCPUs, in order
/// (other processes on the host may run VMs too).
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<Record> {
    let me = std::process::id();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let record = Record::parse(&item).expect("every record the programs push parses");
        if record.key().tgid == me {
            out.push(record);
        }
    }
    out
}

fn split(records: &[Record]) -> (Vec<OffsetRecord>, Vec<EntryRecord>) {
    let mut writes = Vec::new();
    let mut entries = Vec::new();
    for record in records {
        match record {
            Record::Write(w) => writes.push(*w),
            Record::Entry(e) => entries.push(*e),
        }
    }
    (writes, entries)
}

/// kvm_entry/kvm_exit never fire here, but `kvm_emulate_insn(vcpu, failed)`
/// has the vCPU as its first argument too and fires on every MMIO exit of
/// the toy guest (each rdtsc report). With both programs standing in on it,
/// the whole kernel side runs for real: vCPU id read through the BTF offset,
/// first-seen and after-change reports, quiet common path, exit times.
#[test]
fn programs_run_for_real_on_a_stand_in_tracepoint() {
    if !common::privileged("programs_run_for_real_on_a_stand_in_tracepoint") {
        return;
    }
    let options = LoadOptions {
        vcpu_tracepoints: VcpuTracepoints {
            exit: "kvm_emulate_insn".into(),
            entry: "kvm_emulate_insn".into(),
        },
        ..options("standin", VcpuPrograms::Required)
    };
    let mut programs = Programs::load(&options).expect("load on the stand-in tracepoint");
    let mut ring = programs.take_records().unwrap();
    let mut vm = Vm::new().unwrap();
    // A sparse id: the record's vcpu_id must come from the struct.
    let vcpu = vm.add_vcpu(5).unwrap();
    vcpu.run_rdtsc(3).unwrap();
    let (writes, entries) = split(&drain(&mut ring));
    assert_eq!(writes.len(), 1, "creation: {writes:#?}");
    assert_eq!(
        entries.len(),
        1,
        "one report for 4 MMIO exits: {entries:#?}"
    );
    // KVM names the debugfs directory after the thread that made the VM;
    // `Debugfs` reports it under that thread's process.
    let effective = Debugfs::default()
        .vcpu(std::process::id(), 5)
        .unwrap()
        .tsc_offset;
    let first = entries[0];
    assert_eq!((first.vcpu_id, first.seq), (5, 1));
    assert_eq!(
        first.reason(),
        entry_reason::FIRST_SEEN | entry_reason::AFTER_CHANGE
    );
    assert_eq!(
        first.l1_tsc_offset as i64, effective,
        "read through BTF offsets"
    );
    assert_eq!(first.tsc_offset as i64, effective);
    assert!(first.entry_ns >= writes[0].ktime_ns);

    vcpu.set_tsc_offset(-12345).unwrap();
    vcpu.run_rdtsc(2).unwrap();
    let records = drain(&mut ring);
    let (writes, entries) = split(&records);
    assert_eq!((writes.len(), entries.len()), (1, 1), "{records:#?}");
    let (write, entry) = (writes[0], entries[0]);
    assert_eq!((write.seq, write.next as i64), (2, -12345));
    assert!(
        write.last_exit_ns != 0 && write.last_exit_ns <= write.ktime_ns,
        "the change carries the vCPU's last exit before it: {write:#?}"
    );
    assert_eq!((entry.seq, entry.reason()), (2, entry_reason::AFTER_CHANGE));
    assert!(entry.entry_ns >= write.ktime_ns);

    let mut edges = BoundaryTracker::default();
    let edge = records
        .iter()
        .map(|r| edges.apply(r.key(), &r.boundary()))
        .last()
        .unwrap();
    assert_eq!(edge.seq, 2);
    assert_eq!(edge.requested, Some(-12345));
    let effective = Debugfs::default()
        .vcpu(std::process::id(), 5)
        .unwrap()
        .tsc_offset;
    assert_eq!(
        edge.effective,
        Some(effective),
        "what the vCPU holds after the change"
    );
    assert_eq!(entry.l1_tsc_offset as i64, effective);
    assert_eq!(edge.new_start_ns, entry.entry_ns);
    assert_eq!(programs.counters().unwrap().read_failed, 0);
}
