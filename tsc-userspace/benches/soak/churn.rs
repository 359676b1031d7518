//! VM churn: real KVM VMs (`tsc-tracer vmm` children) created and destroyed
//! every few seconds; while alive, each gets vCPUs hot-plugged (sparse ids)
//! and its offsets changed by `KVM_SET_DEVICE_ATTR` (exact offset) and by
//! writes of `IA32_TSC` (`KVM_SET_MSRS`), each a `kvm_write_tsc_offset`.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tsc_userspace::vmm::{self, MSR_IA32_TSC};

use super::agent::BINARY;

/// VMs alive at once.
const LIVE: usize = 3;
/// vCPU ids each VM gets, one more per round (sparse, as APIC ids are).
const VCPU_IDS: [u32; 4] = [0, 1, 2, 5];

/// What the churn did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChurnCounts {
    pub created: u64,
    pub destroyed: u64,
    pub vcpus_plugged: u64,
    pub offsets_set: u64,
    pub msr_writes: u64,
    /// Operations that failed (each also printed).
    pub failures: u64,
}

struct Vm {
    child: vmm::Child,
    vcpus: usize,
}

/// The churn thread.
pub struct Churn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ChurnCounts>>,
}

impl Churn {
    /// A new VM every `every`.
    pub fn start(every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("soak-churn".into())
            .spawn(move || churn(every, &s))
            .expect("spawning the churn");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops, destroys every VM it made, and says what it did.
    pub fn finish(mut self) -> ChurnCounts {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .map(|t| t.join().expect("the churn panicked"))
            .unwrap_or_default()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn churn(every: Duration, stop: &AtomicBool) -> ChurnCounts {
    let mut counts = ChurnCounts::default();
    let mut live: VecDeque<Vm> = VecDeque::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Acquire) {
        let next = Instant::now() + every;
        round += 1;
        if live.len() >= LIVE
            && let Some(old) = live.pop_front()
        {
            check(&mut counts, "destroying a VM", old.child.quit().map(drop));
            counts.destroyed += 1;
        }
        for vm in &mut live {
            change(vm, round, &mut counts);
        }
        if let Some(vm) = create(round, &mut counts) {
            live.push_back(vm);
        }
        while !stop.load(Ordering::Acquire) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for vm in live {
        check(&mut counts, "destroying a VM", vm.child.quit().map(drop));
        counts.destroyed += 1;
    }
    counts
}

fn create(round: u64, counts: &mut ChurnCounts) -> Option<Vm> {
    let mut child = match vmm::Child::spawn(BINARY) {
        Ok(c) => c,
        Err(e) => {
            check(counts, "starting a VMM", Err::<(), _>(e));
            return None;
        }
    };
    let made = child.vm().and_then(|()| child.vcpu(VCPU_IDS[0]));
    check(counts, "creating a VM", made);
    counts.created += 1;
    let offset = -((round as i64 % 1000) * 1_000_000_007);
    check(
        counts,
        "setting an offset",
        child.offset(0, offset).map(drop),
    );
    counts.offsets_set += 1;
    Some(Vm { child, vcpus: 1 })
}

/// One more vCPU (while ids are left), a new exact offset on vCPU 0 and an
/// `IA32_TSC` write on the newest vCPU.
fn change(vm: &mut Vm, round: u64, counts: &mut ChurnCounts) {
    if let Some(&id) = VCPU_IDS.get(vm.vcpus) {
        check(counts, "hot-plugging a vCPU", vm.child.vcpu(id));
        vm.vcpus += 1;
        counts.vcpus_plugged += 1;
    }
    let offset = (round as i64 % 977) * 3_000_000_019;
    check(
        counts,
        "setting an offset",
        vm.child.offset(0, offset).map(drop),
    );
    counts.offsets_set += 1;
    let newest = VCPU_IDS[vm.vcpus - 1];
    let msr = vm.child.msr(newest, MSR_IA32_TSC, round * 1_000_000_000);
    check(counts, "writing IA32_TSC", msr);
    counts.msr_writes += 1;
}

fn check<E: std::fmt::Display>(counts: &mut ChurnCounts, what: &str, r: Result<(), E>) {
    if let Err(e) = r {
        eprintln!("soak: churn: {what}: {e}");
        counts.failures += 1;
    }
}
