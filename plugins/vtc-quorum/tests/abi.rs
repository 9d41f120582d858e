//! The policy driven through the C ABI, as a host drives it: the vtable's `open` with a JSON
//! config, then events in and actions out as JSON documents.

use gateway_sdk::abi::{GwError, GwInstance, GwStr, GW_OK};
use gateway_sdk::policy::{policy_vtable, ImportedPolicy};
use gateway_sdk::{Action, Event};
use serde_json::{json, Value};

fn open(config: &Value) -> Result<ImportedPolicy, String> {
    let vt = policy_vtable::<gw_vtc_quorum::Plugin>();
    let mut out: GwInstance = std::ptr::null_mut();
    let mut err = GwError::default();
    let open = vt.open.expect("open entry");
    let text = config.to_string();
    // SAFETY: valid arguments for the call; a null host table is allowed.
    let code = unsafe { open(std::ptr::null(), GwStr::new(&text), std::ptr::null(), &mut out, &mut err) };
    if code != GW_OK {
        return Err(err.message());
    }
    // SAFETY: `out` came from this table's open and is owned by the returned value.
    unsafe { ImportedPolicy::new(vt, out, "vtc-quorum".into()) }
}

#[test]
fn bad_configs_are_refused_at_open_naming_the_key() {
    let e = open(&json!({ "controller": "c1", "controllers": ["c1", "c2"], "servers": ["A", "B"], "treshold": {} }))
        .err()
        .unwrap();
    assert!(e.starts_with("vtc-quorum config: treshold: unknown key"), "{e}");
    let e = open(&json!({ "controller": "c1", "controllers": ["c1", "c2", "c3", "c4"], "servers": ["A", "B"],
                           "threshold": { "count": 1 } }))
    .err()
    .unwrap();
    assert!(e.contains("two groups"), "{e}");
}

#[test]
fn a_lone_controller_keys_elects_and_reports_across_the_abi() {
    // One controller: the threshold is 0 of 1, so its own election is more than the threshold.
    let mut p = open(&json!({ "controller": "c1", "controllers": ["c1"], "servers": ["A", "B"] })).unwrap();
    p.on_event(&Event::Started { node: "c1".into(), role: "controller".into() }).unwrap();
    let acts = p.on_event(&Event::KeyLoaded { key: None }).unwrap();
    assert!(acts.iter().any(
        |a| matches!(a, Action::Log { level, message } if level == "warn" && message.contains("no shutdown key"))
    ));
    let acts = p.on_event(&Event::Admin { command: "bootstrap".into(), args: json!({}) }).unwrap();
    let key = acts
        .iter()
        .find_map(|a| match a {
            Action::SaveKey { key } => Some(key.clone()),
            _ => None,
        })
        .expect("bootstrap saves a blank key");
    assert_eq!((key["v"].as_u64(), key["controller"].as_str()), (Some(1), Some("c1")));
    // A second bootstrap is refused.
    let acts = p.on_event(&Event::Admin { command: "bootstrap".into(), args: json!({}) }).unwrap();
    assert!(matches!(&acts[..], [Action::Refuse { reason }] if reason.contains("already has a key")));
    for s in ["A", "B"] {
        p.on_event(&Event::PeerUp { peer: s.into() }).unwrap();
        let e = Event::ServerReport { server: s.into(), operational: true, position: 4, copies_pending: 0 };
        p.on_event(&e).unwrap();
    }
    let mut online = Vec::new();
    let mut status = None;
    for t in 1..=40 {
        for a in p.on_event(&Event::Tick { now_ms: t * 100 }).unwrap() {
            match a {
                Action::GoOnline { target } => online.push(target),
                Action::Report { key, value } if key == "quorum" => status = Some(value),
                _ => {}
            }
        }
    }
    assert!(online.contains(&"A+B@4".to_owned()), "{online:?}");
    let status = status.expect("a status");
    assert_eq!(status["outcome"], "online A+B");
    assert_eq!(status["reason"], "1 of 1 controllers elected A; threshold 0");
    // Messages that are not ours, or of another version, are logged and ignored.
    let body = json!({ "v": 2, "gen": 1, "msg": { "kind": "abort" } });
    let acts = p.on_event(&Event::ControllerMessage { from: "c1".into(), body: body.clone() }).unwrap();
    assert!(acts.is_empty(), "from itself: ignored");
    let acts = p.on_event(&Event::Admin { command: "status".into(), args: json!({}) }).unwrap();
    assert!(matches!(&acts[..], [Action::Report { key, .. }] if key == "quorum"));
    // Events for other policies pass without effect.
    let e = Event::VolumeSet {
        volume_set: "vs1".into(),
        change: "link_up".into(),
        local_site: "A".into(),
        production: "A".into(),
        detail: String::new(),
    };
    assert!(p.on_event(&e).unwrap().is_empty());
    assert!(!p.failed());
}

#[test]
fn a_peer_message_crosses_as_json() {
    let cfg = |me: &str| json!({ "controller": me, "controllers": ["c1", "c2", "c3"], "servers": ["A", "B"] });
    let mut p = open(&cfg("c2")).unwrap();
    p.on_event(&Event::KeyLoaded { key: None }).unwrap();
    p.on_event(&Event::Admin { command: "bootstrap".into(), args: json!({}) }).unwrap();
    p.on_event(&Event::PeerUp { peer: "B".into() }).unwrap();
    p.on_event(&Event::ServerReport { server: "B".into(), operational: true, position: 9, copies_pending: 0 }).unwrap();
    // c1 polls: "place B online at 9?" — c2 saves its vote, then answers c1 with its election.
    let body = json!({ "v": 1, "gen": 7, "msg": { "kind": "elect_request", "election": { "by": "c1", "n": 3 },
                       "value": { "primary": "B", "position": 9 } } });
    let acts = p.on_event(&Event::ControllerMessage { from: "c1".into(), body }).unwrap();
    let save = acts.iter().position(|a| matches!(a, Action::SaveKey { .. })).expect("the vote is saved");
    let (send, to, reply) = acts
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a {
            Action::SendToController { to, body } => Some((i, to.clone(), body.clone())),
            _ => None,
        })
        .expect("an answer");
    assert!(save < send, "write-ahead");
    assert_eq!(to, "c1");
    assert_eq!(reply["msg"]["kind"], "election");
    assert_eq!(reply["msg"]["yes"], true);
    assert!(reply["gen"].as_u64().unwrap() > 7, "the Lamport generation moved past the sender's");
}
