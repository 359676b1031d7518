//! Binding an agent to a VM by its TSC signature: the Hello's samples are
//! the guest's numbers, the candidates' offsets, ratios and frac bits the
//! kernel's. Whatever both say, `bind` must answer (a binding or a reason),
//! never panic, and a binding by signature must name a candidate.
//!
//! Input: u64 `at_hello`, u64 `slack`, u8 sample count, then per sample
//! u64 `tsc_before`, u64 `tsc_after`; then candidates, each u64 offset,
//! u64 ratio, u8 frac bits, until the bytes end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsc_common::tsc::TscParams;
use tsc_userspace::{
    correlator::{
        BoundBy,
        bind::{Admission, Candidate, bind},
    },
    ingest::SockAddr,
    wire::{Hello, TscSample, VERSION},
};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn u8(&mut self) -> Option<u8> {
        let (&head, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(head)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(at_hello), Some(slack), Some(count)) = (input.u64(), input.u64(), input.u8()) else {
        return;
    };
    let mut samples = Vec::new();
    for cpu in 0..u32::from(count % 8) {
        let (Some(tsc_before), Some(tsc_after)) = (input.u64(), input.u64()) else {
            return;
        };
        samples.push(TscSample {
            cpu,
            tsc_before,
            clock_ns: 0,
            tsc_after,
        });
    }
    let mut vms = Vec::new();
    while let (Some(offset), Some(ratio), Some(frac)) = (input.u64(), input.u64(), input.u8()) {
        let Ok(params) = TscParams::new(offset, ratio, u32::from(frac)) else {
            continue;
        };
        let pid = vms.len() as u32 + 100;
        vms.push(Candidate {
            pid,
            comm: format!("vmm{pid}"),
            cmdline: vec!["qemu".into(), format!("guest-cid={pid}")],
            vcpus: vec![(0, params), (1, TscParams::unscaled(offset))],
        });
    }
    let hello = Hello {
        version: VERSION,
        agent_name: "fuzz".into(),
        hostname: "guest".into(),
        kernel_release: String::new(),
        trace_clock: "x86-tsc".into(),
        page_size: 4096,
        cpus: Vec::new(),
        header_page: String::new(),
        header_event: String::new(),
        events: Vec::new(),
        samples,
    };
    let peer = SockAddr::Vsock {
        cid: u32::from(count),
        port: 1,
    };
    let admission = Admission {
        peer,
        hello: &hello,
        host_tsc_at_hello: at_hello,
    };
    if let Ok(binding) = bind(&admission, &[], &vms, slack) {
        assert!(vms.iter().any(|vm| vm.pid == binding.pid));
        if binding.by == BoundBy::TscSignature {
            assert!(!hello.samples.is_empty());
        }
    }
});
