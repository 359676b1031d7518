//! The VMM library and `tsc-tracer vmm` against the real /dev/kvm and tracefs.
mod common;

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use core::arch::x86_64::_rdtsc;
use tsc_userspace::vmm::{
    self, Child, ChildError, MSR_IA32_TSC, MSR_IA32_TSC_ADJUST, RdtscRun, Vm, VmmError,
};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");

/// One `kvm_write_tsc_offset` line of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OffsetEvent {
    pid: u32,
    vcpu: u32,
    prev: u64,
    next: u64,
}

/// A private tracefs instance with `kvm:kvm_write_tsc_offset` enabled,
/// removed on drop. Never touches the top-level instance.
struct TraceInstance {
    path: PathBuf,
}

impl TraceInstance {
    fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tsc-vmm-test-{}-{tag}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = Path::new("/sys/kernel/tracing/instances").join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        let instance = Self { path };
        fs::write(instance.enable_file(), "1").unwrap();
        instance
    }

    fn enable_file(&self) -> PathBuf {
        self.path.join("events/kvm/kvm_write_tsc_offset/enable")
    }

    /// Every offset write recorded so far (the `trace` file does not consume).
    fn offsets(&self) -> Vec<OffsetEvent> {
        let text = fs::read_to_string(self.path.join("trace")).unwrap();
        text.lines().filter_map(parse_offset_line).collect()
    }

    /// The offset writes made by one process.
    fn offsets_of(&self, pid: u32) -> Vec<OffsetEvent> {
        self.offsets()
            .into_iter()
            .filter(|e| e.pid == pid)
            .collect()
    }
}

impl Drop for TraceInstance {
    fn drop(&mut self) {
        let _ = fs::write(self.enable_file(), "0");
        common::remove_instance_dir(&self.path);
    }
}

/// `   comm-PID   [000] d..1.   835.16: kvm_write_tsc_offset: vcpu=0 prev=0 next=N`
fn parse_offset_line(line: &str) -> Option<OffsetEvent> {
    let (head, fields) = line.split_once(" kvm_write_tsc_offset: ")?;
    let task = head.split(" [").next()?.trim();
    let pid = task.rsplit_once('-')?.1.parse().ok()?;
    let mut values = fields
        .split_whitespace()
        .map(|kv| kv.split_once('=').map(|(_, v)| v));
    let mut next_number = || values.next()??.parse::<u64>().ok();
    Some(OffsetEvent {
        pid,
        vcpu: u32::try_from(next_number()?).ok()?,
        prev: next_number()?,
        next: next_number()?,
    })
}

/// The thread id of the caller: tracepoints name the task, not the process.
fn tid() -> u32 {
    nix::unistd::gettid().as_raw() as u32
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { _rdtsc() }
}

/// Readings, taken back to host time with the effective offset, lie in their
/// own KVM_RUN's bracket and the whole run's bracket, and strictly increase.
fn assert_bracketed(run: &RdtscRun, effective_offset: i64) {
    assert!(run.host_before < run.host_after);
    for (i, reading) in run.guest_readings.iter().enumerate() {
        let host = reading.wrapping_sub(effective_offset as u64);
        assert!(
            (run.host_before..=run.host_after).contains(&host),
            "reading {i} = {reading} (host {host}) outside [{}, {}]",
            run.host_before,
            run.host_after
        );
        if let Some(bracket) = run.brackets.get(i) {
            assert!(bracket.contains(host), "reading {i} outside {bracket:?}");
        }
    }
    for pair in run.guest_readings.windows(2) {
        assert!(pair[0] < pair[1], "readings not increasing: {pair:?}");
    }
}

#[test]
fn offset_set_is_exact_in_the_tracepoint_and_reads_back_as_the_backend_applies_it() {
    if !common::privileged("vmm offset set/get") {
        return;
    }
    let trace = TraceInstance::new("offset");
    let mut vm = Vm::new().unwrap();
    let vcpu = vm.add_vcpu(3).unwrap();
    // Distinct per run so another process's VM cannot produce it.
    let offset = -(rdtsc() as i64 & 0xffff_ffff) - 1_000_000_007;
    vcpu.set_tsc_offset(offset).unwrap();
    let readback = vcpu.get_tsc_offset().unwrap();

    let mine = trace.offsets_of(tid());
    let last = mine
        .last()
        .expect("no kvm_write_tsc_offset from this thread");
    assert_eq!((last.vcpu, last.next), (3, offset as u64), "{mine:?}");
    // PVM accepts the offset, reports it in the tracepoint, then zeroes it
    // (FACTS.md): KVM_GET_DEVICE_ATTR reads 0 there. Elsewhere it is exact.
    if vmm::is_pvm() {
        assert_eq!(readback, 0, "PVM now applies offsets? update FACTS.md");
        assert_eq!(last.prev, 0);
    } else {
        assert_eq!(readback, offset);
    }
}

#[test]
fn rdtsc_readings_lie_inside_the_host_bracket_and_increase() {
    if !common::privileged("vmm rdtsc bracket") {
        return;
    }
    let mut vm = Vm::new().unwrap();
    let vcpu = vm.add_vcpu(0).unwrap();
    vcpu.set_tsc_offset(-(1 << 40)).unwrap();
    let effective = vcpu.get_tsc_offset().unwrap();
    assert!(vcpu.tsc_khz().unwrap() > 0);

    let run = vcpu.run_rdtsc(50).unwrap();
    assert_eq!(run.guest_readings.len(), 50);
    assert_eq!(run.brackets.len(), 50);
    assert_bracketed(&run, effective);

    // The program restarts from scratch on each run, including for none.
    let again = vcpu.run_rdtsc(3).unwrap();
    assert_eq!(again.guest_readings.len(), 3);
    assert!(again.host_before >= run.host_after);
    assert_bracketed(&again, effective);
    assert!(vcpu.run_rdtsc(0).unwrap().guest_readings.is_empty());
}

#[test]
fn sparse_vcpu_ids_work_and_hotplug_gets_the_vm_offset() {
    if !common::privileged("vmm sparse vcpu ids") {
        return;
    }
    let trace = TraceInstance::new("sparse");
    let mut vm = Vm::new().unwrap();
    for id in [0, 7, 200] {
        vm.add_vcpu(id).unwrap();
    }
    assert!(matches!(vm.add_vcpu(7), Err(VmmError::DuplicateVcpu(7))));
    assert!(matches!(vm.vcpu(1), Err(VmmError::NoSuchVcpu(1))));
    assert_eq!(vm.vcpu_ids().collect::<Vec<_>>(), [0, 7, 200]);
    for id in [0, 7, 200] {
        let vcpu = vm.vcpu(id).unwrap();
        assert_eq!(vcpu.id(), id);
        let effective = vcpu.get_tsc_offset().unwrap();
        assert_bracketed(&vcpu.run_rdtsc(4).unwrap(), effective);
    }
    let created: Vec<_> = trace.offsets_of(tid());
    let ids: Vec<u32> = created.iter().map(|e| e.vcpu).collect();
    assert_eq!(ids, [0, 7, 200], "{created:?}");
    // Each later vCPU gets the VM's current offset.
    assert!(
        created.iter().all(|e| e.next == created[0].next),
        "{created:?}"
    );
}

#[test]
fn ia32_tsc_write_fires_the_tracepoint_with_the_implied_offset() {
    if !common::privileged("vmm msr tracepoint") {
        return;
    }
    let trace = TraceInstance::new("msr");
    let mut vm = Vm::new().unwrap();
    let vcpu = vm.add_vcpu(2).unwrap();
    // Far from the guest's current TSC, so KVM does not treat the write as a
    // synchronisation with the other vCPUs and keep the old offset.
    let value: u64 = 1 << 50;
    let before = rdtsc();
    vcpu.set_msr(MSR_IA32_TSC, value).unwrap();
    let after = rdtsc();
    let mine = trace.offsets_of(tid());
    let [created, written] = mine.as_slice() else {
        panic!("expected creation and MSR write, got {mine:?}");
    };
    assert_eq!((created.vcpu, written.vcpu), (2, 2));
    // next = value - host TSC at the write (no scaling here).
    let lowest = value.wrapping_sub(after);
    let highest = value.wrapping_sub(before);
    assert!(
        (lowest..=highest).contains(&written.next),
        "next {} not in [{lowest}, {highest}]",
        written.next
    );

    // A host-initiated IA32_TSC_ADJUST write only stores the MSR: KVM moves
    // the offset for guest writes alone, so no event fires.
    vcpu.set_msr(MSR_IA32_TSC_ADJUST, 1000).unwrap();
    assert_eq!(trace.offsets_of(tid()).len(), 2);
}

#[test]
fn child_vmm_runs_in_its_own_process_and_answers_every_command() {
    if !common::privileged("vmm child process") {
        return;
    }
    let trace = TraceInstance::new("child");
    let mut child = Child::spawn(BINARY).unwrap();
    let pid = child.pid();
    assert_ne!(pid, std::process::id());
    assert_eq!(child.cmd("pid").unwrap(), format!("pid {pid}"));
    assert!(matches!(child.vcpu(0), Err(ChildError::Refused { .. })));
    child.vm().unwrap();
    assert!(matches!(child.vm(), Err(ChildError::Refused { .. })));
    child.vcpu(3).unwrap();
    child.vcpu(9).unwrap();

    let offset = -123_456_789_i64;
    let readback = child.offset(9, offset).unwrap();
    assert_eq!(readback, if vmm::is_pvm() { 0 } else { offset });
    child.msr(3, MSR_IA32_TSC, 1 << 50).unwrap();
    assert!(child.khz(3).unwrap() > 0);
    let run = child.rdtsc(9, 20).unwrap();
    assert_eq!(run.guest_readings.len(), 20);
    assert_bracketed(&run, readback);

    let events = trace.offsets_of(pid);
    let seen: Vec<u32> = events.iter().map(|e| e.vcpu).collect();
    assert_eq!(seen, [3, 9, 9, 3], "{events:?}");
    assert_eq!(events[2].next, offset as u64);
    assert!(
        debugfs_has_vcpu(pid, 9),
        "no debugfs vcpu9 for pid {pid} under /sys/kernel/debug/kvm"
    );
    let err = child.cmd("bogus").unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    assert!(child.quit().unwrap().success());
}

fn debugfs_has_vcpu(pid: u32, vcpu: u32) -> bool {
    let Ok(dir) = fs::read_dir("/sys/kernel/debug/kvm") else {
        return false;
    };
    dir.flatten().any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        name.split_once('-').map(|(p, _)| p) == Some(pid.to_string().as_str())
            && entry.path().join(format!("vcpu{vcpu}")).exists()
    })
}

#[test]
fn vmm_answers_one_line_per_command_and_exits_cleanly_on_eof() {
    if !common::privileged("vmm eof") {
        return;
    }
    let mut process = Command::new(BINARY)
        .arg("vmm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let commands = "vm\nvcpu 1\n\nrdtsc 1 2\nnope\n";
    process
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let output = process.wait_with_output().unwrap();
    assert!(output.status.success());
    let answers = String::from_utf8(output.stdout).unwrap();
    let answers: Vec<&str> = answers.lines().collect();
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert_eq!(&answers[..2], ["ok vm", "ok vcpu 1"]);
    assert!(answers[2].starts_with("err empty"), "{answers:?}");
    // ok rdtsc BEFORE AFTER R1 R2
    assert_eq!(answers[3].split_whitespace().count(), 6, "{answers:?}");
    assert!(answers[4].starts_with("err unknown command"), "{answers:?}");
}

#[test]
fn dropping_the_child_kills_that_process() {
    if !common::privileged("vmm child drop") {
        return;
    }
    let mut child = Child::spawn(BINARY).unwrap();
    child.vm().unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", child.pid()));
    assert!(proc_dir.exists());
    drop(child);
    assert!(!proc_dir.exists(), "{} still exists", proc_dir.display());
}
