//! What the demo tells around the timeline (on stderr), and the check of
//! every reading's place that decides its exit status.

/// Writes a line of the story to stderr. A closed stderr (`2>&1 | head`)
/// ends the story quietly instead of panicking as `eprintln!` would.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use std::collections::HashMap;

use tsc_userspace::{
    Flags,
    demo::{Placed, Reading},
    session::Summary,
    vmm,
    wire::Endpoint,
};

use super::{Offset, VM_NAME};

/// Width the paragraphs are wrapped to.
const WIDTH: usize = 78;
/// Indentation of a labelled line's text.
const LABEL: usize = 14;

/// Before anything runs: what is about to happen.
pub fn intro(pid: u32, vcpus: u32, endpoint: &Endpoint, host_events: &[&str]) {
    let backend = if vmm::is_pvm() { "PVM" } else { "VMX/SVM" };
    say!("tsc-tracer demo: a guest's TSC readings and the host's kernel events on one timeline\n");
    line(
        "VM",
        &format!(
            "a real VM on /dev/kvm in this process (pid {pid}), {vcpus} vCPU(s); KVM backend: {backend}"
        ),
    );
    line(
        "guest",
        "a 28-byte program at CPL3 that reads the TSC (rdtsc) and stores each reading \
         to an unmapped address (gpa 0x300000 = 3145728), so every reading exits to the host as \
         KVM_EXIT_MMIO; a store of 0 to the next address says a round is done",
    );
    line(
        "agent",
        &format!(
            "sends each reading as a tsc_demo:rdtsc event stamped with the reading itself, \
             as a guest kernel's x86-tsc trace clock would, over the real agent protocol to {endpoint}"
        ),
    );
    line(
        "session",
        &format!(
            "binds the agent to the VM (--vm {pid}={VM_NAME}), converts each guest timestamp \
             with its vCPU's offset, merges with the host events {}",
            host_events.join(", ")
        ),
    );
    say!();
}

/// The offsets asked for and what KVM holds.
pub fn offsets(offsets: &[Offset]) {
    for o in offsets {
        let what = if o.readback == o.asked {
            "applied".to_owned()
        } else {
            format!("KVM reads back {}: not applied", o.readback)
        };
        line(
            &format!("vCPU {}", o.vcpu),
            &format!("asked KVM for TSC offset {}; {what}", o.asked),
        );
    }
    say!();
}

/// Just before the first line of the timeline.
pub fn timeline_header() {
    say!(
        "Timeline, in host time ({VM_NAME}: lines are the guest's, with its CPU; host: lines the host kernel's):\n"
    );
}

/// How the session placed the readings.
#[derive(Debug)]
pub struct Verdict {
    sent: usize,
    came_out: usize,
    duplicates: usize,
    inside: usize,
    inside_if_trusted: usize,
    flagged: usize,
    median_bracket: u64,
    interrupted: bool,
}

impl Verdict {
    /// Matches each placement to its reading by `seq`.
    pub fn new(
        readings: &[Reading],
        placed: &[Placed],
        offsets: &[Offset],
        interrupted: bool,
    ) -> Self {
        let by_seq: HashMap<u32, &Reading> = readings.iter().map(|r| (r.seq, r)).collect();
        let asked: HashMap<u32, i64> = offsets.iter().map(|o| (o.vcpu, o.asked)).collect();
        let mut seen = HashMap::new();
        let (mut inside, mut inside_if_trusted, mut flagged) = (0, 0, 0);
        for p in placed {
            *seen.entry(p.seq).or_insert(0usize) += 1;
            let Some(r) = by_seq.get(&p.seq) else {
                continue;
            };
            inside += usize::from(r.bracket.contains(p.host_tsc));
            let offset = asked.get(&r.vcpu).copied().unwrap_or_default();
            let trusted = r.guest_tsc.wrapping_sub(offset as u64);
            inside_if_trusted += usize::from(r.bracket.contains(trusted));
            flagged += usize::from(p.flags.contains(Flags::OFFSET_NOT_APPLIED));
        }
        let mut widths: Vec<u64> = readings
            .iter()
            .map(|r| r.bracket.after.saturating_sub(r.bracket.before))
            .collect();
        widths.sort_unstable();
        Self {
            sent: readings.len(),
            came_out: seen.keys().filter(|s| by_seq.contains_key(s)).count(),
            duplicates: seen.values().map(|n| n - 1).sum(),
            inside,
            inside_if_trusted,
            flagged,
            median_bracket: widths.get(widths.len() / 2).copied().unwrap_or_default(),
            interrupted,
        }
    }

    /// Every reading that came out did so once, inside its bracket; and
    /// all did, unless the demo was interrupted.
    pub fn passed(&self) -> bool {
        let all_out = self.interrupted || self.came_out == self.sent;
        all_out && self.duplicates == 0 && self.inside == self.came_out
    }
}

/// After the session ended: the check, the figures and what it all means.
pub fn outro(v: &Verdict, summary: &Summary, offsets: &[Offset], tsc_khz: u64) {
    say!("\nWhat happened\n");
    let once = if v.duplicates == 0 {
        "each once".to_owned()
    } else {
        format!("{} duplicated", v.duplicates)
    };
    line(
        "readings",
        &format!(
            "{} taken, {} came out of the session, {once}",
            v.sent, v.came_out
        ),
    );
    line(
        "placed",
        &format!(
            "{} of {} inside the host's rdtsc bracket around the KVM_RUN that took them \
             (median bracket {})",
            v.inside,
            v.came_out,
            duration(v.median_bracket, tsc_khz)
        ),
    );
    let shifts: Vec<String> = offsets
        .iter()
        .filter(|o| o.asked != o.readback)
        .map(|o| duration(o.readback.abs_diff(o.asked), tsc_khz))
        .collect();
    if !shifts.is_empty() {
        line(
            "if trusted",
            &format!(
                "{} of {} would have been, converted with the offsets KVM was asked for: \
                 off by {}",
                v.inside_if_trusted,
                v.came_out,
                shifts.join(" and ")
            ),
        );
    }
    line(
        "session",
        &format!(
            "{} guest and {} host events; {} flagged offset-not-applied; {} late, lost {} guest / {} host",
            summary.guest_events,
            summary.host_events,
            v.flagged,
            summary.late,
            summary.guest_lost,
            summary.host_lost
        ),
    );
    say!();
    paragraph(&explanation(offsets));
    if v.interrupted {
        say!("\n(interrupted: readings still in flight were not waited for)");
    }
    if !v.passed() {
        say!(
            "\ntsc-tracer demo: FAILED: not every reading came out once at the right host time \
             (see above); please report it with the output of `tsc-tracer doctor`"
        );
    }
}

fn explanation(offsets: &[Offset]) -> String {
    let asked: Vec<String> = offsets.iter().map(|o| o.asked.to_string()).collect();
    let asked = asked.join(" and ");
    let start = "A KVM guest reads the host's TSC plus a per-vCPU offset, so a guest's trace \
                 timestamps mean nothing on the host until each is converted with the offset \
                 its vCPU had when the event happened. tsc-tracer follows every offset change \
                 from the kernel (the kvm:kvm_write_tsc_offset lines) and converts each guest \
                 event as it arrives.";
    let middle = if offsets.iter().any(|o| o.asked != o.readback) {
        format!(
            "The demo asked KVM for offsets {asked} and the tracepoint reported exactly \
             that, but this host's KVM backend does not apply offsets: the guest read the \
             raw host TSC, and KVM reads 0 back. tsc-tracer checked the offset the vCPU \
             really holds instead of trusting the tracepoint, used it, and flagged the \
             guest's events offset-not-applied."
        )
    } else {
        format!(
            "The demo asked KVM for offsets {asked} and KVM applied them: the guest's \
             readings are the host TSC shifted by them, and tsc-tracer shifted them back."
        )
    };
    format!(
        "{start} {middle} That is why each {VM_NAME} reading sits inside its KVM_RUN, just \
         before the host's kvm:kvm_mmio whose val is the same number (the host trapping the \
         guest's store of it). To trace a real VM: `tsc-tracer host --vm PID` here, and \
         `tsc-tracer agent --connect tcp:HOST:7170` inside the guest."
    )
}

/// `label     text`, the text wrapped and indented.
fn line(label: &str, text: &str) {
    let lines = wrap(text, WIDTH - LABEL);
    for (i, l) in lines.iter().enumerate() {
        let head = if i == 0 { label } else { "" };
        say!("  {head:<width$}{l}", width = LABEL - 2);
    }
}

fn paragraph(text: &str) {
    for l in wrap(text, WIDTH) {
        say!("{l}");
    }
}

/// Greedy word wrap.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().map_or(0, |l| l.len());
        if last > 0 && last + 1 + word.len() > width {
            lines.push(String::new());
        }
        if let Some(l) = lines.last_mut() {
            if !l.is_empty() {
                l.push(' ');
            }
            l.push_str(word);
        }
    }
    lines
}

/// Host TSC ticks as a readable duration.
fn duration(ticks: u64, tsc_khz: u64) -> String {
    let ns = u128::from(ticks) * 1_000_000 / u128::from(tsc_khz.max(1));
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_words_whole_and_lines_short() {
        let lines = wrap("aaa bbb ccc ddd", 7);
        assert_eq!(lines, ["aaa bbb", "ccc ddd"]);
    }

    #[test]
    fn durations_pick_a_unit() {
        assert_eq!(duration(3_000, 3_000_000), "1.0 µs");
        assert_eq!(duration(123_456_789, 3_000_000), "41.2 ms");
    }
}
