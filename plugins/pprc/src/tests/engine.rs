//! How the engine's reports move a set, at each site.

use gateway_sdk::Event;
use serde_json::json;

use super::*;
use crate::state::State::*;

#[test]
fn start_announces_each_set_at_each_site() {
    let cfg = json!({"local_site": "A", "sets": [
        {"name": "vs1", "production": "A", "peer": "B"},
        {"name": "vs2", "production": "B", "peer": "B"}]});
    let mut m = Machine::new(Config::from_json(&cfg).unwrap());
    let acts = m.handle(&Event::Started { node: "a1".into(), role: "server".into() });
    let states: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::SetVolumeSetState { volume_set, state } => Some((volume_set.as_str(), state.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(states, [("vs1", "OutOfSync"), ("vs2", "Simplex")]);
    assert!(ops(&acts).is_empty(), "nothing to resync to with the peer unknown");
    assert!(!m.view("vs2").unwrap().consistent);
}

#[test]
fn link_up_at_production_resyncs_only_with_auto_resync() {
    let mut m = machine_with("A", "A", "continue", true);
    let acts = m.handle(&ev("vs1", "link_up"));
    assert_eq!((ops(&acts), recorded(&acts)), (vec!["resync".to_string()], vec![Resyncing]));
    assert!(logs(&acts)[0].contains("OutOfSync → Resyncing (link up; auto_resync"), "{acts:?}");
    assert_eq!(recorded(&m.handle(&ev("vs1", "resync_complete"))), [InSync]);

    let mut m = machine_with("A", "A", "continue", false);
    let acts = m.handle(&ev("vs1", "link_up"));
    assert!(ops(&acts).is_empty() && recorded(&acts).is_empty());
    assert!(logs(&acts)[0].contains("auto_resync is off: run resync"), "{acts:?}");
    assert!(m.view("vs1").unwrap().peer_up);
}

#[test]
fn link_up_before_start_resyncs_at_start() {
    let cfg = json!({"local_site": "A", "sets": [{"name": "vs1", "production": "A", "peer": "B"}]});
    let mut m = Machine::new(Config::from_json(&cfg).unwrap());
    m.handle(&Event::PeerUp { peer: "B".into() });
    let acts = m.handle(&Event::Started { node: "a1".into(), role: "server".into() });
    assert_eq!(ops(&acts), ["resync"]);
}

#[test]
fn link_loss_follows_on_link_loss() {
    for (policy, want) in [("continue", OutOfSync), ("freeze", SplitSite)] {
        let mut m = machine_with("A", "A", policy, true);
        feed(&mut m, &[ev("vs1", "link_up"), ev("vs1", "resync_complete")]);
        let acts = m.handle(&ev_d("vs1", "link_down", "eof on data link"));
        assert_eq!(recorded(&acts), [want], "{policy}");
        assert!(ops(&acts).is_empty(), "the engine already acted");
        assert!(logs(&acts)[0].contains(&format!("link down: eof on data link; on_link_loss = {policy}")), "{acts:?}");
        // A resync interrupted by link loss leaves the set OutOfSync under either policy.
        let mut m = machine_with("A", "A", policy, true);
        m.handle(&ev("vs1", "link_up"));
        assert_eq!(recorded(&m.handle(&ev("vs1", "link_down"))), [OutOfSync]);
    }
}

#[test]
fn peer_down_is_link_loss_and_peer_up_only_marks_reachable() {
    let mut m = reach(Cond { production_here: true, state: InSync, peer_up: true });
    let acts = m.handle(&Event::PeerDown { peer: "B".into(), reason: "heartbeat lost".into() });
    assert_eq!(recorded(&acts), [OutOfSync]);
    assert!(!m.view("vs1").unwrap().peer_up);
    let acts = m.handle(&Event::PeerUp { peer: "B".into() });
    assert!(ops(&acts).is_empty() && m.view("vs1").unwrap().peer_up);
    // Another peer's name concerns no set here.
    let before = m.clone();
    assert!(m.handle(&Event::PeerDown { peer: "C".into(), reason: "x".into() }).is_empty());
    assert_eq!(m, before);
}

#[test]
fn resync_failure_is_recorded() {
    let mut m = machine_with("A", "A", "continue", true);
    m.handle(&ev("vs1", "link_up"));
    let acts = m.handle(&ev_d("vs1", "resync_failed", "peer disk full"));
    assert_eq!(recorded(&acts), [OutOfSync]);
    assert_eq!(m.view("vs1").unwrap().last_error.as_deref(), Some("resync failed: peer disk full"));
    assert!(matches!(&acts[0], Action::Log { level, .. } if level == "error"));
    m.handle(&Event::ReplicationError { volume_set: "vs1".into(), code: 5, message: "EIO".into() });
    assert_eq!(m.view("vs1").unwrap().last_error.as_deref(), Some("replication error 5: EIO"));
}

#[test]
fn frozen_and_released() {
    let mut m = reach(Cond { production_here: true, state: InSync, peer_up: true });
    assert_eq!(recorded(&m.handle(&ev("vs1", "frozen"))), [SplitSite]);
    assert!(m.handle(&ev("vs1", "frozen")).is_empty());
    assert_eq!(recorded(&m.handle(&ev("vs1", "released"))), [OutOfSync]);
    assert!(m.handle(&ev("vs1", "released")).is_empty());
}

#[test]
fn promoted_and_demoted() {
    // Promoted with the old production gone: a forced takeover.
    let mut m = reach(Cond { production_here: false, state: OutOfSync, peer_up: false });
    let acts = m.handle(&ev("vs1", "promoted"));
    assert_eq!(recorded(&acts), [RecoverySiteForceSwap]);
    assert_eq!(m.view("vs1").unwrap().production, "B");
    // Promoted by a swap run from the other site: stays InSync.
    let mut m = reach(Cond { production_here: false, state: InSync, peer_up: true });
    assert!(recorded(&m.handle(&ev("vs1", "promoted"))).is_empty());
    assert_eq!((m.view("vs1").unwrap().production.as_str(), m.state("vs1")), ("B", Some(InSync)));
    // Demoted: production is the peer; this copy waits for a resync.
    let mut m = reach(Cond { production_here: true, state: OutOfSync, peer_up: false });
    let acts = m.handle(&ev("vs1", "demoted"));
    assert_eq!(m.view("vs1").unwrap().production, "B");
    assert_eq!(recorded(&acts), Vec::<State>::new(), "already OutOfSync");
    assert!(logs(&acts)[0].contains("production A → B"), "{acts:?}");
}

#[test]
fn a_stale_production_demotes_itself() {
    let mut m = reach(Cond { production_here: true, state: InSync, peer_up: true });
    let acts = m.handle(&ev_d("vs1", "peer_is_production", "generation 7 > 6"));
    assert_eq!(ops(&acts), ["demote"]);
    assert_eq!(recorded(&acts), [OutOfSync]);
    let v = m.view("vs1").unwrap();
    assert_eq!((v.production.as_str(), v.consistent), ("B", true));
    // Already secondary: nothing to do.
    assert!(ops(&m.handle(&ev("vs1", "peer_is_production"))).is_empty());
}

#[test]
fn the_recovery_site_learns_the_state_from_the_engine() {
    let mut m = machine_with("B", "A", "continue", true);
    assert!(!m.view("vs1").unwrap().consistent);
    // A state in `detail` is the production's; a bare link_up means mirroring is established.
    assert_eq!(recorded(&m.handle(&ev_d("vs1", "link_up", "Resyncing"))), [Resyncing]);
    assert!(!m.view("vs1").unwrap().consistent);
    assert!(recorded(&m.handle(&ev_d("vs1", "link_up", "from A"))).is_empty(), "a resync is under way");
    assert_eq!(recorded(&m.handle(&ev("vs1", "resync_complete"))), [InSync]);
    assert!(m.view("vs1").unwrap().consistent);
    assert_eq!(recorded(&m.handle(&ev_d("vs1", "peer_state", "OutOfSync"))), [OutOfSync]);
    assert_eq!(recorded(&m.handle(&ev_d("vs1", "link_up", "from A"))), [InSync]);
    assert_eq!(recorded(&m.handle(&ev("vs1", "resync_started"))), [Resyncing]);
    // Never a reserved state, never InSync with the link down.
    assert!(recorded(&m.handle(&ev_d("vs1", "peer_state", "XDMode"))).is_empty());
    m.handle(&ev("vs1", "link_down"));
    assert_eq!(m.state("vs1"), Some(OutOfSync));
    assert!(recorded(&m.handle(&ev_d("vs1", "peer_state", "InSync"))).is_empty());
    assert!(recorded(&m.handle(&ev_d("vs1", "peer_state", "nonsense"))).is_empty());
    // That resync never finished: the copy here is not consistent, so no clean failover.
    assert!(refused(&cmd(&mut m, "failover")).unwrap().contains("not consistent"));
    assert_eq!(ops(&m.handle(&admin("failover", json!({"volume_set": "vs1", "force": true})))), ["failover"]);
}

#[test]
fn a_restart_keeps_what_the_recorded_state_says() {
    let open = |local: &str, state: &str| {
        let cfg = json!({"local_site": local, "sets": [
            {"name": "vs1", "production": "B", "home": "A", "peer": if local == "A" { "B" } else { "A" }, "state": state}]});
        Machine::new(Config::from_json(&cfg).unwrap())
    };
    // At B, production after a forced takeover: still RecoverySite-ForceSwap, and failback
    // knows A is home.
    let mut b = open("B", "RecoverySite-ForceSwap");
    assert_eq!(b.state("vs1"), Some(RecoverySiteForceSwap));
    b.handle(&ev("vs1", "link_up"));
    assert_eq!(ops(&cmd(&mut b, "failback")), ["resync"]);
    // At A, the recovery site: a copy that was complete allows a clean failover.
    let mut a = open("A", "InSync");
    assert_eq!((a.state("vs1"), a.view("vs1").unwrap().consistent), (Some(OutOfSync), true));
    assert_eq!(ops(&cmd(&mut a, "failover")), ["failover"]);
    let a = open("A", "Resyncing");
    assert_eq!((a.state("vs1"), a.view("vs1").unwrap().consistent), (Some(Simplex), false));
}

#[test]
fn events_for_others_are_reported_not_applied() {
    let mut m = machine_with("A", "A", "continue", true);
    let before = m.clone();
    let acts = m.handle(&ev("vs9", "link_up"));
    assert!(logs(&acts)[0].contains("unknown volume set vs9"));
    let wrong_site =
        Event::from_json(r#"{"type":"volume_set","volume_set":"vs1","change":"link_up","local_site":"B"}"#).unwrap();
    assert!(logs(&m.handle(&wrong_site))[0].contains("the engine says it runs at B"));
    let odd = m.handle(&ev("vs1", "moon_phase"));
    assert!(logs(&odd)[0].contains("ignored unknown engine change `moon_phase`"));
    assert_eq!(m, before);
    // Other sets are untouched by vs1's events.
    m.handle(&ev("vs1", "link_up"));
    assert_eq!(m.view("vs2"), before.view("vs2"));
}
