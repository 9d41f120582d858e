//! The JSON shapes this policy exchanges with the host's replication engine.
//!
//! Events and actions cross the ABI as JSON documents tagged by `type` (see
//! `gateway_sdk::policy`). This module reads the engine's `volume_set` event and writes the
//! `replicate` and `refuse` actions by their JSON shape, so it works whether or not the SDK
//! in use has typed variants for them (`Event::VolumeSet`, `Action::Replicate`,
//! `Action::Refuse`): an event is read back from its JSON, and an action is built with
//! `Action::from_json`, which gives the typed variant when the SDK knows it and
//! `Action::Unknown` (carried across the ABI unchanged) when it does not.
//!
//! * event `{"type":"volume_set","volume_set":"vs1","change":"link_up","local_site":"A",
//!   "production":"A","detail":"..."}` (`local_site`, `production`, `detail` optional);
//! * action `{"type":"replicate","volume_set":"vs1","op":"resync"}`, with `op` one of
//!   `freeze`, `run`, `suspend`, `resync`, `swap`, `failover`, `demote`;
//! * action `{"type":"refuse","reason":"cannot swap vs1: ..."}`.

use gateway_sdk::{Action, Event};
use serde_json::{json, Value};

/// A change the replication engine reports on one volume set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSetEvent {
    pub volume_set: String,
    pub change: String,
    /// The site the reporting engine runs at, when it says.
    pub local_site: Option<String>,
    /// The production site as the engine sees it (informational: changes of production
    /// arrive as `promoted`, `demoted` and `peer_is_production`).
    pub production: Option<String>,
    pub detail: Option<String>,
}

/// The engine's `volume_set` event, if `event` is one (typed or not); `Err` when it is one
/// but malformed.
pub fn volume_set_event(event: &Event) -> Option<Result<VolumeSetEvent, String>> {
    let v: Value = serde_json::from_str(&event.to_json()).ok()?;
    if v.get("type").and_then(Value::as_str) != Some("volume_set") {
        return None;
    }
    let text = |k: &str| match v.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let (Some(volume_set), Some(change)) = (text("volume_set"), text("change")) else {
        return Some(Err(format!("volume_set event without `volume_set` or `change`: {v}")));
    };
    Some(Ok(VolumeSetEvent {
        volume_set,
        change,
        local_site: text("local_site"),
        production: text("production"),
        detail: text("detail"),
    }))
}

/// Build the engine's `volume_set` event (for tests and simulators).
pub fn volume_set_change(volume_set: &str, change: &str, detail: Option<&str>) -> Event {
    let mut v = json!({ "type": "volume_set", "volume_set": volume_set, "change": change });
    if let Some(d) = detail {
        v["detail"] = json!(d);
    }
    typed_event(v)
}

fn typed_event(v: Value) -> Event {
    Event::from_json(&v.to_string()).unwrap_or(Event::Unknown(v))
}

fn typed_action(v: Value) -> Action {
    Action::from_json(&v.to_string()).unwrap_or(Action::Unknown(v))
}

/// Ask the engine to carry out a mechanism on a volume set.
pub fn replicate(volume_set: &str, op: &str) -> Action {
    typed_action(json!({ "type": "replicate", "volume_set": volume_set, "op": op }))
}

/// Refuse a command; the only action of its answer.
pub fn refuse(reason: String) -> Action {
    typed_action(json!({ "type": "refuse", "reason": reason }))
}

pub fn log(level: &str, message: String) -> Action {
    Action::Log { level: level.into(), message }
}

pub fn set_state(volume_set: &str, state: &str) -> Action {
    Action::SetVolumeSetState { volume_set: volume_set.into(), state: state.into() }
}

fn json_of(a: &Action) -> Value {
    serde_json::from_str(&a.to_json()).unwrap_or(Value::Null)
}

/// `(volume_set, op)` if `a` is a `replicate` action.
pub fn as_replicate(a: &Action) -> Option<(String, String)> {
    let v = json_of(a);
    if v.get("type")?.as_str()? != "replicate" {
        return None;
    }
    Some((v.get("volume_set")?.as_str()?.to_owned(), v.get("op")?.as_str()?.to_owned()))
}

/// The reason if `a` is a `refuse` action.
pub fn as_refuse(a: &Action) -> Option<String> {
    let v = json_of(a);
    if v.get("type")?.as_str()? != "refuse" {
        return None;
    }
    Some(v.get("reason")?.as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_survive_the_abi_round_trip() {
        let e = volume_set_change("vs1", "link_up", Some("InSync"));
        let back = Event::from_json(&e.to_json()).unwrap();
        let parsed = volume_set_event(&back).unwrap().unwrap();
        assert_eq!((parsed.volume_set.as_str(), parsed.change.as_str()), ("vs1", "link_up"));
        assert_eq!(parsed.detail.as_deref(), Some("InSync"));
        assert!(volume_set_event(&Event::Tick { now_ms: 1 }).is_none());
        let bad = Event::from_json(r#"{"type":"volume_set","change":"x"}"#).unwrap();
        assert!(volume_set_event(&bad).unwrap().is_err());

        let r = replicate("vs1", "swap");
        assert_eq!(Action::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(as_replicate(&r), Some(("vs1".into(), "swap".into())));
        assert_eq!(as_refuse(&r), None);
        let f = refuse("no".into());
        assert_eq!(as_refuse(&Action::from_json(&f.to_json()).unwrap()).as_deref(), Some("no"));
        assert_eq!(as_replicate(&log("info", "x".into())), None);
    }
}
