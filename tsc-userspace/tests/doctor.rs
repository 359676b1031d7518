//! `tsc-tracer doctor --json`, the real binary on this host.
mod common;

use std::process::Command;

use serde_json::Value;
use tsc_userspace::{btf::KvmLayout, vmm};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");

fn doctor() -> (Value, std::process::ExitStatus) {
    let output = Command::new(BINARY)
        .args(["doctor", "--json"])
        .output()
        .expect("run tsc-tracer doctor --json");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (report, output.status)
}

#[test]
fn doctor_gives_a_true_picture_of_this_host() {
    if !common::privileged("doctor_gives_a_true_picture_of_this_host") {
        return;
    }
    let (report, status) = doctor();
    // PVM (see `vmm::is_pvm`) neither applies offsets nor fires kvm_entry;
    // VMX/SVM do.
    let pvm = vmm::is_pvm();
    assert_eq!(report["offsets_applied"], Value::Bool(!pvm), "{report:#}");
    assert_eq!(report["kvm_entry_fires"], Value::Bool(!pvm), "{report:#}");
    assert!(
        status.success(),
        "PVM's quirks must not fail doctor: {report:#}"
    );
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    for check in checks {
        let name = check["name"].as_str().unwrap();
        assert_ne!(
            check["status"], "fail",
            "{name} fails on this host: {check:#}"
        );
        assert!(!check["detail"].as_str().unwrap().is_empty(), "{name}");
    }
    let statuses: Vec<(&str, &str)> = checks
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    let expected = if pvm { "warn" } else { "ok" };
    assert!(
        statuses.contains(&("offsets-applied", expected)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("kvm-entry-fires", expected)),
        "{statuses:?}"
    );
    assert!(report["tsc_khz"].as_u64().unwrap() > 100_000, "{report:#}");
}

#[test]
fn doctor_offsets_are_the_running_kernel_btf_layout() {
    if !common::privileged("doctor_offsets_are_the_running_kernel_btf_layout") {
        return;
    }
    let (report, _) = doctor();
    let layout = KvmLayout::running_kernel().unwrap();
    let offsets = &report["offsets"];
    for (field, value) in [
        ("vcpu_id", layout.vcpu_id),
        ("l1_tsc_offset", layout.l1_tsc_offset),
        ("tsc_offset", layout.tsc_offset),
        ("l1_tsc_scaling_ratio", layout.l1_tsc_scaling_ratio),
        ("tsc_scaling_ratio", layout.tsc_scaling_ratio),
    ] {
        assert_eq!(offsets[field], u64::from(value), "{field}: {offsets:#}");
    }
    // The arch fields lie inside struct kvm_vcpu_arch, after vcpu_id.
    assert!(layout.l1_tsc_offset > layout.arch && layout.arch > layout.vcpu_id);
}
