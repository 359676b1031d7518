//! Golden tests of both writers on real format files (copied from this
//! machine's `/sys/kernel/tracing/events`) and hand-built payloads.

use std::{
    io::{self, Write},
    sync::Arc,
};

use bytes::Bytes;

use super::*;
use crate::{
    Flags,
    merge::{EventData, MergeItem, SourceId, SourceInfo, SourceKind, Sources},
    tracefs::{EventFormat, FormatSet},
};

/// The integration tests' `SharedBuf`: one definition for both.
#[allow(dead_code)]
#[path = "../../tests/common/shared_buf.rs"]
mod shared_buf;
use shared_buf::SharedBuf;

const KVM_EXIT: &str = include_str!("testdata/kvm_exit.format");
const SCHED_SWITCH: &str = include_str!("testdata/sched_switch.format");
const SCHED_WAKEUP: &str = include_str!("testdata/sched_wakeup.format");
const EXEC: &str = include_str!("testdata/sched_process_exec.format");
const PRINT: &str = include_str!("testdata/print.format");
const BPRINT: &str = include_str!("testdata/bprint.format");
const WRITE: &str = include_str!("testdata/sys_enter_write.format");

/// Builds a record payload of a format, field by field.
struct Rec<'a> {
    format: &'a EventFormat,
    p: Vec<u8>,
}

impl<'a> Rec<'a> {
    fn new(set: &'a FormatSet, name: &str, pid: i32) -> Self {
        let format = set.iter().find(|f| f.name == name).expect("format");
        let end = format
            .fields
            .iter()
            .map(|f| f.decl.offset + f.decl.size)
            .max()
            .unwrap_or(8);
        let mut rec = Self {
            format,
            p: vec![0; end.next_multiple_of(4)],
        };
        rec.p[..2].copy_from_slice(&format.id.to_le_bytes());
        rec.int("common_pid", pid as u64)
    }

    fn int(mut self, name: &str, v: u64) -> Self {
        let d = &self.format.field(name).expect("field").decl;
        let bytes = v.to_le_bytes();
        self.p[d.offset..d.offset + d.size].copy_from_slice(&bytes[..d.size]);
        self
    }

    fn str(mut self, name: &str, s: &str) -> Self {
        let d = &self.format.field(name).expect("field").decl;
        self.p[d.offset..d.offset + s.len()].copy_from_slice(s.as_bytes());
        self
    }

    /// A `__data_loc` string, appended at the end.
    fn data_loc(mut self, name: &str, s: &str) -> Self {
        let at = self.p.len() as u32;
        self.p.extend_from_slice(s.as_bytes());
        self.p.push(0);
        let word = at | ((s.len() as u32 + 1) << 16);
        self.int(name, u64::from(word))
    }

    /// Bytes for a trailing `name[]` field.
    fn tail(mut self, bytes: &[u8]) -> Self {
        self.p.extend_from_slice(bytes);
        self
    }

    fn data(self) -> EventData {
        EventData::from_bytes(Bytes::from(self.p))
    }
}

fn set(texts: &[(&str, &str)]) -> Arc<FormatSet> {
    let mut set = FormatSet::new();
    for (system, text) in texts {
        set.insert_text(system, text).expect("real format parses");
    }
    Arc::new(set)
}

struct Fixture {
    sources: Sources,
    host: SourceId,
    guest: SourceId,
    gone: SourceId,
    items: Vec<MergeItem>,
}

/// A host and a guest with real formats, and one event of each kind the
/// writers treat differently.
fn fixture() -> Fixture {
    let host_set = set(&[("kvm", KVM_EXIT), ("ftrace", PRINT), ("syscalls", WRITE)]);
    let guest_set = set(&[
        ("sched", SCHED_SWITCH),
        ("sched", SCHED_WAKEUP),
        ("sched", EXEC),
        ("ftrace", BPRINT),
    ]);
    let mut sources = Sources::new();
    let info = |kind, formats| SourceInfo {
        kind,
        name: "test".into(),
        formats,
        kernel_release: None,
    };
    let host = sources
        .add(info(SourceKind::Host, host_set.clone()))
        .expect("id");
    let guest_kind = SourceKind::Guest {
        vm_name: "vm1".into(),
        vm_pid: 4242,
    };
    let guest = sources
        .add(info(guest_kind, guest_set.clone()))
        .expect("id");
    let gone = sources
        .add(info(SourceKind::Host, Arc::new(FormatSet::new())))
        .expect("id");
    sources.remove(gone);
    sources.set_comms(host, [(1234, "qemu-system-x86")]);
    sources.set_comms(guest, [(15, "kworker/0:1"), (77, "sh")]);

    let g = |cpu, host_tsc, guest_tsc, flags, data| MergeItem {
        host_tsc,
        source: guest,
        cpu,
        vcpu: Some(cpu + 4),
        guest_tsc: Some(guest_tsc),
        epoch: Some(2),
        flags,
        data,
    };
    let h = |cpu, tsc, data| MergeItem::host(host, cpu, tsc, data);
    let hs = &host_set;
    let gs = &guest_set;
    let items = vec![
        h(
            1,
            3_000_000_000,
            Rec::new(hs, "kvm_exit", 1234)
                .int("exit_reason", 30)
                .int("guest_rip", 0xffff_ffff_8100_1234)
                .int("isa", 1)
                .int("info1", 0x3f8)
                .int("vcpu_id", 4)
                .data(),
        ),
        g(
            0,
            3_000_000_750,
            1_000_750,
            Flags::NONE,
            Rec::new(gs, "sched_switch", 15)
                .str("prev_comm", "kworker/0:1")
                .int("prev_pid", 15)
                .int("prev_prio", 120)
                .int("prev_state", 1)
                .str("next_comm", "swapper/0")
                .int("next_prio", 120)
                .data(),
        ),
        g(
            1,
            3_000_001_500,
            1_001_500,
            Flags::RESOLVED_BY_ORDER | Flags::OFFSET_NOT_APPLIED,
            Rec::new(gs, "sched_process_exec", 77)
                .data_loc("filename", "/bin/true")
                .int("pid", 77)
                .int("old_pid", 77)
                .data(),
        ),
        h(
            0,
            3_000_003_000,
            Rec::new(hs, "print", 99)
                .int("ip", 0xffff_ffff_8123_4567)
                .tail(b"tab\there \"quoted\" \\ \xff\n\0\0\0")
                .data(),
        ),
        h(
            0,
            3_000_003_300,
            Rec::new(hs, "sys_enter_write", 1234)
                .int("__syscall_nr", 1)
                .int("fd", 1)
                .int("buf", 0x7ffd_1234_5678)
                .int("count", 4096)
                .data(),
        ),
        g(
            1,
            3_000_003_600,
            1_003_600,
            Flags::NONE,
            Rec::new(gs, "bprint", 0)
                .int("ip", 0xffff_ffff_8100_0000)
                .int("fmt", 0xffff_ffff_8200_0000)
                .tail(&[1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff])
                .data(),
        ),
        // Unknown id: raw id and length.
        h(
            1,
            3_000_004_000,
            EventData::from_bytes(Bytes::from_static(&[
                0x39, 0x30, 0, 0, 7, 0, 0, 0, 1, 2, 3, 4,
            ])),
        ),
        // A record too short for its fields.
        h(
            1,
            3_000_004_100,
            EventData::from_bytes(Bytes::from(Rec::new(hs, "kvm_exit", 1234).p[..16].to_vec())),
        ),
        // A source removed before its item was written.
        MergeItem::host(gone, 3, 3_000_004_200, EventData::default()),
        // Late: earlier than the previous line.
        g(
            0,
            3_000_002_000,
            1_002_000,
            Flags::LATE | Flags::OUTSIDE_EPOCH,
            Rec::new(gs, "sched_wakeup", 15)
                .str("comm", "sh")
                .int("pid", 77)
                .int("prio", 120)
                .int("target_cpu", 1)
                .data(),
        ),
    ];
    Fixture {
        sources,
        host,
        guest,
        gone,
        items,
    }
}

/// 3 GHz: a third of a nanosecond per tick.
fn clock(tsc: u64) -> u64 {
    tsc / 3
}

fn render(format: OutputFormat, mode: ClockMode) -> String {
    let f = fixture();
    let ctx = WriteContext {
        sources: &f.sources,
        clock: &clock,
        boottime: None,
    };
    let out = SharedBuf::default();
    let mut w = writer(format, mode, FlushPolicy::Batch, out.clone());
    for item in &f.items {
        w.write(&ctx, item).expect("write to memory");
    }
    w.flush().expect("flush to memory");
    out.text()
}

/// Checks `actual` against `testdata/NAME`; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/output/testdata")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
    }
    let expected = std::fs::read_to_string(&path).expect("golden file");
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

#[test]
fn text_golden_ns() {
    golden("golden_ns.txt", &render(OutputFormat::Text, ClockMode::Ns));
}

#[test]
fn text_golden_tsc() {
    golden(
        "golden_tsc.txt",
        &render(OutputFormat::Text, ClockMode::Tsc),
    );
}

#[test]
fn json_golden() {
    golden("golden.jsonl", &render(OutputFormat::Json, ClockMode::Ns));
}

#[test]
fn text_lines_say_what_the_spec_says() {
    let text = render(OutputFormat::Text, ClockMode::Ns);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), fixture().items.len(), "one line per event");
    assert!(lines[0].starts_with("host:"));
    assert!(lines[0].contains("qemu-system-x86-1234 [001] 1.000000000: (+0) kvm:kvm_exit: "));
    assert!(lines[0].contains(" guest_rip=18446744071578849844 "));
    assert!(lines[1].starts_with("vm1:"));
    assert!(lines[1].contains("kworker/0:1-15 [000] 1.000000250: (+250) sched:sched_switch: "));
    assert!(lines[1].contains(" prev_comm=kworker/0:1 prev_pid=15 "));
    assert!(
        lines[2].contains("filename=/bin/true")
            && lines[2].ends_with(" [resolved-by-order,offset-not-applied]")
    );
    assert!(
        lines[3].contains(r#"buf=tab\there "quoted" \\ \xff\n"#),
        "{}",
        lines[3]
    );
    assert!(lines[4].contains(" buf=0x7ffd12345678 "));
    assert!(lines[5].contains("<idle>-0 ") && lines[5].ends_with("buf={1,4294967294}"));
    assert!(
        lines[6].ends_with("<...>-? [001] 1.000001333: (+133) <unknown id 12345>: len=12"),
        "{}",
        lines[6]
    );
    assert!(lines[7].contains("requests=<out of record>"));
    assert!(lines[8].starts_with("?2:"));
    assert!(lines[9].contains(": (-734) ") && lines[9].ends_with(" [outside-epoch,late]"));
}

#[test]
fn json_lines_carry_every_required_key() {
    let f = fixture();
    let text = render(OutputFormat::Json, ClockMode::Ns);
    let objs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON"))
        .collect();
    assert_eq!(objs.len(), f.items.len());
    for (o, item) in objs.iter().zip(&f.items) {
        for key in [
            "source",
            "vm",
            "vm_pid",
            "cpu",
            "vcpu",
            "event",
            "host_tsc",
            "ns",
            "guest_tsc",
            "pid",
            "comm",
            "fields",
            "flags",
            "epoch",
        ] {
            assert!(o.get(key).is_some(), "{key} missing in {o}");
        }
        assert_eq!(o["host_tsc"], item.host_tsc);
        assert_eq!(o["ns"], item.host_tsc / 3);
        let guest = item.source == f.guest;
        assert_eq!(
            o["source"],
            if guest {
                "guest"
            } else if item.source == f.host {
                "host"
            } else {
                "unknown"
            }
        );
        assert_eq!(o["vm"].is_null(), !guest);
        assert_eq!(o["guest_tsc"].as_u64(), item.guest_tsc);
        let flags: Vec<&str> = item.flags.names().collect();
        assert_eq!(o["flags"], serde_json::json!(flags));
    }
    let exit = &objs[0];
    assert_eq!(exit["event"], "kvm:kvm_exit");
    assert_eq!(exit["comm"], "qemu-system-x86");
    assert_eq!(exit["fields"]["guest_rip"], 0xffff_ffff_8100_1234u64);
    let switch = &objs[1];
    assert_eq!(
        (switch["vm"].as_str(), switch["vm_pid"].as_u64()),
        (Some("vm1"), Some(4242))
    );
    assert_eq!(
        (switch["vcpu"].as_u64(), switch["epoch"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(switch["fields"]["prev_state"], 1);
    assert_eq!(switch["fields"]["next_comm"], "swapper/0");
    assert_eq!(
        objs[3]["fields"]["buf"],
        "tab\there \"quoted\" \\ \u{fffd}\n"
    );
    assert_eq!(objs[4]["fields"]["buf"], "0x7ffd12345678");
    assert_eq!(
        objs[5]["fields"]["buf"],
        serde_json::json!([1, 4294967294u32])
    );
    let unknown = &objs[6];
    assert!(unknown["event"].is_null() && unknown["fields"].is_null());
    assert_eq!(
        (unknown["id"].as_u64(), unknown["payload_len"].as_u64()),
        (Some(12345), Some(12))
    );
    assert!(objs[7]["fields"]["requests"].is_null());
    assert!(objs[8]["id"].is_null());
    assert_eq!(f.gone.0, 2);
}

#[test]
fn every_event_policy_reaches_the_writer_at_once() {
    let f = fixture();
    let ctx = WriteContext {
        sources: &f.sources,
        clock: &clock,
        boottime: None,
    };
    let mut every = TextWriter::new(Vec::new(), ClockMode::Tsc, FlushPolicy::EveryEvent);
    let mut batch = TextWriter::new(Vec::new(), ClockMode::Tsc, FlushPolicy::Batch);
    every.write(&ctx, &f.items[0]).expect("write");
    batch.write(&ctx, &f.items[0]).expect("write");
    assert_eq!(every.get_ref().iter().filter(|&&b| b == b'\n').count(), 1);
    assert!(batch.get_ref().is_empty(), "a batch waits for flush");
    batch.flush().expect("flush");
    assert_eq!(batch.get_ref(), every.get_ref());
}

#[test]
fn a_batch_is_written_out_when_large() {
    let f = fixture();
    let ctx = WriteContext {
        sources: &f.sources,
        clock: &clock,
        boottime: None,
    };
    let mut w = JsonWriter::new(Vec::new(), FlushPolicy::Batch);
    let mut n = 0;
    while w.get_ref().is_empty() {
        w.write(&ctx, &f.items[n % f.items.len()]).expect("write");
        n += 1;
        assert!(n < 10_000, "never written out");
    }
    assert!(w.get_ref().len() >= super::sink::Sink::<Vec<u8>>::BATCH_BYTES);
}

/// Fails every write once, then works.
struct FailOnce {
    failed: bool,
    out: Vec<u8>,
}

impl Write for FailOnce {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if !self.failed {
            self.failed = true;
            return Err(io::Error::other("disk full"));
        }
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failed_write_is_reported_and_not_repeated() {
    let f = fixture();
    let ctx = WriteContext {
        sources: &f.sources,
        clock: &clock,
        boottime: None,
    };
    let sink = FailOnce {
        failed: false,
        out: Vec::new(),
    };
    let mut w = TextWriter::new(sink, ClockMode::Tsc, FlushPolicy::EveryEvent);
    assert!(w.write(&ctx, &f.items[0]).is_err());
    w.write(&ctx, &f.items[1]).expect("second write");
    let text = String::from_utf8_lossy(&w.get_ref().out).into_owned();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("sched_switch"));
}
