//! The policy driven through the C ABI, as the host drives it: the vtable's `open` with a
//! JSON config, then events in and actions out as JSON documents.

use gateway_sdk::abi::{GwError, GwInstance, GwStr, GW_OK};
use gateway_sdk::policy::{policy_vtable, ImportedPolicy};
use gateway_sdk::{Action, Event};
use serde_json::json;

fn open(config: &str) -> Result<ImportedPolicy, String> {
    let vt = policy_vtable::<gw_pprc::Plugin>();
    let mut out: GwInstance = std::ptr::null_mut();
    let mut err = GwError::default();
    let open = vt.open.expect("open entry");
    // SAFETY: valid arguments for the call; a null host table is allowed.
    let code = unsafe { open(std::ptr::null(), GwStr::new(config), std::ptr::null(), &mut out, &mut err) };
    if code != GW_OK {
        return Err(err.message());
    }
    // SAFETY: `out` came from this table's open and is owned by the returned value.
    unsafe { ImportedPolicy::new(vt, out, "pprc".into()) }
}

const CONFIG: &str = r#"{ "local_site": "A", "sets": [
    { "name": "vs1", "mode": "sync", "production": "A", "peer": "B", "on_link_loss": "freeze", "auto_resync": true } ] }"#;

fn states(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetVolumeSetState { state, .. } => Some(state.clone()),
            _ => None,
        })
        .collect()
}

fn ops(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Replicate { op, .. } => Some(op.clone()),
            _ => None,
        })
        .collect()
}

/// The engine's report as the gateway's engine sends it.
fn engine(change: &str, detail: &str) -> Event {
    Event::VolumeSet {
        volume_set: "vs1".into(),
        change: change.into(),
        local_site: "A".into(),
        production: "A".into(),
        detail: detail.into(),
    }
}

#[test]
fn bad_configs_are_refused_at_open_naming_the_key() {
    let err = open(&CONFIG.replace(r#""sync""#, r#""xd""#)).err().unwrap();
    assert_eq!(err, "pprc config: sets[0].mode: xd mode is not implemented yet");
    let err = open(&CONFIG.replace("on_link_loss", "on_link_los")).err().unwrap();
    assert!(err.contains("sets[0].on_link_los: unknown key"), "{err}");
    assert!(open("").err().unwrap().contains("`local_site` is required"));
    assert!(open("{").err().unwrap().contains("not valid JSON"));
}

#[test]
fn a_set_goes_through_its_life_across_the_abi() {
    let mut p = open(CONFIG).unwrap();
    let started = p.on_event(&Event::Started { node: "a1".into(), role: "server".into() }).unwrap();
    assert_eq!(states(&started), ["OutOfSync"]);

    // The engine's event crosses as JSON; the machine answers with a resync.
    let acts = p.on_event(&engine("link_up", "")).unwrap();
    assert_eq!((ops(&acts), states(&acts)), (vec!["resync".into()], vec!["Resyncing".into()]));
    let acts = p.on_event(&engine("resync_complete", "1048576 bytes")).unwrap();
    assert_eq!(states(&acts), ["InSync"]);

    // A refused command: one Refuse, nothing else.
    let refuse = |acts: &[Action]| match acts {
        [Action::Refuse { reason }] => Some(reason.clone()),
        _ => None,
    };
    let acts = p.on_event(&Event::Admin { command: "run".into(), args: json!({"volume_set": "vs1"}) }).unwrap();
    assert_eq!(refuse(&acts).unwrap(), "cannot run vs1: it is InSync (run releases a SplitSite set)");

    // Link loss with on_link_loss = freeze, then the lone site recovers.
    let acts = p.on_event(&Event::PeerDown { peer: "B".into(), reason: "site lost".into() }).unwrap();
    assert_eq!(states(&acts), ["SplitSite"]);
    let acts = p.on_event(&Event::Admin { command: "recover".into(), args: json!({"volume_set": "vs1"}) }).unwrap();
    assert!(matches!(&acts[0], Action::Log { message, .. } if message.contains("recover vs1 at A: SplitSite")));
    assert_eq!((ops(&acts), states(&acts)), (vec!["run".into()], vec!["OutOfSync".into()]));

    // Moving the set away needs the peer.
    let off = json!({"volume_set": "vs1", "moving_across_site": true});
    let acts = p.on_event(&Event::Admin { command: "offline".into(), args: off }).unwrap();
    assert!(refuse(&acts).unwrap().contains("cannot release it to the peer: peer B unreachable"));

    // Events and commands for others pass without effect.
    assert!(p.on_event(&Event::Tick { now_ms: 5 }).unwrap().is_empty());
    assert!(p.on_event(&Event::Admin { command: "vote".into(), args: json!({}) }).unwrap().is_empty());
    assert!(!p.failed());
}
