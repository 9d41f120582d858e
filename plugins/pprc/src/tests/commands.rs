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

const EXPECTED_TABLE: &str = "";
