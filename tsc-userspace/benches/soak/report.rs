//! The soak's table (a row per sample) and its verdict.

use super::{Outcome, Sample};

const MB: f64 = 1024.0;

/// The table's header.
pub fn header() -> String {
    format!(
        "{:>6} {:>9} {:>5} {:>9} {:>5} {:>9} {:>5} {:>7} {:>4} {:>11} {:>11} {:>7} {:>7} {:>11} {:>11} {:>4}",
        "min",
        "sessRSS",
        "fds",
        "agtA RSS",
        "fds",
        "agtB RSS",
        "fds",
        "inst/all",
        "pins",
        "in",
        "out",
        "lost",
        "late",
        "sent",
        "seen",
        "dup"
    )
}

/// One sample as a row (RSS in MB; in/out/lost/late are the session's own
/// counters; sent/seen/dup the markers).
pub fn row(s: &Sample) -> String {
    let get = |k: &str| s.status.get(k).copied().unwrap_or(0);
    format!(
        "{:>6.1} {:>9.2} {:>5} {:>9.2} {:>5} {:>9.2} {:>5} {:>7} {:>4} {:>11} {:>11} {:>7} {:>7} {:>11} {:>11} {:>4}",
        s.at.as_secs_f64() / 60.0,
        s.session.rss_kb as f64 / MB,
        s.session.fds,
        s.agent_a.rss_kb as f64 / MB,
        s.agent_a.fds,
        s.agent_b.rss_kb as f64 / MB,
        s.agent_b.fds,
        format!("{}/{}", s.instances, s.instances_all),
        s.pins,
        get("guest_events") + get("host_events"),
        get("emitted"),
        get("guest_lost") + get("host_lost"),
        get("late"),
        s.sent,
        s.seen,
        s.duplicates
    )
}

/// Session RSS growth after warm-up: the last sample's less the first
/// taken at or after one minute (KiB).
pub fn rss_growth_kb(o: &Outcome) -> i64 {
    let warm = o
        .samples
        .iter()
        .find(|s| s.at.as_secs() >= 60)
        .unwrap_or(&o.start);
    let last = o.samples.last().unwrap_or(&o.end);
    last.session.rss_kb as i64 - warm.session.rss_kb as i64
}

/// Markers missing beyond what the session reported lost (cut windows
/// apart): the silent losses.
pub fn unexplained(o: &Outcome) -> u64 {
    let lost = o.ended.status.get("guest_lost").copied().unwrap_or(0);
    let outside = o.a.missing.events - o.a.missing.in_windows + o.b.missing.events;
    outside.saturating_sub(lost)
}

/// The closing lines.
pub fn summary(o: &Outcome) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!(
        "churn: {} VMs created, {} destroyed, {} vCPUs hot-plugged, {} offsets set, {} IA32_TSC writes, {} failures",
        o.churn.created,
        o.churn.destroyed,
        o.churn.vcpus_plugged,
        o.churn.offsets_set,
        o.churn.msr_writes,
        o.churn.failures
    ));
    line(format!(
        "agents: soakb replaced {} times; soaka's connection cut {} times, {} reconnections; hostile peers: {} connections, {} closed by the session, {} still held at the end, {} refused",
        o.restarts,
        o.cuts,
        o.reconnects,
        o.hostile.connections,
        o.hostile.closed_by_session,
        o.hostile.held_at_end,
        o.hostile.refused
    ));
    line(format!(
        "session RSS growth after warm-up (1 min to end): {:+.2} MB",
        rss_growth_kb(o) as f64 / MB
    ));
    line(format!(
        "start -> end (settled): session fds {} -> {}, agent A fds {} -> {}, our instances {} -> {}, pins {} -> {}; after exit: {} instances, {} pins left",
        o.start.session.fds,
        o.end.session.fds,
        o.start.agent_a.fds,
        o.end.agent_a.fds,
        o.start.instances,
        o.end.instances,
        o.start.pins,
        o.end.pins,
        o.instances_left,
        o.pins_left
    ));
    if !o.session_fd_growth.is_empty() {
        line(format!(
            "  the session's fds opened and not closed: {:?}",
            o.session_fd_growth
        ));
    }
    for (name, d) in [("soaka", &o.a), ("soakb", &o.b)] {
        line(format!(
            "{name}: {} markers sent, {} out, missing {} in {} gaps ({} within cut windows), {} failed writes",
            d.sent, d.seen, d.missing.events, d.missing.gaps, d.missing.in_windows, d.failed_writes
        ));
        if !d.gaps.is_empty() {
            line(format!(
                "  {name}: first gaps {:?}; its feed stood at {:?} at each cut/restart",
                d.gaps, d.churned_at
            ));
        }
    }
    line(format!(
        "duplicates {}, phantoms {}; the session reported {} guest events lost; unexplained missing {}",
        o.duplicates,
        o.phantoms,
        o.ended.status.get("guest_lost").copied().unwrap_or(0),
        unexplained(o)
    ));
    line(format!(
        "session exit: {}; done line {:?}",
        if o.ended.success { "ok" } else { "FAILED" },
        o.ended.done
    ));
    out
}
