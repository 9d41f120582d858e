//! The policy's configuration, parsed strictly: an unknown key or a bad value is an error
//! that names the key (`sets[0].on_link_loss: ...`), so a typo cannot silently change how a
//! volume set behaves on link loss.
//!
//! ```json
//! { "local_site": "A",
//!   "sets": [ { "name": "vs1", "mode": "sync", "production": "A", "peer": "B",
//!               "on_link_loss": "continue", "auto_resync": true } ] }
//! ```
//!
//! * `local_site` (required): the site this node belongs to.
//! * `sets` (required, at least one): the volume sets this policy manages.
//!   * `name` (required, unique);
//!   * `peer` (required): the other site of the pair (not `local_site`);
//!   * `production` (required): the site producing the set now, `local_site` or `peer`;
//!   * `home`: the site `failback` returns production to (default: `production`). A host
//!     that restarts with a persisted production passes the configured one here;
//!   * `state`: the state last recorded for this set at this site, if any (the host's record
//!     of `SetVolumeSetState`). A restart keeps from it what it must not forget: a forced
//!     takeover at production, and whether the recovery site's copy is consistent;
//!   * `mode`: `"sync"` (default); `"xd"` (extended distance) is reserved and refused;
//!   * `on_link_loss`: `"continue"` (default: production keeps serving, changes tracked,
//!     → `OutOfSync`) or `"freeze"` (the engine holds host I/O, → `SplitSite`);
//!   * `auto_resync`: resync when the link comes back (default `true`).

use serde_json::{Map, Value};

use crate::state::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLoss {
    /// Production keeps serving; the set goes `OutOfSync`.
    Continue,
    /// The engine freezes host I/O; the set goes `SplitSite` until `run`.
    Freeze,
}

impl LinkLoss {
    pub const fn name(self) -> &'static str {
        match self {
            LinkLoss::Continue => "continue",
            LinkLoss::Freeze => "freeze",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetConfig {
    pub name: String,
    /// The production site at start.
    pub production: String,
    /// Where `failback` returns production to.
    pub home: String,
    pub peer: String,
    pub on_link_loss: LinkLoss,
    pub auto_resync: bool,
    /// The state last recorded at this site before a restart.
    pub recorded: Option<State>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub local_site: String,
    pub sets: Vec<SetConfig>,
}

const TOP_KEYS: [&str; 2] = ["local_site", "sets"];
const SET_KEYS: [&str; 8] = ["name", "mode", "production", "home", "peer", "on_link_loss", "auto_resync", "state"];

impl Config {
    pub fn from_json(v: &Value) -> Result<Config, String> {
        let top = v.as_object().ok_or("the config must be a JSON object")?;
        unknown_keys(top, &TOP_KEYS, "")?;
        let local_site = site(top, "local_site", "local_site")?;
        let list = match top.get("sets") {
            None => return Err("`sets` is required".into()),
            Some(Value::Array(a)) if a.is_empty() => return Err("`sets` is empty: name at least one volume set".into()),
            Some(Value::Array(a)) => a,
            Some(_) => return Err("`sets` must be a list of volume sets".into()),
        };
        let mut sets: Vec<SetConfig> = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let at = format!("sets[{i}]");
            let set = parse_set(item, &at, &local_site)?;
            if sets.iter().any(|s| s.name == set.name) {
                return Err(format!("{at}.name: duplicate volume set `{}`", set.name));
            }
            sets.push(set);
        }
        Ok(Config { local_site, sets })
    }
}

fn parse_set(v: &Value, at: &str, local: &str) -> Result<SetConfig, String> {
    let m = v.as_object().ok_or_else(|| format!("{at}: a volume set must be a JSON object"))?;
    unknown_keys(m, &SET_KEYS, at)?;
    let name = site(m, "name", &format!("{at}.name"))?;
    match m.get("mode") {
        None => {}
        Some(Value::String(s)) if s == "sync" => {}
        Some(Value::String(s)) if s == "xd" => return Err(format!("{at}.mode: xd mode is not implemented yet")),
        Some(other) => return Err(format!("{at}.mode: expected \"sync\" (or the reserved \"xd\"), got {other}")),
    }
    let peer = site(m, "peer", &format!("{at}.peer"))?;
    if peer == local {
        return Err(format!("{at}.peer: `{peer}` is the local site; the peer is the other site of the pair"));
    }
    let one_of_the_pair = |key: &str| -> Result<String, String> {
        let s = site(m, key, &format!("{at}.{key}"))?;
        if s != local && s != peer {
            return Err(format!("{at}.{key}: `{s}` is neither the local site `{local}` nor the peer `{peer}`"));
        }
        Ok(s)
    };
    let production = one_of_the_pair("production")?;
    let home = if m.contains_key("home") { one_of_the_pair("home")? } else { production.clone() };
    let on_link_loss = match m.get("on_link_loss") {
        None => LinkLoss::Continue,
        Some(Value::String(s)) if s == "continue" => LinkLoss::Continue,
        Some(Value::String(s)) if s == "freeze" => LinkLoss::Freeze,
        Some(other) => return Err(format!("{at}.on_link_loss: expected \"continue\" or \"freeze\", got {other}")),
    };
    let auto_resync = match m.get("auto_resync") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("{at}.auto_resync: expected true or false, got {other}")),
    };
    let recorded = match m.get("state") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match State::from_name(s) {
            Some(st) if !st.is_reserved() => Some(st),
            _ => return Err(format!("{at}.state: `{s}` is not a state of a sync volume set")),
        },
        Some(other) => return Err(format!("{at}.state: expected a state name, got {other}")),
    };
    Ok(SetConfig { name, production, home, peer, on_link_loss, auto_resync, recorded })
}

/// A required, non-empty string.
fn site(m: &Map<String, Value>, key: &str, path: &str) -> Result<String, String> {
    match m.get(key) {
        None => Err(format!("`{path}` is required")),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(other) => Err(format!("{path}: expected a non-empty string, got {other}")),
    }
}

fn unknown_keys(m: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), String> {
    match m.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => {
            let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
            Err(format!("{path}: unknown key (known: {})", known.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Config, String> {
        Config::from_json(&v)
    }

    #[test]
    fn full_and_defaulted_sets() {
        let c = parse(json!({"local_site": "A", "sets": [
            {"name": "vs1", "mode": "sync", "production": "A", "peer": "B", "on_link_loss": "freeze", "auto_resync": false},
            {"name": "vs2", "production": "B", "home": "A", "peer": "B", "state": "RecoverySite-ForceSwap"}
        ]}))
        .unwrap();
        assert_eq!(c.local_site, "A");
        assert_eq!(
            c.sets[0],
            SetConfig {
                name: "vs1".into(),
                production: "A".into(),
                home: "A".into(),
                peer: "B".into(),
                on_link_loss: LinkLoss::Freeze,
                auto_resync: false,
                recorded: None,
            }
        );
        assert_eq!(c.sets[1].on_link_loss, LinkLoss::Continue);
        assert!(c.sets[1].auto_resync);
        assert_eq!((c.sets[1].production.as_str(), c.sets[1].home.as_str()), ("B", "A"));
        assert_eq!(c.sets[1].recorded, Some(State::RecoverySiteForceSwap));
    }

    #[test]
    fn errors_name_the_key() {
        let set = |extra: Value| {
            let mut s = json!({"name": "vs1", "production": "A", "peer": "B"});
            for (k, v) in extra.as_object().unwrap() {
                s[k] = v.clone();
            }
            parse(json!({"local_site": "A", "sets": [s]})).unwrap_err()
        };
        let cases = [
            (set(json!({"mode": "xd"})), "sets[0].mode: xd mode is not implemented yet"),
            (set(json!({"mode": "async"})), "sets[0].mode"),
            (set(json!({"on_link_loss": "panic"})), "sets[0].on_link_loss"),
            (set(json!({"auto_resync": "yes"})), "sets[0].auto_resync"),
            (set(json!({"colour": "red"})), "sets[0].colour: unknown key"),
            (set(json!({"peer": "A"})), "sets[0].peer: `A` is the local site"),
            (set(json!({"production": "C"})), "sets[0].production: `C` is neither"),
            (set(json!({"home": "C"})), "sets[0].home: `C` is neither"),
            (set(json!({"state": "XDMode"})), "sets[0].state: `XDMode` is not a state"),
            (set(json!({"state": "insync"})), "sets[0].state: `insync`"),
            (set(json!({"name": ""})), "sets[0].name"),
            (parse(json!({})).unwrap_err(), "`local_site` is required"),
            (parse(json!({"local_site": "A"})).unwrap_err(), "`sets` is required"),
            (parse(json!({"local_site": "A", "sets": []})).unwrap_err(), "`sets` is empty"),
            (parse(json!({"local_site": "A", "sets": [], "x": 1})).unwrap_err(), "x: unknown key"),
            (parse(json!({"local_site": 3, "sets": []})).unwrap_err(), "local_site: expected a non-empty string"),
            (parse(json!([])).unwrap_err(), "must be a JSON object"),
            (
                parse(json!({"local_site": "A", "sets": [
                    {"name": "vs1", "production": "A", "peer": "B"},
                    {"name": "vs1", "production": "A", "peer": "B"}]}))
                .unwrap_err(),
                "sets[1].name: duplicate volume set `vs1`",
            ),
        ];
        for (err, want) in cases {
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
