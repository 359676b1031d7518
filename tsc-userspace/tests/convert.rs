//! `tsc-tracer convert`, the real binary: exact values, stdin streaming,
//! errors, `--ns` against the kernel's clock, and `--vm` against a real VM.
mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Output, Stdio},
};

use tsc_userspace::{clock, vmm::Child};

const BINARY: &str = env!("CARGO_BIN_EXE_tsc-tracer");

fn convert(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BINARY)
        .arg("convert")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure, got {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn negative_and_hex_offsets_convert_exactly() {
    let out = convert(&["--offset", "-100", "0", "100", "0x10", "99"], None);
    assert_eq!(lines(&out), ["100", "200", "116", "199"]);
    // The same offset in two's complement hex; a guest TSC below the
    // offset's image wraps to the host TSC it really is.
    let out = convert(
        &["--offset=0xffffffffffffff9c", "18446744073709551615"],
        None,
    );
    assert_eq!(lines(&out), ["99"]);
    // Offsets at the ends of the signed range.
    let out = convert(&["--offset", "-9223372036854775808", "0"], None);
    assert_eq!(lines(&out), ["9223372036854775808"]);
    let out = convert(
        &["--offset", "9223372036854775807", "9223372036854775807"],
        None,
    );
    assert_eq!(lines(&out), ["0"]);
}

#[test]
fn scaled_conversion_rounds_up_to_the_first_reaching_host_tsc() {
    // 1.5x on VMX (48 frac bits): guest = host * 3 / 2 - 1000.
    let args = [
        "--offset",
        "-1000",
        "--ratio",
        "0x1800000000000",
        "--frac-bits",
        "48",
    ];
    let out = convert(&args, Some("2000\n2001\n2002\n0x7d3\n"));
    // 2001 and 2002 are skipped by the guest (host 2001 reads 2001, host
    // 2002 reads 2003): each rounds up to the host TSC that reaches it.
    assert_eq!(lines(&out), ["2000", "2001", "2002", "2002"]);
    // Half speed on SVM (32 frac bits): hosts 10 and 11 read 5; the first wins.
    let out = convert(
        &[
            "--offset",
            "0",
            "--ratio",
            "2147483648",
            "--frac-bits",
            "32",
            "5",
        ],
        None,
    );
    assert_eq!(lines(&out), ["10"]);
}

#[test]
fn stdin_streams_answers_before_input_ends() {
    let mut child = Command::new(BINARY)
        .args(["convert", "--offset", "-5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap());
    for (guest, host) in [("1", "6"), ("0x10", "21"), ("1000", "1005")] {
        writeln!(input, "{guest}").unwrap();
        input.flush().unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), host);
    }
    drop(input);
    assert!(child.wait().unwrap().success());
}

#[test]
fn bad_input_names_the_line_and_fails() {
    let out = convert(&["--offset", "0"], Some("1\n2\nzwei\n4\n"));
    let err = failure(&out);
    assert!(
        err.contains("stdin line 3") && err.contains("\"zwei\""),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n");
    let err = failure(&convert(&["--offset", "0", "7", "-3"], None));
    assert!(
        err.contains("argument 2") && err.contains("\"-3\""),
        "{err}"
    );
    let err = failure(&convert(&["--offset", "0", "18446744073709551616"], None));
    assert!(err.contains("not a TSC value"), "{err}");
}

#[test]
fn overflow_and_bad_parameters_are_errors() {
    // One guest tick per 2^63 host ticks: guest TSC 2 is past host 2^64 - 1.
    let err = failure(&convert(
        &["--offset", "0", "--ratio", "1", "--frac-bits", "63", "2"],
        None,
    ));
    assert!(err.contains("exceeds 2^64 - 1"), "{err}");
    let err = failure(&convert(
        &["--offset", "0", "--ratio", "0", "--frac-bits", "48", "1"],
        None,
    ));
    assert!(err.contains("ratio is 0"), "{err}");
    let err = failure(&convert(
        &["--offset", "0", "--ratio", "1", "--frac-bits", "64", "1"],
        None,
    ));
    assert!(err.contains("frac bits 64"), "{err}");
    let err = failure(&convert(&["--offset", "0", "--ratio", "5", "1"], None));
    assert!(err.contains("--frac-bits"), "{err}");
    let err = failure(&convert(
        &["--offset", "0", "--vm", "1", "--vcpu", "0", "1"],
        None,
    ));
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn ns_is_the_host_clock_monotonic_time_of_the_host_tsc() {
    let now = clock::sample_monotonic(16).unwrap();
    let guest = (now.tsc - 1000).to_string();
    let line = lines(&convert(&["--offset", "-1000", "--ns", &guest], None)).remove(0);
    let (host, ns) = line.split_once(' ').unwrap();
    assert_eq!(host.parse::<u64>().unwrap(), now.tsc);
    // A fresh calibration in another process agrees within a microsecond.
    let ns: u64 = ns.parse().unwrap();
    assert!(ns.abs_diff(now.ns) < 1_000, "{ns} vs {}", now.ns);
}

/// A real VM (a `tsc-tracer vmm` child): its guest's rdtsc readings,
/// converted with the live parameters `--vm` reads, fall inside the host
/// TSC bracket of the KVM_RUN that produced them (on PVM the offset is not
/// applied and reads 0; elsewhere it is applied and reads back).
#[test]
fn vm_parameters_convert_real_guest_readings_into_their_host_bracket() {
    if !common::privileged("convert --vm") {
        return;
    }
    let mut vmm = Child::spawn(BINARY).unwrap();
    vmm.vm().unwrap();
    vmm.vcpu(2).unwrap();
    vmm.offset(2, -(1 << 40)).unwrap();
    let run = vmm.rdtsc(2, 8).unwrap();
    let pid = vmm.pid().to_string();
    let readings: Vec<String> = run.guest_readings.iter().map(u64::to_string).collect();
    let mut args = vec!["--vm", &pid, "--vcpu", "2"];
    args.extend(readings.iter().map(String::as_str));
    let hosts: Vec<u64> = lines(&convert(&args, None))
        .iter()
        .map(|h| h.parse().unwrap())
        .collect();
    assert_eq!(hosts.len(), 8);
    // The child's line protocol carries the whole run's bracket.
    let bracket = run.host_before..=run.host_after;
    assert!(
        hosts.iter().all(|h| bracket.contains(h)),
        "{hosts:?} outside {bracket:?}"
    );
    assert!(hosts.is_sorted());
    let err = failure(&convert(&["--vm", &pid, "--vcpu", "9", "1"], None));
    assert!(
        err.contains("vcpu9") && err.contains("does not exist"),
        "{err}"
    );
}
