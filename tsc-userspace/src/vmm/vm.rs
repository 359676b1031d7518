//! One VM: the `/dev/kvm` handle, its memory and its vCPUs.

use std::collections::BTreeMap;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};

use super::{
    Vcpu, VmmError,
    guest_code::RDTSC_LOOP,
    memory::{GuestMemory, MEM_SIZE},
};

/// A VM with one 3 MiB memslot holding page tables and the guest program.
///
/// Field order is drop order: vCPUs go before the VM, and the memory the
/// memslot points at goes last.
#[derive(Debug)]
pub struct Vm {
    vcpus: BTreeMap<u32, Vcpu>,
    fd: VmFd,
    kvm: Kvm,
    memory: GuestMemory,
}

impl Vm {
    /// Opens `/dev/kvm`, creates a VM (`KVM_CREATE_VM`) and registers its memory.
    pub fn new() -> Result<Self, VmmError> {
        let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(|source| VmmError::Vm {
            ioctl: "KVM_CREATE_VM",
            source,
        })?;
        let memory = GuestMemory::new(&RDTSC_LOOP).map_err(VmmError::Memory)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: memory.host_addr(),
        };
        // SAFETY: the region is our own mapping of MEM_SIZE bytes, and it
        // outlives the VM (`memory` is dropped after `fd`).
        unsafe { fd.set_user_memory_region(region) }.map_err(|source| VmmError::Vm {
            ioctl: "KVM_SET_USER_MEMORY_REGION",
            source,
        })?;
        tracing::debug!("created a VM with a {MEM_SIZE}-byte memslot");
        Ok(Self {
            vcpus: BTreeMap::new(),
            fd,
            kvm,
            memory,
        })
    }

    /// Creates vCPU `id` (`KVM_CREATE_VCPU`; ids may be sparse) ready to run
    /// the guest program in 64-bit mode at CPL3.
    pub fn add_vcpu(&mut self, id: u32) -> Result<&mut Vcpu, VmmError> {
        if self.vcpus.contains_key(&id) {
            return Err(VmmError::DuplicateVcpu(id));
        }
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|source| VmmError::Vcpu {
                ioctl: "KVM_CREATE_VCPU",
                vcpu: id,
                source,
            })?;
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VmmError::Vm {
                ioctl: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let vcpu = Vcpu::configure(id, fd, &cpuid)?;
        tracing::debug!(vcpu = id, "created a vCPU");
        Ok(self.vcpus.entry(id).or_insert(vcpu))
    }

    /// vCPU `id`, if it was added.
    pub fn vcpu(&mut self, id: u32) -> Result<&mut Vcpu, VmmError> {
        self.vcpus.get_mut(&id).ok_or(VmmError::NoSuchVcpu(id))
    }

    /// Ids of the vCPUs, in order.
    pub fn vcpu_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.vcpus.keys().copied()
    }

    /// The guest's memory (page tables and program), for inspection.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }
}
