//! The `kvm_entry`/`kvm_exit` BTF programs against the real kernel: they pass
//! the verifier with the layout resolved from this kernel's BTF, attach, and
//! stay small. (On PVM they never fire: FACTS.md.)
mod common;

use std::path::PathBuf;

use tsc_userspace::{
    btf::KvmLayout,
    ebpf::{LoadOptions, Programs, VcpuPrograms, VcpuStatus},
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
