//! Where the policy under test comes from: a plugin library loaded by the host's own loader
//! (`gateway::plugin::{load, open_policy}`, exactly as the daemon does), or a policy type of
//! this process behind the same C ABI table (`policy_vtable::<T>()`), for tests. Either way
//! every event and action crosses the ABI as JSON.

use std::path::{Path, PathBuf};

use gateway::plugin::{load, open_policy, Plugin};
use gateway_sdk::abi::{GwError, GwInstance, GwPolicyVtable, GwStr, GW_OK};
use gateway_sdk::policy::{policy_vtable, ImportedPolicy};
use gateway_sdk::RecoveryPolicy;

#[derive(Clone)]
pub enum PolicySource {
    Library(Plugin),
    InProcess { vt: GwPolicyVtable, name: String },
}

impl PolicySource {
    /// A policy type of this process, through its ABI table.
    pub fn in_process<P: RecoveryPolicy>(name: &str) -> PolicySource {
        PolicySource::InProcess { vt: policy_vtable::<P>(), name: name.to_owned() }
    }

    /// Load a policy plugin: a path (anything with a `/`), or a name looked up as the daemon
    /// does (`libgw_NAME.so`, `libNAME.so`, `NAME.so`) in `$SIM_PLUGIN_DIR` if set, else next
    /// to this executable (`target/<profile>`) and in the `deps` directory beside it (where
    /// cargo puts the workspace's plugins built as dependencies), the newest copy winning.
    pub fn load(spec: &str) -> Result<PolicySource, String> {
        let dirs = plugin_dirs();
        let (spec, dir) = if spec.contains('/') {
            (spec.to_owned(), PathBuf::from("."))
        } else {
            // Crate names use '-', library files '_': `vtc-quorum` is libgw_vtc_quorum.so.
            let names = [spec.to_owned(), spec.replace('-', "_")];
            match names.iter().filter_map(|n| newest(n, &dirs).map(|d| (n.clone(), d))).next() {
                Some(found) => found,
                None => (spec.to_owned(), dirs.first().cloned().unwrap_or_else(|| PathBuf::from("."))),
            }
        };
        let plugin = load(&spec, &dir).map_err(|e| {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            format!("{e} (looked in {}; build it with `cargo build -p <its crate>`)", looked.join(", "))
        })?;
        Ok(PolicySource::Library(plugin))
    }

    pub fn name(&self) -> String {
        match self {
            PolicySource::Library(p) => format!("{} {} ({})", p.name(), p.version(), p.path().display()),
            PolicySource::InProcess { name, .. } => format!("{name} (in-process ABI table)"),
        }
    }

    /// Open one instance (one controller) with its JSON config.
    pub fn open(&self, config: &serde_json::Value) -> Result<ImportedPolicy, String> {
        match self {
            PolicySource::Library(p) => open_policy(p, config).map_err(|e| e.to_string()),
            PolicySource::InProcess { vt, name } => {
                let open = vt.open.ok_or("policy table has no open entry")?;
                let text = config.to_string();
                let mut out: GwInstance = std::ptr::null_mut();
                let mut err = GwError::default();
                // SAFETY: the table comes from `policy_vtable` of this process; every pointer
                // passed is valid for the call; a null host table is allowed.
                let code = unsafe { open(std::ptr::null(), GwStr::new(&text), std::ptr::null(), &mut out, &mut err) };
                if code != GW_OK || out.is_null() {
                    return Err(format!("{name}: open failed: {}", err.message()));
                }
                // SAFETY: `out` came from this table's open and is owned by the returned value.
                unsafe { ImportedPolicy::new(*vt, out, name.clone()) }
            }
        }
    }
}

fn plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SIM_PLUGIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir.clone());
        dirs.push(exe_dir.join("deps"));
        if exe_dir.ends_with("deps") {
            if let Some(up) = exe_dir.parent() {
                dirs.push(up.to_path_buf());
            }
        }
    }
    dirs
}

/// Of the directories holding `spec`, the one with the most recently built copy (a workspace
/// build leaves one in `target/<profile>`, building the simulator another in `deps`).
fn newest(spec: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let mtime =
        |d: &PathBuf| std::fs::metadata(gateway::plugin::loader::resolve(spec, d)).and_then(|m| m.modified()).ok();
    if let Some(first) = dirs.first().filter(|d| std::env::var_os("SIM_PLUGIN_DIR").is_some() && mtime(d).is_some()) {
        return Some(first.clone());
    }
    dirs.iter().filter_map(|d| mtime(d).map(|t| (t, d))).max_by_key(|(t, _)| *t).map(|(_, d)| d.clone())
}
