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
//!   * `production` (required): where the set is produced at start, `local_site` or `peer`;
//!     it is also the set's home, the site `failback` returns production to;
//!   * `mode`: `"sync"` (default); `"xd"` (extended distance) is reserved and refused;
//!   * `on_link_loss`: `"continue"` (default: production keeps serving, changes tracked,
//!     → `OutOfSync`) or `"freeze"` (the engine holds host I/O, → `SplitSite`);
//!   * `auto_resync`: resync when the link comes back (default `true`).

use serde_json::{Map, Value};

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
    /// The production site at start, and the set's home for `failback`.
    pub production: String,
    pub peer: String,
    pub on_link_loss: LinkLoss,
    pub auto_resync: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub local_site: String,
    pub sets: Vec<SetConfig>,
}

const TOP_KEYS: [&str; 2] = ["local_site", "sets"];
const SET_KEYS: [&str; 6] = ["name", "mode", "production", "peer", "on_link_loss", "auto_resync"];

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
    let production = site(m, "production", &format!("{at}.production"))?;
    if production != local && production != peer {
        return Err(format!(
            "{at}.production: `{production}` is neither the local site `{local}` nor the peer `{peer}`"
        ));
    }
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
    Ok(SetConfig { name, production, peer, on_link_loss, auto_resync })
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
            {"name": "vs2", "production": "B", "peer": "B"}
        ]}))
        .unwrap();
        assert_eq!(c.local_site, "A");
        assert_eq!(
            c.sets[0],
            SetConfig {
                name: "vs1".into(),
                production: "A".into(),
                peer: "B".into(),
                on_link_loss: LinkLoss::Freeze,
                auto_resync: false
            }
        );
        assert_eq!(c.sets[1].on_link_loss, LinkLoss::Continue);
        assert!(c.sets[1].auto_resync);
        assert_eq!(c.sets[1].production, "B");
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
