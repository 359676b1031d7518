//! The writer's packets decoded back with its own messages, on real format
//! files. The official schema's decoding is `tests/perfetto.rs`'s job.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::{
    proto::{Data, FtraceEvent, GenericValue, Payload, TracePacket},
    *,
};
use crate::{
    Flags,
    merge::{EventData, MergeItem, SourceId, SourceInfo, SourceKind, Sources},
    output::WriteContext,
    tracefs::FormatSet,
};

/// `trace/trace.proto`: `Trace`, for decoding what was written.
#[derive(Clone, PartialEq, prost::Message)]
struct Trace {
    #[prost(message, repeated, tag = "1")]
    packet: Vec<TracePacket>,
}

const FORMATS: [(&str, &str); 4] = [
    ("kvm", include_str!("../testdata/kvm_exit.format")),
    ("sched", include_str!("../testdata/sched_switch.format")),
    ("sched", include_str!("../testdata/sched_wakeup.format")),
    ("ftrace", include_str!("../testdata/print.format")),
];

fn host() -> HostMachine {
    HostMachine {
        sysname: "Linux".into(),
        release: "6.18.0-test".into(),
        version: "#1 SMP".into(),
        machine: "x86_64".into(),
        name: "testhost".into(),
        num_cpus: Some(2),
        tgid_of: |tid| Some(if tid == 1235 { 1234 } else { tid }),
        vcpu_threads_of: |pid| match pid {
            4242 => vec![(0, 1235), (1, 1236)],
            _ => Vec::new(),
        },
    }
}

struct Fixture {
    sources: Sources,
    set: Arc<FormatSet>,
    host: SourceId,
    guests: [SourceId; 2],
}

fn fixture() -> Fixture {
    let mut set = FormatSet::new();
    for (system, text) in FORMATS {
        set.insert_text(system, text).expect("real format");
    }
    let set = Arc::new(set);
    let mut sources = Sources::new();
    let mut add = |kind, release: Option<&str>| {
        sources
            .add(SourceInfo {
                kind,
                name: "test".into(),
                formats: set.clone(),
                kernel_release: release.map(str::to_owned),
            })
            .expect("id")
    };
    let host = add(SourceKind::Host, None);
    let guest = |name: &str, pid| SourceKind::Guest {
        vm_name: name.into(),
        vm_pid: pid,
    };
    let guests = [
        add(guest("vm1", 4242), Some("6.1.0-guest")),
        add(guest("vm2", 4343), Some("5.10.0-other")),
    ];
    sources.set_comms(host, [(1234, "qemu"), (1235, "qemu")]);
    sources.set_comms(guests[0], [(15, "kworker/0:1")]);
    Fixture {
        sources,
        set,
        host,
        guests,
    }
}

/// A record of `name` from `pid` with `ints` and `strs` set.
fn record(
    set: &FormatSet,
    name: &str,
    pid: i32,
    ints: &[(&str, u64)],
    strs: &[(&str, &str)],
) -> EventData {
    let format = set.iter().find(|f| f.name == name).expect("format");
    let end = format
        .fields
        .iter()
        .map(|f| f.decl.offset + f.decl.size)
        .max()
        .unwrap_or(8);
    let mut p = vec![0u8; end.next_multiple_of(4)];
    p[..2].copy_from_slice(&format.id.to_le_bytes());
    p[4..8].copy_from_slice(&pid.to_le_bytes());
    for (field, v) in ints {
        let d = &format.field(field).expect("field").decl;
        p[d.offset..d.offset + d.size].copy_from_slice(&v.to_le_bytes()[..d.size]);
    }
    for (field, s) in strs {
        let d = &format.field(field).expect("field").decl;
        if d.size == 0 {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        } else {
            p[d.offset..d.offset + s.len()].copy_from_slice(s.as_bytes());
        }
    }
    EventData::from_bytes(Bytes::from(p))
}

fn guest_item(source: SourceId, cpu: u32, tsc: u64, flags: Flags, data: EventData) -> MergeItem {
    MergeItem {
        host_tsc: tsc,
        source,
        cpu,
        vcpu: Some(cpu),
        guest_tsc: Some(tsc + 7),
        epoch: Some(0),
        flags,
        data,
    }
}

fn write_all(f: &Fixture, items: &[MergeItem]) -> Vec<u8> {
    let mut w = PerfettoWriter::with_host(Vec::new(), FlushPolicy::Batch, host());
    let clock = |tsc: u64| tsc / 2;
    let boot = |tsc: u64| tsc / 2 + 1_000;
    let ctx = WriteContext {
        sources: &f.sources,
        clock: &clock,
        boottime: Some(&boot),
    };
    for item in items {
        w.write(&ctx, item).unwrap();
    }
    w.flush().unwrap();
    w.get_ref().clone()
}

fn events(p: &TracePacket) -> &[FtraceEvent] {
    match &p.data {
        Some(Data::FtraceEvents(b)) => &b.event,
        _ => &[],
    }
}

#[test]
fn the_host_comes_first_and_each_guest_is_a_machine_of_its_own() {
    let f = fixture();
    let print = |pid| record(&f.set, "print", pid, &[], &[("buf", "hello\n")]);
    let items = [
        MergeItem::host(f.host, 1, 100, print(1234)),
        guest_item(f.guests[0], 0, 200, Flags::NONE, print(15)),
        guest_item(f.guests[1], 1, 300, Flags::NONE, print(16)),
        guest_item(f.guests[0], 0, 400, Flags::NONE, print(15)),
    ];
    let trace = Trace::decode(&write_all(&f, &items)[..]).unwrap();
    let infos: Vec<(Option<u32>, String, Option<String>)> = trace
        .packet
        .iter()
        .filter_map(|p| match &p.data {
            Some(Data::SystemInfo(s)) => Some((
                p.machine_id,
                s.machine_name.clone().unwrap(),
                s.utsname.as_ref().unwrap().release.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        infos,
        [
            (None, "testhost".into(), Some("6.18.0-test".into())),
            (Some(1), "vm1".into(), Some("6.1.0-guest".into())),
            (Some(2), "vm2".into(), Some("5.10.0-other".into())),
        ]
    );
    assert!(matches!(trace.packet[0].data, Some(Data::SystemInfo(_))));
    // Every bundle: its machine's id, a CPU, events with BOOTTIME and pid.
    let mut seen = Vec::new();
    for p in &trace.packet {
        if let Some(Data::FtraceEvents(b)) = &p.data {
            for e in &b.event {
                seen.push((
                    p.machine_id,
                    b.cpu.unwrap(),
                    e.timestamp.unwrap(),
                    e.pid.unwrap(),
                ));
            }
        }
    }
    seen.sort_by_key(|s| s.2);
    assert_eq!(
        seen,
        [
            (None, 1, 1_050, 1234),
            (Some(1), 0, 1_100, 15),
            (Some(2), 1, 1_150, 16),
            (Some(1), 0, 1_200, 15)
        ]
    );
    // One bundle per machine and CPU per flush.
    let bundles = trace
        .packet
        .iter()
        .filter(|p| !events(p).is_empty())
        .count();
    assert_eq!(bundles, 3);
}

#[test]
fn vcpu_threads_and_tasks_are_named_per_machine() {
    let f = fixture();
    let print = |pid| record(&f.set, "print", pid, &[], &[("buf", "x")]);
    let items = [
        MergeItem::host(f.host, 0, 100, print(1234)),
        MergeItem::host(f.host, 0, 110, print(1235)),
        guest_item(f.guests[0], 0, 200, Flags::NONE, print(15)),
    ];
    let trace = Trace::decode(&write_all(&f, &items)[..]).unwrap();
    let mut threads = Vec::new();
    let mut processes = Vec::new();
    for p in &trace.packet {
        if let Some(Data::ProcessTree(t)) = &p.data {
            for th in &t.threads {
                threads.push((
                    p.machine_id,
                    th.tid.unwrap(),
                    th.tgid,
                    th.name.clone().unwrap(),
                ));
            }
            for pr in &t.processes {
                processes.push((p.machine_id, pr.pid.unwrap(), pr.cmdline.clone()));
            }
        }
    }
    threads.sort();
    assert_eq!(
        threads,
        [
            // The vCPU threads keep their vCPU names; the main thread is named by its comm.
            (None, 1234, Some(1234), "qemu".to_owned()),
            (None, 1235, Some(4242), "vm1 vCPU 0".to_owned()),
            (None, 1236, Some(4242), "vm1 vCPU 1".to_owned()),
            (Some(1), 15, None, "kworker/0:1".to_owned()),
        ]
    );
    processes.sort();
    assert_eq!(
        processes,
        [
            (None, 1234, vec![]),
            (None, 4242, vec!["vm1: VMM of guest machine 1".to_owned()]),
        ]
    );
}

#[test]
fn sched_events_are_typed_and_nothing_is_lost() {
    let f = fixture();
    let switch = record(
        &f.set,
        "sched_switch",
        15,
        &[
            ("prev_pid", 15),
            ("prev_prio", 120),
            ("prev_state", 0x402),
            ("next_pid", 0),
            ("next_prio", 120),
        ],
        &[("prev_comm", "kworker/0:1"), ("next_comm", "swapper/0")],
    );
    let exit = record(
        &f.set,
        "kvm_exit",
        1234,
        &[
            ("exit_reason", 30),
            ("guest_rip", 0xffff_ffff_8100_0000),
            ("vcpu_id", 1),
        ],
        &[],
    );
    let items = [
        guest_item(
            f.guests[0],
            0,
            200,
            Flags::RESOLVED_BY_ORDER | Flags::LATE,
            switch.clone(),
        ),
        guest_item(f.guests[0], 0, 210, Flags::NONE, switch),
        MergeItem {
            flags: Flags::OFFSET_NOT_APPLIED,
            ..MergeItem::host(f.host, 0, 220, exit)
        },
        MergeItem::host(
            f.host,
            0,
            230,
            EventData::from_bytes(Bytes::from_static(&[0xff, 0xff, 0, 0, 1, 0, 0, 0])),
        ),
    ];
    let trace = Trace::decode(&write_all(&f, &items)[..]).unwrap();
    let all: Vec<&FtraceEvent> = trace.packet.iter().flat_map(events).collect();
    assert_eq!(all.len(), 5, "4 events and one companion: {all:#?}");
    let Some(Payload::SchedSwitch(s)) = &all[0].event else {
        panic!("{:?}", all[0]);
    };
    assert_eq!(
        (
            s.prev_comm.as_deref(),
            s.prev_pid,
            s.prev_state,
            s.next_comm.as_deref(),
            s.next_prio
        ),
        (
            Some("kworker/0:1"),
            Some(15),
            Some(0x402),
            Some("swapper/0"),
            Some(120)
        )
    );
    // The flags follow in a companion at the same time and pid.
    let Some(Payload::Generic(extra)) = &all[1].event else {
        panic!("{:?}", all[1]);
    };
    assert_eq!(
        (all[1].timestamp, all[1].pid),
        (all[0].timestamp, all[0].pid)
    );
    let fields: Vec<(String, Option<GenericValue>)> = extra
        .field
        .iter()
        .map(|f| (f.name.clone().unwrap(), f.value.clone()))
        .collect();
    assert_eq!(extra.event_name.as_deref(), Some(EXTRA_EVENT));
    assert_eq!(
        fields,
        [
            (
                OF_FIELD.into(),
                Some(GenericValue::Str("sched:sched_switch".into()))
            ),
            (
                FLAGS_FIELD.into(),
                Some(GenericValue::Str("resolved-by-order,late".into()))
            ),
        ]
    );
    // No flags, nothing missing: no companion.
    assert!(matches!(all[2].event, Some(Payload::SchedSwitch(_))));
    // Other events are generic, every field typed by its format, flags last.
    let Some(Payload::Generic(g)) = &all[3].event else {
        panic!("{:?}", all[3]);
    };
    assert_eq!(g.event_name.as_deref(), Some("kvm_exit"));
    let value = |name: &str| {
        g.field
            .iter()
            .find(|f| f.name.as_deref() == Some(name))
            .unwrap()
            .value
            .clone()
    };
    assert_eq!(value("exit_reason"), Some(GenericValue::Uint(30)));
    assert_eq!(
        value("guest_rip"),
        Some(GenericValue::Uint(0xffff_ffff_8100_0000))
    );
    assert_eq!(
        value(FLAGS_FIELD),
        Some(GenericValue::Str("offset-not-applied".into()))
    );
    assert_eq!(g.field.len(), 10, "9 fields of kvm_exit and the flags");
    // An unknown format: named so, with its id and length.
    let Some(Payload::Generic(u)) = &all[4].event else {
        panic!("{:?}", all[4]);
    };
    assert_eq!(u.event_name.as_deref(), Some(UNKNOWN_EVENT));
    assert_eq!(all[4].pid, None);
}

/// The end of every whole packet in `bytes`.
fn packet_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let mut rest = &bytes[at + 1..];
        let len = prost::encoding::decode_varint(&mut rest).unwrap() as usize;
        at = bytes.len() - rest.len() + len;
        ends.push(at);
    }
    ends
}

#[test]
fn a_file_cut_after_any_whole_packet_decodes() {
    let f = fixture();
    let mut w = PerfettoWriter::with_host(Vec::new(), FlushPolicy::Batch, host());
    let clock = |tsc: u64| tsc;
    let ctx = WriteContext {
        sources: &f.sources,
        clock: &clock,
        boottime: None,
    };
    let mut flushed = Vec::new();
    for i in 0..6u64 {
        let data = record(
            &f.set,
            "sched_wakeup",
            15,
            &[("pid", 16), ("target_cpu", 1)],
            &[("comm", "sh")],
        );
        w.write(
            &ctx,
            &guest_item(f.guests[0], (i % 2) as u32, 100 + i, Flags::NONE, data),
        )
        .unwrap();
        if i % 2 == 1 {
            w.flush().unwrap();
            flushed.push(w.get_ref().len());
        }
    }
    let bytes = w.get_ref().clone();
    let ends = packet_ends(&bytes);
    assert_eq!(ends.last(), Some(&bytes.len()));
    // Every flush ends at a packet boundary.
    assert!(
        flushed.iter().all(|f| ends.contains(f)),
        "{flushed:?} {ends:?}"
    );
    let mut decoded = 0;
    for &end in &ends {
        decoded = Trace::decode(&bytes[..end]).unwrap().packet.len();
    }
    assert_eq!(decoded, ends.len());
    // Cut inside the last packet: the bytes do not decode, the prefix does.
    assert!(Trace::decode(&bytes[..bytes.len() - 3]).is_err());
    let whole = ends[ends.len() - 2];
    assert_eq!(
        Trace::decode(&bytes[..whole]).unwrap().packet.len(),
        ends.len() - 1
    );
    // Typed wakeups with the session clock when no BOOTTIME is given.
    let trace = Trace::decode(&bytes[..]).unwrap();
    let wakeups: Vec<&FtraceEvent> = trace.packet.iter().flat_map(events).collect();
    assert_eq!(wakeups.len(), 6);
    assert!(
        wakeups
            .iter()
            .all(|e| matches!(e.event, Some(Payload::SchedWakeup(_))))
    );
}
