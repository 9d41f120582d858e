//! The plugin ABI: `#[repr(C)]` structures and function-pointer tables shared by the gateway
//! (the host) and plugins (shared libraries). This is the only thing that crosses the
//! boundary; everything else in this crate is a safe layer over it.
//!
//! # The promise
//! * A plugin exports one symbol, [`ENTRY_SYMBOL`] (`gw_plugin_entry_v1`): an
//!   `extern "C" fn() -> *const GwPluginDescriptor`. The major version is in the name, so a
//!   host never calls into a plugin of another major version by mistake.
//! * Every structure starts with `struct_size`. Fields are **only appended**, and each
//!   addition bumps [`ABI_MINOR`]. A reader copies `min(struct_size, its own size)` bytes
//!   into a zeroed structure, so fields the other side does not know read as zero/`None`.
//! * Optional entries the plugin lacks are emulated by the host (zeroes by writing zero
//!   buffers, FUA by a flush, extents as "all data", cache as a no-op).
//! * Strings are [`GwStr`]: pointer and length, UTF-8, borrowed for the call only.
//! * Buffers are owned by the caller and valid for the call only.
//! * Failures return a nonzero code (an errno value such as `EIO`, or [`GW_EPANIC`]) and may
//!   fill the caller's [`GwError`] with a message.
//!
//! # History
//! * 1.0: descriptor; backend table `open, close, size, capabilities, read, write, flush,
//!   trim`; capability bits `CAN_TRIM, NATIVE_FUA, CAN_MULTI_CONN, BLOCKING`; backup
//!   component table; recovery policy table; host table with `log`.
//! * 1.1: backend table appends `zero, extents, cache`; capability bits append `CAN_ZERO,
//!   CAN_FAST_ZERO, CAN_EXTENTS, CAN_CACHE`.
//!
//! A C header with the same layout is in `sdk/include/gateway_plugin.h`; the 1.0 header is
//! frozen in `sdk/abi/v1.0/` with a plugin built against it, which the tests load.

use std::ffi::{c_char, c_void};
use std::mem::{offset_of, size_of};

pub const ABI_MAJOR: u32 = 1;
pub const ABI_MINOR: u32 = 1;
/// NUL-terminated name of the entry point for [`ABI_MAJOR`].
pub const ENTRY_SYMBOL: &[u8] = b"gw_plugin_entry_v1\0";
/// Prefix of entry symbols of any major version (used to explain a mismatch).
pub const ENTRY_PREFIX: &str = "gw_plugin_entry_v";

/// Plugin kinds.
pub const KIND_BACKEND: u32 = 1;
pub const KIND_FILTER: u32 = 2;
pub const KIND_BACKUP_COMPONENT: u32 = 3;
pub const KIND_RECOVERY_POLICY: u32 = 4;

pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_BACKEND => "backend",
        KIND_FILTER => "filter",
        KIND_BACKUP_COMPONENT => "backup component",
        KIND_RECOVERY_POLICY => "recovery policy",
        _ => "unknown",
    }
}

/// Success.
pub const GW_OK: i32 = 0;
/// The plugin panicked; the host marks the instance failed and calls it no more.
pub const GW_EPANIC: i32 = -1;

/// Opaque plugin instance.
pub type GwInstance = *mut c_void;

/// A borrowed UTF-8 string.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GwStr {
    pub ptr: *const u8,
    pub len: usize,
}

impl GwStr {
    pub fn new(s: &str) -> Self {
        Self { ptr: s.as_ptr(), len: s.len() }
    }

    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid for `'a`.
    pub unsafe fn as_str<'a>(self) -> &'a str {
        if self.ptr.is_null() || self.len == 0 {
            return "";
        }
        // SAFETY: the caller guarantees ptr/len describe readable memory for 'a.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => {
                // Keep the valid prefix rather than failing: these are names and messages.
                // SAFETY: `valid_up_to` bytes were just validated as UTF-8.
                unsafe { std::str::from_utf8_unchecked(&bytes[..e.valid_up_to()]) }
            }
        }
    }
}

/// Error message buffer the caller provides; the callee fills it on failure.
#[repr(C)]
pub struct GwError {
    pub struct_size: usize,
    pub len: u32,
    pub msg: [u8; 500],
}

impl Default for GwError {
    fn default() -> Self {
        Self { struct_size: size_of::<Self>(), len: 0, msg: [0; 500] }
    }
}

impl GwError {
    pub fn set(&mut self, message: &str) {
        let mut n = message.len().min(self.msg.len());
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        self.msg[..n].copy_from_slice(&message.as_bytes()[..n]);
        self.len = n as u32;
    }

    pub fn message(&self) -> String {
        let n = (self.len as usize).min(self.msg.len());
        String::from_utf8_lossy(&self.msg[..n]).into_owned()
    }
}

/// What the host offers every plugin.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GwHostApi {
    pub struct_size: usize,
    pub abi_major: u32,
    pub abi_minor: u32,
    /// Log a line under the plugin's name. Levels: 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub log: Option<unsafe extern "C" fn(level: u32, plugin: GwStr, message: GwStr)>,
}

/// `open(host, config_json, next, out_instance, err) -> code`. `next` is the layer below for
/// filters and null otherwise; `config_json` is the plugin's config table as JSON.
pub type GwOpenFn = unsafe extern "C" fn(
    host: *const GwHostApi,
    config_json: GwStr,
    next: *const GwBackendHandle,
    out: *mut GwInstance,
    err: *mut GwError,
) -> i32;
pub type GwCloseFn = unsafe extern "C" fn(instance: GwInstance);

/// The descriptor the entry point returns; static for the life of the library.
#[repr(C)]
pub struct GwPluginDescriptor {
    pub struct_size: usize,
    pub abi_major: u32,
    pub abi_minor: u32,
    pub kind: u32,
    /// NUL-terminated, static.
    pub name: *const c_char,
    /// NUL-terminated, static.
    pub version: *const c_char,
    /// Points to the table of `kind`: [`GwBackendVtable`] for backends and filters,
    /// [`GwComponentVtable`], or [`GwPolicyVtable`].
    pub vtable: *const c_void,
}

/// Capability bits (ABI 1.0).
pub const CAP_CAN_TRIM: u64 = 1 << 0;
pub const CAP_NATIVE_FUA: u64 = 1 << 1;
pub const CAP_CAN_MULTI_CONN: u64 = 1 << 2;
pub const CAP_BLOCKING: u64 = 1 << 3;
/// Capability bits (ABI 1.1).
pub const CAP_CAN_ZERO: u64 = 1 << 4;
pub const CAP_CAN_FAST_ZERO: u64 = 1 << 5;
pub const CAP_CAN_EXTENTS: u64 = 1 << 6;
pub const CAP_CAN_CACHE: u64 = 1 << 7;

/// Request flags for write, trim and zero.
pub const FLAG_FUA: u32 = 1 << 0;
pub const FLAG_MAY_TRIM: u32 = 1 << 1;
pub const FLAG_FAST_ONLY: u32 = 1 << 2;

/// Extent flags.
pub const EXTENT_HOLE: u32 = 1 << 0;
pub const EXTENT_ZERO: u32 = 1 << 1;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GwExtent {
    pub length: u64,
    pub flags: u32,
    pub reserved: u32,
}

/// Storage operations: implemented by backend and filter plugins, and by the host for the
/// layer below a filter (see [`GwBackendHandle`]). Every call may come from any thread, many
/// at once.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GwBackendVtable {
    pub struct_size: usize,
    pub open: Option<GwOpenFn>,
    pub close: Option<GwCloseFn>,
    pub size: Option<unsafe extern "C" fn(GwInstance) -> u64>,
    /// Capability bits (`CAP_*`).
    pub capabilities: Option<unsafe extern "C" fn(GwInstance) -> u64>,
    pub read: Option<unsafe extern "C" fn(GwInstance, buf: *mut u8, len: usize, offset: u64, err: *mut GwError) -> i32>,
    pub write: Option<
        unsafe extern "C" fn(GwInstance, buf: *const u8, len: usize, offset: u64, flags: u32, err: *mut GwError) -> i32,
    >,
    pub flush: Option<unsafe extern "C" fn(GwInstance, err: *mut GwError) -> i32>,
    pub trim: Option<unsafe extern "C" fn(GwInstance, offset: u64, length: u64, flags: u32, err: *mut GwError) -> i32>,
    // ---- ABI 1.1 ----
    pub zero: Option<unsafe extern "C" fn(GwInstance, offset: u64, length: u64, flags: u32, err: *mut GwError) -> i32>,
    /// Fill up to `cap` extents starting at `offset`; store the count in `*n`.
    pub extents: Option<
        unsafe extern "C" fn(
            GwInstance,
            offset: u64,
            length: u64,
            out: *mut GwExtent,
            cap: usize,
            n: *mut usize,
            err: *mut GwError,
        ) -> i32,
    >,
    pub cache: Option<unsafe extern "C" fn(GwInstance, offset: u64, length: u64, err: *mut GwError) -> i32>,
}

/// Size of the backend table as ABI 1.0 defined it (through `trim`).
pub const BACKEND_VTABLE_SIZE_V1_0: usize = offset_of!(GwBackendVtable, zero);

/// A live storage layer: a table plus the instance to call it with. The host passes one to a
/// filter's `open` as the layer below; it stays valid until the filter is closed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GwBackendHandle {
    pub vtable: *const GwBackendVtable,
    pub instance: GwInstance,
}

/// Update kinds for backup components.
pub const UPDATE_WRITE: u32 = 1;
pub const UPDATE_TRIM: u32 = 2;
pub const UPDATE_ZERO: u32 = 3;

/// One intercepted update, in the volume's order.
#[repr(C)]
pub struct GwUpdate {
    pub struct_size: usize,
    pub volume: GwStr,
    pub seq: u64,
    pub offset: u64,
    pub length: u64,
    /// `UPDATE_*`.
    pub kind: u32,
    /// `FLAG_FUA`, `FLAG_MAY_TRIM`.
    pub flags: u32,
    /// `length` bytes for writes, null otherwise; valid during the call only.
    pub data: *const u8,
}

/// Completion callback. The component calls `complete` **exactly once** per accepted
/// submission or flush, from any thread, with `GW_OK` or an errno and a message.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GwCompletion {
    pub ctx: *mut c_void,
    pub complete: Option<unsafe extern "C" fn(ctx: *mut c_void, status: i32, message: GwStr)>,
}

/// Backup components receive every intercepted update of the volumes they serve.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GwComponentVtable {
    pub struct_size: usize,
    pub open: Option<GwOpenFn>,
    pub close: Option<GwCloseFn>,
    /// Accept an update: `GW_OK` means the completion will fire; anything else means it
    /// never will (the update was refused at once).
    pub submit: Option<unsafe extern "C" fn(GwInstance, update: *const GwUpdate, done: GwCompletion) -> i32>,
    /// Barrier: complete once every update of `volume` with `seq <= upto` is durable.
    pub flush: Option<unsafe extern "C" fn(GwInstance, volume: GwStr, upto: u64, done: GwCompletion) -> i32>,
    /// A consistency-set boundary: updates up to `upto` form set `set_id`.
    pub set_boundary: Option<unsafe extern "C" fn(GwInstance, volume: GwStr, set_id: u64, upto: u64) -> i32>,
}

/// Receives a policy's actions, one JSON document per call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GwSink {
    pub ctx: *mut c_void,
    pub emit: Option<unsafe extern "C" fn(ctx: *mut c_void, json: GwStr)>,
}

/// Recovery policies: pure state machines fed JSON events, answering JSON actions.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GwPolicyVtable {
    pub struct_size: usize,
    pub open: Option<GwOpenFn>,
    pub close: Option<GwCloseFn>,
    /// Calls are serialised by the host (never two at once on one instance).
    pub on_event:
        Option<unsafe extern "C" fn(GwInstance, event_json: GwStr, actions: GwSink, err: *mut GwError) -> i32>,
}

/// Copy a table or descriptor the other side gave us, honouring its `struct_size`: bytes it
/// did not provide stay zero (`None`, 0).
///
/// # Safety
/// `src` must point to a readable structure whose first field is a `usize` giving its size,
/// and `T` must be a `#[repr(C)]` type for which all-zero bytes are a valid value.
pub unsafe fn copy_sized<T>(src: *const T) -> Option<(T, usize)> {
    if src.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees `src` is readable and starts with its size.
    let declared = unsafe { std::ptr::read_unaligned(src as *const usize) };
    let n = declared.min(size_of::<T>());
    if n < size_of::<usize>() {
        return None;
    }
    let mut out = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: both regions are at least `n` bytes; they do not overlap (`out` is ours).
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr() as *mut u8, n) };
    // SAFETY: all-zero is valid for T (caller's guarantee) and the copied prefix came from
    // a valid T of a compatible (older or newer) layout.
    Some((unsafe { out.assume_init() }, declared))
}

// The layout is the ABI: any change below is a break. Sizes are for 64-bit targets.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<GwStr>() == 16);
    assert!(offset_of!(GwError, len) == 8 && offset_of!(GwError, msg) == 12 && size_of::<GwError>() == 512);
    assert!(offset_of!(GwHostApi, abi_major) == 8 && offset_of!(GwHostApi, abi_minor) == 12);
    assert!(offset_of!(GwHostApi, log) == 16 && size_of::<GwHostApi>() == 24);
    assert!(offset_of!(GwPluginDescriptor, abi_major) == 8);
    assert!(offset_of!(GwPluginDescriptor, abi_minor) == 12);
    assert!(offset_of!(GwPluginDescriptor, kind) == 16);
    assert!(offset_of!(GwPluginDescriptor, name) == 24);
    assert!(offset_of!(GwPluginDescriptor, version) == 32);
    assert!(offset_of!(GwPluginDescriptor, vtable) == 40);
    assert!(size_of::<GwPluginDescriptor>() == 48);
    assert!(offset_of!(GwBackendVtable, open) == 8);
    assert!(offset_of!(GwBackendVtable, close) == 16);
    assert!(offset_of!(GwBackendVtable, size) == 24);
    assert!(offset_of!(GwBackendVtable, capabilities) == 32);
    assert!(offset_of!(GwBackendVtable, read) == 40);
    assert!(offset_of!(GwBackendVtable, write) == 48);
    assert!(offset_of!(GwBackendVtable, flush) == 56);
    assert!(offset_of!(GwBackendVtable, trim) == 64);
    assert!(offset_of!(GwBackendVtable, zero) == 72);
    assert!(offset_of!(GwBackendVtable, extents) == 80);
    assert!(offset_of!(GwBackendVtable, cache) == 88);
    assert!(size_of::<GwBackendVtable>() == 96);
    assert!(BACKEND_VTABLE_SIZE_V1_0 == 72);
    assert!(size_of::<GwExtent>() == 16);
    assert!(size_of::<GwBackendHandle>() == 16);
    assert!(offset_of!(GwUpdate, volume) == 8);
    assert!(offset_of!(GwUpdate, seq) == 24);
    assert!(offset_of!(GwUpdate, offset) == 32);
    assert!(offset_of!(GwUpdate, length) == 40);
    assert!(offset_of!(GwUpdate, kind) == 48);
    assert!(offset_of!(GwUpdate, flags) == 52);
    assert!(offset_of!(GwUpdate, data) == 56);
    assert!(size_of::<GwUpdate>() == 64);
    assert!(size_of::<GwCompletion>() == 16 && size_of::<GwSink>() == 16);
    assert!(offset_of!(GwComponentVtable, open) == 8);
    assert!(offset_of!(GwComponentVtable, close) == 16);
    assert!(offset_of!(GwComponentVtable, submit) == 24);
    assert!(offset_of!(GwComponentVtable, flush) == 32);
    assert!(offset_of!(GwComponentVtable, set_boundary) == 40);
    assert!(size_of::<GwComponentVtable>() == 48);
    assert!(offset_of!(GwPolicyVtable, open) == 8);
    assert!(offset_of!(GwPolicyVtable, close) == 16);
    assert!(offset_of!(GwPolicyVtable, on_event) == 24);
    assert!(size_of::<GwPolicyVtable>() == 32);
};
