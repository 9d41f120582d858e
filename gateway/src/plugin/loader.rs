//! Finding and checking plugin libraries.

use std::ffi::{c_void, CStr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gateway_sdk::abi::*;
use libloading::Library;

/// A plugin that could not be loaded or opened; the message names the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("plugin {path}: {message}")]
pub struct LoadError {
    pub path: String,
    pub message: String,
}

/// A loaded, checked plugin library.
#[derive(Clone, Debug)]
pub struct Plugin {
    path: PathBuf,
    name: &'static str,
    version: String,
    kind: u32,
    abi_major: u32,
    abi_minor: u32,
    vtable: usize,
}

impl Plugin {
    pub fn name(&self) -> &str {
        self.name
    }
    /// The name with a static lifetime (libraries live until exit; so does this string).
    pub fn static_name(&self) -> &'static str {
        self.name
    }
    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn kind(&self) -> u32 {
        self.kind
    }
    pub fn abi_major(&self) -> u32 {
        self.abi_major
    }
    pub fn abi_minor(&self) -> u32 {
        self.abi_minor
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub(crate) fn vtable(&self) -> *const c_void {
        self.vtable as *const c_void
    }

    pub fn error(&self, message: &str) -> LoadError {
        LoadError { path: self.path.display().to_string(), message: format!("`{}`: {message}", self.name) }
    }

    pub fn expect_kind(&self, kind: u32) -> Result<(), LoadError> {
        if self.kind == kind {
            return Ok(());
        }
        Err(self.error(&format!(
            "is a {} plugin, but this slot takes a {} plugin",
            kind_name(self.kind),
            kind_name(kind)
        )))
    }
}

/// Every library ever loaded; never dropped, so no plugin code is unmapped while in use.
static LIBRARIES: Mutex<Vec<Library>> = Mutex::new(Vec::new());

/// Where a plugin named without a path is looked for, in order: `libgw_NAME.so`,
/// `libNAME.so`, `NAME.so` in `dir`; a `-` in NAME also matches the `_` cargo puts in
/// library names (`vtc-quorum` finds `libgw_vtc_quorum.so`).
pub fn resolve(spec: &str, dir: &Path) -> PathBuf {
    if spec.contains('/') {
        return PathBuf::from(spec);
    }
    let lib = spec.replace('-', "_");
    let candidates =
        [format!("libgw_{spec}.so"), format!("libgw_{lib}.so"), format!("lib{spec}.so"), format!("{spec}.so")];
    candidates.iter().map(|c| dir.join(c)).find(|p| p.exists()).unwrap_or_else(|| dir.join(&candidates[0]))
}

/// The default plugin directory: next to the gateway executable, where `cargo build` puts
/// the workspace's plugins.
pub fn default_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."))
}

/// Load `spec` (a path, or a name looked up in `dir`) and check its descriptor.
pub fn load(spec: &str, dir: &Path) -> Result<Plugin, LoadError> {
    let path = resolve(spec, dir);
    let err = |m: String| LoadError { path: path.display().to_string(), message: m };
    let meta = std::fs::metadata(&path).map_err(|e| {
        err(if e.kind() == std::io::ErrorKind::NotFound {
            if spec.contains('/') {
                "no such file".to_owned()
            } else {
                format!(
                    "no plugin named `{spec}` in {} (looked for libgw_{spec}.so, lib{spec}.so, {spec}.so)",
                    dir.display()
                )
            }
        } else {
            format!("cannot stat: {e}")
        })
    })?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(err(format!(
            "refusing to load a group- or world-writable file (mode {:o}); run `chmod go-w {}`",
            mode & 0o7777,
            path.display()
        )));
    }
    // SAFETY: loading runs the library's initialisers; the operator chose this file in the
    // config and we checked that only its owner can modify it.
    let lib = unsafe { Library::new(&path) }.map_err(|e| err(format!("cannot load: {e}")))?;
    let entry = {
        // SAFETY: the symbol's type is fixed by the ABI for this name.
        let sym = unsafe { lib.get::<unsafe extern "C" fn() -> *const GwPluginDescriptor>(ENTRY_SYMBOL) };
        match sym {
            Ok(s) => *s,
            Err(_) => return Err(err(missing_entry(&lib))),
        }
    };
    // SAFETY: the entry point takes no arguments and returns a static descriptor.
    let raw = unsafe { entry() };
    // SAFETY: a non-null descriptor starts with its size, per the ABI.
    let (desc, declared) =
        unsafe { copy_sized(raw) }.ok_or_else(|| err("entry point returned no descriptor".into()))?;
    if declared < std::mem::offset_of!(GwPluginDescriptor, vtable) + std::mem::size_of::<usize>() {
        return Err(err(format!("descriptor too small ({declared} bytes)")));
    }
    if desc.abi_major != ABI_MAJOR {
        return Err(err(format!(
            "built for plugin ABI {}.{}, but this gateway speaks ABI {ABI_MAJOR}.x",
            desc.abi_major, desc.abi_minor
        )));
    }
    let cstr = |p: *const std::ffi::c_char| -> String {
        if p.is_null() {
            return String::new();
        }
        // SAFETY: the ABI makes these NUL-terminated static strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    let name = cstr(desc.name);
    if name.is_empty() {
        return Err(err("descriptor has no name".into()));
    }
    if !matches!(desc.kind, KIND_BACKEND | KIND_FILTER | KIND_BACKUP_COMPONENT | KIND_RECOVERY_POLICY) {
        return Err(err(format!("unknown plugin kind {}", desc.kind)));
    }
    if desc.vtable.is_null() {
        return Err(err("descriptor has no table".into()));
    }
    let plugin = Plugin {
        path: path.clone(),
        name: Box::leak(name.into_boxed_str()),
        version: cstr(desc.version),
        kind: desc.kind,
        abi_major: desc.abi_major,
        abi_minor: desc.abi_minor,
        vtable: desc.vtable as usize,
    };
    tracing::info!(
        plugin = plugin.name,
        version = plugin.version,
        kind = kind_name(plugin.kind),
        abi = %format!("{}.{}", plugin.abi_major, plugin.abi_minor),
        path = %path.display(),
        "plugin loaded"
    );
    LIBRARIES.lock().unwrap_or_else(|p| p.into_inner()).push(lib);
    Ok(plugin)
}

/// Explain a missing entry symbol: name the major version the library was built for, if it
/// has an entry point of another version.
fn missing_entry(lib: &Library) -> String {
    for major in (0..=16).filter(|m| *m != ABI_MAJOR) {
        let sym = format!("{ENTRY_PREFIX}{major}\0");
        // SAFETY: only probing for presence; the symbol is never called.
        if unsafe { lib.get::<*const c_void>(sym.as_bytes()) }.is_ok() {
            return format!(
                "built for plugin ABI major {major} (exports {ENTRY_PREFIX}{major}); this gateway loads ABI major {ABI_MAJOR}"
            );
        }
    }
    format!(
        "no entry symbol `{}`: not a gateway plugin",
        String::from_utf8_lossy(&ENTRY_SYMBOL[..ENTRY_SYMBOL.len() - 1])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_and_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = load("nothere", dir.path()).unwrap_err().to_string();
        assert!(e.contains("no plugin named `nothere`"), "{e}");
        let p = dir.path().join("libgw_x.so");
        std::fs::write(&p, b"not an elf").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = load("x", dir.path()).unwrap_err().to_string();
        assert!(e.contains("group- or world-writable") && e.contains("libgw_x.so"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(p.to_str().unwrap(), dir.path()).unwrap_err().to_string();
        assert!(e.contains("cannot load"), "{e}");
    }
}
