//! The plugin host: finds, checks, loads and opens plugins built against `gateway-sdk`.
//!
//! Loading refuses, each with a message naming the file: a missing file, a file that is
//! group- or world-writable (anyone who can write it can run code as the gateway), a library
//! without the entry symbol `gw_plugin_entry_v1` (naming the major it was built for when it
//! has another `gw_plugin_entry_vN`), a descriptor of another major version, and a plugin of
//! the wrong kind for its slot. Libraries are never unloaded: instances and the code they run
//! live until the process exits.
//!
//! * [`loader`]: resolving names, the checks above, the library registry;
//! * [`observer`]: backup components attached to a volume's write path.

pub mod loader;
pub mod observer;

use std::ffi::c_void;
use std::sync::Arc;

use gateway_backend::Backend;
use gateway_sdk::abi::*;
use gateway_sdk::backend::{export_backend, ExportedBackend, ImportedBackend};
use gateway_sdk::component::ImportedComponent;
use gateway_sdk::policy::ImportedPolicy;

pub use loader::{load, LoadError, Plugin};

unsafe extern "C" fn host_log(level: u32, plugin: GwStr, message: GwStr) {
    // SAFETY: the plugin passes strings valid for this call.
    let (plugin, message) = unsafe { (plugin.as_str(), message.as_str()) };
    match level {
        1 => tracing::error!(plugin, "{message}"),
        2 => tracing::warn!(plugin, "{message}"),
        3 => tracing::info!(plugin, "{message}"),
        4 => tracing::debug!(plugin, "{message}"),
        _ => tracing::trace!(plugin, "{message}"),
    }
}

/// The table every plugin receives.
static HOST_API: GwHostApi = GwHostApi {
    struct_size: std::mem::size_of::<GwHostApi>(),
    abi_major: ABI_MAJOR,
    abi_minor: ABI_MINOR,
    log: Some(host_log),
};

/// Call a plugin's `open` with its config (as JSON) and, for filters, the layer below.
fn open_raw(
    plugin: &Plugin,
    open: Option<GwOpenFn>,
    config: &serde_json::Value,
    next: Option<&GwBackendHandle>,
) -> Result<GwInstance, LoadError> {
    let open = open.ok_or_else(|| plugin.error("its table has no `open` entry"))?;
    let text = config.to_string();
    let mut out: GwInstance = std::ptr::null_mut::<c_void>();
    let mut err = GwError::default();
    let next_ptr = next.map_or(std::ptr::null(), |h| h as *const GwBackendHandle);
    // SAFETY: `open` comes from a checked descriptor of a loaded (never unloaded) library;
    // every pointer passed is valid for the call.
    let code = unsafe { open(&HOST_API, GwStr::new(&text), next_ptr, &mut out, &mut err) };
    if code != GW_OK || out.is_null() {
        let msg = err.message();
        let why = if code == GW_EPANIC && !msg.starts_with("panicked") { format!("panicked: {msg}") } else { msg };
        return Err(plugin.error(&format!("open failed: {why}")));
    }
    Ok(out)
}

/// A backend or filter plugin instance, with the layer below a filter kept alive for as long
/// as the filter (fields drop in order: the filter closes before its `next` is freed).
pub struct PluginLayer {
    imported: ImportedBackend,
    _next: Option<(ExportedBackend, Arc<dyn Backend>)>,
}

impl PluginLayer {
    pub fn imported(&self) -> &ImportedBackend {
        &self.imported
    }
}

/// Open a backend plugin, or a filter over `next`.
pub fn open_layer(
    plugin: &Plugin,
    config: &serde_json::Value,
    next: Option<Arc<dyn Backend>>,
) -> Result<PluginLayer, LoadError> {
    let expected = if next.is_some() { KIND_FILTER } else { KIND_BACKEND };
    plugin.expect_kind(expected)?;
    // SAFETY: the kind says the table is a backend table; it lives as long as the library.
    let (vt, _) = unsafe { copy_sized(plugin.vtable() as *const GwBackendVtable) }
        .ok_or_else(|| plugin.error("backend table is missing or too small"))?;
    let exported = next.map(|n| (export_backend(n.clone()), n));
    let handle = exported.as_ref().map(|(e, _)| e.handle());
    let instance = open_raw(plugin, vt.open, config, handle.as_ref())?;
    // SAFETY: `instance` came from this table's open; we own it from here on.
    let imported = unsafe { ImportedBackend::new(vt, instance, plugin.static_name(), true) }
        .map_err(|e| plugin.error(&e.to_string()))?;
    if vt.struct_size < std::mem::size_of::<GwBackendVtable>() {
        tracing::info!(
            plugin = plugin.name(),
            abi = %format!("{}.{}", plugin.abi_major(), plugin.abi_minor()),
            "older backend table: zero/extents/cache are emulated where missing"
        );
    }
    Ok(PluginLayer { imported, _next: exported })
}

impl Backend for PluginLayer {
    fn kind(&self) -> &'static str {
        self.imported.kind()
    }
    fn size(&self) -> u64 {
        self.imported.size()
    }
    fn capabilities(&self) -> gateway_backend::Capabilities {
        self.imported.capabilities()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> gateway_backend::Result<()> {
        self.imported.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> gateway_backend::Result<()> {
        self.imported.write_at(buf, offset, fua)
    }
    fn flush(&self) -> gateway_backend::Result<()> {
        self.imported.flush()
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> gateway_backend::Result<()> {
        self.imported.trim(offset, length, fua)
    }
    fn zero(&self, offset: u64, length: u64, flags: gateway_backend::ZeroFlags) -> gateway_backend::Result<()> {
        self.imported.zero(offset, length, flags)
    }
    fn extents(&self, offset: u64, length: u64) -> gateway_backend::Result<Vec<gateway_backend::Extent>> {
        self.imported.extents(offset, length)
    }
    fn cache(&self, offset: u64, length: u64) -> gateway_backend::Result<()> {
        self.imported.cache(offset, length)
    }
}

pub fn open_component(plugin: &Plugin, config: &serde_json::Value) -> Result<ImportedComponent, LoadError> {
    plugin.expect_kind(KIND_BACKUP_COMPONENT)?;
    // SAFETY: the kind says the table is a component table; it lives as long as the library.
    let (vt, _) = unsafe { copy_sized(plugin.vtable() as *const GwComponentVtable) }
        .ok_or_else(|| plugin.error("component table is missing or too small"))?;
    let instance = open_raw(plugin, vt.open, config, None)?;
    // SAFETY: `instance` came from this table's open; the component owns it from here on.
    unsafe { ImportedComponent::new(vt, instance, plugin.name().to_owned()) }.map_err(|e| plugin.error(&e))
}

pub fn open_policy(plugin: &Plugin, config: &serde_json::Value) -> Result<ImportedPolicy, LoadError> {
    plugin.expect_kind(KIND_RECOVERY_POLICY)?;
    // SAFETY: the kind says the table is a policy table; it lives as long as the library.
    let (vt, _) = unsafe { copy_sized(plugin.vtable() as *const GwPolicyVtable) }
        .ok_or_else(|| plugin.error("policy table is missing or too small"))?;
    let instance = open_raw(plugin, vt.open, config, None)?;
    // SAFETY: `instance` came from this table's open; the policy owns it from here on.
    unsafe { ImportedPolicy::new(vt, instance, plugin.name().to_owned()) }.map_err(|e| plugin.error(&e))
}
