//! KernelShark 2.2.1, under a virtual X server, opens a recording's
//! `host.dat -a GUEST.dat` and loads both streams: proven by the session
//! file it writes when it quits (`lastsession.json`, which names every
//! data stream it loaded and the CPUs it plotted), not by its exit code.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tsc_common::tsc::TscParams;
use tsc_userspace::{
    record::{Recorder, StreamMeta, meta::GuestCpuMeta, recorder::GuestBinding},
    timeline::VcpuTimeline,
    tracefs::{PageBuilder, PageLayout},
    wire::{CpuApic, EventFormat, Hello},
};

const TRACEFS: &str = "/sys/kernel/tracing/events";

/// Kills a child we started, by its pid, when the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn ready(test: &str) -> bool {
    if !common::privileged(test) {
        return false;
    }
    for tool in ["kernelshark", "Xvfb", "xdotool"] {
        common::require_tool(tool);
    }
    assert!(
        Path::new(TRACEFS).join("header_page").exists(),
        "tracefs is not mounted at {TRACEFS} (cargo xtask setup mounts it)"
    );
    true
}

fn text(rel: &str) -> String {
    let mut buf = vec![0u8; 1 << 16];
    let n = fs::File::open(Path::new(TRACEFS).join(rel))
        .unwrap()
        .read(&mut buf)
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn print(pid: i32, ts_tag: &str) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0..2].copy_from_slice(&5u16.to_le_bytes());
    p[4..8].copy_from_slice(&pid.to_le_bytes());
    p.extend_from_slice(ts_tag.as_bytes());
    p.push(0);
    p
}

/// A small recording: host CPUs 0-1 and a 2-CPU guest, 100 markers each,
/// the guest's vCPU 1 with an offset change half way.
fn recording(dir: &Path) -> String {
    let layout = PageLayout::parse(&text("header_page")).unwrap();
    let format = text("ftrace/print/format");
    let base = 1_000_000_000_000u64;
    let mut rec = Recorder::create(dir, false).unwrap();
    rec.host_started(StreamMeta {
        page_size: 4096,
        header_page: text("header_page"),
        header_event: text("header_event"),
        formats: vec![("ftrace".into(), format.clone())],
        cpus: 2,
        uname: "Linux host 6.18 x86_64".into(),
        ..StreamMeta::default()
    });
    for cpu in 0..2u32 {
        let mut b = PageBuilder::new(layout);
        for i in 0..100u64 {
            b.push(
                base + i * 10_000 + u64::from(cpu),
                &print(1, &format!("host {i}")),
            )
            .unwrap();
        }
        rec.host_page(cpu, &b.finish());
    }
    let hello = Hello {
        version: tsc_userspace::wire::VERSION,
        agent_name: "agent".into(),
        hostname: "guest".into(),
        kernel_release: "6.1.0".into(),
        trace_clock: "x86-tsc".into(),
        page_size: 4096,
        cpus: (0..2).map(|cpu| CpuApic { cpu, apic_id: cpu }).collect(),
        header_page: text("header_page"),
        header_event: text("header_event"),
        events: vec![EventFormat {
            system: "ftrace".into(),
            name: "print".into(),
            id: 5,
            format,
        }],
        samples: Vec::new(),
    };
    let binding = GuestBinding {
        vm_pid: Some(77),
        vm_name: "vm".into(),
        cpus: (0..2)
            .map(|cpu| GuestCpuMeta {
                cpu,
                vcpu_id: Some(cpu),
                tid: 9000 + cpu,
            })
            .collect(),
    };
    rec.guest_connected(1, &hello, binding);
    for cpu in 0..2u32 {
        let offset = 5_000_000 * u64::from(cpu + 1);
        let mut t = VcpuTimeline::default();
        t.bootstrap(TscParams::unscaled(offset)).unwrap();
        let mut b = PageBuilder::new(layout);
        for i in 0..100u64 {
            b.push(
                base + i * 10_000 + 5_000 + offset,
                &print(2, &format!("guest {i}")),
            )
            .unwrap();
        }
        rec.guest_page(1, cpu, &b.finish());
        rec.vcpu_epochs(77, cpu, t.epochs());
    }
    rec.finish().unwrap().guests[0].file.clone()
}

/// Starts Xvfb on a display it picks (`-displayfd`); returns it and the display.
fn xvfb() -> (Reaped, String) {
    let mut x = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(x.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Reaped(x), format!(":{}", line.trim()))
}

fn xdotool(display: &str, args: &[&str]) -> String {
    let out = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn kernelshark_loads_the_host_and_the_guest_stream() {
    if !ready("kernelshark_loads_the_host_and_the_guest_stream") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let guest = recording(&rec);
    // Its own cache directory: the session file lands there, and the root
    // warning dialog is turned off (the setting it writes when asked).
    let cache = dir.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    fs::write(cache.join("setting.ini"), "[General]\nnoRootWarn=true\n").unwrap();
    let (_x, display) = xvfb();
    let ks = Command::new("kernelshark")
        .arg("host.dat")
        .arg("-a")
        .arg(&guest)
        .current_dir(&rec)
        .env("DISPLAY", &display)
        .env("KS_USER_CACHE_DIR", &cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ks = Reaped(ks);
    let pid = ks.0.id();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let out = ks.0.stderr.take().unwrap();
        let stderr = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut s = stderr.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    let loading = [
        "Loading  \"host.dat\"".to_string(),
        format!("Loading  \"{guest}\""),
    ];
    wait_until("KernelShark loads both files", || {
        let s = stderr.lock().unwrap();
        loading.iter().all(|l| s.contains(l))
    });
    let window = xdotool(
        &display,
        &["search", "--onlyvisible", "--name", "^Kernel Shark$"],
    );
    assert!(!window.is_empty(), "a KernelShark window");
    // Quitting while it still builds its views leaves it hanging: wait
    // until it has done its work (its CPU time stops growing).
    let mut last = cpu_time(pid);
    let mut still = 0;
    wait_until("KernelShark idles", || {
        let now = cpu_time(pid);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        still >= 10
    });
    // Quit as a user would (Ctrl+Q): its destructor saves the session.
    xdotool(&display, &["windowfocus", "--sync", &window]);
    xdotool(&display, &["key", "--clearmodifiers", "ctrl+q"]);
    wait_until("KernelShark quits", || ks.0.try_wait().unwrap().is_some());
    reader.join().unwrap();
    let session: Value =
        serde_json::from_str(&fs::read_to_string(cache.join("lastsession.json")).unwrap()).unwrap();
    let streams = session["data streams"].as_array().unwrap();
    let files: Vec<&str> = streams
        .iter()
        .map(|s| s["data"]["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "{session}");
    assert!(files[0].ends_with("/host.dat"), "{files:?}");
    assert!(files[1].ends_with(&format!("/{guest}")), "{files:?}");
    for s in streams {
        assert_eq!(s["CPUPlots"], serde_json::json!([0, 1]), "{s}");
    }
    // Both streams on one host timeline: the guest's raw timestamps are
    // 5e6 and 10e6 ticks ahead (its vCPUs' offsets); shifted by its
    // TIME_SHIFT they fall among the host's (1e12 + 0..1e6; no TSC2NSEC
    // here, so KernelShark shows ticks).
    let range = &session["Model"]["range"];
    let (lo, hi) = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
    assert!(lo >= 999_999_000_000 && hi <= 1_000_002_000_000, "{range}");
}

/// Polls `done` every 100 ms for up to a minute.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out: {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// User plus system CPU ticks of a process (`/proc/PID/stat` fields 14, 15).
fn cpu_time(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}
