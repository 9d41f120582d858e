//! Random sequences of engine events, peer events and commands, with the invariants checked
//! after every step.

use std::collections::HashMap;

use gateway_sdk::{Action, Event};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::commands::Command;
use crate::config::Config;
use crate::engine::CHANGES;
use crate::state::State;
use crate::{Machine, SetView};

use super::{as_refuse, as_replicate, ev_d};

const SETS: [&str; 3] = ["vs1", "vs2", "vs9"];
const DETAILS: [&str; 10] = [
    "",
    "InSync",
    "OutOfSync",
    "Resyncing",
    "SplitSite",
    "RecoverySite-ForceSwap",
    "Simplex",
    "XDMode",
    "XDMode-OutOfSync",
    "disk on fire",
];
const OPS: [&str; 7] = ["freeze", "run", "suspend", "resync", "swap", "failover", "demote"];

#[derive(Debug, Clone)]
enum Input {
    Started,
    PeerUp,
    PeerDown,
    Change { set: usize, change: String, detail: usize },
    Admin { command: String, set: usize, force: bool, site: usize, moving: bool },
    Error { set: usize },
}

fn set_index() -> impl Strategy<Value = usize> {
    prop_oneof![10 => 0..2usize, 1 => Just(2usize)]
}

fn input() -> impl Strategy<Value = Input> {
    let change = prop_oneof![
        4 => prop::sample::select(vec!["link_up", "resync_complete", "link_down", "resync_started"]),
        4 => prop::sample::select(CHANGES.to_vec()),
        1 => Just("bogus"),
    ];
    let mut commands: Vec<String> = Command::ALL.iter().map(|c| c.name().to_owned()).collect();
    commands.extend(["join_cleanup".into(), "vote".into()]);
    prop_oneof![
        1 => Just(Input::Started),
        2 => Just(Input::PeerUp),
        2 => Just(Input::PeerDown),
        10 => (set_index(), change, 0..DETAILS.len())
            .prop_map(|(set, change, detail)| Input::Change { set, change: change.into(), detail }),
        10 => (prop::sample::select(commands), set_index(), prop::bool::weighted(0.2), 0..4usize, any::<bool>())
            .prop_map(|(command, set, force, site, moving)| Input::Admin { command, set, force, site, moving }),
        1 => set_index().prop_map(|set| Input::Error { set }),
    ]
}

fn config() -> impl Strategy<Value = Value> {
    let set = (any::<bool>(), any::<bool>(), any::<bool>());
    (any::<bool>(), set, set).prop_map(|(local_a, s1, s2)| {
        let (local, peer) = if local_a { ("A", "B") } else { ("B", "A") };
        let set = |name: &str, (here, freeze, auto): (bool, bool, bool)| {
            json!({ "name": name, "production": if here { local } else { peer }, "peer": peer,
                    "on_link_loss": if freeze { "freeze" } else { "continue" }, "auto_resync": auto })
        };
        json!({ "local_site": local, "sets": [set("vs1", s1), set("vs2", s2)] })
    })
}

fn event(m: &Machine, input: &Input) -> Event {
    let local = m.local_site().to_owned();
    let peer = if local == "A" { "B" } else { "A" };
    match input {
        Input::Started => Event::Started { node: local, role: "server".into() },
        Input::PeerUp => Event::PeerUp { peer: peer.into() },
        Input::PeerDown => Event::PeerDown { peer: peer.into(), reason: "test".into() },
        Input::Change { set, change, detail } => ev_d(SETS[*set], change, DETAILS[*detail]),
        Input::Admin { command, set, force, site, moving } => {
            let mut args = json!({ "volume_set": SETS[*set], "force": force, "moving_across_site": moving });
            match site {
                1 => args["site"] = json!(local),
                2 => args["site"] = json!(peer),
                3 => args["site"] = json!("Z"),
                _ => {}
            }
            Event::Admin { command: command.clone(), args }
        }
        Input::Error { set } => {
            Event::ReplicationError { volume_set: SETS[*set].into(), code: 5, message: "EIO".into() }
        }
    }
}

fn invariants(v: &SetView) -> Result<(), TestCaseError> {
    let here = v.production == v.local_site;
    prop_assert!(here || v.production == v.peer, "production {} is neither site", v.production);
    prop_assert_ne!(&v.local_site, &v.peer);
    prop_assert!(!v.state.is_reserved(), "{} entered a reserved state", v.name);
    if matches!(v.state, State::InSync | State::Resyncing) {
        prop_assert!(v.peer_up, "{} is {} with the peer down", v.name, v.state);
    }
    if here {
        prop_assert!(v.state != State::Simplex && v.consistent, "{v:?}");
    }
    if v.pending_swap {
        prop_assert!(here && v.state == State::Resyncing, "{v:?}");
    }
    Ok(())
}

fn check(before: &Machine, event: &Event, acts: &[Action], after: &Machine) -> Result<(), TestCaseError> {
    for a in acts {
        prop_assert_eq!(&Action::from_json(&a.to_json()).unwrap(), a, "action does not survive the ABI");
    }
    for name in after.set_names() {
        invariants(&after.view(name).unwrap())?;
    }
    let admin = match event {
        Event::Admin { command, args } => Command::parse(command).map(|c| (c, args)),
        _ => None,
    };

    // A refusal comes alone, changes nothing, and names the command, the set and its state.
    if let Some(reason) = acts.iter().find_map(as_refuse) {
        prop_assert_eq!(acts.len(), 1, "Refuse with other actions: {:?}", acts);
        prop_assert_eq!(before, after, "a refusal changed the machine");
        let Some((cmd, args)) = admin else { return Err(TestCaseError::fail("refused a non-command")) };
        prop_assert!(reason.contains(cmd.name()), "{}", reason);
        if let Some(v) = args["volume_set"].as_str().and_then(|n| before.view(n)) {
            prop_assert!(reason.contains(&v.name) && reason.contains(v.state.name()), "{}", reason);
        }
        return Ok(());
    }
    if let Some((cmd, _)) = admin {
        prop_assert!(matches!(acts.first(), Some(Action::Log { .. })), "{} answered without a plan: {:?}", cmd, acts);
    }

    // Walk the actions in order, tracking each set's recorded state.
    let mut current: HashMap<String, State> =
        before.set_names().map(|n| (n.to_owned(), before.state(n).unwrap())).collect();
    let mut recorded: HashMap<String, State> = HashMap::new();
    let forced = admin.is_some_and(|(_, args)| args["force"] == json!(true));
    for a in acts {
        if let Action::SetVolumeSetState { volume_set, state } = a {
            let s = State::from_name(state);
            prop_assert!(s.is_some_and(|s| !s.is_reserved()), "recorded state {}", state);
            current.insert(volume_set.clone(), s.unwrap());
            recorded.insert(volume_set.clone(), s.unwrap());
        }
        let Some((vs, op)) = as_replicate(a) else { continue };
        prop_assert!(OPS.contains(&op.as_str()), "unknown op {}", op);
        let (b, now) = (before.view(&vs).unwrap(), after.view(&vs).unwrap());
        let was_production = b.production == b.local_site;
        match op.as_str() {
            "swap" => prop_assert!(
                current[&vs] == State::InSync && b.peer_up && now.peer_up,
                "swap from {} with the peer {}",
                current[&vs],
                b.peer_up
            ),
            "failover" => {
                prop_assert!(!b.peer_up || forced, "failover with the peer up, not forced");
                prop_assert!(!was_production);
            }
            _ => prop_assert!(was_production, "{} asked of the recovery site", op),
        }
    }
    // Every state change is recorded (the last record is the new state); no record without one.
    for name in after.set_names() {
        let (s0, s1) = (before.state(name).unwrap(), after.state(name).unwrap());
        if s0 != s1 {
            prop_assert_eq!(recorded.get(name), Some(&s1), "{} changed {} → {} unrecorded", name, s0, s1);
        } else if !matches!(event, Event::Started { .. }) {
            prop_assert!(!recorded.contains_key(name), "{} recorded without a change", name);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_histories(cfg in config(), inputs in prop::collection::vec(input(), 1..80)) {
        let mut m = Machine::new(Config::from_json(&cfg).unwrap());
        for input in &inputs {
            let e = event(&m, input);
            let before = m.clone();
            let acts = m.handle(&e);
            check(&before, &e, &acts, &m)?;
        }
    }

    /// The same history gives the same answers: nothing outside the events matters.
    #[test]
    fn deterministic(cfg in config(), inputs in prop::collection::vec(input(), 1..40)) {
        let mut a = Machine::new(Config::from_json(&cfg).unwrap());
        let mut b = a.clone();
        for input in &inputs {
            let e = event(&a, input);
            prop_assert_eq!(a.handle(&e), b.handle(&e));
        }
        prop_assert_eq!(a, b);
    }
}

/// The random histories do reach every state and every op (else the invariants are idle).
#[test]
fn random_histories_cover_the_machine() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut states, mut ops) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for _ in 0..300 {
        let cfg = config().new_tree(&mut runner).unwrap().current();
        let inputs = prop::collection::vec(input(), 60).new_tree(&mut runner).unwrap().current();
        let mut m = Machine::new(Config::from_json(&cfg).unwrap());
        for input in &inputs {
            let e = event(&m, input);
            for a in m.handle(&e) {
                ops.extend(as_replicate(&a).map(|(_, op)| op));
            }
            states.extend(m.set_names().map(|n| m.state(n).unwrap()));
        }
    }
    let want: Vec<State> = State::ALL.into_iter().filter(|s| !s.is_reserved()).collect();
    assert_eq!(states.into_iter().collect::<Vec<_>>(), want);
    assert_eq!(ops.len(), OPS.len(), "{ops:?}");
}
