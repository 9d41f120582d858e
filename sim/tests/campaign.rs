//! The simulator judging policies: `vtc-quorum`, loaded from its plugin library by the host's
//! own loader, passes a bounded campaign; two deliberately broken variants of it (test-only
//! `_break` config) are caught, with a trace that replays; a schedule is the same run whether
//! the policy is the library or the same type in-process behind its ABI table.
//!
//! `SIM_SCHEDULES` overrides the size of the campaign.

use std::time::Instant;

use serde_json::json;
use sim::{campaign, describe_failure, run, Campaign, PolicySource};

/// A bounded campaign: about 25 s of two cores in a debug build.
const SCHEDULES: u64 = 3000;

fn library() -> PolicySource {
    let src = PolicySource::load("vtc-quorum").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(src, PolicySource::Library(_)), "loaded through the host's loader");
    src
}

#[test]
fn vtc_quorum_passes_a_bounded_campaign() {
    let src = library();
    let schedules = std::env::var("SIM_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(SCHEDULES);
    let c = Campaign { schedules, seed: 0x5EED, threads: 2, extra: json!({}) };
    let start = Instant::now();
    let r = campaign(&src, &c);
    if let Some(f) = &r.failure {
        panic!("{}", describe_failure(f, "vtc-quorum", 400));
    }
    assert_eq!(r.runs, schedules);
    assert!(r.liveness_checked * 3 > schedules, "liveness checked in only {} schedules", r.liveness_checked);
    eprintln!(
        "{} ({}): {schedules} schedules, liveness checked in {}, {} steps, {} policy calls, {:.1} s",
        src.name(),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        r.liveness_checked,
        r.steps,
        r.calls,
        start.elapsed().as_secs_f64()
    );
}

fn caught(brk: &str) {
    let src = library();
    let c = Campaign { schedules: 3000, seed: 1, threads: 2, extra: json!({ "_break": brk }) };
    let r = campaign(&src, &c);
    let f = r.failure.unwrap_or_else(|| panic!("_break = {brk} not caught in {} schedules", r.runs));
    let text = describe_failure(&f, "vtc-quorum", 40);
    assert!(text.starts_with("VIOLATION in schedule") && text.contains("--replay"), "{text}");
    assert!(f.trace.iter().any(|l| l.contains("VIOLATION")), "the trace ends with the violation");
    // The printed seed replays the same run.
    let again = run(f.seed, &src, &c.extra, true);
    assert_eq!(again.violation, f.violation);
    assert_eq!(again.trace, f.trace);
    eprintln!("_break = {brk}: caught after {} schedules\n{text}", r.runs);
}

#[test]
fn a_threshold_compared_with_ge_is_caught() {
    caught("threshold_ge");
}

#[test]
fn a_controller_electing_yes_without_a_key_is_caught() {
    caught("vote_without_key");
}

#[test]
fn a_schedule_is_the_same_from_the_library_and_in_process() {
    let lib = library();
    let inproc = PolicySource::in_process::<gw_vtc_quorum::Plugin>("vtc-quorum");
    for seed in [1, 2, 0xDEAD_BEEF] {
        let a = run(seed, &lib, &json!({}), true);
        let b = run(seed, &inproc, &json!({}), true);
        assert_eq!(a.violation, None, "{:?}", a.violation);
        assert!(a.steps > 100 && a.calls > 100);
        assert_eq!(a.trace, b.trace, "seed {seed}");
    }
}

#[test]
fn a_missing_or_misconfigured_policy_is_reported() {
    let e = PolicySource::load("no-such-policy").err().unwrap();
    assert!(e.contains("no plugin named `no-such-policy`"), "{e}");
    let e = PolicySource::load("/nonexistent/libx.so").err().unwrap();
    assert!(e.contains("no such file"), "{e}");
    // A config the policy refuses fails the schedule at once, naming the controller.
    let r = run(7, &library(), &json!({ "threshold": { "count": 0 } }), false);
    let v = r.violation.unwrap();
    assert!(v.contains("opening the policy for c1 failed") && v.contains("two groups"), "{v}");
}
