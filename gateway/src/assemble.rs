//! Turning a validated [`Config`] into live volumes and policies: open each export's backend
//! (built in or a plugin), stack its filters, attach its backup components, and load the
//! node's recovery policies.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use gateway_backend::Backend;
use gateway_sdk::policy::{Action, Event, ImportedPolicy};

use crate::config::{BackendConfig, Config, ExportConfig, PluginRef};
use crate::plugin::{self, observer::ComponentObserver};
use crate::volume::Volume;

/// Open every export of `config`.
pub fn volumes(config: &Config, data_dir: &Path, plugin_dir: &Path) -> anyhow::Result<Vec<Arc<Volume>>> {
    config
        .exports
        .iter()
        .map(|e| volume(e, data_dir, plugin_dir).with_context(|| format!("export `{}`", e.name)))
        .collect()
}

fn load(r: &PluginRef, plugin_dir: &Path) -> anyhow::Result<plugin::Plugin> {
    plugin::load(&r.plugin, plugin_dir).with_context(|| format!("{}: plugin `{}`", r.location, r.plugin))
}

fn volume(e: &ExportConfig, data_dir: &Path, plugin_dir: &Path) -> anyhow::Result<Arc<Volume>> {
    let mut uses_plugins = !e.filters.is_empty();
    let mut layer: Arc<dyn Backend> = match (&e.backend, e.backend_spec(data_dir)) {
        (_, Some(spec)) => gateway_backend::open(&spec, e.read_only)?,
        (BackendConfig::Plugin(r), None) => {
            uses_plugins = true;
            let p = load(r, plugin_dir)?;
            Arc::new(plugin::open_layer(&p, &r.config, None)?)
        }
        (_, None) => anyhow::bail!("backend has no built-in implementation"),
    };
    // The first filter listed is the outermost, so stack from the last one up.
    for r in e.filters.iter().rev() {
        let p = load(r, plugin_dir)?;
        layer = Arc::new(plugin::open_layer(&p, &r.config, Some(layer))?);
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
        let c = plugin::open_component(&p, &r.config)?;
        volume = volume.with_observer(Arc::new(ComponentObserver::new(c)));
    }
    Ok(Arc::new(volume))
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
                Ok(plugin::open_policy(&p, &r.config)?)
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
