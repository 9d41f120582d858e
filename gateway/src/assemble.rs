//! Turning a validated [`Config`] into live volumes and policies: open each export's backend
//! (built in or a plugin), stack its filters, attach its backup components, and load the
//! node's recovery policies.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use gateway_backend::Backend;
use gateway_sdk::policy::{Action, Event, ImportedPolicy};

use crate::config::{BackendConfig, Config, ExportConfig, PluginRef};
use crate::plugin::{self, observer::ComponentObserver};
use crate::replication::observer::PeerObserver;
use crate::volume::Volume;

/// Open every export of `config`.
/// Open every export of `config`; `peers` are the replication observers of replicated volumes
/// (attached after the backup components, so a component sees an update before the peer's
/// verdict is awaited... both are awaited before the host is acknowledged).
pub fn volumes(
    config: &Config,
    data_dir: &Path,
    plugin_dir: &Path,
    peers: &HashMap<String, Arc<PeerObserver>>,
) -> anyhow::Result<Vec<Arc<Volume>>> {
    config
        .exports
        .iter()
        .map(|e| {
            let mut v = volume(e, data_dir, plugin_dir).with_context(|| format!("export `{}`", e.name))?;
            if let Some(p) = peers.get(&e.name) {
                v = v.with_observer(p.clone());
            }
            Ok(Arc::new(v))
        })
        .collect()
}

fn load(r: &PluginRef, plugin_dir: &Path) -> anyhow::Result<plugin::Plugin> {
    plugin::load(&r.plugin, plugin_dir).with_context(|| format!("{}: plugin `{}`", r.location, r.plugin))
}

fn volume(e: &ExportConfig, data_dir: &Path, plugin_dir: &Path) -> anyhow::Result<Volume> {
    let mut uses_plugins = !e.filters.is_empty();
    let mut layer: Arc<dyn Backend> = match (&e.backend, e.backend_spec(data_dir)) {
        (_, Some(spec)) => gateway_backend::open(&spec, e.read_only)?,
        (BackendConfig::Plugin(r), None) => {
            uses_plugins = true;
            let p = load(r, plugin_dir)?;
            Arc::new(plugin::open_layer(&p, &r.config, None).with_context(|| r.location.clone())?)
        }
        (_, None) => anyhow::bail!("backend has no built-in implementation"),
    };
    // The first filter listed is the outermost, so stack from the last one up.
    for r in e.filters.iter().rev() {
        let p = load(r, plugin_dir)?;
        layer = Arc::new(plugin::open_layer(&p, &r.config, Some(layer)).with_context(|| r.location.clone())?);
    }
    tracing::info!(
        export = %e.name,
        backend = layer.kind(),
        size = layer.size(),
        read_only = e.read_only,
        filters = e.filters.len(),
        components = e.components.len(),
        "export ready"
    );
    let mut volume = Volume::new(e.name.clone(), e.description.clone(), e.read_only, layer);
    if uses_plugins {
        volume = volume.with_call_timeout(e.plugin_call_timeout);
    }
    for r in &e.components {
        let p = load(r, plugin_dir)?;
        let c = plugin::open_component(&p, &r.config).with_context(|| r.location.clone())?;
        volume = volume.with_observer(Arc::new(ComponentObserver::new(c)));
    }
    Ok(volume)
}

/// The node's recovery policies, fed lifecycle events. Actions that need subsystems this
/// node does not run are logged as not carried out.
pub struct Policies {
    loaded: Vec<ImportedPolicy>,
}

impl Policies {
    pub fn load(config: &Config, plugin_dir: &Path) -> anyhow::Result<Policies> {
        let loaded = config
            .policies
            .iter()
            .map(|r| {
                let p = load(r, plugin_dir)?;
                plugin::open_policy(&p, &r.config).with_context(|| r.location.clone())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Policies { loaded })
    }

    /// Feed an event to every policy and carry out (or report) their actions.
    pub fn deliver(&mut self, event: &Event) -> Vec<Action> {
        let mut all = Vec::new();
        for p in &mut self.loaded {
            match p.on_event(event) {
                Ok(actions) => {
                    for a in &actions {
                        execute(p.name(), a);
                    }
                    all.extend(actions);
                }
                Err(e) => tracing::error!(policy = p.name(), "{e}"),
            }
        }
        all
    }
}

fn execute(policy: &str, action: &Action) {
    match action {
        Action::Log { level, message } => match level.as_str() {
            "error" => tracing::error!(policy, "{message}"),
            "warn" => tracing::warn!(policy, "{message}"),
            "debug" => tracing::debug!(policy, "{message}"),
            _ => tracing::info!(policy, "{message}"),
        },
        other => {
            tracing::warn!(policy, action = %other.to_json(), "action not carried out: this node runs no subsystem for it")
        }
    }
}

/// Load the recovery policy that runs the replication state machine of the node's volume
/// sets (every set must name the same one) and open it with `config`.
pub fn replication_policy(
    config: &Config,
    plugin_dir: &Path,
    policy_config: serde_json::Value,
) -> anyhow::Result<ImportedPolicy> {
    let names: std::collections::BTreeSet<&str> = config.volume_sets.iter().map(|s| s.policy.as_str()).collect();
    anyhow::ensure!(names.len() == 1, "all volume sets of a node must use the same policy plugin (found: {names:?})");
    let name = names.into_iter().next().unwrap_or("pprc");
    let p = plugin::load(name, plugin_dir).with_context(|| format!("volume set policy `{name}`"))?;
    plugin::open_policy(&p, &policy_config).with_context(|| format!("volume set policy `{name}`"))
}

/// The quorum controller of a `[controller]` section, with its recovery policy loaded and
/// opened on the section's policy config.
pub fn controller(
    cfg: &crate::config::ControllerConfig,
    data_dir: &Path,
    plugin_dir: &Path,
) -> anyhow::Result<Arc<crate::quorum::controller::Controller>> {
    let what = || format!("controller {}: policy `{}`", cfg.id, cfg.policy);
    let p = plugin::load(&cfg.policy, plugin_dir).with_context(what)?;
    let policy = plugin::open_policy(&p, &cfg.policy_config()).with_context(what)?;
    Ok(crate::quorum::controller::Controller::new(cfg.clone(), data_dir, policy))
}
