//! The toy guest: a real VM on `/dev/kvm` whose vCPUs run the `rdtsc`
//! program, and the readings it reports, numbered.

use crate::vmm::{Vm, VmmError};

use super::Reading;

/// A VM whose vCPUs take `rdtsc` readings on demand.
#[derive(Debug)]
pub struct ToyGuest {
    vm: Vm,
    vcpus: Vec<u32>,
    next_seq: u32,
}

impl ToyGuest {
    /// Creates the VM and its vCPUs; guest CPU `n` is vCPU `vcpus[n]`.
    pub fn new(vcpus: &[u32]) -> Result<Self, VmmError> {
        let mut vm = Vm::new()?;
        for &id in vcpus {
            vm.add_vcpu(id)?;
        }
        Ok(Self {
            vm,
            vcpus: vcpus.to_vec(),
            next_seq: 0,
        })
    }

    /// The vCPU ids, in guest CPU order.
    pub fn vcpus(&self) -> &[u32] {
        &self.vcpus
    }

    /// Asks KVM to give `vcpu` exactly `offset`; returns what KVM reads
    /// back (0 on PVM, which does not apply offsets).
    pub fn set_offset(&mut self, vcpu: u32, offset: i64) -> Result<i64, VmmError> {
        let vcpu = self.vm.vcpu(vcpu)?;
        vcpu.set_tsc_offset(offset)?;
        vcpu.get_tsc_offset()
    }

    /// Runs each vCPU in turn for `per_vcpu` readings, numbering them on.
    pub fn run(&mut self, per_vcpu: u64) -> Result<Vec<Reading>, VmmError> {
        let mut readings = Vec::new();
        for &id in &self.vcpus {
            let run = self.vm.vcpu(id)?.run_rdtsc(per_vcpu)?;
            for (&guest_tsc, &bracket) in run.guest_readings.iter().zip(&run.brackets) {
                readings.push(Reading {
                    seq: self.next_seq,
                    vcpu: id,
                    guest_tsc,
                    bracket,
                });
                self.next_seq = self.next_seq.wrapping_add(1);
            }
        }
        Ok(readings)
    }
}
