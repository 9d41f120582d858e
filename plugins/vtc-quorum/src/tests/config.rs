//! The config parser and the threshold arithmetic (steps 462/562 and 466/566).

use serde_json::json;

use crate::config::{Break, Config, ReportBy, Threshold};

fn parse(v: serde_json::Value) -> Result<Config, String> {
    Config::from_json(&v)
}

fn base() -> serde_json::Value {
    json!({ "controller": "c2", "controllers": ["c1", "c2", "c3", "c4"], "servers": ["A", "B"] })
}

#[test]
fn defaults_are_more_than_half_by_poll() {
    let c = parse(base()).unwrap();
    assert_eq!(c.threshold, Threshold::Percent(50));
    assert_eq!(c.threshold_count(), 2);
    assert_eq!(c.report_by, ReportBy::Poll);
    assert_eq!(c.my_index(), 1);
    assert_eq!(c.brk, None);
    assert_eq!(c.other("A"), "B");
    // Greater than the threshold, never equal to it.
    assert!(!c.passes(2));
    assert!(c.passes(3));
}

#[test]
fn percent_and_count_thresholds() {
    let eight = |t: serde_json::Value| {
        let names: Vec<String> = (1..=8).map(|i| format!("c{i}")).collect();
        parse(json!({ "controller": "c1", "controllers": names, "servers": ["A", "B"], "threshold": t })).unwrap()
    };
    // "3 of 8 controllers elected; threshold 4": more than 50 % of 8 is 5 or more.
    let c = eight(json!({ "percent": 50 }));
    assert_eq!(c.threshold_count(), 4);
    assert!(!c.passes(4) && c.passes(5));
    assert_eq!(eight(json!({ "percent": 75 })).threshold_count(), 6);
    assert_eq!(eight(json!({ "count": 5 })).threshold_count(), 5);
    // Three controllers: more than 50 % is two.
    let mut three = base();
    three["controllers"] = json!(["c1", "c2", "c3"]);
    let c = parse(three).unwrap();
    assert_eq!(c.threshold_count(), 1);
    assert!(c.passes(2) && !c.passes(1));
}

#[test]
fn thresholds_two_groups_could_both_pass_are_refused() {
    let mut v = base();
    v["threshold"] = json!({ "count": 1 });
    let e = parse(v.clone()).unwrap_err();
    assert!(e.contains("two groups of 2") && e.contains("at least 2"), "{e}");
    v["threshold"] = json!({ "percent": 25 });
    assert!(parse(v.clone()).unwrap_err().contains("two groups"));
    v["threshold"] = json!({ "count": 4 });
    assert!(parse(v.clone()).unwrap_err().contains("can never be exceeded"));
    v["threshold"] = json!({ "percent": 101 });
    assert!(parse(v).unwrap_err().contains("more than 100"));
}

#[test]
fn bad_configs_name_the_key() {
    let mut v = base();
    v["controlers"] = json!([]);
    assert!(parse(v).unwrap_err().starts_with("controlers: unknown key"));
    let mut v = base();
    v["controller"] = json!("c9");
    assert!(parse(v).unwrap_err().contains("not in `controllers`"));
    let mut v = base();
    v["servers"] = json!(["A"]);
    assert!(parse(v).unwrap_err().contains("two servers"));
    let mut v = base();
    v["servers"] = json!(["A", "A"]);
    assert!(parse(v).unwrap_err().contains("listed twice"));
    let mut v = base();
    v["servers"] = json!(["A+", "B"]);
    assert!(parse(v).unwrap_err().contains("may not contain"));
    let mut v = base();
    v["threshold"] = json!({ "count": 2, "percent": 50 });
    assert!(parse(v).is_err());
    let mut v = base();
    v["threshold"] = json!({ "cont": 2 });
    assert!(parse(v).unwrap_err().starts_with("threshold.cont: unknown key"));
    let mut v = base();
    v["report_by"] = json!("carrier pigeon");
    assert!(parse(v).unwrap_err().contains("report_by"));
    let mut v = base();
    v["timing"] = json!({ "election_timeout": 5 });
    assert!(parse(v).unwrap_err().starts_with("timing.election_timeout: unknown key"));
    assert!(parse(json!([])).is_err());
    assert!(parse(json!({})).unwrap_err().contains("`controller` is required"));
}

#[test]
fn timing_broadcast_and_the_test_only_breaks() {
    let mut v = base();
    v["timing"] = json!({ "election_timeout_ms": 500, "stuck_ms": 9000 });
    v["report_by"] = json!("broadcast");
    v["_break"] = json!("threshold_ge");
    let c = parse(v.clone()).unwrap();
    assert_eq!((c.timing.election_timeout_ms, c.timing.stuck_ms, c.timing.exchange_ms), (500, 9000, 1000));
    assert_eq!(c.report_by, ReportBy::Broadcast);
    assert_eq!(c.brk, Some(Break::ThresholdGe));
    // The broken variant goes online at the threshold itself.
    assert!(c.passes(2));
    v["_break"] = json!("vote_without_key");
    assert_eq!(parse(v.clone()).unwrap().brk, Some(Break::VoteWithoutKey));
    v["_break"] = json!("everything");
    assert!(parse(v).is_err());
}
