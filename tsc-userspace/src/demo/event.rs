//! The toy guest's one trace event, `tsc_demo:rdtsc`, and the Hello that
//! declares it.
//!
//! The toy guest has no kernel, so the demo agent plays the part of one: it
//! declares the event in the kernel's format-file syntax, describes a
//! ring-buffer page the way an x86_64 kernel's `header_page` does, and
//! writes each reading as a record whose time stamp is the reading itself
//! (what an `x86-tsc` trace clock would have stamped).

use crate::{
    vmm::Bracket,
    wire::{CpuApic, EventFormat, Hello, TRACE_CLOCK, TscSample},
};

/// The event's system.
pub const SYSTEM: &str = "tsc_demo";
/// The event's name.
pub const NAME: &str = "rdtsc";
/// The event's id (its records' `common_type`).
pub const EVENT_ID: u16 = 2000;
/// The `common_pid` of every reading: the guest program's "task".
pub const GUEST_PID: i32 = 1;
/// The name the guest program goes by (its `saved_cmdlines` entry).
pub const GUEST_COMM: &str = "rdtsc-loop";
/// Ring-buffer page size the Hello declares.
pub const PAGE_SIZE: u32 = 4096;
/// Bytes of one record's payload.
pub const PAYLOAD_LEN: usize = 24;
/// Offset of `seq` in the payload.
pub const SEQ_OFFSET: usize = 16;

/// `events/tsc_demo/rdtsc/format`, as a kernel would print it.
pub const FORMAT: &str = "name: rdtsc
ID: 2000
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:u64 reading;\toffset:8;\tsize:8;\tsigned:0;
\tfield:u32 seq;\toffset:16;\tsize:4;\tsigned:0;
\tfield:u32 vcpu;\toffset:20;\tsize:4;\tsigned:0;

print fmt: \"reading=%llu seq=%u vcpu=%u\", REC->reading, REC->seq, REC->vcpu
";

/// `events/header_page` of an x86_64 kernel with 4 KiB pages.
pub const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
";

/// `events/header_event` of the same kernel.
pub const HEADER_EVENT: &str = "# compressed entry header
\ttype_len    :    5 bits
\ttime_delta  :   27 bits
\tarray       :   32 bits

\tpadding     : type == 29
\ttime_extend : type == 30
\ttime_stamp : type == 31
\tdata max type_len  == 28
";

/// One `rdtsc` the toy guest took, with what the host saw around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Number of the reading in the demo (from 0, over all vCPUs).
    pub seq: u32,
    /// KVM vCPU id that took it.
    pub vcpu: u32,
    /// The value the guest's `rdtsc` returned.
    pub guest_tsc: u64,
    /// Host TSC before and after the `KVM_RUN` the reading was taken in.
    pub bracket: Bracket,
}

impl Reading {
    /// The record payload: common fields, then `reading`, `seq`, `vcpu`.
    pub fn payload(&self) -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        p[0..2].copy_from_slice(&EVENT_ID.to_le_bytes());
        // common_flags and common_preempt_count stay 0.
        p[4..8].copy_from_slice(&GUEST_PID.to_le_bytes());
        p[8..16].copy_from_slice(&self.guest_tsc.to_le_bytes());
        p[SEQ_OFFSET..20].copy_from_slice(&self.seq.to_le_bytes());
        p[20..24].copy_from_slice(&self.vcpu.to_le_bytes());
        p
    }
}

/// The `seq` of a `tsc_demo:rdtsc` payload, or `None` for another event.
pub fn seq_of(payload: &[u8]) -> Option<u32> {
    let id = u16::from_le_bytes(payload.get(0..2)?.try_into().ok()?);
    if id != EVENT_ID {
        return None;
    }
    let seq = payload.get(SEQ_OFFSET..SEQ_OFFSET + 4)?;
    Some(u32::from_le_bytes(seq.try_into().ok()?))
}

/// The Hello of a toy guest named `name` whose guest CPU `n` runs on vCPU
/// `vcpus[n]` (the vCPU id is the APIC id KVM gives it). Its TSC samples
/// are real readings of this CPU's TSC, which is what the toy guest reads
/// on a PVM host (on VMX/SVM the guest's would differ by the offset; that
/// only matters to binding by TSC signature, and the demo binds by pid).
pub fn hello(name: &str, vcpus: &[u32]) -> Hello {
    Hello {
        version: crate::wire::VERSION,
        agent_name: name.to_owned(),
        hostname: name.to_owned(),
        kernel_release: "none (a toy guest program on /dev/kvm)".to_owned(),
        trace_clock: TRACE_CLOCK.to_owned(),
        page_size: PAGE_SIZE,
        cpus: vcpus
            .iter()
            .zip(0..)
            .map(|(&apic_id, cpu)| CpuApic { cpu, apic_id })
            .collect(),
        header_page: HEADER_PAGE.to_owned(),
        header_event: HEADER_EVENT.to_owned(),
        events: vec![EventFormat {
            system: SYSTEM.to_owned(),
            name: NAME.to_owned(),
            id: EVENT_ID.into(),
            format: FORMAT.to_owned(),
        }],
        samples: TscSample::take_best(4, 32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ingest::GuestFormats,
        tracefs::{Event, EventFormat as Parsed, PageLayout, Value},
    };

    fn reading() -> Reading {
        Reading {
            seq: 7,
            vcpu: 2,
            guest_tsc: 0x0123_4567_89ab_cdef,
            bracket: Bracket {
                before: 1,
                after: 2,
            },
        }
    }

    #[test]
    fn the_format_parses_with_the_kernels_parser() {
        let format = Parsed::parse(SYSTEM, FORMAT).unwrap();
        assert_eq!(format.id, EVENT_ID);
        assert_eq!(format.name, NAME);
        let names: Vec<&str> = format.fields.iter().map(|f| f.name()).collect();
        assert!(names.ends_with(&["reading", "seq", "vcpu"]), "{names:?}");
    }

    #[test]
    fn the_payload_decodes_through_the_format() {
        let format = Parsed::parse(SYSTEM, FORMAT).unwrap();
        let payload = reading().payload();
        let event = Event {
            format: &format,
            data: &payload,
        };
        let get = |name| event.get(name).unwrap().unwrap();
        assert_eq!(get("reading"), Value::Unsigned(0x0123_4567_89ab_cdef));
        assert_eq!(get("seq"), Value::Unsigned(7));
        assert_eq!(get("vcpu"), Value::Unsigned(2));
        assert_eq!(event.pid(), Some(GUEST_PID));
        assert_eq!(seq_of(&payload), Some(7));
        let mut other = payload;
        other[0] = 1;
        assert_eq!(seq_of(&other), None);
    }

    #[test]
    fn the_hello_is_one_the_host_accepts() {
        let hello = hello("toy", &[0, 4]);
        let guest = GuestFormats::from_hello(&hello).unwrap();
        assert_eq!(*guest.layout(), PageLayout::x86_64(4096));
        assert_eq!(
            hello.cpus,
            [
                CpuApic { cpu: 0, apic_id: 0 },
                CpuApic { cpu: 1, apic_id: 4 }
            ]
        );
        let now = crate::wire::rdtsc();
        assert!(!hello.samples.is_empty());
        assert!(hello.samples.iter().all(|s| s.tsc_after <= now));
    }
}
