//! `tsc-tracer demo` as a newcomer runs it: the real binary, a real VM.

mod common;

use std::{collections::HashMap, process::Command};

use serde_json::Value;

/// The demo's JSON timeline holds every reading once, each placed before
/// the host's own record of the guest storing it (`kvm_mmio` with the same
/// value).
#[test]
fn the_demo_shows_each_reading_before_the_host_traps_its_store() {
    if !common::privileged("the_demo_shows_each_reading_before_the_host_traps_its_store") {
        return;
    }
    // The demo's session pins the offsets map at the default path.
    let _turn = common::take_turn(common::Resource::Tracing);
    let out = Command::new(env!("CARGO_BIN_EXE_tsc-tracer"))
        .args([
            "demo",
            "--seconds",
            "1",
            "--format",
            "json",
            "--clock",
            "tsc",
        ])
        .args(["--offset", "-5000000000", "--interval-ms", "200"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let event = |l: &Value| l["event"].as_str().unwrap_or_default().to_owned();
    let guest: Vec<&Value> = lines.iter().filter(|l| l["source"] == "guest").collect();
    assert!(!guest.is_empty());
    let mut seqs: Vec<u64> = guest
        .iter()
        .map(|l| l["fields"]["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    let n = guest.len() as u64;
    assert_eq!(seqs, (0..n).collect::<Vec<_>>(), "each reading once");
    assert!(
        stderr.contains(&format!(
            "{n} taken, {n} came out of the session, each once"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{n} of {n} inside")), "{stderr}");

    // The host's kvm_mmio of each reading's value, by value.
    let mmio: HashMap<u64, u64> = lines
        .iter()
        .filter(|l| event(l) == "kvm:kvm_mmio")
        .filter_map(|l| Some((l["fields"]["val"].as_u64()?, l["host_tsc"].as_u64()?)))
        .collect();
    for g in &guest {
        let reading = g["fields"]["reading"].as_u64().unwrap();
        let host_tsc = g["host_tsc"].as_u64().unwrap();
        let trapped = mmio[&reading];
        assert!(
            host_tsc < trapped,
            "reading {reading} placed at {host_tsc}, after the host trapped its store at {trapped}"
        );
    }
}
