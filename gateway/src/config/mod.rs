//! The gateway's configuration file (TOML): listen addresses, data directory, exports and the
//! backend of each.
//!
//! Every error names the file, the line and column, and the key at fault, because the person
//! reading it is an operator with the file open in an editor. Parsing (`toml` + serde, with
//! unknown keys refused) and semantic validation (sizes, duplicates, addresses) both report
//! that way; validation uses the spans `toml` keeps for the values it checks.
//!
//! Besides serving exports, a process can hold the quorum controller role (`[controller]`,
//! see [`ControllerConfig`]); a file with only that section is a valid standalone controller.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

mod quorum;
mod replication;

pub use quorum::{
    ControllerConfig, ControllerPeer, QuorumServer, ThresholdConfig, DEFAULT_CONTROLLER_POLICY, DEFAULT_KEY_FILE,
};
pub use replication::{LinkLossPolicy, NodeConfig, Recovery, VolumeSetConfig};

use gateway_backend::BackendSpec;
use serde::Deserialize;
use toml::Spanned;

/// The configuration used when `gateway serve` is given no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/default.toml");
/// How `DEFAULT_CONFIG` is named in error messages.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

/// A configuration problem, located in its file.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        match self.line {
            0 => format!("{}: {}", self.file, self.message),
            _ => format!("{}:{}:{}: {}", self.file, self.line, self.column, self.message),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    export: Vec<RawExport>,
    #[serde(default)]
    policy: Vec<RawPluginRef>,
    node: Option<replication::RawNode>,
    #[serde(default)]
    volume_set: Vec<replication::RawVolumeSet>,
    controller: Option<Spanned<quorum::RawController>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPluginRef {
    plugin: Spanned<String>,
    #[serde(default)]
    config: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    unix: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    max_connections: Option<Spanned<usize>>,
    plugin_dir: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    size: Option<Spanned<RawSize>>,
    #[serde(default)]
    read_only: bool,
    backend: Spanned<RawBackend>,
    #[serde(default)]
    filter: Vec<RawPluginRef>,
    #[serde(default)]
    component: Vec<RawPluginRef>,
    plugin_call_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawBackend {
    File {
        path: PathBuf,
    },
    Block {
        path: PathBuf,
    },
    Memory,
    Plugin {
        plugin: String,
        #[serde(default)]
        config: toml::Table,
    },
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub unix: Option<PathBuf>,
    /// Where relative backend paths live; `None` means "use the command line's or the default".
    pub data_dir: Option<PathBuf>,
    pub max_connections: usize,
    /// Where plugins named without a path are found (default: next to the executable).
    pub plugin_dir: Option<PathBuf>,
    pub exports: Vec<ExportConfig>,
    /// Recovery policy plugins fed this node's lifecycle events.
    pub policies: Vec<PluginRef>,
    /// The admin socket (`gateway ctl`); relative to the data directory; default `admin.sock`.
    pub admin_socket: Option<PathBuf>,
    /// This node's place in a two-site replication topology, if it has one.
    pub node: Option<NodeConfig>,
    pub volume_sets: Vec<VolumeSetConfig>,
    /// This process's quorum controller role, if it has one (`[controller]`).
    pub controller: Option<ControllerConfig>,
}

/// A plugin named in the config: a path or a name in the plugin directory, its own config
/// table (handed to the plugin as JSON), and where it was named, for error messages.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginRef {
    pub plugin: String,
    pub config: serde_json::Value,
    pub location: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    pub name: String,
    pub description: String,
    pub read_only: bool,
    pub backend: BackendConfig,
    /// Filters, outermost first (the first sees the host's requests first).
    pub filters: Vec<PluginRef>,
    /// Backup components that receive every update of this export.
    pub components: Vec<PluginRef>,
    /// A plugin call that takes longer fails with EIO and marks the export failed.
    pub plugin_call_timeout: std::time::Duration,
}

/// A backend as configured; relative paths are resolved by [`ExportConfig::backend_spec`].
#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    File { path: PathBuf, size: Option<u64> },
    Block { path: PathBuf },
    Memory { size: u64 },
    Plugin(PluginRef),
}

pub const DEFAULT_PLUGIN_CALL_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";
pub const DEFAULT_DATA_DIR: &str = "./gateway-data";
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

impl ExportConfig {
    /// The built-in backend this export names, with relative paths resolved against
    /// `data_dir`; `None` for a plugin backend.
    pub fn backend_spec(&self, data_dir: &Path) -> Option<BackendSpec> {
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { data_dir.join(p) };
        Some(match &self.backend {
            BackendConfig::File { path, size } => BackendSpec::File { path: resolve(path), size: *size },
            BackendConfig::Block { path } => BackendSpec::Block { path: resolve(path) },
            BackendConfig::Memory { size } => BackendSpec::Memory { size: *size },
            BackendConfig::Plugin(_) => return None,
        })
    }
}

impl Config {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// Parse and validate `text`, naming it `file` in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<Range<usize>>, message: String| {
            let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError { file: file.to_owned(), line, column, message }
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_owned();
            // serde reports an unknown key inside a tagged table (`[export.backend]`) at the
            // table; point at the key's own line instead.
            let span = match (e.span(), unknown_field(&msg)) {
                (Some(s), Some(field)) => find_key_line(text, s.start, field).map(|o| o..o).or(Some(s)),
                (s, _) => s,
            };
            let key = span.as_ref().and_then(|s| key_at(text, s.start));
            at(span, key.map(|k| format!("key `{k}`: {msg}")).unwrap_or(msg))
        })?;

        let listen = match raw.server.listen {
            None => vec![parse_addr(DEFAULT_LISTEN).map_err(|m| at(None, m))?],
            Some(list) => {
                // A standalone controller (no exports) may listen for hosts nowhere.
                let serves_hosts = !raw.export.is_empty() || raw.controller.is_none();
                if list.get_ref().is_empty() && raw.server.unix.is_none() && serves_hosts {
                    return Err(at(
                        Some(list.span()),
                        "key `server.listen`: empty, and no `server.unix` socket".into(),
                    ));
                }
                let mut out = Vec::new();
                for a in list.into_inner() {
                    out.push(
                        parse_addr(a.get_ref()).map_err(|m| at(Some(a.span()), format!("key `server.listen`: {m}")))?,
                    );
                }
                out
            }
        };
        let max_connections = match raw.server.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(m) if *m.get_ref() == 0 => {
                return Err(at(Some(m.span()), "key `server.max_connections`: must be at least 1".into()))
            }
            Some(m) => m.into_inner(),
        };

        // A standalone quorum controller serves no exports.
        if raw.export.is_empty() && raw.controller.is_none() {
            return Err(at(None, "no [[export]] sections: nothing to serve".into()));
        }
        let mut seen = HashSet::new();
        let mut exports = Vec::new();
        for (i, e) in raw.export.into_iter().enumerate() {
            let key = |k: &str| format!("key `export[{i}].{k}`");
            let name = e.name.get_ref();
            if name.is_empty() || name.len() > nbd_proto::consts::MAX_STRING_LEN {
                return Err(at(Some(e.name.span()), format!("{}: must be 1 to 4096 bytes", key("name"))));
            }
            if !seen.insert(name.clone()) {
                return Err(at(Some(e.name.span()), format!("{}: export `{name}` is defined twice", key("name"))));
            }
            let size = match &e.size {
                None => None,
                Some(s) => {
                    Some(parse_size(s.get_ref()).map_err(|m| at(Some(s.span()), format!("{}: {m}", key("size"))))?)
                }
            };
            let size_span = e.size.as_ref().map(|s| s.span());
            let refs = |v: Vec<RawPluginRef>| -> Result<Vec<PluginRef>, ConfigError> {
                v.into_iter().map(|r| plugin_ref(text, file, r.plugin, r.config)).collect()
            };
            let filters = refs(e.filter)?;
            let components = refs(e.component)?;
            let plugin_call_timeout = match &e.plugin_call_timeout_ms {
                Some(t) if *t.get_ref() == 0 => {
                    return Err(at(Some(t.span()), format!("{}: must be at least 1", key("plugin_call_timeout_ms"))))
                }
                Some(t) => *t.get_ref(),
                None => DEFAULT_PLUGIN_CALL_TIMEOUT_MS,
            };
            let backend_span = e.backend.span();
            let backend = match e.backend.into_inner() {
                RawBackend::File { path } => BackendConfig::File { path, size },
                RawBackend::Block { path } => {
                    if size.is_some() {
                        let msg = format!("{}: a block backend takes its size from the device", key("size"));
                        return Err(at(size_span, msg));
                    }
                    BackendConfig::Block { path }
                }
                RawBackend::Memory => match size {
                    Some(size) => BackendConfig::Memory { size },
                    None => {
                        return Err(at(Some(backend_span), format!("{}: a memory backend needs a size", key("size"))))
                    }
                },
                RawBackend::Plugin { plugin, config } => {
                    if size.is_some() {
                        let msg =
                            format!("{}: a plugin backend reports its own size (set it in its config)", key("size"));
                        return Err(at(size_span, msg));
                    }
                    BackendConfig::Plugin(plugin_ref(text, file, Spanned::new(backend_span, plugin), config)?)
                }
            };
            exports.push(ExportConfig {
                name: e.name.into_inner(),
                description: e.description,
                read_only: e.read_only,
                backend,
                filters,
                components,
                plugin_call_timeout: std::time::Duration::from_millis(plugin_call_timeout),
            });
        }
        let policies = raw
            .policy
            .into_iter()
            .map(|r| plugin_ref(text, file, r.plugin, r.config))
            .collect::<Result<Vec<_>, _>>()?;
        let (node, volume_sets) = replication::validate(raw.node, raw.volume_set, &exports, text, file)?;
        let controller = raw.controller.map(|c| quorum::validate(c, text, file)).transpose()?;
        Ok(Config {
            listen,
            unix: raw.server.unix,
            data_dir: raw.server.data_dir,
            max_connections,
            plugin_dir: raw.server.plugin_dir,
            exports,
            policies,
            admin_socket: raw.server.admin_socket,
            node,
            volume_sets,
            controller,
        })
    }
}

/// A plugin reference, located in its file, with its config table as JSON.
fn plugin_ref(text: &str, file: &str, plugin: Spanned<String>, config: toml::Table) -> Result<PluginRef, ConfigError> {
    let (line, column) = line_col(text, plugin.span().start);
    let location = format!("{file}:{line}:{column}");
    let config = serde_json::to_value(&config).map_err(|e| ConfigError {
        file: file.to_owned(),
        line,
        column,
        message: format!("plugin `{}` config: {e}", plugin.get_ref()),
    })?;
    Ok(PluginRef { plugin: plugin.into_inner(), config, location })
}

pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("`{s}` is not an address:port (e.g. 127.0.0.1:10809 or [::1]:10809)"))
}

/// Sizes are bytes, or a number with a binary suffix: K, M, G, T (or KiB, MiB, GiB, TiB).
pub(crate) fn parse_size(s: &RawSize) -> Result<u64, String> {
    let bytes = match s {
        RawSize::Bytes(b) => *b,
        RawSize::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: u64 =
                num.parse().map_err(|_| format!("`{t}` is not a size (e.g. 1073741824, \"512MiB\", \"1G\")"))?;
            let shift = match unit.trim() {
                "" | "B" => 0,
                "K" | "KiB" => 10,
                "M" | "MiB" => 20,
                "G" | "GiB" => 30,
                "T" | "TiB" => 40,
                other => return Err(format!("unknown size unit `{other}` (use K, M, G, T or KiB, MiB, GiB, TiB)")),
            };
            n.checked_mul(1 << shift).ok_or_else(|| format!("`{t}` is too large"))?
        }
    };
    if bytes == 0 {
        return Err("size must be greater than zero".into());
    }
    if bytes > i64::MAX as u64 {
        return Err("size is too large".into());
    }
    Ok(bytes)
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("unknown field `")?.split('`').next()
}

/// Offset of the first line at or after `from` that assigns `key`, within the same table.
fn find_key_line(text: &str, from: usize, key: &str) -> Option<usize> {
    let mut offset = text[..from.min(text.len())].rfind('\n').map(|p| p + 1).unwrap_or(0);
    for (i, line) in text[offset..].split_inclusive('\n').enumerate() {
        let t = line.trim_start();
        if i > 0 && t.starts_with('[') {
            return None;
        }
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return Some(offset + (line.len() - t.len()));
            }
        }
        offset += line.len();
    }
    None
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|p| before.len() - p).unwrap_or(before.len() + 1);
    (line, column)
}

/// The key of the `key = value` line containing `offset`, if that line is one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())].rfind('\n').map(|p| p + 1).unwrap_or(0);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn default_config_is_valid() {
        let c = Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME).unwrap();
        assert_eq!(c.listen, vec![DEFAULT_LISTEN.parse().unwrap()]);
        assert_eq!(c.exports.len(), 1);
        assert_eq!(c.exports[0].name, "vol0");
        assert_eq!(c.exports[0].backend, BackendConfig::File { path: "vol0.img".into(), size: Some(1 << 30) });
    }

    #[test]
    fn sizes() {
        let t = |s: &str| parse_size(&RawSize::Text(s.into()));
        assert_eq!(t("1G"), Ok(1 << 30));
        assert_eq!(t("512MiB"), Ok(512 << 20));
        assert_eq!(t("4096"), Ok(4096));
        assert!(t("1GB").unwrap_err().contains("unknown size unit `GB`"));
        assert!(t("0").is_err());
        assert!(t("99999999999T").is_err());
        assert_eq!(parse_size(&RawSize::Bytes(7)), Ok(7));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("[[export]]\nname = \"a\"\nsize = \"1G\"\n[export.backend]\ntype = \"file\"\npth = \"x\"\n");
        assert!(e.starts_with("t.toml:"), "{e}");
        assert!(e.contains("pth"), "{e}");
        let e = err("[[export]]\nname = \"a\"\nsize = \"1Q\"\n[export.backend]\ntype = \"memory\"\n");
        assert!(e.starts_with("t.toml:3:8: key `export[0].size`: unknown size unit `Q`"), "{e}");
        let e = err("[[export]]\nname = \"a\"\nsize = true\n[export.backend]\ntype = \"memory\"\n");
        assert!(e.starts_with("t.toml:3:") && e.contains("key `size`"), "{e}");
        let e = err("[server]\nlisten = [\"nowhere\"]\n[[export]]\nname = \"a\"\nsize = 1\n[export.backend]\ntype = \"memory\"\n");
        assert!(e.starts_with("t.toml:2:11: key `server.listen`: `nowhere` is not an address"), "{e}");
        let e = err("[[export]]\nname = \"a\"\n[export.backend]\ntype = \"memory\"\n");
        assert!(e.contains("a memory backend needs a size"), "{e}");
        let dup = "[[export]]\nname = \"a\"\nsize = 1\n[export.backend]\ntype = \"memory\"\n";
        let e = err(&format!("{dup}{dup}"));
        assert!(e.starts_with("t.toml:7:") && e.contains("defined twice"), "{e}");
        assert!(err("").contains("nothing to serve"));
        let e = err("[[export]]\nname = \"b\"\nsize = 1\n[export.backend]\ntype = \"block\"\npath = \"/dev/x\"\n");
        assert!(e.contains("takes its size from the device"), "{e}");
        let e = err("[[export]]\nname = \"b\"\n[export.backend]\ntype = \"tape\"\n");
        assert!(e.starts_with("t.toml:") && e.contains("tape"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_data_dir() {
        let c = Config::parse(DEFAULT_CONFIG, "d").unwrap();
        let spec = c.exports[0].backend_spec(Path::new("/srv/gw")).unwrap();
        assert_eq!(spec, BackendSpec::File { path: "/srv/gw/vol0.img".into(), size: Some(1 << 30) });
    }
}
