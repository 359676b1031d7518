//! One vCPU: its 64-bit CPL3 start state, TSC controls and the `rdtsc` run.

use std::os::fd::AsRawFd;

use core::arch::x86_64::_rdtsc;
use kvm_bindings::{
    CpuId, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET, Msrs, kvm_device_attr, kvm_msr_entry, kvm_regs,
    kvm_segment, kvm_sregs,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::{
    VmmError,
    memory::{CODE_GPA, DONE_GPA, PML4_GPA, REPORT_GPA, STACK_TOP},
};

/// CR0: PG | AM | WP | NE | ET | MP | PE.
const CR0: u64 = 0x8005_0033;
/// CR4: OSXMMEXCPT | OSFXSR | PGE | PAE.
const CR4: u64 = 0x1_0620;
/// EFER: NX | LMA | LME | SCE.
const EFER: u64 = 0xd01;
/// User code segment selector (GDT index 6, RPL 3), as Linux uses it.
const USER_CS: u16 = 0x33;
/// User data/stack segment selector (GDT index 5, RPL 3).
const USER_SS: u16 = 0x2b;
/// RFLAGS with only the always-one bit set: interrupts off.
const RFLAGS: u64 = 0x2;

/// `_IOW(KVMIO, 0xe1, struct kvm_device_attr)`. kvm-ioctls 0.24 offers the
/// vCPU-level device-attribute ioctls on arm64 and riscv only.
const KVM_SET_DEVICE_ATTR: libc::c_ulong = 0x4018_AEE1;
/// `_IOW(KVMIO, 0xe2, struct kvm_device_attr)`.
const KVM_GET_DEVICE_ATTR: libc::c_ulong = 0x4018_AEE2;

/// Host TSC read just before and just after one `KVM_RUN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bracket {
    /// Host `rdtsc` before entering `KVM_RUN`.
    pub before: u64,
    /// Host `rdtsc` after `KVM_RUN` returned.
    pub after: u64,
}

impl Bracket {
    /// True when `tsc` lies within the bracket, ends included.
    pub fn contains(&self, tsc: u64) -> bool {
        (self.before..=self.after).contains(&tsc)
    }
}

/// What one [`Vcpu::run_rdtsc`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdtscRun {
    /// Host TSC before the first `KVM_RUN`.
    pub host_before: u64,
    /// The guest's `rdtsc` readings, in the order it took them.
    pub guest_readings: Vec<u64>,
    /// Host TSC after the last `KVM_RUN`.
    pub host_after: u64,
    /// For each reading, the host bracket of the `KVM_RUN` that produced it
    /// (each reading exits to us, so each has its own, tighter bracket).
    pub brackets: Vec<Bracket>,
}

/// A vCPU of a [`Vm`](super::Vm).
#[derive(Debug)]
pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
}

impl Vcpu {
    /// Gives a new vCPU the CPUID, segment, control and general registers
    /// that start the guest program in 64-bit mode at CPL3.
    pub(super) fn configure(id: u32, fd: VcpuFd, cpuid: &CpuId) -> Result<Self, VmmError> {
        let vcpu = Self { id, fd };
        vcpu.fd
            .set_cpuid2(cpuid)
            .map_err(|e| vcpu.err("KVM_SET_CPUID2", e))?;
        let mut sregs = vcpu
            .fd
            .get_sregs()
            .map_err(|e| vcpu.err("KVM_GET_SREGS", e))?;
        long_mode_user(&mut sregs);
        vcpu.fd
            .set_sregs(&sregs)
            .map_err(|e| vcpu.err("KVM_SET_SREGS", e))?;
        vcpu.set_program_regs(0)?;
        Ok(vcpu)
    }

    /// The KVM vCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn err(&self, ioctl: &'static str, source: kvm_ioctls::Error) -> VmmError {
        VmmError::Vcpu {
            ioctl,
            vcpu: self.id,
            source,
        }
    }

    fn set_program_regs(&self, readings: u64) -> Result<(), VmmError> {
        let regs = kvm_regs {
            rip: CODE_GPA,
            rsp: STACK_TOP,
            rflags: RFLAGS,
            rcx: readings,
            rbx: REPORT_GPA,
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(|e| self.err("KVM_SET_REGS", e))
    }

    /// Sets the vCPU's TSC offset to exactly `offset` (`KVM_SET_DEVICE_ATTR`,
    /// group `KVM_VCPU_TSC_CTRL`, attr `KVM_VCPU_TSC_OFFSET`). The tracepoint
    /// `kvm_write_tsc_offset` reports exactly this value as `next`.
    pub fn set_tsc_offset(&self, offset: i64) -> Result<(), VmmError> {
        let mut attr = tsc_offset_attr(&offset as *const i64 as u64);
        self.device_attr(
            KVM_SET_DEVICE_ATTR,
            "KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)",
            &mut attr,
        )
    }

    /// The TSC offset KVM holds for the vCPU (`KVM_GET_DEVICE_ATTR`). On PVM
    /// this is always 0, whatever was set: PVM does not apply offsets.
    pub fn get_tsc_offset(&self) -> Result<i64, VmmError> {
        let mut offset: i64 = 0;
        let mut attr = tsc_offset_attr(&mut offset as *mut i64 as u64);
        self.device_attr(
            KVM_GET_DEVICE_ATTR,
            "KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)",
            &mut attr,
        )?;
        Ok(offset)
    }

    /// Issues a vCPU device-attribute ioctl; `attr.addr` must point at a
    /// live u64 for the duration of the call.
    fn device_attr(
        &self,
        request: libc::c_ulong,
        name: &'static str,
        attr: &mut kvm_device_attr,
    ) -> Result<(), VmmError> {
        // SAFETY: a vCPU fd we own; `attr` is a live kvm_device_attr and the
        // caller's `addr` points at 8 live bytes, all the kernel touches.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request, attr as *mut kvm_device_attr) };
        if rc != 0 {
            return Err(self.err(name, kvm_ioctls::Error::last()));
        }
        Ok(())
    }

    /// Writes one MSR (`KVM_SET_MSRS`), e.g. [`MSR_IA32_TSC`](super::MSR_IA32_TSC).
    pub fn set_msr(&self, index: u32, value: u64) -> Result<(), VmmError> {
        let entry = kvm_msr_entry {
            index,
            data: value,
            ..Default::default()
        };
        let msrs = Msrs::from_entries(&[entry])
            .map_err(|_| self.err("KVM_SET_MSRS", kvm_ioctls::Error::new(libc::E2BIG)))?;
        let written = self
            .fd
            .set_msrs(&msrs)
            .map_err(|e| self.err("KVM_SET_MSRS", e))?;
        if written != 1 {
            return Err(VmmError::MsrRefused {
                vcpu: self.id,
                index,
            });
        }
        Ok(())
    }

    /// The guest TSC frequency in kHz (`KVM_GET_TSC_KHZ`).
    pub fn tsc_khz(&self) -> Result<u32, VmmError> {
        self.fd
            .get_tsc_khz()
            .map_err(|e| self.err("KVM_GET_TSC_KHZ", e))
    }

    /// Runs the guest program from the start: it takes `n` `rdtsc` readings,
    /// each reported through an MMIO exit, then says it is done.
    pub fn run_rdtsc(&mut self, n: u64) -> Result<RdtscRun, VmmError> {
        self.set_program_regs(n)?;
        let capacity = usize::try_from(n).unwrap_or(usize::MAX).min(1 << 20);
        let mut guest_readings = Vec::with_capacity(capacity);
        let mut brackets = Vec::with_capacity(capacity);
        // SAFETY: rdtsc has no preconditions on x86_64.
        let host_before = unsafe { _rdtsc() };
        loop {
            let (bracket, exit) = self.run_once()?;
            match exit {
                Exit::Report(value) => {
                    guest_readings.push(value);
                    brackets.push(bracket);
                }
                Exit::Done => break,
            }
        }
        // SAFETY: as above.
        let host_after = unsafe { _rdtsc() };
        Ok(RdtscRun {
            host_before,
            guest_readings,
            host_after,
            brackets,
        })
    }

    /// One `KVM_RUN`, bracketed by host `rdtsc`, retried on EINTR/EAGAIN.
    fn run_once(&mut self) -> Result<(Bracket, Exit), VmmError> {
        loop {
            // SAFETY: rdtsc has no preconditions on x86_64.
            let before = unsafe { _rdtsc() };
            let result = self.fd.run();
            // SAFETY: as above.
            let after = unsafe { _rdtsc() };
            let exit = match result {
                Ok(exit) => classify(exit),
                Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => continue,
                Err(e) => return Err(self.err("KVM_RUN", e)),
            };
            let exit = exit.map_err(|exit| VmmError::UnexpectedExit {
                vcpu: self.id,
                exit,
            })?;
            return Ok((Bracket { before, after }, exit));
        }
    }
}

/// The exits the guest program makes on purpose.
enum Exit {
    Report(u64),
    Done,
}

fn classify(exit: VcpuExit<'_>) -> Result<Exit, String> {
    match exit {
        VcpuExit::MmioWrite(REPORT_GPA, data) => match <[u8; 8]>::try_from(data) {
            Ok(bytes) => Ok(Exit::Report(u64::from_le_bytes(bytes))),
            Err(_) => Err(format!(
                "MMIO write of {} bytes to the report address",
                data.len()
            )),
        },
        VcpuExit::MmioWrite(DONE_GPA, _) => Ok(Exit::Done),
        other => Err(format!("{other:?}")),
    }
}

/// The TSC-offset attribute of a vCPU, its value at `addr`.
fn tsc_offset_attr(addr: u64) -> kvm_device_attr {
    kvm_device_attr {
        flags: 0,
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr,
    }
}

/// Flat 64-bit user segments and long-mode paging.
fn long_mode_user(sregs: &mut kvm_sregs) {
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: USER_CS,
        type_: 0xb, // execute/read, accessed
        present: 1,
        dpl: 3,
        db: 0, // must be 0 when L = 1
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: USER_SS,
        type_: 0x3, // read/write, accessed
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    sregs.ss = data;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.cr0 = CR0;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = CR4;
    sregs.efer = EFER;
}
