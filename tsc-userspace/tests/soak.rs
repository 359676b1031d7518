//! The soak's short version: a minute of the churn the soak bench runs for
//! half an hour (`benches/soak`, whose code this includes), asserting
//! counts and leaks, not speed: every marker sent came out exactly once
//! (or within the loss the session reported), and the session's fds, our
//! tracefs instances and the session's bpffs pins are where they started,
//! and gone once it exits.

mod common;

#[allow(dead_code)]
#[path = "../benches/soak/soak.rs"]
mod soak;

use std::time::Duration;

use common::{Resource, take_turn};
use soak::tally::{Missing, Tally};

#[test]
fn tally_merges_ranges_and_finds_duplicates_and_holes() {
    let mut t = Tally::default();
    for seq in [0, 1, 2, 5, 4, 9, 3, 2] {
        t.insert(seq);
    }
    assert_eq!((t.seen, t.duplicates), (7, 1));
    assert_eq!(t.seen_in(0, 10), 7);
    assert_eq!(
        t.missing(0, 12, &[(6, 8)]),
        Missing {
            events: 5,
            gaps: 2,
            in_windows: 2
        }
    );
    assert_eq!(t.gaps(0, 12, 5), vec![(6, 9), (10, 12)]);
    assert_eq!(t.missing(0, 6, &[]).events, 0);
}

#[test]
fn a_minute_of_churn_loses_nothing_silently_and_leaks_nothing() {
    if !common::privileged("a_minute_of_churn_loses_nothing_silently_and_leaks_nothing") {
        return;
    }
    let _turn = take_turn(Resource::Tracing);
    let dir = tempfile::tempdir().unwrap();
    let config = soak::Config {
        duration: Duration::from_secs(60),
        sample_every: Duration::from_secs(20),
        // Counts, not speed: a rate any loaded machine keeps up with.
        rate: 4_000,
        vm_every: Duration::from_secs(2),
        restart_every: Duration::from_secs(15),
        cut_every: Duration::from_secs(15),
        hostile_every: Duration::from_secs(1),
        dir: dir.path().into(),
    };
    eprintln!("{}", soak::report::header());
    let o = soak::run(&config, |s| eprintln!("{}", soak::report::row(s)));
    let summary = soak::report::summary(&o);
    eprintln!("{summary}");
    let log = std::fs::read_to_string(dir.path().join("session.log")).unwrap_or_default();
    let why = format!("{summary}\nsession log:\n{log}");

    // Everything churned.
    assert!(
        o.churn.created >= 20 && o.churn.destroyed == o.churn.created,
        "{why}"
    );
    assert!(
        o.churn.vcpus_plugged > 0 && o.churn.offsets_set > 0 && o.churn.msr_writes > 0,
        "{why}"
    );
    assert_eq!(o.churn.failures, 0, "{why}");
    assert!(
        o.restarts >= 3 && o.cuts >= 3 && o.reconnects >= o.cuts,
        "{why}"
    );
    assert!(o.hostile.connections >= 50, "{why}");
    assert_eq!(
        o.hostile.closed_by_session + o.hostile.held_at_end,
        o.hostile.connections,
        "{why}"
    );

    // Every marker out exactly once, or reported lost.
    assert!(o.a.sent > 10_000 && o.b.sent > 10_000, "{why}");
    assert_eq!((o.duplicates, o.phantoms), (0, 0), "{why}");
    assert_eq!(soak::report::unexplained(&o), 0, "{why}");
    assert!(o.ended.success, "{why}");

    // Nothing leaked.
    assert_eq!(o.session_fd_growth, Vec::<String>::new(), "{why}");
    // Fewer is no leak: the session holds a pidfd for every VM on the
    // host, and VMs of other processes may exit meanwhile.
    assert!(o.end.session.fds <= o.start.session.fds, "{why}");
    assert_eq!(o.end.instances, o.start.instances, "{why}");
    assert_eq!(o.end.pins, o.start.pins, "{why}");
    assert_eq!((o.instances_left, o.pins_left), (0, 0), "{why}");
}
