//! Recordings read by the real `trace-cmd` 3.1.6: the options as written
//! (`dump --options`), `report --check-events`, and, from replayed offset
//! histories and synthetic guest pages, every guest event placed by
//! `trace-cmd report` exactly where `timeline::VcpuTimeline` places it,
//! while a file holding only the first and last offsets (what trace-cmd's
//! own tsync keeps) places some of them wrong.

mod common;

use std::{collections::HashMap, fs, path::Path};

use tsc_common::tsc::TscParams;
use tsc_userspace::{
    record::{
        CpuData, DatFile, DatOption, Formats, Recorder, TimeShiftCpu, TimeShiftSample, Tsc2Nsec,
        meta::{GuestCpuMeta, StreamMeta},
        recorder::GuestBinding,
    },
    timeline::{OffsetChange, StreamCursor, VcpuTimeline},
    tracefs::{PageBuilder, PageLayout},
    wire::{CpuApic, EventFormat, Hello},
};

const TRACEFS: &str = "/sys/kernel/tracing/events";
const BASE: u64 = 1_000_000_000_000;
const VM_PID: u32 = 4242;

/// A tracefs text file. `header_page` answers only one read at offset 0
/// (`fs::read_to_string`'s small first read would cut it): read it whole.
fn text(rel: &str) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 16];
    let n = fs::File::open(Path::new(TRACEFS).join(rel))
        .unwrap()
        .read(&mut buf)
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Whether the test can run: root, tracefs and trace-cmd.
fn ready(test: &str) -> bool {
    if !common::privileged(test) {
        return false;
    }
    common::require_tool("trace-cmd");
    assert!(
        Path::new(TRACEFS).join("header_page").exists(),
        "tracefs is not mounted at {TRACEFS} (cargo xtask setup mounts it)"
    );
    true
}

/// An `ftrace:print` payload saying `msg`.
fn print_payload(pid: i32, msg: &str) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0..2].copy_from_slice(&5u16.to_le_bytes());
    p[4..8].copy_from_slice(&pid.to_le_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// Print format with the id tracefs gives it (5 on every kernel this runs on).
fn print_format() -> String {
    let f = text("ftrace/print/format");
    assert!(f.contains("ID: 5\n"), "ftrace:print has id 5 here");
    f
}

/// A guest CPU's replayed history: its vCPU, the epochs, and pages of
/// events (host TSC, tag).
struct Scenario {
    cpu: u32,
    vcpu: u32,
    timeline: VcpuTimeline,
    params: Vec<TscParams>,
    /// Pages; each event is (host TSC, epoch index it happened in).
    pages: Vec<Vec<(u64, usize)>>,
}

fn change(t: &mut VcpuTimeline, at: u64, params: TscParams, last_exit: u64) {
    t.offset_change(OffsetChange {
        new_start: at,
        params,
        old_end: Some(last_exit),
    })
    .unwrap();
}

fn scenarios() -> Vec<Scenario> {
    let mut out = Vec::new();
    // Forward jumps (the guest or VMM writing its TSC forwards twice), and
    // one event in the gap the jump leaves (outside every epoch).
    let p = [5_000, 3_005_000, 10_005_000].map(TscParams::unscaled);
    let mut t = VcpuTimeline::default();
    t.bootstrap(p[0]).unwrap();
    change(&mut t, BASE + 100_000, p[1], BASE + 99_000);
    change(&mut t, BASE + 200_000, p[2], BASE + 199_000);
    out.push(Scenario {
        cpu: 0,
        vcpu: 0,
        timeline: t,
        params: p.to_vec(),
        pages: vec![
            vec![
                (BASE + 10_000, 0),
                (BASE + 50_000, 0),
                (BASE + 98_000, 0),
                (BASE + 99_500, 0),
            ],
            vec![
                (BASE + 100_500, 1),
                (BASE + 150_000, 1),
                (BASE + 200_100, 2),
            ],
            vec![(BASE + 300_000, 2), (BASE + 400_000, 2)],
        ],
    });
    // The 2012 case: the guest writes its TSC back 60 000 ticks; epochs
    // overlap in guest time and events of both fall in the overlap.
    let a = 10_000_000u64;
    let p = [TscParams::unscaled(a), TscParams::unscaled(a - 160_000)];
    let mut t = VcpuTimeline::default();
    t.offset_change(OffsetChange {
        new_start: BASE,
        params: p[0],
        old_end: None,
    })
    .unwrap();
    change(&mut t, BASE + 100_000, p[1], BASE + 99_900);
    out.push(Scenario {
        cpu: 1,
        vcpu: 1,
        timeline: t,
        params: p.to_vec(),
        pages: vec![
            vec![(BASE + 20_000, 0), (BASE + 70_000, 0), (BASE + 90_000, 0)],
            // Guest TSC back below the last event's: a new page.
            vec![
                (BASE + 110_000, 1),
                (BASE + 150_000, 1),
                (BASE + 240_000, 1),
            ],
            vec![(BASE + 300_000, 1)],
        ],
    });
    // A hot-plugged vCPU with a sparse id (5) running guest CPU 2, created
    // late with the VM's current offset.
    let p = [TscParams::unscaled(a)];
    let mut t = VcpuTimeline::default();
    t.offset_change(OffsetChange {
        new_start: BASE + 250_000,
        params: p[0],
        old_end: None,
    })
    .unwrap();
    out.push(Scenario {
        cpu: 2,
        vcpu: 5,
        timeline: t,
        params: p.to_vec(),
        pages: vec![vec![(BASE + 260_000, 0), (BASE + 350_000, 0)]],
    });
    // Scaled vCPUs: Intel (48 fraction bits, 1.5x) and AMD (32, 1.25x).
    for (cpu, vcpu, params) in [
        (3, 6, TscParams::new(777, 3 << 47, 48).unwrap()),
        (4, 7, TscParams::new(1 << 20, 5 << 30, 32).unwrap()),
    ] {
        let mut t = VcpuTimeline::default();
        t.bootstrap(params).unwrap();
        out.push(Scenario {
            cpu,
            vcpu,
            timeline: t,
            params: vec![params],
            pages: vec![vec![
                (BASE + 30_000, 0),
                (BASE + 130_000, 0),
                (BASE + 330_001, 0),
            ]],
        });
    }
    out
}

/// Synthetic guest pages of one scenario, and (tag -> host TSC our
/// timeline gives) for its events.
fn guest_pages(s: &Scenario, layout: PageLayout) -> (Vec<Vec<u8>>, Vec<(String, u64)>) {
    let mut cursor = StreamCursor::default();
    let (mut pages, mut expected) = (Vec::new(), Vec::new());
    for (p, page) in s.pages.iter().enumerate() {
        let mut b = PageBuilder::new(layout);
        for (i, &(host, epoch)) in page.iter().enumerate() {
            let guest = s.params[epoch].guest_from_host(host);
            let tag = format!("g{}-{p}-{i}", s.cpu);
            assert!(
                b.push(guest, &print_payload(100 + s.cpu as i32, &tag))
                    .unwrap()
            );
            let ours = s.timeline.assign(&mut cursor, guest).unwrap().host;
            expected.push((tag, ours));
        }
        pages.push(b.finish().to_vec());
    }
    (pages, expected)
}

fn hello(cpus: u32) -> Hello {
    Hello {
        version: tsc_userspace::wire::VERSION,
        agent_name: "agent".into(),
        hostname: "guest".into(),
        kernel_release: "6.1.0".into(),
        trace_clock: "x86-tsc".into(),
        page_size: 4096,
        cpus: (0..cpus).map(|cpu| CpuApic { cpu, apic_id: cpu }).collect(),
        header_page: text("header_page"),
        header_event: text("header_event"),
        events: vec![EventFormat {
            system: "ftrace".into(),
            name: "print".into(),
            id: 5,
            format: print_format(),
        }],
        samples: Vec::new(),
    }
}

fn host_stream() -> StreamMeta {
    StreamMeta {
        page_size: 4096,
        header_page: text("header_page"),
        header_event: text("header_event"),
        formats: vec![("ftrace".into(), print_format())],
        cpus: 2,
        uname: "Linux host 6.18 x86_64".into(),
        ..StreamMeta::default()
    }
}

/// Records the scenarios through a [`Recorder`]; returns the expected
/// host TSC of every tagged event (host events included).
fn record(dir: &Path, clock: Option<Tsc2Nsec>) -> HashMap<String, u64> {
    let layout = PageLayout::parse(&text("header_page")).unwrap();
    let mut rec = Recorder::create(dir, false).unwrap();
    rec.host_started(host_stream());
    rec.host_cmdlines("100 guestish\n".into());
    if let Some(c) = clock {
        rec.set_clock(c, 0);
    }
    let mut expected = HashMap::new();
    let mut b = PageBuilder::new(layout);
    for (i, h) in [BASE + 5_000, BASE + 105_000, BASE + 255_000]
        .into_iter()
        .enumerate()
    {
        let tag = format!("host-{i}");
        b.push(h, &print_payload(1, &tag)).unwrap();
        expected.insert(tag, h);
    }
    rec.host_page(0, &b.finish());
    let scenarios = scenarios();
    let binding = GuestBinding {
        vm_pid: Some(VM_PID),
        vm_name: "vm".into(),
        cpus: scenarios
            .iter()
            .map(|s| GuestCpuMeta {
                cpu: s.cpu,
                vcpu_id: Some(s.vcpu),
                tid: 5000 + s.vcpu,
            })
            .collect(),
    };
    rec.guest_connected(1, &hello(scenarios.len() as u32), binding);
    for s in &scenarios {
        let (pages, exp) = guest_pages(s, layout);
        for p in pages {
            rec.guest_page(1, s.cpu, &p);
        }
        expected.extend(exp);
        rec.vcpu_epochs(VM_PID, s.vcpu, s.timeline.epochs());
    }
    let summary = rec.finish().unwrap();
    assert_eq!(summary.guests.len(), 1);
    // CPU 1 (overlap) and 3, 4 (scaled) cannot be samples; 0 and 2 are.
    assert_eq!(summary.guests[0].rewritten_cpus, vec![1, 3, 4]);
    expected
}

/// `tag -> timestamp` from `trace-cmd report -t` lines of print events.
fn report_times(report: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for line in report.lines() {
        let Some(tag) = line.split_whitespace().last() else {
            continue;
        };
        if !(tag.starts_with('g') || tag.starts_with("host-")) || !line.contains("print:") {
            continue;
        }
        // `COMM-PID [CPU] TS: print: ...`; raw TSC counts follow the
        // bracket without a space.
        let ts = line
            .split_once(']')
            .and_then(|(_, rest)| rest.trim_start().split_once(':'))
            .and_then(|(w, _)| {
                let (s, ns) = w.split_once('.').unwrap_or((w, ""));
                let s: u64 = s.parse().ok()?;
                if ns.is_empty() {
                    return Some(s);
                }
                Some(s * 1_000_000_000 + ns.parse::<u64>().ok()?)
            })
            .unwrap_or_else(|| panic!("no time stamp in {line}"));
        out.push((tag.to_string(), ts));
    }
    out
}

#[test]
fn trace_cmd_places_every_guest_event_where_the_timeline_does() {
    if !ready("trace_cmd_places_every_guest_event_where_the_timeline_does") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let expected = record(dir.path(), None);
    let report = common::trace_cmd(
        &["report", "-t", "-i", "host.dat", "-i", "vm-agent.dat"],
        dir.path(),
    );
    let got = report_times(&report);
    assert_eq!(
        got.len(),
        expected.len(),
        "every event listed once:\n{report}"
    );
    for (tag, ts) in &got {
        assert_eq!(Some(ts), expected.get(tag), "{tag}:\n{report}");
    }
    // Merged in host time order.
    assert!(got.windows(2).all(|w| w[0].1 <= w[1].1), "{report}");
}

#[test]
fn tsc2nsec_gives_seconds_by_the_readers_own_multiply() {
    if !ready("tsc2nsec_gives_seconds_by_the_readers_own_multiply") {
        return;
    }
    let clock = Tsc2Nsec {
        mult: 1_431_655_765, // 1/3 ns per tick (3 GHz), shift 32
        shift: 32,
        offset: 0,
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = record(dir.path(), Some(clock));
    let report = common::trace_cmd(
        &["report", "-t", "-i", "host.dat", "-i", "vm-agent.dat"],
        dir.path(),
    );
    let got = report_times(&report);
    assert_eq!(got.len(), expected.len(), "{report}");
    for (tag, ts) in got {
        assert_eq!(ts, clock.ns(expected[&tag]), "{tag}:\n{report}");
    }
}

#[test]
fn only_first_and_last_offsets_place_some_events_wrong() {
    if !ready("only_first_and_last_offsets_place_some_events_wrong") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let expected = record(dir.path(), None);
    // CPU 0 (forward jumps) again, with trace-cmd tsync's two samples: the
    // offsets at the start and at the end.
    let layout = PageLayout::parse(&text("header_page")).unwrap();
    let s = &scenarios()[0];
    let (pages, _) = guest_pages(s, layout);
    let first = s.params[0].offset().wrapping_neg() as i64;
    let last = s.params[2].offset().wrapping_neg() as i64;
    let dat = DatFile {
        page_size: 4096,
        formats: Formats {
            header_page: text("header_page"),
            header_event: text("header_event"),
            ftrace: vec![print_format()],
            systems: Vec::new(),
        },
        cmdlines: String::new(),
        clock: "x86-tsc".into(),
        options: vec![
            DatOption::TraceClock("[x86-tsc]".into()),
            DatOption::CpuCount(1),
            DatOption::TraceId(99),
            DatOption::TimeShift {
                peer_trace_id: 0,
                flags: 0,
                cpus: vec![TimeShiftCpu {
                    samples: vec![
                        TimeShiftSample::unscaled(0, first),
                        TimeShiftSample::unscaled((BASE + 400_000) as i64, last),
                    ],
                }],
            },
        ],
        cpus: vec![CpuData::Pages(pages.into_iter().map(Into::into).collect())],
    };
    dat.write_to(&mut fs::File::create(dir.path().join("tsync.dat")).unwrap())
        .unwrap();
    let report = common::trace_cmd(&["report", "-t", "-i", "tsync.dat"], dir.path());
    let got = report_times(&report);
    assert_eq!(got.len(), 9, "{report}");
    let wrong = got.iter().filter(|(tag, ts)| expected[tag] != *ts).count();
    assert!(wrong >= 4, "only {wrong} placed wrong:\n{report}");
    // The events of the first epoch are right: the samples hold its offset.
    assert_eq!(got[0].1, expected["g0-0-0"]);
}

#[test]
fn dump_shows_the_options_and_check_events_passes() {
    if !ready("dump_shows_the_options_and_check_events_passes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    record(dir.path(), None);
    for file in ["host.dat", "vm-agent.dat"] {
        common::trace_cmd(&["report", "--check-events", "-i", file], dir.path());
    }
    let host = common::trace_cmd(&["dump", "--options", "-i", "host.dat"], dir.path());
    let guest = common::trace_cmd(&["dump", "--options", "-i", "vm-agent.dat"], dir.path());
    for want in ["TRACECLOCK", "UNAME", "CPUCOUNT", "TRACEID", "GUEST"] {
        assert!(host.contains(want), "{want} missing in:\n{host}");
    }
    // The GUEST option names the guest, its vCPU threads per guest CPU.
    assert!(host.contains("vm-agent"), "{host}");
    assert!(host.contains("5005"), "the sparse vCPU's thread: {host}");
    for want in ["TimeShift", "TRACEID", "CPUCOUNT"] {
        assert!(guest.contains(want), "{want} missing in:\n{guest}");
    }
    // The guest's TIME_SHIFT names the host's trace id.
    let host_id = option_value(&host, "TRACEID");
    assert!(
        guest.contains(&host_id),
        "host id {host_id} not in:\n{guest}"
    );
}

/// The first number after `NAME` in `dump --options` output.
fn option_value(dump: &str, name: &str) -> String {
    let at = dump
        .find(name)
        .unwrap_or_else(|| panic!("{name} in {dump}"));
    dump[at..]
        .split(|c: char| !c.is_ascii_hexdigit() && c != 'x')
        .find(|w| w.len() > 3)
        .unwrap_or_else(|| panic!("a value after {name} in {dump}"))
        .to_string()
}
