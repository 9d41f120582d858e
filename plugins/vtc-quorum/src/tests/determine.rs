//! Step 464/564: when one controller elects yes, from its own key and the server's report.

use gateway_sdk::Event;
use serde_json::json;

use super::{machine, report};
use crate::key::{Claim, Eid, Key, Value};
use crate::Machine;

fn value(primary: &str, position: u64) -> Value {
    Value { primary: primary.into(), secondary: None, position }
}

fn up(m: &mut Machine, server: &str, position: u64) {
    m.handle(&Event::PeerUp { peer: server.into() });
    m.handle(&report(server, true, position, 0));
}

#[test]
fn a_current_server_that_agrees_with_the_key_is_elected() {
    let mut m = machine("c1", 3);
    up(&mut m, "B", 7);
    assert_eq!(m.determine(&value("B", 7)), Ok(()));
    // Only at the position it reports (the guard of the promotion).
    assert!(m.determine(&value("B", 6)).unwrap_err().contains("reports position 7, not 6"));
}

#[test]
fn no_key_is_never_a_yes() {
    let mut m = Machine::new(super::config("c1", 3, json!({})));
    m.handle(&Event::KeyLoaded { key: None });
    up(&mut m, "B", 7);
    assert!(!m.keyed());
    assert!(m.determine(&value("B", 7)).unwrap_err().contains("no shutdown key"));
    // A torn key is the same as none.
    let mut m = Machine::new(super::config("c1", 3, json!({})));
    m.handle(&Event::KeyLoaded { key: Some(json!({ "v": 1, "controller": "c1", "ge": "torn" })) });
    up(&mut m, "B", 7);
    assert!(m.determine(&value("B", 7)).is_err());
    // Another controller's key is not this one's.
    let other = Key::genesis("c2", &["A".into(), "B".into()]).to_json();
    let mut m = Machine::new(super::config("c1", 3, json!({})));
    m.handle(&Event::KeyLoaded { key: Some(other) });
    assert!(!m.keyed());
}

#[test]
fn a_server_not_seen_or_not_current_is_refused_with_why() {
    let mut m = machine("c1", 3);
    assert!(m.determine(&value("B", 0)).unwrap_err().contains("cannot reach B"));
    m.handle(&Event::PeerUp { peer: "B".into() });
    m.handle(&report("B", true, 7, 3));
    assert!(m.determine(&value("B", 7)).unwrap_err().contains("3 copies pending towards it"));
    // A saw further than B: B is behind what the key has seen.
    up(&mut m, "A", 9);
    m.handle(&Event::PeerDown { peer: "A".into(), reason: "crash".into() });
    m.handle(&report("B", true, 7, 0));
    let e = m.determine(&value("B", 7)).unwrap_err();
    assert!(e.contains("behind position 9"), "{e}");
}

#[test]
fn the_other_servers_final_position_and_claims_block_it() {
    let mut m = machine("c1", 3);
    up(&mut m, "A", 10);
    up(&mut m, "B", 10);
    // A goes online (a passed election at 10): B is not current any more, whatever its position.
    let e = Eid { by: "c2".into(), n: 4 };
    m.handle(&Event::ControllerMessage {
        from: "c2".into(),
        body: json!({ "v": 1, "gen": 9, "msg": { "kind": "outcome", "outcome": {
            "election": e, "value": { "primary": "A", "position": 10 }, "gen": 9, "yes": 2, "of": 3 } } }),
    });
    assert_eq!(m.in_force(), Some(("A".into(), 10)));
    let why = m.determine(&value("B", 10)).unwrap_err();
    assert!(why.contains("A may hold acknowledged writes it lacks") && why.contains("c2#4"), "{why}");
    // A itself is still electable (it holds its own writes).
    assert_eq!(m.determine(&value("A", 10)), Ok(()));
    // A stops gracefully (immediate) at 15 with copies pending towards B: B at 12 is not current.
    m.handle(&report("B", true, 12, 0));
    m.handle(&report("A", false, 15, 0));
    assert_eq!(m.key().final_of("A"), Some(15));
    assert!(m.key().claims.iter().all(|c: &Claim| c.server != "A"), "the final report ends A's claim");
    let why = m.determine(&value("B", 12)).unwrap_err();
    assert!(why.contains("A stopped at 15"), "{why}");
    // Once B has all of it (normal / expedite finished the copies), B is current.
    m.handle(&report("B", true, 15, 0));
    assert_eq!(m.determine(&value("B", 15)), Ok(()));
}

#[test]
fn a_server_that_lost_data_does_not_agree_with_the_key() {
    let mut m = machine("c1", 3);
    up(&mut m, "B", 20);
    m.handle(&Event::PeerDown { peer: "B".into(), reason: "disk replaced".into() });
    up(&mut m, "B", 3);
    let why = m.determine(&value("B", 3)).unwrap_err();
    assert!(why.contains("does not agree with the shutdown key") || why.contains("behind"), "{why}");
}

#[test]
fn a_held_server_waits_for_the_return_command() {
    let mut m = machine("c1", 3);
    up(&mut m, "B", 4);
    let acts =
        m.handle(&Event::ShutdownCommand { servers: vec!["B".into()], mode: "normal".into(), from: "operator".into() });
    assert!(acts.iter().any(
        |a| matches!(a, gateway_sdk::Action::ShutdownServer { server, mode } if server == "B" && mode == "normal")
    ));
    assert!(m.determine(&value("B", 4)).unwrap_err().contains("held by a shutdown command (mode normal)"));
    m.handle(&Event::ReturnCommand { servers: vec!["B".into()], from: "operator".into() });
    assert_eq!(m.determine(&value("B", 4)), Ok(()));
}
