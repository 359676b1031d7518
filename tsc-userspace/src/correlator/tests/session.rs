//! The correlator driven as a session drives it, with typed inputs only: no
//! eBPF, tracefs, KVM, sockets or clock. Guests are the demo's toy guest
//! (its `tsc_demo:rdtsc` event carries a sequence number, so every event
//! can be followed through), pages come from the byte-exact page builder,
//! and the clock is a fixed 1 GHz one (host TSC tick t is t ns).

use std::{collections::HashMap, io, sync::Arc};

use bytes::Bytes;

use super::clock;
use crate::{
    Flags,
    correlator::{BoundBy, Correlator, CorrelatorConfig, HostTraceInfo, VmSpec},
    demo::{self as toy, Reading},
    ingest::{ConnId, ConnectionInfo, EventPage, GuestFormats, SockAddr},
    merge::MergeItem,
    offsets::{EventKind, OffsetEvent, Source},
    output::{EventWriter, WriteContext},
    tracefs::{FormatSet, PageBuilder, PageLayout},
    wire::TscSample,
};

/// One written event, as the tests look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Out {
    source: String,
    cpu: u32,
    host_tsc: u64,
    guest_tsc: Option<u64>,
    epoch: Option<u64>,
    flags: Flags,
    /// The toy event's sequence number (host events: none).
    seq: Option<u32>,
}

#[derive(Default)]
struct Collect(Vec<Out>);

impl EventWriter for Collect {
    fn write(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) -> io::Result<()> {
        let source = ctx.sources.get(item.source).map_or("?", |s| s.label());
        self.0.push(Out {
            source: source.to_owned(),
            cpu: item.cpu,
            host_tsc: item.host_tsc,
            guest_tsc: item.guest_tsc,
            epoch: item.epoch,
            flags: item.flags,
            seq: toy::seq_of(item.data.payload()),
        });
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const TCP: SockAddr = SockAddr::Tcp(std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7170,
)));

fn layout() -> PageLayout {
    PageLayout::parse(toy::HEADER_PAGE).expect("the toy header page parses")
}

/// A correlator whose host reads `host_cpus`.
fn correlator(vms: Vec<VmSpec>, host_cpus: Vec<u32>) -> Correlator {
    let config = CorrelatorConfig {
        vms,
        ..CorrelatorConfig::default()
    };
    let host = HostTraceInfo {
        name: "host".into(),
        layout: layout(),
        formats: Arc::new(FormatSet::new()),
        cpus: host_cpus,
    };
    Correlator::new(config, clock(), host).expect("a correlator")
}

/// A change of VM `pid`'s vCPU `vcpu` to `offset`, in force from host TSC
/// `at` (the offset the vCPU holds is `effective`).
fn change(pid: u32, vcpu: u32, seq: u64, offset: i64, effective: i64, at: u64) -> OffsetEvent {
    OffsetEvent {
        event: if seq == 0 {
            EventKind::Snapshot
        } else {
            EventKind::Change
        },
        pid,
        start_time: 1,
        comm: format!("vmm{pid}"),
        vcpu: Some(vcpu),
        offset: Some(offset),
        effective_offset: Some(effective),
        ratio: None,
        frac_bits: None,
        source: Some(Source::Tracepoint),
        seq: Some(seq),
        prev: None,
        changes: Some(seq),
        epoch_start_ns: (seq > 0).then_some(at),
        prev_epoch_end_ns: (seq > 0).then_some(at),
        boundary_uncertain: false,
    }
}

fn offsets(c: &mut Correlator, events: &[OffsetEvent]) -> bool {
    c.offsets(events, 0, &|_| Vec::new())
}

/// The connection of agent `name` whose CPU n runs on vCPU `vcpus[n]` and
/// which read guest TSC `guest_now` just before its Hello reached the
/// host at `host_now`.
fn connection(
    id: ConnId,
    name: &str,
    vcpus: &[u32],
    guest_now: u64,
    host_now: u64,
) -> ConnectionInfo {
    let mut hello = toy::hello(name, vcpus);
    hello.samples = vec![TscSample {
        cpu: 0,
        tsc_before: guest_now,
        clock_ns: 0,
        tsc_after: guest_now + 10,
    }];
    let guest = Arc::new(GuestFormats::from_hello(&hello).expect("the toy Hello decodes"));
    ConnectionInfo {
        id,
        peer: TCP,
        hello,
        host_tsc_at_hello: host_now,
        guest,
    }
}

/// A page of toy events on guest CPU `cpu`, one per `(guest_tsc, seq)`.
fn page(info: &ConnectionInfo, cpu: u32, events: &[(u64, u32)]) -> EventPage {
    let mut builder = PageBuilder::new(layout());
    for &(guest_tsc, seq) in events {
        let reading = Reading {
            seq,
            vcpu: cpu,
            guest_tsc,
            bracket: crate::vmm::Bracket {
                before: 0,
                after: 0,
            },
        };
        assert!(builder.push(guest_tsc, &reading.payload()).expect("fits"));
    }
    EventPage::new(
        info.id,
        cpu,
        builder.finish(),
        info.guest.clone(),
        Arc::new(HashMap::new()),
    )
    .expect("the built page decodes")
}

/// A host page on `cpu` with an event of unknown format at each TSC.
fn host_page(tscs: &[u64]) -> Bytes {
    let mut builder = PageBuilder::new(layout());
    for &tsc in tscs {
        assert!(
            builder
                .push(tsc, &[0xff, 0xff, 0, 0, 0, 0, 0, 0])
                .expect("fits")
        );
    }
    builder.finish()
}

fn seqs(out: &[Out]) -> Vec<Option<u32>> {
    out.iter().map(|o| o.seq).collect()
}

#[test]
fn two_vms_two_agents_each_converted_with_its_own_vms_offsets() {
    let mut c = correlator(Vec::new(), vec![0]);
    offsets(
        &mut c,
        &[
            change(100, 0, 0, -1_000_000, -1_000_000, 0),
            change(100, 1, 0, -1_000_000, -1_000_000, 0),
            change(200, 0, 0, 5_000_000_000, 5_000_000_000, 0),
        ],
    );
    let host_now = 10_000_000;
    let a = connection(1, "a", &[0, 1], host_now - 1_000_000 - 100, host_now);
    let b = connection(2, "b", &[0], host_now + 5_000_000_000 - 100, host_now);
    let bound_a = c.admit(&a).expect("a binds").clone();
    let bound_b = c.admit(&b).expect("b binds").clone();
    assert_eq!(
        (bound_a.pid, bound_a.by, bound_b.pid, bound_b.by),
        (100, BoundBy::TscSignature, 200, BoundBy::TscSignature)
    );
    assert_eq!(c.bound_vms(), [100, 200]);
    let mut out = Collect::default();
    // Host times 10_000_100.. on both: a's guest TSC is host - 1e6, b's is
    // host + 5e9.
    c.guest_page(&page(&a, 0, &[(9_000_200, 1), (9_000_400, 3)]), &mut out)
        .unwrap();
    c.guest_page(&page(&a, 1, &[(9_000_300, 2)]), &mut out)
        .unwrap();
    c.guest_page(
        &page(&b, 0, &[(5_010_000_250, 10), (5_010_000_350, 11)]),
        &mut out,
    )
    .unwrap();
    let summary = c.finish(&mut out).unwrap();
    let got: Vec<(&str, u64, Option<u32>)> = out
        .0
        .iter()
        .map(|o| (o.source.as_str(), o.host_tsc, o.seq))
        .collect();
    assert_eq!(
        got,
        [
            ("a", 10_000_200, Some(1)),
            ("b", 10_000_250, Some(10)),
            ("a", 10_000_300, Some(2)),
            ("b", 10_000_350, Some(11)),
            ("a", 10_000_400, Some(3)),
        ]
    );
    assert!(
        out.0
            .iter()
            .all(|o| o.flags.is_empty() && o.epoch == Some(0))
    );
    assert_eq!((summary.guest_events, summary.emitted), (5, 5));
}

#[test]
fn an_agent_that_leaves_and_comes_back_continues_on_the_same_vm() {
    let mut c = correlator(
        vec![VmSpec {
            pid: 100,
            name: Some("web".into()),
        }],
        vec![0],
    );
    offsets(&mut c, &[change(100, 0, 0, -1_000, -1_000, 0)]);
    let mut out = Collect::default();
    let first = connection(1, "web", &[0], 50_000, 60_000);
    assert_eq!(c.admit(&first).unwrap().by, BoundBy::Explicit);
    c.guest_page(&page(&first, 0, &[(59_000, 1), (59_500, 2)]), &mut out)
        .unwrap();
    c.guest_closed(1);
    assert_eq!(c.agents(), 0);
    // Its events still come out, in order, once the window lets them.
    c.release(60_500 + 1_000_000_000, &mut out).unwrap();
    assert_eq!(seqs(&out.0), [Some(1), Some(2)]);
    let again = connection(7, "web", &[0], 70_000, 80_000);
    let binding = c.admit(&again).unwrap().clone();
    assert_eq!((binding.pid, binding.name.as_str()), (100, "web"));
    c.guest_page(&page(&again, 0, &[(79_000, 3)]), &mut out)
        .unwrap();
    // A page of the old connection arriving late goes nowhere: its source
    // is gone and nothing of it may be attributed to the new one.
    c.guest_page(&page(&first, 0, &[(79_500, 99)]), &mut out)
        .unwrap();
    let summary = c.finish(&mut out).unwrap();
    assert_eq!(seqs(&out.0), [Some(1), Some(2), Some(3)]);
    assert_eq!(
        out.0.iter().map(|o| o.host_tsc).collect::<Vec<_>>(),
        [60_000, 60_500, 80_000]
    );
    assert_eq!(summary.guest_events, 3);
}

#[test]
fn a_cpu_on_an_unknown_vcpu_is_converted_with_the_vms_offset_and_flagged() {
    let mut c = correlator(
        vec![VmSpec {
            pid: 100,
            name: None,
        }],
        vec![0],
    );
    offsets(&mut c, &[change(100, 0, 0, -1_000, -1_000, 0)]);
    // Guest CPU 1 runs on APIC id 6, a vCPU the session never saw.
    let info = connection(1, "g", &[0, 6], 9_000, 10_000);
    c.admit(&info).unwrap();
    let mut out = Collect::default();
    c.guest_page(&page(&info, 1, &[(20_000, 1)]), &mut out)
        .unwrap();
    c.guest_page(&page(&info, 0, &[(20_000, 2)]), &mut out)
        .unwrap();
    c.finish(&mut out).unwrap();
    let unknown = out.0.iter().find(|o| o.seq == Some(1)).unwrap();
    let known = out.0.iter().find(|o| o.seq == Some(2)).unwrap();
    assert_eq!(
        (unknown.host_tsc, unknown.epoch, unknown.flags),
        (21_000, None, Flags::OUTSIDE_EPOCH)
    );
    assert_eq!(
        (known.host_tsc, known.epoch, known.flags),
        (21_000, Some(0), Flags::NONE)
    );
}

#[test]
fn the_2012_rewind_is_resolved_by_each_streams_order() {
    // The guest sets its TSC to 0 three times (the case raised on the KVM
    // list in 2012): guest TSCs 100, 200, 300 happen in each epoch.
    let starts = [1_000_000u64, 2_000_000, 3_000_000];
    let mut c = correlator(
        vec![VmSpec {
            pid: 100,
            name: None,
        }],
        vec![0],
    );
    // Before: the guest ran 10 ms ahead of the host, so guest TSCs near
    // 100 are no time of that epoch.
    offsets(&mut c, &[change(100, 0, 0, 10_000_000, 10_000_000, 0)]);
    let info = connection(1, "g", &[0], 400_000, 900_000);
    c.admit(&info).unwrap();
    let mut out = Collect::default();
    for (i, &start) in starts.iter().enumerate() {
        let offset = -(start as i64);
        offsets(
            &mut c,
            &[change(100, 0, i as u64 + 1, offset, offset, start)],
        );
        let seq = 10 * i as u32;
        c.guest_page(
            &page(&info, 0, &[(100, seq), (200, seq + 1), (300, seq + 2)]),
            &mut out,
        )
        .unwrap();
    }
    c.finish(&mut out).unwrap();
    let got: Vec<(Option<u64>, u64, bool)> = out
        .0
        .iter()
        .map(|o| {
            (
                o.epoch,
                o.host_tsc,
                o.flags.contains(Flags::RESOLVED_BY_ORDER),
            )
        })
        .collect();
    let mut want = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        for g in [100, 200, 300] {
            want.push((Some(i as u64 + 1), start + g));
        }
    }
    let placed: Vec<(Option<u64>, u64)> = got.iter().map(|g| (g.0, g.1)).collect();
    assert_eq!(placed, want, "each event in its own epoch, in order");
    assert!(!got[0].2, "before the first rewind one epoch explains them");
    assert!(
        got[3].2 && got[6].2,
        "the first event after each rewind says how it was placed: {got:?}"
    );
}

#[test]
fn a_hypervisor_that_ignores_offsets_flags_every_event_and_uses_the_held_one() {
    let mut c = correlator(
        vec![VmSpec {
            pid: 100,
            name: None,
        }],
        vec![0],
    );
    // PVM: asked -5000, the vCPU holds 0.
    offsets(&mut c, &[change(100, 0, 1, -5_000, 0, 1_000)]);
    let info = connection(1, "g", &[0], 9_000, 10_000);
    c.admit(&info).unwrap();
    let mut out = Collect::default();
    c.guest_page(&page(&info, 0, &[(20_000, 1)]), &mut out)
        .unwrap();
    c.finish(&mut out).unwrap();
    assert_eq!(out.0[0].host_tsc, 20_000, "converted with 0, not -5000");
    assert!(out.0[0].flags.contains(Flags::OFFSET_NOT_APPLIED));
}

#[test]
fn agents_the_vms_explain_equally_are_refused_asking_for_vm() {
    let mut c = correlator(Vec::new(), vec![0]);
    offsets(
        &mut c,
        &[change(100, 0, 0, 0, 0, 0), change(200, 0, 0, 0, 0, 0)],
    );
    let err = c
        .admit(&connection(1, "g", &[0], 9_000, 10_000))
        .unwrap_err();
    assert!(err.contains("--vm"), "{err}");
    assert_eq!(c.agents(), 0);
}

#[test]
fn the_merge_waits_for_every_host_cpu_read_and_every_guest_cpu() {
    // Host CPUs 0 and 5 (a cgroup or taskset can leave any set): both must
    // be advanced by a host read, whatever the machine's CPU count.
    let mut c = correlator(
        vec![VmSpec {
            pid: 100,
            name: None,
        }],
        vec![0, 5],
    );
    offsets(&mut c, &[change(100, 0, 0, -1_000, -1_000, 0)]);
    let info = connection(1, "g", &[0], 9_000, 10_000);
    c.admit(&info).unwrap();
    let mut out = Collect::default();
    c.host_page(5, &host_page(&[20_000]), &mut out).unwrap();
    c.guest_page(&page(&info, 0, &[(20_500, 1)]), &mut out)
        .unwrap();
    let now = 50_000; // far inside the 1 s window: nothing is forced
    c.release(now, &mut out).unwrap();
    assert!(out.0.is_empty(), "host CPU 0 has promised nothing yet");
    c.host_read(25_000);
    c.release(now, &mut out).unwrap();
    assert_eq!(
        out.0
            .iter()
            .map(|o| (o.source.as_str(), o.cpu, o.host_tsc))
            .collect::<Vec<_>>(),
        [("host", 5, 20_000), ("g", 0, 21_500)],
        "both host CPUs read up to 25_000, the guest CPU's stream at 21_500"
    );
    // A quiet guest CPU holds a later host event back until a keep-alive
    // at guest TSC g promises nothing before g - agent_lag (200 ms =
    // 200_000_000 ticks here).
    c.host_page(0, &host_page(&[30_000]), &mut out).unwrap();
    c.host_read(35_000);
    c.release(now, &mut out).unwrap();
    assert_eq!(
        out.0.len(),
        2,
        "the guest CPU has promised nothing past 21_500"
    );
    c.guest_alive(1, 200_030_000);
    c.release(now, &mut out).unwrap();
    assert_eq!(
        out.0.last().map(|o| (o.source.as_str(), o.host_tsc)),
        Some(("host", 30_000))
    );
}
