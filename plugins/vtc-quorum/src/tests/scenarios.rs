//! The patent's scenarios on an in-memory cluster of controllers (the test plays the servers:
//! it feeds their reports and reads the commands).

use gateway_sdk::{Action, Event};
use serde_json::json;

use super::{report, Cluster};

fn peer_up(c: &mut Cluster, server: &str, position: u64) {
    c.all(&Event::PeerUp { peer: server.into() });
    c.all(&report(server, true, position, 0));
    c.settle();
}

fn peer_down(c: &mut Cluster, server: &str) {
    c.all(&Event::PeerDown { peer: server.into(), reason: "connection lost".into() });
    c.settle();
}

fn graceful_stop(c: &mut Cluster, server: &str, position: u64) {
    c.all(&report(server, false, position, 0));
    peer_down(c, server);
}

fn outcome(c: &Cluster, i: usize) -> String {
    c.statuses()[i]["outcome"].as_str().unwrap_or_default().to_owned()
}

/// Four controllers (threshold 2: three must elect) with both servers online, A primary at
/// `pos` and B in sync.
fn online_pair(pos: u64) -> Cluster {
    online_pair_lagging(pos, pos)
}

/// The same with B at `b` (copies pending towards it).
fn online_pair_lagging(pos: u64, b: u64) -> Cluster {
    let mut c = Cluster::new(4, json!({}));
    peer_up(&mut c, "A", 0);
    peer_up(&mut c, "B", 0);
    let mark = c.mark();
    c.run(3000);
    let online = c.online_since(mark);
    assert!(online.contains(&"A+B@0".to_owned()), "{online:?}");
    // The host promoted A (epoch record at 1); writes went to both.
    c.all(&report("A", true, pos, 0));
    c.all(&report("B", true, b, pos - b));
    c.run(1000);
    for i in 0..4 {
        assert_eq!(outcome(&c, i), "online A+B", "{:?}", c.statuses()[i]);
    }
    c
}

fn shutdown(c: &mut Cluster, via: usize, servers: &[&str], mode: &str) -> Vec<Action> {
    let servers = servers.iter().map(|s| s.to_string()).collect();
    let acts = c.event(via, &Event::ShutdownCommand { servers, mode: mode.into(), from: "operator".into() });
    c.settle();
    acts
}

fn give_return(c: &mut Cluster, via: usize, servers: &[&str]) {
    let servers = servers.iter().map(|s| s.to_string()).collect();
    c.event(via, &Event::ReturnCommand { servers, from: "operator".into() });
    c.settle();
}

#[test]
fn shutdown_command_given_to_one_controller_is_broadcast_and_keyed() {
    let mut c = online_pair(10);
    let acts = shutdown(&mut c, 2, &["A", "B"], "expedite");
    let cmds: Vec<String> = acts
        .iter()
        .filter_map(|a| match a {
            Action::ShutdownServer { server, mode } => Some(format!("{server}:{mode}")),
            _ => None,
        })
        .collect();
    assert_eq!(cmds, ["A:expedite", "B:expedite"]);
    // Claim 4: every controller heard it and saved a key recording the mode.
    for (i, key) in c.keys.iter().enumerate() {
        let key = key.as_ref().unwrap();
        assert_eq!(key["mode"], "expedite", "c{}", i + 1);
        assert_eq!(key["shutdown"]["origin"], "c3");
        assert_eq!(key["shutdown"]["servers"], json!(["A", "B"]));
        assert!(key["holds"]["A"]["held"].as_bool().unwrap());
    }
    // Only the controller given the command takes the servers out.
    assert!(c.log.iter().filter(|(_, a)| matches!(a, Action::ShutdownServer { .. })).all(|(i, _)| *i == 2));
    // A bad command is refused.
    let acts = shutdown(&mut c, 0, &["C"], "normal");
    assert!(matches!(&acts[..], [Action::Refuse { reason }] if reason.contains("unknown server")));
    let acts = shutdown(&mut c, 0, &["A"], "gently");
    assert!(matches!(&acts[..], [Action::Refuse { reason }] if reason.contains("unknown mode")));
}

#[test]
fn fig4_both_shut_down_normal_one_returns_and_goes_online_alone() {
    let mut c = online_pair(10);
    shutdown(&mut c, 0, &["A", "B"], "normal");
    graceful_stop(&mut c, "A", 10);
    graceful_stop(&mut c, "B", 10);
    give_return(&mut c, 1, &["A", "B"]);
    // Only B comes back (step 460: A is not operational).
    let mark = c.mark();
    peer_up(&mut c, "B", 10);
    c.run(4000);
    assert_eq!(c.online_since(mark), ["B@10"]);
    for i in 0..4 {
        assert_eq!(outcome(&c, i), "online B");
    }
    let reason = c.statuses()[0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("of 4 controllers elected B; threshold 2"), "{reason}");
    // A returns later: resynced as B's secondary, never a second primary.
    let mark = c.mark();
    peer_up(&mut c, "A", 10);
    let online = c.online_since(mark);
    assert!(!online.is_empty() && online.iter().all(|t| t == "B+A"), "{online:?}");
    c.run(1000);
    assert_eq!(outcome(&c, 3), "online B+A");
}

#[test]
fn fig4_immediate_leaves_the_secondary_behind_and_offline() {
    let mut c = online_pair_lagging(10, 7);
    shutdown(&mut c, 0, &["A", "B"], "immediate");
    // Copies towards B were pending: B stopped at 7.
    graceful_stop(&mut c, "A", 10);
    graceful_stop(&mut c, "B", 7);
    give_return(&mut c, 0, &["A", "B"]);
    let mark = c.mark();
    peer_up(&mut c, "B", 7);
    c.run(6000);
    assert!(c.online_since(mark).is_empty());
    let st = &c.statuses()[2];
    assert_eq!(st["outcome"], "offline");
    let reason = st["reason"].as_str().unwrap();
    assert!(reason.contains("B is not current") && reason.contains("A stopped at 10"), "{reason}");
    assert_eq!(st["mode"], "immediate");
    // A, which holds everything, returns: the pair syncs up and goes online with both.
    peer_up(&mut c, "A", 10);
    let mark = c.mark();
    c.run(4000);
    assert!(c.online_since(mark).contains(&"A+B@10".to_owned()), "{:?}", c.online_since(mark));
}

#[test]
fn fig4_force_after_writes_keeps_the_secondary_offline() {
    let mut c = online_pair(10);
    shutdown(&mut c, 0, &["A", "B"], "force");
    // Force: no final reports, the connections just end.
    peer_down(&mut c, "A");
    peer_down(&mut c, "B");
    give_return(&mut c, 0, &["A", "B"]);
    let mark = c.mark();
    peer_up(&mut c, "B", 10);
    c.run(6000);
    assert!(c.online_since(mark).is_empty(), "A may have acknowledged writes B lacks");
    let reason = c.statuses()[1]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("A may hold acknowledged writes it lacks"), "{reason}");
    // A returns: it resumes its own promotion (the passed election is still in force).
    let mark = c.mark();
    peer_up(&mut c, "A", 12);
    assert!(c.online_since(mark).contains(&"A@0".to_owned()), "{:?}", c.online_since(mark));
}

#[test]
fn fig5_first_shut_down_second_continues_fails_and_returns() {
    let mut c = online_pair(10);
    // Step 510-530: A is taken out (normal: it finished its copies to B).
    shutdown(&mut c, 2, &["A"], "normal");
    graceful_stop(&mut c, "A", 10);
    let mark = c.mark();
    c.run(4000);
    assert_eq!(c.online_since(mark), ["B@10"], "B continues alone");
    // Writes at B; then B fails (step 540).
    c.all(&report("B", true, 15, 0));
    peer_down(&mut c, "B");
    c.run(1000);
    assert_eq!(outcome(&c, 0), "offline");
    // A is returned while B is down (step 560: B not operational): A is stale, stays offline.
    give_return(&mut c, 3, &["A"]);
    let mark = c.mark();
    peer_up(&mut c, "A", 10);
    c.run(6000);
    assert!(c.online_since(mark).iter().all(|t| !t.starts_with('A')), "{:?}", c.online_since(mark));
    let reason = c.statuses()[0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("B may hold acknowledged writes it lacks"), "{reason}");
    // B comes back (step 550): it resumes as primary, and A joins it.
    let mark = c.mark();
    peer_up(&mut c, "B", 15);
    c.run(2000);
    let online = c.online_since(mark);
    assert!(online.contains(&"B@10".to_owned()) && online.contains(&"B+A".to_owned()), "{online:?}");
}

#[test]
fn not_more_than_the_threshold_stays_offline_and_says_so() {
    let mut c = online_pair(10);
    shutdown(&mut c, 0, &["A", "B"], "normal");
    graceful_stop(&mut c, "A", 10);
    graceful_stop(&mut c, "B", 10);
    give_return(&mut c, 0, &["A", "B"]);
    // Two of four controllers can talk: two elect B, the threshold is two.
    c.cut.insert(2);
    c.cut.insert(3);
    let mark = c.mark();
    peer_up(&mut c, "B", 10);
    c.run(5000);
    assert!(c.online_since(mark).is_empty());
    let reasons: Vec<String> = c.statuses()[..2].iter().map(|s| s["reason"].as_str().unwrap().to_owned()).collect();
    assert!(reasons.iter().any(|r| r.contains("2 of 4 controllers elected B; threshold 2")), "{reasons:?}");
    // The others come back: more than the threshold, online.
    c.cut.clear();
    let mark = c.mark();
    c.run(8000);
    assert_eq!(c.online_since(mark), ["B@10"]);
}

#[test]
fn torn_keys_never_vote_yes() {
    let mut c = online_pair(10);
    shutdown(&mut c, 0, &["A", "B"], "normal");
    graceful_stop(&mut c, "A", 10);
    graceful_stop(&mut c, "B", 10);
    give_return(&mut c, 0, &["A", "B"]);
    // Two controllers restart with torn keys: two valid keys remain, not more than 2.
    c.restart(1, true);
    c.restart(2, true);
    c.settle();
    peer_up(&mut c, "B", 10);
    let mark = c.mark();
    c.run(8000);
    assert!(c.online_since(mark).is_empty());
    let votes: Vec<(usize, bool)> = c.log[mark..]
        .iter()
        .filter_map(|(i, a)| match a {
            Action::Vote { yes, .. } => Some((*i, *yes)),
            _ => None,
        })
        .collect();
    assert!(votes.iter().all(|(i, yes)| !(*yes && (*i == 1 || *i == 2))), "{votes:?}");
    assert_eq!(c.statuses()[1]["key"], "missing");
    // They never save a key either.
    assert!(c.log[mark..].iter().all(|(i, a)| !(matches!(a, Action::SaveKey { .. }) && (*i == 1 || *i == 2))));
}

#[test]
fn a_late_controller_learns_the_outcome() {
    let mut c = online_pair(10);
    shutdown(&mut c, 0, &["A", "B"], "normal");
    graceful_stop(&mut c, "A", 10);
    graceful_stop(&mut c, "B", 10);
    give_return(&mut c, 0, &["A", "B"]);
    c.down.insert(3);
    peer_up(&mut c, "B", 10);
    c.run(4000);
    assert_eq!(outcome(&c, 0), "online B");
    // c4 comes back with its (older) key and learns what was decided.
    c.restart(3, false);
    c.event(3, &Event::PeerUp { peer: "B".into() });
    c.event(3, &report("B", true, 11, 0));
    c.settle();
    c.run(2000);
    assert_eq!(outcome(&c, 3), "online B");
    assert!(c.m[3].key().claims.iter().any(|cl| cl.server == "B" && cl.decided));
}

#[test]
fn a_controller_restarting_during_its_election_aborts_it() {
    let mut c = online_pair(10);
    shutdown(&mut c, 0, &["A", "B"], "normal");
    graceful_stop(&mut c, "A", 10);
    graceful_stop(&mut c, "B", 10);
    give_return(&mut c, 0, &["A", "B"]);
    // Everyone but c1 is cut off; c1 starts an election that cannot pass, then restarts.
    c.cut.extend([1, 2, 3]);
    peer_up(&mut c, "B", 10);
    c.run(1500);
    let open = c.keys[0].as_ref().unwrap()["open"].clone();
    assert!(!open.is_null(), "c1 has an election open");
    c.cut.clear();
    c.restart(0, false);
    c.settle();
    let key = c.keys[0].as_ref().unwrap();
    assert!(key["open"].is_null());
    assert_eq!(key["resolved"].as_array().unwrap().last().unwrap()["decided"], false);
    let mark = c.mark();
    c.event(0, &Event::PeerUp { peer: "B".into() });
    c.event(0, &report("B", true, 10, 0));
    c.run(6000);
    assert_eq!(c.online_since(mark), ["B@10"]);
}
