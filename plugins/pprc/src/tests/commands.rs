//! Every command in every reachable condition (the state table), then the details: messages,
//! arguments, multi-step flows.

use serde_json::{json, Value};

use super::*;

/// The table's columns: a command and its arguments besides `volume_set`.
const COLUMNS: [(&str, &str); 14] = [
    ("freeze", "{}"),
    ("run", "{}"),
    ("suspend", "{}"),
    ("resync", "{}"),
    ("swap", "{}"),
    ("failover", "{}"),
    ("failover", r#"{"force":true}"#),
    ("failback", "{}"),
    ("recover", "{}"),
    ("online", "{}"),
    ("online", r#"{"site":"peer"}"#),
    ("offline", r#"{"moving_across_site":true}"#),
    ("offline", "{}"),
    ("join-cleanup", "{}"),
];

fn with_set(args: &str, m: &Machine) -> Value {
    let mut v: Value = serde_json::from_str(args).unwrap();
    v["volume_set"] = json!("vs1");
    if v.get("site") == Some(&json!("peer")) {
        v["site"] = json!(m.view("vs1").unwrap().peer);
    }
    v
}

/// One cell: `✗` refused, `—` nothing to do, else the ops and what changed.
fn outcome(c: Cond, command: &str, args: &str) -> String {
    let mut m = reach(c);
    let before = m.clone();
    let v0 = m.view("vs1").unwrap();
    let acts = m.handle(&admin(command, with_set(args, &m)));
    if let Some(reason) = refused(&acts) {
        assert_eq!(m, before, "a refusal changed the machine: {reason}");
        assert!(reason.contains(command) && reason.contains("vs1"), "{reason}");
        assert!(reason.contains(v0.state.name()), "refusal does not name the state: {reason}");
        return "✗".into();
    }
    assert!(matches!(acts.first(), Some(Action::Log { .. })), "first action is not the plan: {acts:?}");
    let v1 = m.view("vs1").unwrap();
    let mut cell = ops(&acts).join("+");
    if v1.state != v0.state {
        cell += &format!(" → {}", v1.state);
    }
    if v1.production != v0.production {
        cell += &format!(", prod → {}", v1.production);
    }
    if v1.pending_swap {
        cell += ", swap at InSync";
    }
    match cell.trim().trim_start_matches(", ") {
        "" => "—".into(),
        c => c.into(),
    }
}

fn row_name(c: Cond) -> String {
    format!(
        "{} {} peer {}",
        if c.production_here { "prod" } else { "recovery" },
        c.state,
        if c.peer_up { "up" } else { "down" }
    )
}

fn table() -> String {
    let head: Vec<String> = COLUMNS
        .iter()
        .map(|(c, a)| if *a == "{}" { c.to_string() } else { format!("{c} {}", a.replace('"', "")) })
        .collect();
    let mut t = format!("| site, state, peer | {} |\n|---|{}\n", head.join(" | "), "---|".repeat(COLUMNS.len()));
    for c in CONDS {
        let cells: Vec<String> = COLUMNS.iter().map(|(cmd, args)| outcome(c, cmd, args)).collect();
        t += &format!("| {} | {} |\n", row_name(c), cells.join(" | "));
    }
    t
}

#[test]
fn state_table() {
    let t = table();
    if std::env::var_os("PPRC_PRINT_TABLE").is_some() {
        println!("{t}");
    }
    assert_eq!(t, EXPECTED_TABLE, "\n{t}");
}

/// The state table (`PPRC_PRINT_TABLE=1 cargo test -p plugin-pprc state_table -- --nocapture`
/// prints it): rows are vs1's condition at this site, columns the commands.
const EXPECTED_TABLE: &str = "\
| site, state, peer | freeze | run | suspend | resync | swap | failover | failover {force:true} | failback | recover | online | online {site:peer} | offline {moving_across_site:true} | offline | join-cleanup |\n\
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n\
| prod InSync peer up | freeze → SplitSite | ✗ | suspend → OutOfSync | ✗ | swap | ✗ | ✗ | ✗ | ✗ | — | swap | swap | — | — |\n\
| prod OutOfSync peer up | freeze → SplitSite | ✗ | ✗ | resync → Resyncing | ✗ | ✗ | ✗ | ✗ | ✗ | resync → Resyncing | resync → Resyncing, swap at InSync | resync → Resyncing, swap at InSync | — | — |\n\
| prod OutOfSync peer down | freeze → SplitSite | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | — | ✗ | ✗ | — | — |\n\
| prod Resyncing peer up | freeze → SplitSite | ✗ | suspend → OutOfSync | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | — | swap at InSync | swap at InSync | — | — |\n\
| prod SplitSite peer up | ✗ | run → OutOfSync | ✗ | run+resync → Resyncing | ✗ | ✗ | ✗ | ✗ | ✗ | run+resync → Resyncing | run+resync → Resyncing, swap at InSync | run+resync → Resyncing, swap at InSync | — | — |\n\
| prod SplitSite peer down | ✗ | run → OutOfSync | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | run → OutOfSync | run → OutOfSync | ✗ | ✗ | — | — |\n\
| prod RecoverySite-ForceSwap peer up | ✗ | ✗ | ✗ | resync → Resyncing | ✗ | ✗ | ✗ | resync → Resyncing, swap at InSync | ✗ | — | resync → Resyncing, swap at InSync | resync → Resyncing, swap at InSync | — | resync → Resyncing |\n\
| prod RecoverySite-ForceSwap peer down | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | — | ✗ | ✗ | — | — |\n\
| recovery Simplex peer up | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | failover → RecoverySite-ForceSwap, prod → B | ✗ | ✗ | ✗ | — | — | — | — |\n\
| recovery Simplex peer down | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | failover → RecoverySite-ForceSwap, prod → B | ✗ | ✗ | ✗ | — | — | — | — |\n\
| recovery InSync peer up | ✗ | ✗ | ✗ | ✗ | swap | ✗ | failover → RecoverySite-ForceSwap, prod → B | ✗ | ✗ | swap | — | — | — | — |\n\
| recovery Resyncing peer up | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | failover → RecoverySite-ForceSwap, prod → B | ✗ | ✗ | ✗ | — | — | — | — |\n\
| recovery OutOfSync peer up | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | failover → RecoverySite-ForceSwap, prod → B | ✗ | ✗ | ✗ | — | — | — | — |\n\
| recovery OutOfSync peer down | ✗ | ✗ | ✗ | ✗ | ✗ | failover → RecoverySite-ForceSwap, prod → B | failover → RecoverySite-ForceSwap, prod → B | ✗ | failover → RecoverySite-ForceSwap, prod → B | failover → RecoverySite-ForceSwap, prod → B | — | — | — | — |\n\
| recovery SplitSite peer up | ✗ | ✗ | ✗ | ✗ | ✗ | ✗ | failover → RecoverySite-ForceSwap, prod → B | ✗ | ✗ | ✗ | — | — | — | — |\n\
| recovery SplitSite peer down | ✗ | ✗ | ✗ | ✗ | ✗ | failover → RecoverySite-ForceSwap, prod → B | failover → RecoverySite-ForceSwap, prod → B | ✗ | failover → RecoverySite-ForceSwap, prod → B | failover → RecoverySite-ForceSwap, prod → B | — | — | — | — |\n\
";

fn at(production_here: bool, state: State, peer_up: bool) -> Machine {
    reach(Cond { production_here, state, peer_up })
}

#[test]
fn refusals_say_what_is_wrong_and_what_to_do() {
    let cases: [(Machine, &str, Value, &str); 9] = [
        (
            at(true, State::OutOfSync, true),
            "swap",
            json!({}),
            "cannot swap vs1: it is OutOfSync (swap needs InSync); run resync first",
        ),
        (
            at(true, State::OutOfSync, false),
            "offline",
            json!({"moving_across_site": true}),
            "cannot offline vs1: cannot release it to the peer: peer B unreachable (vs1 is OutOfSync at A)",
        ),
        (
            at(false, State::InSync, true),
            "freeze",
            json!({}),
            "cannot freeze vs1 at B: it is InSync with production at A; freeze runs at the production site",
        ),
        (
            at(false, State::InSync, true),
            "failover",
            json!({}),
            "cannot failover vs1: it is InSync and production site A is reachable; use swap for a planned move, \
             or force: true",
        ),
        (at(false, State::Simplex, false), "failover", json!({}), "the copy here is not consistent"),
        (at(false, State::Resyncing, true), "online", json!({}), "resync at A first"),
        (at(true, State::InSync, true), "failback", json!({}), "at its home production site A; nothing to fail back"),
        (at(true, State::InSync, true), "recover", json!({}), "recover is for a lone surviving site"),
        (at(true, State::OutOfSync, false), "resync", json!({}), "it is OutOfSync and peer B is unreachable"),
    ];
    for (mut m, command, mut args, want) in cases {
        args["volume_set"] = json!("vs1");
        let before = m.clone();
        let reason = refused(&m.handle(&admin(command, args))).unwrap_or_else(|| panic!("{command} not refused"));
        assert!(reason.contains(want), "{reason:?} should contain {want:?}");
        assert_eq!(m, before);
    }
}

#[test]
fn an_accepted_command_logs_its_plan_first_then_ops_and_states_in_order() {
    let mut m = at(true, State::SplitSite, true);
    let acts = cmd(&mut m, "online");
    let Action::Log { message, .. } = &acts[0] else { panic!("{acts:?}") };
    assert_eq!(message, "online vs1 at A: SplitSite, production A, peer B up → run, resync");
    let kinds: Vec<String> = acts
        .iter()
        .map(|a| match (a, as_replicate(a)) {
            (_, Some((_, op))) => op,
            (Action::SetVolumeSetState { state, .. }, _) => state.clone(),
            (Action::Log { .. }, _) => "log".into(),
            _ => "?".into(),
        })
        .collect();
    assert_eq!(kinds, ["log", "run", "OutOfSync", "log", "resync", "Resyncing", "log"]);
    assert!(logs(&acts)[1].contains("SplitSite → OutOfSync"), "{acts:?}");
}

/// Site B took over with A down; A returns; failback resyncs A, then swaps back.
#[test]
fn failback_resyncs_then_swaps_back_when_in_sync() {
    let mut m = at(true, State::RecoverySiteForceSwap, true);
    assert_eq!(m.view("vs1").unwrap().production, "B");
    let acts = cmd(&mut m, "failback");
    assert_eq!(ops(&acts), ["resync"]);
    assert_eq!(recorded(&acts), [State::Resyncing]);
    assert!(m.view("vs1").unwrap().pending_swap);

    let acts = m.handle(&ev("vs1", "resync_complete"));
    assert_eq!(ops(&acts), ["swap"]);
    assert_eq!(recorded(&acts), [State::InSync]);
    let v = m.view("vs1").unwrap();
    assert_eq!((v.production.as_str(), v.state, v.pending_swap), ("B", State::InSync, false));
    // Production moves when the engine confirms the swap.
    let acts = m.handle(&ev("vs1", "demoted"));
    assert!(ops(&acts).is_empty() && recorded(&acts).is_empty());
    assert_eq!((m.view("vs1").unwrap().production.as_str(), m.state("vs1")), ("A", Some(State::InSync)));
}

#[test]
fn a_pending_hand_over_is_dropped_when_the_resync_is_interrupted() {
    let mut m = at(true, State::RecoverySiteForceSwap, true);
    cmd(&mut m, "failback");
    let acts = m.handle(&ev("vs1", "link_down"));
    assert_eq!(recorded(&acts), [State::OutOfSync]);
    assert!(!m.view("vs1").unwrap().pending_swap);
    // auto_resync starts a resync on link up, but the hand-over must be asked for again.
    assert_eq!(ops(&m.handle(&ev("vs1", "link_up"))), ["resync"]);
    assert!(ops(&m.handle(&ev("vs1", "resync_complete"))).is_empty());
    assert_eq!(m.view("vs1").unwrap().production, "B");
}

#[test]
fn failback_after_join_cleanup_swaps_at_once() {
    let mut m = at(true, State::RecoverySiteForceSwap, true);
    assert_eq!(ops(&cmd(&mut m, "join-cleanup")), ["resync"]);
    m.handle(&ev("vs1", "resync_complete"));
    assert_eq!(m.state("vs1"), Some(State::InSync));
    assert_eq!(ops(&cmd(&mut m, "failback")), ["swap"]);
    m.handle(&ev("vs1", "demoted"));
    assert_eq!(m.view("vs1").unwrap().production, "A");
}

#[test]
fn offline_moving_across_sites_hands_over_after_the_resync() {
    let mut m = at(true, State::Resyncing, true);
    let acts = m.handle(&admin("offline", json!({"volume_set": "vs1", "moving_across_site": true})));
    assert!(ops(&acts).is_empty() && m.view("vs1").unwrap().pending_swap);
    assert!(logs(&acts)[0].ends_with("→ swap when the running resync completes"), "{acts:?}");
    assert_eq!(ops(&m.handle(&ev("vs1", "resync_complete"))), ["swap"]);
    m.handle(&ev("vs1", "demoted"));
    assert_eq!(m.view("vs1").unwrap().production, "B");
}

#[test]
fn failover_with_force_takes_even_an_inconsistent_copy() {
    let mut m = at(false, State::Simplex, false);
    let acts = m.handle(&admin("online", json!({"volume_set": "vs1", "force": true})));
    assert_eq!(ops(&acts), ["failover"]);
    assert_eq!(recorded(&acts), [State::RecoverySiteForceSwap]);
    let v = m.view("vs1").unwrap();
    assert_eq!((v.production.as_str(), v.consistent), ("B", true));
    assert!(logs(&acts)[0].contains("failover (forced)"), "{acts:?}");
}

#[test]
fn swap_at_the_recovery_site_makes_it_production_once_the_engine_confirms() {
    let mut m = at(false, State::InSync, true);
    assert_eq!(ops(&cmd(&mut m, "swap")), ["swap"]);
    assert_eq!(m.view("vs1").unwrap().production, "A", "not before the engine says so");
    // A failed swap sends nothing: production stays at A. A done one sends `promoted`.
    m.handle(&ev_d("vs1", "promoted", ""));
    let v = m.view("vs1").unwrap();
    assert_eq!((v.production.as_str(), v.state), ("B", State::InSync));
    // Now at production: the engine's later events act as at production.
    assert_eq!(recorded(&m.handle(&ev("vs1", "link_down"))), [State::OutOfSync]);
}

#[test]
fn arguments_and_names() {
    let mut m = at(true, State::InSync, true);
    let before = m.clone();
    let r = |acts: Vec<Action>| refused(&acts).unwrap_or_else(|| panic!("not refused: {acts:?}"));
    assert!(r(m.handle(&admin("swap", json!({})))).contains("cannot swap: the arguments need \"volume_set\""));
    assert!(r(m.handle(&admin("swap", json!({"volume_set": "vs9"}))))
        .contains("no such volume set (this policy manages vs1, vs2)"));
    assert!(r(m.handle(&admin("failover", json!({"volume_set": "vs1", "force": "yes"})))).contains("bad arguments"));
    assert!(r(m.handle(&admin("online", json!({"volume_set": "vs1", "site": "C"})))).contains("its sites are A and B"));
    assert_eq!(m, before);
    // Commands of other policies are not ours to answer.
    assert!(m.handle(&admin("vote", json!({"volume_set": "vs1"}))).is_empty());
    // `_` for `-`, and unknown argument keys are ignored.
    let acts = m.handle(&admin("join_cleanup", json!({"volume_set": "vs1", "by": "drill"})));
    assert_eq!(acts.len(), 1);
    assert!(logs(&acts)[0].ends_with("nothing to do: it is InSync, not RecoverySite-ForceSwap"), "{acts:?}");
}

#[test]
fn status_query_reports_without_changing_anything() {
    let mut m = at(true, State::InSync, true);
    let before = m.clone();
    let all = m.handle(&admin("status-query", Value::Null));
    assert_eq!(logs(&all).len(), 2);
    assert_eq!(logs(&all)[0], "vs1 at A: InSync, production A, peer B up, local copy consistent, last error: none");
    let one = m.handle(&admin("status-query", json!({"volume_set": "vs2"})));
    assert!(logs(&one)[0].starts_with("vs2 at A: Simplex, production B"), "{one:?}");
    assert!(recorded(&all).is_empty() && ops(&all).is_empty());
    assert_eq!(m, before);
}
