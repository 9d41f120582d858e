//! Configuration of two-site replication: this node's `[node]` section (its site name and the
//! ports its peer connects to) and the `[[volume_set]]`s it mirrors.
//!
//! ```toml
//! [node]
//! site = "A"
//! replication_listen = "127.0.0.1:7000"   # the peer's data link connects here
//! control_listen = "127.0.0.1:7001"       # the peer's control requests come here
//!
//! [[volume_set]]
//! name = "vs1"
//! mode = "sync"                  # "xd" is reserved for extended distance (not yet)
//! volumes = ["vol0"]
//! production = "A"               # the site that serves the volumes at first start
//! peer_site = "B"
//! peer_replication = "127.0.0.1:7100"
//! peer_control = "127.0.0.1:7101"
//! on_link_loss = "continue"      # or "freeze": hold host I/O until `run` or the timeout
//! freeze_timeout_ms = 30000
//! region_size = "64KiB"          # change-bitmap granularity
//! initial_sync = "full"          # or "none": the volumes are known identical already
//! auto_resync = true             # resync by itself when the link returns
//! policy = "pprc"                # the recovery policy plugin that runs the state machine
//! recovery = "operator"          # or "quorum": hold host I/O until a quorum of controllers
//!                                # places this server online (see `[controller]`)
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{line_col, parse_addr, parse_size, ConfigError, ExportConfig, RawSize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    site: Spanned<String>,
    replication_listen: Spanned<String>,
    control_listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVolumeSet {
    name: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    volumes: Spanned<Vec<String>>,
    production: Spanned<String>,
    peer_site: Spanned<String>,
    peer_replication: Spanned<String>,
    peer_control: Spanned<String>,
    on_link_loss: Option<Spanned<String>>,
    freeze_timeout_ms: Option<u64>,
    region_size: Option<Spanned<RawSize>>,
    initial_sync: Option<Spanned<String>>,
    #[serde(default = "yes")]
    auto_resync: bool,
    policy: Option<String>,
    recovery: Option<Spanned<String>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub site: String,
    pub replication_listen: SocketAddr,
    pub control_listen: SocketAddr,
}

/// Who decides whether this server of the pair serves its hosts after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Hosts are served per the replication role (operator commands decide).
    Operator,
    /// The server holds host I/O until a quorum of controllers places it online.
    Quorum,
}

/// What the production site does with host I/O when the peer or the link is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLossPolicy {
    /// Keep serving; the set is suspended and changes are tracked in the bitmap.
    Continue,
    /// Hold host I/O (PPRC freeze) until `run` or the freeze timeout, then continue.
    Freeze,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSetConfig {
    pub name: String,
    pub volumes: Vec<String>,
    pub production: String,
    pub peer_site: String,
    pub peer_replication: SocketAddr,
    pub peer_control: SocketAddr,
    pub on_link_loss: LinkLossPolicy,
    pub freeze_timeout: Duration,
    pub region_size: u64,
    pub initial_full_sync: bool,
    pub auto_resync: bool,
    pub policy: String,
    /// `recovery = "operator"` (default) or `"quorum"`.
    pub recovery: Recovery,
}

pub(crate) fn validate(
    node: Option<RawNode>,
    sets: Vec<RawVolumeSet>,
    exports: &[ExportConfig],
    text: &str,
    file: &str,
) -> Result<(Option<NodeConfig>, Vec<VolumeSetConfig>), ConfigError> {
    let at = |span: std::ops::Range<usize>, message: String| {
        let (line, column) = line_col(text, span.start);
        ConfigError { file: file.to_owned(), line, column, message }
    };
    let addr =
        |s: &Spanned<String>, key: &str| parse_addr(s.get_ref()).map_err(|m| at(s.span(), format!("key `{key}`: {m}")));
    let node = match node {
        None if sets.is_empty() => return Ok((None, Vec::new())),
        None => {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 0,
                column: 0,
                message: "[[volume_set]] needs a [node] section naming this site and its replication ports".into(),
            })
        }
        Some(n) => NodeConfig {
            site: n.site.get_ref().clone(),
            replication_listen: addr(&n.replication_listen, "node.replication_listen")?,
            control_listen: addr(&n.control_listen, "node.control_listen")?,
        },
    };
    let mut names = HashSet::new();
    let mut used = HashSet::new();
    let mut out = Vec::new();
    for (i, s) in sets.into_iter().enumerate() {
        let key = |k: &str| format!("key `volume_set[{i}].{k}`");
        let name = s.name.get_ref().clone();
        if name.is_empty() || !names.insert(name.clone()) {
            return Err(at(s.name.span(), format!("{}: empty or defined twice", key("name"))));
        }
        if let Some(m) = &s.mode {
            match m.get_ref().as_str() {
                "sync" => {}
                "xd" => {
                    return Err(at(
                        m.span(),
                        format!("{}: xd (extended distance) mode is not implemented yet", key("mode")),
                    ))
                }
                other => return Err(at(m.span(), format!("{}: unknown mode `{other}` (use \"sync\")", key("mode")))),
            }
        }
        if s.volumes.get_ref().is_empty() {
            return Err(at(s.volumes.span(), format!("{}: a volume set needs at least one volume", key("volumes"))));
        }
        for v in s.volumes.get_ref() {
            let Some(e) = exports.iter().find(|e| &e.name == v) else {
                return Err(at(s.volumes.span(), format!("{}: no export named `{v}`", key("volumes"))));
            };
            if e.read_only {
                return Err(at(
                    s.volumes.span(),
                    format!("{}: export `{v}` is read-only and cannot be mirrored", key("volumes")),
                ));
            }
            if !used.insert(v.clone()) {
                return Err(at(s.volumes.span(), format!("{}: export `{v}` is in two volume sets", key("volumes"))));
            }
        }
        let peer = s.peer_site.get_ref();
        if peer == &node.site {
            return Err(at(
                s.peer_site.span(),
                format!("{}: the peer cannot be this site (`{peer}`)", key("peer_site")),
            ));
        }
        let production = s.production.get_ref();
        if production != &node.site && production != peer {
            return Err(at(
                s.production.span(),
                format!(
                    "{}: `{production}` is neither this site (`{}`) nor the peer (`{peer}`)",
                    key("production"),
                    node.site
                ),
            ));
        }
        let on_link_loss = match s.on_link_loss.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("continue", _)) => LinkLossPolicy::Continue,
            Some(("freeze", _)) => LinkLossPolicy::Freeze,
            Some((other, span)) => {
                return Err(at(span, format!("{}: `{other}` (use \"continue\" or \"freeze\")", key("on_link_loss"))))
            }
        };
        let region_size = match &s.region_size {
            None => gateway_replication::bitmap::DEFAULT_REGION,
            Some(r) => {
                let v = parse_size(r.get_ref()).map_err(|m| at(r.span(), format!("{}: {m}", key("region_size"))))?;
                if !v.is_power_of_two() || v < 4096 {
                    return Err(at(
                        r.span(),
                        format!("{}: must be a power of two of at least 4KiB", key("region_size")),
                    ));
                }
                v
            }
        };
        let initial_full_sync = match s.initial_sync.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("full", _)) => true,
            Some(("none", _)) => false,
            Some((other, span)) => {
                return Err(at(span, format!("{}: `{other}` (use \"full\" or \"none\")", key("initial_sync"))))
            }
        };
        let recovery = match s.recovery.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("operator", _)) => Recovery::Operator,
            Some(("quorum", _)) => Recovery::Quorum,
            Some((other, span)) => {
                return Err(at(span, format!("{}: `{other}` (use \"operator\" or \"quorum\")", key("recovery"))))
            }
        };
        out.push(VolumeSetConfig {
            name,
            volumes: s.volumes.into_inner(),
            production: production.clone(),
            peer_site: peer.clone(),
            peer_replication: addr(&s.peer_replication, "peer_replication")?,
            peer_control: addr(&s.peer_control, "peer_control")?,
            on_link_loss,
            freeze_timeout: Duration::from_millis(s.freeze_timeout_ms.unwrap_or(30_000)),
            region_size,
            initial_full_sync,
            auto_resync: s.auto_resync,
            policy: s.policy.unwrap_or_else(|| "pprc".into()),
            recovery,
        });
    }
    Ok((Some(node), out))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[[export]]\nname = \"v\"\nsize = \"1M\"\n[export.backend]\ntype = \"memory\"\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}"), "r.toml").map_err(|e| e.to_string())
    }

    const NODE: &str = "[node]\nsite = \"A\"\nreplication_listen = \"127.0.0.1:1\"\ncontrol_listen = \"127.0.0.1:2\"\n";

    fn set(body: &str) -> String {
        format!(
            "{NODE}[[volume_set]]\nname = \"vs\"\nvolumes = [\"v\"]\nproduction = \"A\"\npeer_site = \"B\"\npeer_replication = \"127.0.0.1:3\"\npeer_control = \"127.0.0.1:4\"\n{body}"
        )
    }

    #[test]
    fn a_valid_set() {
        let c = parse(&set("on_link_loss = \"freeze\"\nregion_size = \"128KiB\"\n")).unwrap();
        let vs = &c.volume_sets[0];
        assert_eq!(vs.on_link_loss, super::LinkLossPolicy::Freeze);
        assert_eq!(vs.region_size, 128 << 10);
        assert_eq!(c.node.unwrap().site, "A");
        assert_eq!(vs.recovery, super::Recovery::Operator);
    }

    #[test]
    fn recovery() {
        let c = parse(&set("recovery = \"quorum\"\n")).unwrap();
        assert_eq!(c.volume_sets[0].recovery, super::Recovery::Quorum);
        let c = parse(&set("recovery = \"operator\"\n")).unwrap();
        assert_eq!(c.volume_sets[0].recovery, super::Recovery::Operator);
        let e = parse(&set("recovery = \"vote\"\n")).unwrap_err();
        assert!(e.starts_with("r.toml:17:12: key `volume_set[0].recovery`: `vote`"), "{e}");
        assert!(e.contains("\"operator\" or \"quorum\""), "{e}");
    }

    #[test]
    fn mistakes_are_located() {
        assert!(parse(&set("mode = \"xd\"\n")).unwrap_err().contains("xd (extended distance) mode is not implemented"));
        let e = parse(&set("").replace("[\"v\"]", "[\"nope\"]")).unwrap_err();
        assert!(e.starts_with("r.toml:12:11:") && e.contains("no export named `nope`"), "{e}");
        let e = parse(&set("").replace("production = \"A\"", "production = \"C\"")).unwrap_err();
        assert!(e.contains("neither this site"), "{e}");
        let e = parse(&set("on_link_loss = \"panic\"\n")).unwrap_err();
        assert!(e.contains("on_link_loss") && e.contains("panic"), "{e}");
        let e = parse(&set("").replace(NODE, "")).unwrap_err();
        assert!(e.contains("needs a [node] section"), "{e}");
    }
}
