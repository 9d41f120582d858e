//! Configuration of the quorum controller role: the `[controller]` section.
//!
//! A controller is one of the independent processes (the VTCs of seeds 000/001) that decide,
//! by agreement, whether a server of a replicated pair that comes back after a failure goes
//! online. Each controller keeps a shutdown key naming the server it last saw serving; when a
//! server returns, the controllers elect, and the server is placed online only when more of
//! them than the threshold elect it. The decision itself is made by a recovery-policy plugin
//! (`vtc-quorum` by default), which receives [`ControllerConfig::policy_config`] as its config.
//!
//! A controller needs neither `[[export]]`s nor a `[node]`: a file with only a `[controller]`
//! section is a standalone (witness) controller. The servers it decides for are the two of
//! the volume set named here, whose `[[volume_set]]` has `recovery = "quorum"`.
//!
//! ```toml
//! [controller]
//! id = "c1"                         # this controller's id (unique among the controllers)
//! listen = "127.0.0.1:7300"         # the other controllers connect here
//! volume_set = "vs1"                # the servers' volume set this controller decides for
//! threshold = "50%"                 # or an integer count, e.g. 2 (default: the policy's, more than 50 %)
//! report_by = "poll"                # or "broadcast" (default: the policy's, poll)
//! key_file = "quorum.key"           # the saved shutdown key; relative to the data directory (default quorum.key)
//! policy = "vtc-quorum"             # the recovery-policy plugin (default vtc-quorum)
//! [controller.timing]               # optional, passed to the policy as its `timing` object (integers, ms)
//! election_timeout_ms = 2000
//!
//! [[controller.peer]]               # every OTHER controller
//! id = "c2"
//! address = "127.0.0.1:7310"
//!
//! [[controller.server]]             # exactly two servers: the pair
//! name = "A"                        # its site name ([node] site of that server)
//! control = "127.0.0.1:7001"        # its [node] control_listen
//!
//! [[controller.server]]
//! name = "B"
//! control = "127.0.0.1:7101"
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use toml::Spanned;

use super::{line_col, parse_addr, ConfigError};

/// The shutdown key's file when `key_file` is not given (relative to the data directory).
pub const DEFAULT_KEY_FILE: &str = "quorum.key";
/// The recovery-policy plugin when `policy` is not given.
pub const DEFAULT_CONTROLLER_POLICY: &str = "vtc-quorum";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawController {
    id: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    volume_set: Option<Spanned<String>>,
    threshold: Option<Spanned<toml::Value>>,
    report_by: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    policy: Option<Spanned<String>>,
    timing: Option<BTreeMap<String, Spanned<toml::Value>>>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    server: Option<Spanned<Vec<RawServer>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Spanned<String>,
    address: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Spanned<String>,
    control: Spanned<String>,
}

/// This process's controller role: its identity, the other controllers, and the pair of
/// servers it decides for.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// This controller's id, unique among the controllers.
    pub id: String,
    /// Where the other controllers connect.
    pub listen: SocketAddr,
    /// The servers' volume set this controller decides for.
    pub volume_set: String,
    /// The agreement threshold; `None` leaves the policy's default (more than 50 %).
    pub threshold: Option<ThresholdConfig>,
    /// `"poll"` or `"broadcast"`; `None` leaves the policy's default (poll).
    pub report_by: Option<String>,
    /// The saved shutdown key; a relative path is relative to the data directory.
    pub key_file: PathBuf,
    /// The recovery-policy plugin (a path, or a name in the plugin directory).
    pub policy: String,
    /// The policy's `timing` object: a JSON object of non-negative integers (milliseconds).
    pub timing: Option<Value>,
    /// Every other controller.
    pub peers: Vec<ControllerPeer>,
    /// The two servers of the pair, in the order they are configured.
    pub servers: Vec<QuorumServer>,
}

/// Another controller, and where it listens.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerPeer {
    pub id: String,
    pub address: SocketAddr,
}

/// A server of the pair: its site name and its control port (`[node] control_listen`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuorumServer {
    pub name: String,
    pub control: SocketAddr,
}

/// The agreement threshold: a number of controllers, or a percentage of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdConfig {
    Count(u32),
    Percent(u32),
}

impl ControllerConfig {
    /// The vtc-quorum policy's JSON config: `{"controller": id, "controllers": [all ids
    /// sorted, own included], "servers": [server names sorted], "threshold": {"count": k} |
    /// {"percent": p}, "report_by": "...", "timing": {...}}`; the last three are left out
    /// when not configured (the policy's defaults apply).
    pub fn policy_config(&self) -> Value {
        let mut servers: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        servers.sort_unstable();
        let mut m = Map::new();
        m.insert("controller".into(), json!(self.id));
        m.insert("controllers".into(), json!(self.controller_ids()));
        m.insert("servers".into(), json!(servers));
        match self.threshold {
            Some(ThresholdConfig::Count(k)) => {
                m.insert("threshold".into(), json!({ "count": k }));
            }
            Some(ThresholdConfig::Percent(p)) => {
                m.insert("threshold".into(), json!({ "percent": p }));
            }
            None => {}
        }
        if let Some(r) = &self.report_by {
            m.insert("report_by".into(), json!(r));
        }
        if let Some(t) = &self.timing {
            m.insert("timing".into(), t.clone());
        }
        Value::Object(m)
    }

    /// Every controller id, sorted (own included).
    pub fn controller_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            std::iter::once(self.id.clone()).chain(self.peers.iter().map(|p| p.id.clone())).collect();
        ids.sort_unstable();
        ids
    }
}

/// Validate the `[controller]` section (a missing key is reported at the section header).
pub(crate) fn validate(raw: Spanned<RawController>, text: &str, file: &str) -> Result<ControllerConfig, ConfigError> {
    let at = |span: Range<usize>, message: String| {
        let (line, column) = line_col(text, span.start);
        ConfigError { file: file.to_owned(), line, column, message }
    };
    let section = raw.span();
    let raw = raw.into_inner();
    let addr =
        |s: &Spanned<String>, key: &str| parse_addr(s.get_ref()).map_err(|m| at(s.span(), format!("key `{key}`: {m}")));
    let required = |v: Option<Spanned<String>>, key: &str, what: &str| match v {
        None => Err(at(section.clone(), format!("key `controller.{key}`: missing ({what})"))),
        Some(s) if s.get_ref().is_empty() => Err(at(s.span(), format!("key `controller.{key}`: must not be empty"))),
        Some(s) => Ok(s),
    };

    let id = required(raw.id, "id", "this controller's id, unique among the controllers")?;
    let listen = required(raw.listen, "listen", "the address the other controllers connect to")?;
    let listen = addr(&listen, "controller.listen")?;
    let volume_set = required(raw.volume_set, "volume_set", "the volume set this controller decides for")?;

    let mut ids = HashSet::from([id.get_ref().clone()]);
    let mut peers = Vec::new();
    for (i, p) in raw.peer.into_iter().enumerate() {
        let key = |k: &str| format!("controller.peer[{i}].{k}");
        let pid = p.id.get_ref();
        if pid.is_empty() {
            return Err(at(p.id.span(), format!("key `{}`: must not be empty", key("id"))));
        }
        if pid == id.get_ref() {
            return Err(at(p.id.span(), format!("key `{}`: a peer cannot have this controller's own id", key("id"))));
        }
        if !ids.insert(pid.clone()) {
            return Err(at(p.id.span(), format!("key `{}`: duplicate controller id `{pid}`", key("id"))));
        }
        peers.push(ControllerPeer { id: pid.clone(), address: addr(&p.address, &key("address"))? });
    }

    let (server_span, raw_servers) = match raw.server {
        None => (section.clone(), Vec::new()),
        Some(s) => (s.span(), s.into_inner()),
    };
    if raw_servers.len() != 2 {
        return Err(at(
            server_span,
            format!("key `controller.server`: a quorum pair has exactly two servers, found {}", raw_servers.len()),
        ));
    }
    let mut servers: Vec<QuorumServer> = Vec::new();
    for (i, s) in raw_servers.into_iter().enumerate() {
        let key = |k: &str| format!("controller.server[{i}].{k}");
        let name = s.name.get_ref();
        if name.is_empty() {
            return Err(at(s.name.span(), format!("key `{}`: must not be empty", key("name"))));
        }
        if servers.iter().any(|o| &o.name == name) {
            return Err(at(
                s.name.span(),
                format!("key `{}`: the two servers have the same name `{name}`", key("name")),
            ));
        }
        servers.push(QuorumServer { name: name.clone(), control: addr(&s.control, &key("control"))? });
    }

    let threshold = match raw.threshold {
        None => None,
        Some(t) => Some(threshold(t.get_ref()).ok_or_else(|| {
            at(t.span(), "key `controller.threshold`: expected a count (e.g. 2) or a percentage (e.g. \"50%\")".into())
        })?),
    };
    let report_by = match raw.report_by {
        None => None,
        Some(r) => match r.get_ref().as_str() {
            "poll" | "broadcast" => Some(r.into_inner()),
            other => {
                return Err(at(
                    r.span(),
                    format!("key `controller.report_by`: `{other}` (use \"poll\" or \"broadcast\")"),
                ))
            }
        },
    };
    let key_file = match raw.key_file {
        None => PathBuf::from(DEFAULT_KEY_FILE),
        Some(k) if k.get_ref().is_empty() => {
            return Err(at(k.span(), "key `controller.key_file`: must not be empty".into()))
        }
        Some(k) => PathBuf::from(k.into_inner()),
    };
    let policy = match raw.policy {
        None => DEFAULT_CONTROLLER_POLICY.to_owned(),
        Some(p) if p.get_ref().is_empty() => {
            return Err(at(p.span(), "key `controller.policy`: must not be empty".into()))
        }
        Some(p) => p.into_inner(),
    };
    let timing = match raw.timing {
        None => None,
        Some(t) => {
            let mut m = Map::new();
            for (k, v) in t {
                let ms = match v.get_ref() {
                    toml::Value::Integer(n) => u32::try_from(*n).ok(),
                    _ => None,
                };
                let Some(ms) = ms else {
                    return Err(at(
                        v.span(),
                        format!(
                            "key `controller.timing.{k}`: must be a non-negative integer (milliseconds, at most {})",
                            u32::MAX
                        ),
                    ));
                };
                m.insert(k, json!(ms));
            }
            Some(Value::Object(m))
        }
    };

    Ok(ControllerConfig {
        id: id.into_inner(),
        listen,
        volume_set: volume_set.into_inner(),
        threshold,
        report_by,
        key_file,
        policy,
        timing,
        peers,
        servers,
    })
}

/// A TOML integer >= 0 is a count; a string "P%" with an integer P in 0..=100 a percentage.
fn threshold(v: &toml::Value) -> Option<ThresholdConfig> {
    match v {
        toml::Value::Integer(n) => u32::try_from(*n).ok().map(ThresholdConfig::Count),
        toml::Value::String(s) => {
            let p = s.trim().strip_suffix('%')?.trim_end();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok().filter(|p| *p <= 100).map(ThresholdConfig::Percent)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Recovery};

    const FULL: &str = r#"[controller]
id = "c3"
listen = "127.0.0.1:7300"
volume_set = "vs1"
threshold = "50%"
report_by = "broadcast"
key_file = "/var/lib/q.key"
policy = "my-policy"
[controller.timing]
election_timeout_ms = 2000
retry_ms = 0

[[controller.peer]]
id = "c2"
address = "127.0.0.1:7310"

[[controller.peer]]
id = "c1"
address = "[::1]:7320"

[[controller.server]]
name = "B"
control = "127.0.0.1:7101"

[[controller.server]]
name = "A"
control = "127.0.0.1:7001"
"#;

    /// A minimal controller: the given extra lines go into `[controller]` (line 4 onwards).
    fn minimal(extra: &str) -> String {
        format!(
            "[controller]\nid = \"c1\"\nlisten = \"127.0.0.1:7300\"\n{extra}volume_set = \"vs1\"\n\
             [[controller.peer]]\nid = \"c2\"\naddress = \"127.0.0.1:7310\"\n\
             [[controller.server]]\nname = \"A\"\ncontrol = \"127.0.0.1:7001\"\n\
             [[controller.server]]\nname = \"B\"\ncontrol = \"127.0.0.1:7101\"\n"
        )
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "q.toml").map_err(|e| e.to_string())
    }

    fn controller(text: &str) -> ControllerConfig {
        parse(text).unwrap().controller.unwrap()
    }

    #[track_caller]
    fn fails(text: &str, prefix: &str, key: &str) -> String {
        let e = parse(text).unwrap_err();
        assert!(e.starts_with(prefix), "expected `{prefix}`: {e}");
        assert!(e.contains(&format!("key `{key}`")), "expected key `{key}`: {e}");
        e
    }

    #[test]
    fn a_full_standalone_controller() {
        let c = parse(FULL).unwrap();
        assert!(c.exports.is_empty() && c.node.is_none() && c.volume_sets.is_empty());
        let q = c.controller.unwrap();
        assert_eq!(
            q,
            ControllerConfig {
                id: "c3".into(),
                listen: "127.0.0.1:7300".parse().unwrap(),
                volume_set: "vs1".into(),
                threshold: Some(ThresholdConfig::Percent(50)),
                report_by: Some("broadcast".into()),
                key_file: "/var/lib/q.key".into(),
                policy: "my-policy".into(),
                timing: Some(json!({"election_timeout_ms": 2000, "retry_ms": 0})),
                peers: vec![
                    ControllerPeer { id: "c2".into(), address: "127.0.0.1:7310".parse().unwrap() },
                    ControllerPeer { id: "c1".into(), address: "[::1]:7320".parse().unwrap() },
                ],
                servers: vec![
                    QuorumServer { name: "B".into(), control: "127.0.0.1:7101".parse().unwrap() },
                    QuorumServer { name: "A".into(), control: "127.0.0.1:7001".parse().unwrap() },
                ],
            }
        );
        assert_eq!(q.controller_ids(), ["c1", "c2", "c3"]);
        assert_eq!(
            q.policy_config(),
            json!({
                "controller": "c3",
                "controllers": ["c1", "c2", "c3"],
                "servers": ["A", "B"],
                "threshold": {"percent": 50},
                "report_by": "broadcast",
                "timing": {"election_timeout_ms": 2000, "retry_ms": 0},
            })
        );
    }

    #[test]
    fn defaults_leave_the_policy_its_own() {
        let q = controller(&minimal(""));
        assert_eq!(q.threshold, None);
        assert_eq!(q.report_by, None);
        assert_eq!(q.timing, None);
        assert_eq!(q.key_file, PathBuf::from(DEFAULT_KEY_FILE));
        assert_eq!(q.policy, DEFAULT_CONTROLLER_POLICY);
        assert_eq!(q.policy_config(), json!({"controller": "c1", "controllers": ["c1", "c2"], "servers": ["A", "B"]}));
    }

    #[test]
    fn thresholds() {
        let t = |v: &str| controller(&minimal(&format!("threshold = {v}\n"))).threshold;
        assert_eq!(t("2"), Some(ThresholdConfig::Count(2)));
        assert_eq!(t("0"), Some(ThresholdConfig::Count(0)));
        assert_eq!(t("\"50%\""), Some(ThresholdConfig::Percent(50)));
        assert_eq!(t("\"0%\""), Some(ThresholdConfig::Percent(0)));
        assert_eq!(t("\"100%\""), Some(ThresholdConfig::Percent(100)));
        let q = controller(&minimal("threshold = 1\n"));
        assert_eq!(q.policy_config()["threshold"], json!({"count": 1}));
        for bad in
            ["-1", "\"101%\"", "\"50\"", "\"%\"", "\"-5%\"", "\"5.5%\"", "1.5", "true", "\"half\"", "99999999999"]
        {
            let e = fails(&minimal(&format!("threshold = {bad}\n")), "q.toml:4:13: ", "controller.threshold");
            assert!(e.contains("expected a count (e.g. 2) or a percentage (e.g. \"50%\")"), "{e}");
        }
    }

    #[test]
    fn identity_and_addresses() {
        fails(&minimal("").replace("id = \"c1\"", "id = \"\""), "q.toml:2:6: ", "controller.id");
        fails(&minimal("").replace("id = \"c1\"\n", ""), "q.toml:1:", "controller.id");
        let e = fails(&minimal("").replace("7300", "x"), "q.toml:3:10: ", "controller.listen");
        assert!(e.contains("is not an address:port"), "{e}");
        fails(&minimal("").replace("listen = \"127.0.0.1:7300\"\n", ""), "q.toml:1:", "controller.listen");
        fails(
            &minimal("").replace("volume_set = \"vs1\"", "volume_set = \"\""),
            "q.toml:4:14: ",
            "controller.volume_set",
        );
        fails(&minimal("").replace("volume_set = \"vs1\"\n", ""), "q.toml:1:", "controller.volume_set");
        fails(&minimal("").replace("127.0.0.1:7310", "nowhere"), "q.toml:7:11: ", "controller.peer[0].address");
        fails(&minimal("").replace("127.0.0.1:7101", "[::1]"), "q.toml:13:11: ", "controller.server[1].control");
    }

    #[test]
    fn peers() {
        let e = fails(&minimal("").replace("\"c2\"", "\"c1\""), "q.toml:6:6: ", "controller.peer[0].id");
        assert!(e.contains("a peer cannot have this controller's own id"), "{e}");
        fails(&minimal("").replace("\"c2\"", "\"\""), "q.toml:6:6: ", "controller.peer[0].id");
        let two = minimal("")
            + "[[controller.peer]]\nid = \"c3\"\naddress = \"127.0.0.1:1\"\n"
            + "[[controller.peer]]\nid = \"c2\"\naddress = \"127.0.0.1:2\"\n";
        let three = minimal("") + "[[controller.peer]]\nid = \"c3\"\naddress = \"127.0.0.1:1\"\n";
        assert_eq!(controller(&three).peers.len(), 2);
        let e = fails(&two, "q.toml:18:6: ", "controller.peer[2].id");
        assert!(e.contains("duplicate controller id `c2`"), "{e}");
        // A controller alone (no peers) is the policy's business, not the config's.
        let alone = minimal("").replace("[[controller.peer]]\nid = \"c2\"\naddress = \"127.0.0.1:7310\"\n", "");
        assert_eq!(controller(&alone).controller_ids(), ["c1"]);
    }

    #[test]
    fn exactly_two_distinct_servers() {
        let three = minimal("") + "[[controller.server]]\nname = \"C\"\ncontrol = \"127.0.0.1:1\"\n";
        let e = fails(&three, "q.toml:", "controller.server");
        assert!(e.contains("a quorum pair has exactly two servers, found 3"), "{e}");
        let one = minimal("").replace("[[controller.server]]\nname = \"B\"\ncontrol = \"127.0.0.1:7101\"\n", "");
        let e = fails(&one, "q.toml:", "controller.server");
        assert!(e.contains("found 1"), "{e}");
        let none = "[controller]\nid = \"c1\"\nlisten = \"127.0.0.1:7300\"\nvolume_set = \"v\"\n";
        let e = fails(none, "q.toml:1:", "controller.server");
        assert!(e.contains("found 0"), "{e}");
        let e = fails(&minimal("").replace("\"B\"", "\"A\""), "q.toml:12:8: ", "controller.server[1].name");
        assert!(e.contains("same name `A`"), "{e}");
        fails(&minimal("").replace("\"B\"", "\"\""), "q.toml:12:8: ", "controller.server[1].name");
    }

    #[test]
    fn report_by_timing_and_unknown_keys() {
        assert_eq!(controller(&minimal("report_by = \"poll\"\n")).report_by.as_deref(), Some("poll"));
        let e = fails(&minimal("report_by = \"shout\"\n"), "q.toml:4:13: ", "controller.report_by");
        assert!(e.contains("shout") && e.contains("\"poll\" or \"broadcast\""), "{e}");
        let timing = |body: &str| minimal("") + "[controller.timing]\nstagger_ms = 10\n" + body;
        assert_eq!(controller(&timing("")).timing, Some(json!({"stagger_ms": 10})));
        fails(&timing("retry_ms = -1\n"), "q.toml:16:12: ", "controller.timing.retry_ms");
        fails(&timing("retry_ms = \"1s\"\n"), "q.toml:16:12: ", "controller.timing.retry_ms");
        fails(&timing("retry_ms = 1.5\n"), "q.toml:16:12: ", "controller.timing.retry_ms");
        fails(&minimal("key_file = \"\"\n"), "q.toml:4:12: ", "controller.key_file");
        fails(&minimal("policy = \"\"\n"), "q.toml:4:10: ", "controller.policy");
        // Unknown keys, in the section and in its arrays of tables, at their own line.
        let e = fails(&minimal("treshold = 2\n"), "q.toml:4:", "treshold");
        assert!(e.contains("unknown field `treshold`"), "{e}");
        let e = fails(&minimal("").replace("address = \"127.0.0.1:7310\"", "adress = \"x\""), "q.toml:7:", "adress");
        assert!(e.contains("unknown field `adress`"), "{e}");
        let e = fails(&minimal("").replace("control = \"127.0.0.1:7101\"", "ctl = \"x\""), "q.toml:13:", "ctl");
        assert!(e.contains("unknown field `ctl`"), "{e}");
    }

    #[test]
    fn a_controller_beside_a_replicating_server() {
        let text = format!(
            "[[export]]\nname = \"v\"\nsize = \"1M\"\n[export.backend]\ntype = \"memory\"\n\
             [node]\nsite = \"A\"\nreplication_listen = \"127.0.0.1:1\"\ncontrol_listen = \"127.0.0.1:7001\"\n\
             [[volume_set]]\nname = \"vs1\"\nvolumes = [\"v\"]\nproduction = \"A\"\npeer_site = \"B\"\n\
             peer_replication = \"127.0.0.1:3\"\npeer_control = \"127.0.0.1:7101\"\nrecovery = \"quorum\"\n{}",
            minimal("")
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.volume_sets[0].recovery, Recovery::Quorum);
        assert_eq!(c.controller.unwrap().volume_set, "vs1");
        // Without a controller, no exports is still an error.
        assert!(parse("[server]\nmax_connections = 3\n").unwrap_err().contains("nothing to serve"));
    }
}
