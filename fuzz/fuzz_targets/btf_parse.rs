//! Arbitrary bytes as BTF (the kernel's, or a module's split BTF on top of
//! it): parsing, and every query the tracer makes of the result, must give
//! an error, never a panic (the parser's module doc promises it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsc_userspace::btf::{Btf, Kind, KvmLayout, kvm::vcpu_arg};

/// Bounds the per-type queries so one input stays fast.
const MAX_QUERIED: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = Btf::parse(data) else {
        return;
    };
    query(&btf);
    // The same bytes as a module's split BTF on top of what they parsed to.
    if let Ok(split) = Btf::parse_split(data, &btf) {
        query(&split);
    }
});

fn query(btf: &Btf) {
    let _ = KvmLayout::resolve(btf);
    let _ = vcpu_arg(btf, "kvm_entry", 0);
    let _ = btf.find(Kind::Struct, "kvm_vcpu");
    for id in 0..btf.len().min(MAX_QUERIED) as u32 {
        let Ok(ty) = btf.get(id) else {
            continue;
        };
        let _ = (btf.name(ty), btf.skip(id, true), btf.size_of(id));
        for member in btf.members(ty) {
            let _ = btf.string(member.name_off);
        }
        let _ = btf.member(id, "l1_tsc_offset");
    }
}
