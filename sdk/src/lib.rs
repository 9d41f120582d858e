//! The gateway's plugin SDK: a stable C ABI ([`abi`]) and a safe Rust layer over it.
//!
//! Four plugin kinds, each a trait here:
//! * backend ([`BackendPlugin`]: a [`Backend`] built from a config) — storage behind an export;
//! * filter ([`Filter`]) — wraps the next layer, overriding only what it changes;
//! * backup component ([`BackupComponent`]) — receives every intercepted update, in order;
//! * recovery policy ([`RecoveryPolicy`]) — a pure state machine, events in, actions out.
//!
//! A plugin crate is a `cdylib` that implements one trait and invokes [`declare_plugin!`],
//! which exports the entry symbol and generates the shims (every one wraps the call in
//! `catch_unwind`; a panic becomes an error code and the host marks the instance failed).
//! `sdk/README.md` is the author's guide.
//!
//! The host side (the gateway) uses the same crate to import what plugins export
//! ([`backend::ImportedBackend`], [`component::ImportedComponent`],
//! [`policy::ImportedPolicy`]), so both sides agree on the layout by construction; the
//! frozen 1.0 fixture and the C header keep that honest for plugins built elsewhere.

pub mod abi;
pub mod backend;
pub mod component;
pub mod policy;

pub use backend::{BackendPlugin, Filter, Next};
pub use component::{BackupComponent, Completion, Update, UpdateKind};
pub use gateway_backend::{Backend, BackendError, Capabilities, ErrorKind, Extent, ZeroFlags};
pub use policy::{Action, Event, RecoveryPolicy, ShutdownMode};
pub use serde_json;

use abi::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What the host offers a plugin: logging under the plugin's name, and the host's ABI minor.
#[derive(Clone, Copy)]
pub struct Host {
    api: Option<GwHostApi>,
}

impl Host {
    /// # Safety
    /// `api` must be null or point to a valid host table for the duration of the call that
    /// received it. The table is copied, so the `Host` may be kept.
    pub unsafe fn from_raw(api: *const GwHostApi) -> Host {
        // SAFETY: guaranteed by the caller; all-zero is valid for the table.
        Host { api: unsafe { copy_sized(api) }.map(|(t, _)| t) }
    }

    /// A host that logs to stderr (for unit tests of plugins without a gateway).
    pub fn standalone() -> Host {
        Host { api: None }
    }

    pub fn abi_minor(&self) -> u32 {
        self.api.as_ref().map(|a| a.abi_minor).unwrap_or(ABI_MINOR)
    }

    /// Log a line; levels 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub fn log(&self, level: u32, plugin: &str, message: &str) {
        match self.api.as_ref().and_then(|a| a.log) {
            // SAFETY: the host's log entry, valid for the life of the process.
            Some(f) => unsafe { f(level, GwStr::new(plugin), GwStr::new(message)) },
            None => eprintln!("[{plugin}] {message}"),
        }
    }
}

// SAFETY: the host table is plain data and function pointers callable from any thread.
unsafe impl Send for Host {}
// SAFETY: as above.
unsafe impl Sync for Host {}

/// The text of a caught panic.
pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// # Safety
/// `ptr` must be valid for `len` bytes (or `len` must be 0) for `'a`.
pub(crate) unsafe fn raw_slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Shared `open` body for components and policies: parse the config, build, box.
///
/// # Safety
/// Pointers as the ABI documents for `open`.
pub(crate) unsafe fn open_instance<T>(
    host: *const GwHostApi,
    config: GwStr,
    out: *mut GwInstance,
    err: *mut GwError,
    build: impl FnOnce(&Host, &serde_json::Value) -> Result<T, String>,
) -> i32 {
    let set_err = |m: &str| {
        if !err.is_null() {
            // SAFETY: the host's error buffer for this call.
            unsafe { (*err).set(m) }
        }
    };
    // SAFETY: the host passes a valid table (or null) and a config string for the call.
    let (host, text) = unsafe { (Host::from_raw(host), config.as_str()) };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let cfg = parse_config(text)?;
        build(&host, &cfg)
    }));
    match result {
        Ok(Ok(v)) if !out.is_null() => {
            // SAFETY: checked non-null; the host provided it.
            unsafe { *out = Box::into_raw(Box::new(v)) as GwInstance };
            GW_OK
        }
        Ok(Ok(_)) => {
            set_err("null output pointer");
            backend::libc_errno::EINVAL
        }
        Ok(Err(m)) => {
            set_err(&m);
            backend::libc_errno::EINVAL
        }
        Err(p) => {
            set_err(&format!("panicked in open: {}", panic_message(&p)));
            GW_EPANIC
        }
    }
}

/// The shared `close` entry: drop the boxed instance `open` made, never letting a panicking
/// `Drop` unwind into the host.
///
/// # Safety
/// `instance` is null or came from `Box::into_raw(Box<T>)` in `open`, and is closed once.
pub(crate) unsafe extern "C" fn close_boxed<T>(instance: GwInstance) {
    if instance.is_null() {
        return;
    }
    // SAFETY: guaranteed by the caller.
    let boxed = unsafe { Box::from_raw(instance as *mut T) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

pub(crate) fn parse_config(text: &str) -> Result<serde_json::Value, String> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))
}

/// Wrapper that lets the generated statics hold raw pointers.
#[doc(hidden)]
#[repr(transparent)]
pub struct StaticCell<T>(pub T);
// SAFETY: only used for immutable statics of plain data (tables and C strings).
unsafe impl<T> Sync for StaticCell<T> {}

/// Export a plugin: `declare_plugin!(backend, MyType, "name", "version")`, with the kind one
/// of `backend`, `filter`, `backup_component`, `recovery_policy`. Generates the entry symbol
/// `gw_plugin_entry_v1` and the descriptor; invoke it once per `cdylib`.
#[macro_export]
macro_rules! declare_plugin {
    (@emit $kind:expr, $vtable:expr, $vt_ty:ty, $name:expr, $version:expr) => {
        static __GW_VTABLE: $crate::StaticCell<$vt_ty> = $crate::StaticCell($vtable);
        static __GW_DESCRIPTOR: $crate::StaticCell<$crate::abi::GwPluginDescriptor> =
            $crate::StaticCell($crate::abi::GwPluginDescriptor {
                struct_size: ::std::mem::size_of::<$crate::abi::GwPluginDescriptor>(),
                abi_major: $crate::abi::ABI_MAJOR,
                abi_minor: $crate::abi::ABI_MINOR,
                kind: $kind,
                name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
                version: concat!($version, "\0").as_ptr() as *const ::std::ffi::c_char,
                vtable: &__GW_VTABLE as *const _ as *const ::std::ffi::c_void,
            });
        /// The plugin's entry point (ABI major 1).
        #[no_mangle]
        pub extern "C" fn gw_plugin_entry_v1() -> *const $crate::abi::GwPluginDescriptor {
            &__GW_DESCRIPTOR.0
        }
    };
    (backend, $ty:ty, $name:expr, $version:expr) => {
        $crate::declare_plugin!(@emit $crate::abi::KIND_BACKEND, $crate::backend::backend_vtable::<$ty>(),
            $crate::abi::GwBackendVtable, $name, $version);
    };
    (filter, $ty:ty, $name:expr, $version:expr) => {
        $crate::declare_plugin!(@emit $crate::abi::KIND_FILTER, $crate::backend::filter_vtable::<$ty>(),
            $crate::abi::GwBackendVtable, $name, $version);
    };
    (backup_component, $ty:ty, $name:expr, $version:expr) => {
        $crate::declare_plugin!(@emit $crate::abi::KIND_BACKUP_COMPONENT, $crate::component::component_vtable::<$ty>(),
            $crate::abi::GwComponentVtable, $name, $version);
    };
    (recovery_policy, $ty:ty, $name:expr, $version:expr) => {
        $crate::declare_plugin!(@emit $crate::abi::KIND_RECOVERY_POLICY, $crate::policy::policy_vtable::<$ty>(),
            $crate::abi::GwPolicyVtable, $name, $version);
    };
}
