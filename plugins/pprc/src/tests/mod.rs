//! Unit tests (per command, per engine event) and the property test, with the helpers they
//! share: machines driven into a named condition, and readers for the actions.

mod commands;
mod engine;
mod props;

use gateway_sdk::{Action, Event};
use serde_json::{json, Value};

use crate::config::Config;
use crate::state::State;
use crate::Machine;

pub(super) fn machine_with(local: &str, production: &str, on_link_loss: &str, auto_resync: bool) -> Machine {
    let peer = if local == "A" { "B" } else { "A" };
    let cfg = json!({ "local_site": local, "sets": [
        { "name": "vs1", "production": production, "peer": peer, "on_link_loss": on_link_loss, "auto_resync": auto_resync },
        { "name": "vs2", "production": peer, "peer": peer },
    ]});
    let mut m = Machine::new(Config::from_json(&cfg).unwrap());
    m.handle(&Event::Started { node: local.into(), role: "server".into() });
    m
}

/// The engine's report, with `local_site` and `production` left unsaid.
pub(super) fn ev(vs: &str, change: &str) -> Event {
    ev_d(vs, change, "")
}

pub(super) fn ev_d(vs: &str, change: &str, detail: &str) -> Event {
    Event::VolumeSet {
        volume_set: vs.into(),
        change: change.into(),
        local_site: String::new(),
        production: String::new(),
        detail: detail.into(),
    }
}

pub(super) fn as_replicate(a: &Action) -> Option<(String, String)> {
    match a {
        Action::Replicate { volume_set, op } => Some((volume_set.clone(), op.clone())),
        _ => None,
    }
}

pub(super) fn as_refuse(a: &Action) -> Option<String> {
    match a {
        Action::Refuse { reason } => Some(reason.clone()),
        _ => None,
    }
}

pub(super) fn admin(command: &str, args: Value) -> Event {
    Event::Admin { command: command.into(), args }
}

pub(super) fn cmd(m: &mut Machine, command: &str) -> Vec<Action> {
    m.handle(&admin(command, json!({ "volume_set": "vs1" })))
}

/// Feed events, returning all actions.
pub(super) fn feed(m: &mut Machine, events: &[Event]) -> Vec<Action> {
    events.iter().flat_map(|e| m.handle(e)).collect()
}

/// The `Replicate` ops in `actions`, as "op" (for vs1) or "vs:op" (other sets).
pub(super) fn ops(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(as_replicate)
        .map(|(vs, op)| if vs == "vs1" { op } else { format!("{vs}:{op}") })
        .collect()
}

pub(super) fn refused(actions: &[Action]) -> Option<String> {
    match actions {
        [one] => as_refuse(one),
        _ => {
            assert!(actions.iter().all(|a| as_refuse(a).is_none()), "Refuse with other actions: {actions:?}");
            None
        }
    }
}

/// The states recorded for vs1, in order.
pub(super) fn recorded(actions: &[Action]) -> Vec<State> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetVolumeSetState { volume_set, state } if volume_set == "vs1" => State::from_name(state),
            _ => None,
        })
        .collect()
}

pub(super) fn logs(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// A named starting condition for vs1: which site holds production, the state, the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cond {
    /// vs1 is produced here (site A, or B after a failover for ForceSwap).
    pub production_here: bool,
    pub state: State,
    pub peer_up: bool,
}

pub(super) const CONDS: [Cond; 16] = {
    use State::*;
    const fn c(production_here: bool, state: State, peer_up: bool) -> Cond {
        Cond { production_here, state, peer_up }
    }
    [
        c(true, InSync, true),
        c(true, OutOfSync, true),
        c(true, OutOfSync, false),
        c(true, Resyncing, true),
        c(true, SplitSite, true),
        c(true, SplitSite, false),
        c(true, RecoverySiteForceSwap, true),
        c(true, RecoverySiteForceSwap, false),
        c(false, Simplex, true),
        c(false, Simplex, false),
        c(false, InSync, true),
        c(false, Resyncing, true),
        c(false, OutOfSync, true),
        c(false, OutOfSync, false),
        c(false, SplitSite, true),
        c(false, SplitSite, false),
    ]
};

/// A machine whose vs1 is in `c`, reached by events and commands only. Production sets
/// live at site A (home A); ForceSwap at site B after a failover; recovery sets at B.
pub(super) fn reach(c: Cond) -> Machine {
    use State::*;
    let up = ev("vs1", "link_up");
    let down = ev("vs1", "link_down");
    let (mut m, script): (Machine, Vec<Event>) = if c.state == RecoverySiteForceSwap {
        let m = machine_with("B", "A", "continue", true);
        let mut s = vec![up.clone(), down, admin_vs1("failover")];
        if c.peer_up {
            s.push(up);
        }
        (m, s)
    } else if c.production_here {
        let m = machine_with("A", "A", "continue", true);
        let done = ev("vs1", "resync_complete");
        let s = match (c.state, c.peer_up) {
            (InSync, true) => vec![up, done],
            (OutOfSync, true) => vec![up, ev("vs1", "resync_failed")],
            (OutOfSync, false) => vec![],
            (Resyncing, true) => vec![up],
            (SplitSite, true) => vec![up, done, ev("vs1", "frozen")],
            (SplitSite, false) => vec![up, done, ev("vs1", "frozen"), down],
            other => panic!("unreachable condition {other:?}"),
        };
        (m, s)
    } else {
        let m = machine_with("B", "A", "continue", true);
        let s: Vec<Event> = match (c.state, c.peer_up) {
            (Simplex, true) => vec![ev_d("vs1", "link_up", "Simplex")],
            (Simplex, false) => vec![],
            (InSync, true) => vec![up],
            (Resyncing, true) => vec![up, ev("vs1", "resync_started")],
            (OutOfSync, false) => vec![up, down],
            (OutOfSync, true) => vec![up, down, ev_d("vs1", "link_up", "OutOfSync")],
            (SplitSite, true) => vec![up, ev("vs1", "frozen")],
            (SplitSite, false) => vec![up, ev("vs1", "frozen"), down],
            other => panic!("unreachable condition {other:?}"),
        };
        (m, s)
    };
    feed(&mut m, &script);
    let v = m.view("vs1").unwrap();
    assert_eq!((v.production == v.local_site, v.state, v.peer_up), (c.production_here, c.state, c.peer_up), "{c:?}");
    m
}

fn admin_vs1(command: &str) -> Event {
    admin(command, json!({ "volume_set": "vs1" }))
}
