//! Random sequences of events for one controller (reports, links, commands, ticks, restarts
//! with an intact or a torn key, and messages of every kind with random contents), with what
//! must hold after every step:
//!
//! * no key, no yes: a controller without a valid key never elects yes, never starts an
//!   election and never saves a key;
//! * write-ahead: a yes vote is in a key saved before the vote leaves (in the same batch, or
//!   already in the saved key when it is a repeat);
//! * every guarded promotion it asks for (`GoOnline { target: "X@p" }`) is a passed election
//!   in the key it saved (without a key: one it learned from the others);
//! * its status is "offline", "online X" or "online X+Y";
//! * nothing panics, whatever the messages say.

use gateway_sdk::{Action, Event};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::config;
use crate::key::Key;
use crate::Machine;

const SERVERS: [&str; 2] = ["A", "B"];
const PEERS: [&str; 2] = ["c2", "c3"];

#[derive(Debug, Clone)]
enum Input {
    Tick(u64),
    Report { s: usize, operational: bool, position: u64, pending: u64 },
    ServerLink { s: usize, up: bool },
    PeerLink { p: usize, up: bool },
    Shutdown { servers: usize, mode: usize },
    Return { servers: usize },
    Message { from: usize, body: Value },
    Restart { torn: bool },
}

fn eid() -> impl Strategy<Value = Value> {
    (prop::sample::select(vec!["c1", "c2", "c3"]), 1..6u64).prop_map(|(by, n)| json!({ "by": by, "n": n }))
}

fn value() -> impl Strategy<Value = Value> {
    (0..2usize, any::<bool>(), 0..12u64).prop_map(|(p, both, position)| {
        let mut v = json!({ "primary": SERVERS[p], "position": position });
        if both {
            v["secondary"] = json!(SERVERS[1 - p]);
        }
        v
    })
}

fn msg() -> impl Strategy<Value = Value> {
    let servers = prop::sample::select(vec![json!(["A"]), json!(["B"]), json!(["A", "B"])]);
    prop_oneof![
        (eid(), value()).prop_map(|(e, v)| json!({ "kind": "elect_request", "election": e, "value": v })),
        (eid(), value(), any::<bool>())
            .prop_map(|(e, v, yes)| json!({ "kind": "election", "election": e, "value": v, "yes": yes, "reason": "" })),
        (eid(), value(), 0..4u32).prop_map(|(e, v, yes)| json!({ "kind": "outcome",
            "outcome": { "election": e, "value": v, "gen": 3, "yes": yes, "of": 3 } })),
        eid().prop_map(|e| json!({ "kind": "abort", "election": e, "yes": 1, "of": 3, "reason": "timed out" })),
        eid().prop_map(|e| json!({ "kind": "query", "election": e })),
        (eid(), prop::sample::select(vec!["decided", "aborted", "voted_yes", "refused", "unknown"]))
            .prop_map(|(e, st)| json!({ "kind": "query_reply", "election": e, "state": st })),
        (servers.clone(), prop::sample::select(vec!["normal", "force"]), 1..9u64).prop_map(|(s, m, g)| json!({
            "kind": "shutdown", "cmd": { "gen": g, "origin": "c2", "servers": s, "mode": m, "ts": 0 } })),
        (servers, 1..9u64).prop_map(|(s, g)| json!({ "kind": "return",
            "cmd": { "gen": g, "origin": "c3", "servers": s, "ts": 0 } })),
        (eid(), 0..2usize, 0..12u64, any::<bool>()).prop_map(|(e, s, p, held)| json!({ "kind": "exchange",
            "claims": [ { "server": SERVERS[s], "position": p, "election": e, "decided": true } ],
            "holds": { "A": { "gen": 4, "origin": "c2", "held": held } }, "outcome": null, "shutdown": null })),
        Just(json!({ "kind": "nonsense" })),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => (1..3000u64).prop_map(Input::Tick),
        5 => (0..2usize, prop::bool::weighted(0.85), 0..12u64, prop::sample::select(vec![0u64, 0, 0, 2]))
            .prop_map(|(s, operational, position, pending)| Input::Report { s, operational, position, pending }),
        2 => (0..2usize, any::<bool>()).prop_map(|(s, up)| Input::ServerLink { s, up }),
        1 => (0..2usize, any::<bool>()).prop_map(|(p, up)| Input::PeerLink { p, up }),
        1 => (0..3usize, 0..4usize).prop_map(|(servers, mode)| Input::Shutdown { servers, mode }),
        1 => (0..3usize).prop_map(|servers| Input::Return { servers }),
        6 => (0..2usize, msg(), 0..40u64, prop::bool::weighted(0.05)).prop_map(|(from, m, gen, bad_version)| {
            let body = json!({ "v": if bad_version { 2 } else { 1 }, "gen": gen, "finals": {}, "hw": 0, "msg": m });
            Input::Message { from, body }
        }),
        1 => any::<bool>().prop_map(|torn| Input::Restart { torn }),
    ]
}

fn servers(i: usize) -> Vec<String> {
    match i {
        0 => vec!["A".into()],
        1 => vec!["B".into()],
        _ => vec!["A".into(), "B".into()],
    }
}

fn event(input: &Input, now: &mut u64) -> Option<Event> {
    Some(match input {
        Input::Tick(d) => {
            *now += d;
            Event::Tick { now_ms: *now }
        }
        Input::Report { s, operational, position, pending } => Event::ServerReport {
            server: SERVERS[*s].into(),
            operational: *operational,
            position: *position,
            copies_pending: *pending,
        },
        Input::ServerLink { s, up: true } => Event::PeerUp { peer: SERVERS[*s].into() },
        Input::ServerLink { s, up: false } => Event::PeerDown { peer: SERVERS[*s].into(), reason: "cut".into() },
        Input::PeerLink { p, up: true } => Event::ControllerUp { controller: PEERS[*p].into() },
        Input::PeerLink { p, up: false } => Event::ControllerDown { controller: PEERS[*p].into() },
        Input::Shutdown { servers: s, mode } => Event::ShutdownCommand {
            servers: servers(*s),
            mode: gateway_sdk::ShutdownMode::ALL[*mode].name().into(),
            from: "operator".into(),
        },
        Input::Return { servers: s } => Event::ReturnCommand { servers: servers(*s), from: "operator".into() },
        Input::Message { from, body } => Event::ControllerMessage { from: PEERS[*from].into(), body: body.clone() },
        Input::Restart { .. } => return None,
    })
}

fn check(m: &Machine, saved: &Option<Value>, before: &Option<Value>, actions: &[Action]) -> Result<(), String> {
    let keyed = m.keyed();
    let mut saved_in_batch: Option<Value> = before.clone();
    for a in actions {
        match a {
            Action::SaveKey { key } => {
                if !keyed {
                    return Err("saved a key without a valid key".into());
                }
                saved_in_batch = Some(key.clone());
            }
            Action::Vote { election, yes: true, .. } => {
                if !keyed {
                    return Err(format!("voted yes in {election} without a key"));
                }
                let in_key = saved_in_batch.as_ref().is_some_and(|k| {
                    let k: Key = serde_json::from_value(k.clone()).unwrap();
                    k.claims.iter().any(|c| c.election.to_string() == *election)
                        || k.voted.iter().any(|(by, n)| {
                            election.starts_with(&format!("{by}#"))
                                && election[by.len() + 1..].parse::<u64>().is_ok_and(|e| e <= *n)
                        })
                });
                if !in_key {
                    return Err(format!("vote in {election} not in a saved key first"));
                }
            }
            Action::GoOnline { target } if target.contains('@') => {
                let (server, pos) = target.split_once('@').unwrap();
                let primary = server.split('+').next().unwrap();
                let pos: u64 = pos.parse().unwrap();
                // What it knows: its saved key, or (without a key) what it learned from others.
                let k = match (keyed, saved) {
                    (true, Some(v)) => serde_json::from_value(v.clone()).unwrap(),
                    (true, None) => return Err("promotion without a saved key".into()),
                    (false, _) => m.key().clone(),
                };
                if !k.claims.iter().any(|c| c.decided && c.server == primary && c.position == pos) {
                    return Err(format!("promotion {target} is not a passed election it knows: {:?}", k.claims));
                }
            }
            Action::Report { key, value } if key == "quorum" => {
                let o = value["outcome"].as_str().unwrap_or("?");
                if !["offline", "online A", "online B", "online A+B", "online B+A"].contains(&o) {
                    return Err(format!("bad status outcome {o:?}"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn one_controller_under_random_events(inputs in prop::collection::vec(input(), 1..150), start_keyed in any::<bool>()) {
        let cfg = config("c1", 3, json!({}));
        let mut m = Machine::new(cfg.clone());
        let mut saved: Option<Value> = None;
        m.handle(&Event::KeyLoaded { key: None });
        if start_keyed {
            for a in m.handle(&Event::Admin { command: "bootstrap".into(), args: json!({}) }) {
                if let Action::SaveKey { key } = a {
                    saved = Some(key);
                }
            }
        }
        let mut now = 0;
        for input in &inputs {
            let ev = match event(input, &mut now) {
                Some(e) => e,
                None => {
                    let Input::Restart { torn } = input else { unreachable!() };
                    m = Machine::new(cfg.clone());
                    now = 0;
                    let key = if *torn { None } else { saved.clone() };
                    if *torn {
                        saved = None;
                    }
                    Event::KeyLoaded { key }
                }
            };
            let before = saved.clone();
            let actions = m.handle(&ev);
            for a in &actions {
                if let Action::SaveKey { key } = a {
                    saved = Some(key.clone());
                }
            }
            if let Err(e) = check(&m, &saved, &before, &actions) {
                prop_assert!(false, "after {:?}: {}\nactions: {:?}", input, e, actions);
            }
        }
    }
}
