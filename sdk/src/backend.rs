//! Storage layers across the ABI, in both directions.
//!
//! * **Export** ([`backend_vtable`], [`filter_vtable`], [`export_backend`]): turn a Rust
//!   [`Backend`] into a [`GwBackendVtable`] plus instance. Plugins do this for their backend
//!   or filter (through `declare_plugin!`); the host does it for the layer below a filter.
//! * **Import** ([`ImportedBackend`]): turn a table plus instance from the other side back
//!   into a [`Backend`], emulating the optional entries an older table lacks. The host does
//!   this for every backend or filter plugin; a filter does it for its `next` layer.
//!
//! Every exported entry runs inside `catch_unwind`: a panic becomes [`GW_EPANIC`], the
//! instance is marked failed and answers `EIO` from then on. Nothing unwinds across the ABI.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use gateway_backend::{Backend, BackendError, Capabilities, ErrorKind, Extent, Result, ZeroFlags};

use crate::abi::*;
use crate::{panic_message, Host};

/// An exported instance: the value plus a "failed" latch set by a panic.
pub struct Slot<B> {
    inner: B,
    failed: AtomicBool,
}

impl<B> Slot<B> {
    pub fn new(inner: B) -> Self {
        Self { inner, failed: AtomicBool::new(false) }
    }
}

pub(crate) fn errno_of(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::NoSpace => libc_errno::ENOSPC,
        ErrorKind::ReadOnly => libc_errno::EPERM,
        ErrorKind::Invalid => libc_errno::EINVAL,
        ErrorKind::NotSupported => libc_errno::ENOTSUP,
        ErrorKind::Shutdown => libc_errno::ESHUTDOWN,
        _ => libc_errno::EIO,
    }
}

pub(crate) fn kind_of(code: i32) -> ErrorKind {
    match code {
        libc_errno::ENOSPC => ErrorKind::NoSpace,
        libc_errno::EPERM | libc_errno::EROFS => ErrorKind::ReadOnly,
        libc_errno::EINVAL => ErrorKind::Invalid,
        libc_errno::ENOTSUP => ErrorKind::NotSupported,
        libc_errno::ESHUTDOWN => ErrorKind::Shutdown,
        _ => ErrorKind::Io,
    }
}

/// The errno values the ABI uses (Linux numbering, as on the NBD wire).
pub mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const EIO: i32 = 5;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const ENOTSUP: i32 = 95;
    pub const ESHUTDOWN: i32 = 108;
}

/// # Safety
/// `inst` must be a pointer produced by `Box::into_raw(Box<Slot<B>>)` and not yet closed.
unsafe fn slot<'a, B>(inst: GwInstance) -> &'a Slot<B> {
    // SAFETY: guaranteed by the caller.
    unsafe { &*(inst as *const Slot<B>) }
}

fn set_err(err: *mut GwError, msg: &str) {
    if !err.is_null() {
        // SAFETY: the caller of the ABI entry passed a valid, exclusive error buffer.
        unsafe { (*err).set(msg) }
    }
}

/// Run one exported call: refuse on a failed instance, catch panics, map errors.
fn guarded<B>(s: &Slot<B>, err: *mut GwError, f: impl FnOnce(&B) -> Result<()>) -> i32 {
    if s.failed.load(Ordering::Acquire) {
        set_err(err, "instance failed earlier (it panicked) and accepts no more calls");
        return libc_errno::EIO;
    }
    match catch_unwind(AssertUnwindSafe(|| f(&s.inner))) {
        Ok(Ok(())) => GW_OK,
        Ok(Err(e)) => {
            // The kind travels as the code; the text carries the context and the OS error.
            let text = match &e.source {
                Some(src) => format!("{}: {src}", e.context),
                None => e.context.clone(),
            };
            set_err(err, &text);
            errno_of(e.kind)
        }
        Err(p) => {
            s.failed.store(true, Ordering::Release);
            set_err(err, &format!("panicked: {}", panic_message(&p)));
            GW_EPANIC
        }
    }
}

fn caps_to_bits(c: Capabilities) -> u64 {
    let mut b = 0;
    for (on, bit) in [
        (c.can_trim, CAP_CAN_TRIM),
        (c.native_fua, CAP_NATIVE_FUA),
        (c.can_multi_conn, CAP_CAN_MULTI_CONN),
        (c.blocking, CAP_BLOCKING),
        (c.can_zero, CAP_CAN_ZERO),
        (c.can_fast_zero, CAP_CAN_FAST_ZERO),
        (c.can_extents, CAP_CAN_EXTENTS),
        (c.can_cache, CAP_CAN_CACHE),
    ] {
        if on {
            b |= bit;
        }
    }
    b
}

fn bits_to_caps(b: u64) -> Capabilities {
    Capabilities {
        can_trim: b & CAP_CAN_TRIM != 0,
        native_fua: b & CAP_NATIVE_FUA != 0,
        can_multi_conn: b & CAP_CAN_MULTI_CONN != 0,
        blocking: b & CAP_BLOCKING != 0,
        can_zero: b & CAP_CAN_ZERO != 0,
        can_fast_zero: b & CAP_CAN_FAST_ZERO != 0,
        can_extents: b & CAP_CAN_EXTENTS != 0,
        can_cache: b & CAP_CAN_CACHE != 0,
    }
}

unsafe extern "C" fn size_shim<B: Backend>(inst: GwInstance) -> u64 {
    // SAFETY: the host passes the instance open returned.
    let s = unsafe { slot::<B>(inst) };
    catch_unwind(AssertUnwindSafe(|| s.inner.size())).unwrap_or_else(|_| {
        s.failed.store(true, Ordering::Release);
        0
    })
}

unsafe extern "C" fn caps_shim<B: Backend>(inst: GwInstance) -> u64 {
    // SAFETY: as in size_shim.
    let s = unsafe { slot::<B>(inst) };
    catch_unwind(AssertUnwindSafe(|| caps_to_bits(s.inner.capabilities()))).unwrap_or_else(|_| {
        s.failed.store(true, Ordering::Release);
        0
    })
}

unsafe extern "C" fn read_shim<B: Backend>(
    inst: GwInstance,
    buf: *mut u8,
    len: usize,
    off: u64,
    err: *mut GwError,
) -> i32 {
    // SAFETY: the caller passes the instance from open and a buffer of `len` writable bytes.
    let (s, buf) = unsafe { (slot::<B>(inst), slice_mut(buf, len)) };
    guarded(s, err, |b| b.read_at(buf, off))
}

unsafe extern "C" fn write_shim<B: Backend>(
    inst: GwInstance,
    buf: *const u8,
    len: usize,
    off: u64,
    flags: u32,
    err: *mut GwError,
) -> i32 {
    // SAFETY: the caller passes the instance from open and `len` readable bytes.
    let (s, buf) = unsafe { (slot::<B>(inst), slice(buf, len)) };
    guarded(s, err, |b| b.write_at(buf, off, flags & FLAG_FUA != 0))
}

unsafe extern "C" fn flush_shim<B: Backend>(inst: GwInstance, err: *mut GwError) -> i32 {
    // SAFETY: the caller passes the instance from open.
    guarded(unsafe { slot::<B>(inst) }, err, |b| b.flush())
}

unsafe extern "C" fn trim_shim<B: Backend>(inst: GwInstance, off: u64, len: u64, flags: u32, err: *mut GwError) -> i32 {
    // SAFETY: the caller passes the instance from open.
    guarded(unsafe { slot::<B>(inst) }, err, |b| b.trim(off, len, flags & FLAG_FUA != 0))
}

unsafe extern "C" fn zero_shim<B: Backend>(inst: GwInstance, off: u64, len: u64, flags: u32, err: *mut GwError) -> i32 {
    let zf = ZeroFlags {
        may_trim: flags & FLAG_MAY_TRIM != 0,
        fast_only: flags & FLAG_FAST_ONLY != 0,
        fua: flags & FLAG_FUA != 0,
    };
    // SAFETY: the caller passes the instance from open.
    guarded(unsafe { slot::<B>(inst) }, err, |b| b.zero(off, len, zf))
}

unsafe extern "C" fn extents_shim<B: Backend>(
    inst: GwInstance,
    off: u64,
    len: u64,
    out: *mut GwExtent,
    cap: usize,
    n: *mut usize,
    err: *mut GwError,
) -> i32 {
    // SAFETY: the caller passes the instance from open, room for `cap` extents and `n`.
    let (s, out) = unsafe { (slot::<B>(inst), slice_mut(out, cap)) };
    guarded(s, err, |b| {
        let ext = b.extents(off, len)?;
        let mut count = 0;
        for (dst, e) in out.iter_mut().zip(ext.iter()) {
            let flags = if e.hole { EXTENT_HOLE } else { 0 } | if e.zero { EXTENT_ZERO } else { 0 };
            *dst = GwExtent { length: e.length, flags, reserved: 0 };
            count += 1;
        }
        if !n.is_null() {
            // SAFETY: checked non-null; the caller provided it for this call.
            unsafe { *n = count };
        }
        Ok(())
    })
}

unsafe extern "C" fn cache_shim<B: Backend>(inst: GwInstance, off: u64, len: u64, err: *mut GwError) -> i32 {
    // SAFETY: the caller passes the instance from open.
    guarded(unsafe { slot::<B>(inst) }, err, |b| b.cache(off, len))
}

/// # Safety
/// `ptr` must be valid for `len` elements (or `len` must be 0).
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// # Safety
/// `ptr` must be valid for writes of `len` elements (or `len` must be 0).
unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize) -> &'a mut [T] {
    if ptr.is_null() || len == 0 {
        return &mut [];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }
}

/// The operation entries for an instance of type `B` (everything but `open`).
const fn ops<B: Backend>() -> GwBackendVtable {
    GwBackendVtable {
        struct_size: std::mem::size_of::<GwBackendVtable>(),
        open: None,
        close: Some(crate::close_boxed::<Slot<B>>),
        size: Some(size_shim::<B>),
        capabilities: Some(caps_shim::<B>),
        read: Some(read_shim::<B>),
        write: Some(write_shim::<B>),
        flush: Some(flush_shim::<B>),
        trim: Some(trim_shim::<B>),
        zero: Some(zero_shim::<B>),
        extents: Some(extents_shim::<B>),
        cache: Some(cache_shim::<B>),
    }
}

/// A backend plugin: a [`Backend`] the host constructs from the plugin's config.
pub trait BackendPlugin: Backend + Sized {
    /// Build an instance from the plugin's config table (as JSON). The message of an error is
    /// shown to the operator, prefixed with the plugin's name.
    fn open(host: &Host, config: &serde_json::Value) -> std::result::Result<Self, String>;
}

/// A filter: sits above the next layer (a backend or another filter) and sees every call
/// first. Every method defaults to passing the call through, so a filter overrides only what
/// it changes. The same threading and buffer contract as [`Backend`] applies.
pub trait Filter: Send + Sync + Sized + 'static {
    fn open(host: &Host, config: &serde_json::Value, next: Next) -> std::result::Result<Self, String>;
    /// The layer below.
    fn next(&self) -> &Next;
    fn size(&self) -> u64 {
        self.next().size()
    }
    fn capabilities(&self) -> Capabilities {
        self.next().capabilities()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.next().read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.next().write_at(buf, offset, fua)
    }
    fn flush(&self) -> Result<()> {
        self.next().flush()
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<()> {
        self.next().trim(offset, length, fua)
    }
    fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<()> {
        self.next().zero(offset, length, flags)
    }
    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        self.next().extents(offset, length)
    }
    fn cache(&self, offset: u64, length: u64) -> Result<()> {
        self.next().cache(offset, length)
    }
}

/// The layer below a filter.
pub type Next = ImportedBackend;

/// Adapter so a [`Filter`] can be exported through the backend table.
pub struct FilterBackend<F>(pub F);

impl<F: Filter> Backend for FilterBackend<F> {
    fn kind(&self) -> &'static str {
        "filter"
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.0.write_at(buf, offset, fua)
    }
    fn flush(&self) -> Result<()> {
        self.0.flush()
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<()> {
        self.0.trim(offset, length, fua)
    }
    fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<()> {
        self.0.zero(offset, length, flags)
    }
    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        self.0.extents(offset, length)
    }
    fn cache(&self, offset: u64, length: u64) -> Result<()> {
        self.0.cache(offset, length)
    }
}

/// Shared body of the backend and filter `open` entries.
///
/// # Safety
/// Pointers as the ABI documents for `open`.
unsafe fn open_common<B: Backend>(
    host: *const GwHostApi,
    config: GwStr,
    out: *mut GwInstance,
    err: *mut GwError,
    build: impl FnOnce(&Host, &serde_json::Value) -> std::result::Result<B, String>,
) -> i32 {
    // SAFETY: forwarded ABI arguments.
    unsafe { crate::open_instance(host, config, out, err, |h, c| build(h, c).map(Slot::new)) }
}

unsafe extern "C" fn backend_open<P: BackendPlugin>(
    host: *const GwHostApi,
    config: GwStr,
    _next: *const GwBackendHandle,
    out: *mut GwInstance,
    err: *mut GwError,
) -> i32 {
    // SAFETY: forwarded ABI arguments.
    unsafe { open_common(host, config, out, err, |h, c| P::open(h, c)) }
}

unsafe extern "C" fn filter_open<F: Filter>(
    host: *const GwHostApi,
    config: GwStr,
    next: *const GwBackendHandle,
    out: *mut GwInstance,
    err: *mut GwError,
) -> i32 {
    // SAFETY: the host passes the layer below, valid until this filter is closed.
    let next = match unsafe { ImportedBackend::from_handle(next, "next", false) } {
        Ok(n) => n,
        Err(e) => {
            set_err(err, &e.to_string());
            return libc_errno::EINVAL;
        }
    };
    // SAFETY: forwarded ABI arguments.
    unsafe { open_common(host, config, out, err, |h, c| F::open(h, c, next).map(FilterBackend)) }
}

/// The table a backend plugin exports.
pub const fn backend_vtable<P: BackendPlugin>() -> GwBackendVtable {
    GwBackendVtable { open: Some(backend_open::<P>), ..ops::<P>() }
}

/// The table a filter plugin exports.
pub const fn filter_vtable<F: Filter>() -> GwBackendVtable {
    GwBackendVtable { open: Some(filter_open::<F>), ..ops::<FilterBackend<F>>() }
}

/// A Rust backend exported as a handle (the host does this for the layer below a filter).
/// The handle is valid while this value lives.
pub struct ExportedBackend {
    vtable: Box<GwBackendVtable>,
    instance: GwInstance,
}

// SAFETY: the instance is a Slot<Arc<dyn Backend>>, which is Send + Sync; the table is plain
// function pointers.
unsafe impl Send for ExportedBackend {}
// SAFETY: as above.
unsafe impl Sync for ExportedBackend {}

pub fn export_backend(b: Arc<dyn Backend>) -> ExportedBackend {
    let instance = Box::into_raw(Box::new(Slot::new(b))) as GwInstance;
    ExportedBackend { vtable: Box::new(ops::<Arc<dyn Backend>>()), instance }
}

impl ExportedBackend {
    pub fn handle(&self) -> GwBackendHandle {
        GwBackendHandle { vtable: &*self.vtable, instance: self.instance }
    }
}

impl Drop for ExportedBackend {
    fn drop(&mut self) {
        // SAFETY: instance came from Box::into_raw of this type and is dropped once, here.
        unsafe { crate::close_boxed::<Slot<Arc<dyn Backend>>>(self.instance) }
    }
}

/// How often an [`ImportedBackend`] had to emulate an entry the other side lacks.
#[derive(Debug, Default)]
pub struct Emulation {
    pub zero_by_writes: AtomicU64,
    pub fua_by_flush: AtomicU64,
    pub extents_as_data: AtomicU64,
    pub cache_as_noop: AtomicU64,
}

/// A storage layer on the other side of the ABI, as a [`Backend`].
pub struct ImportedBackend {
    vt: GwBackendVtable,
    instance: GwInstance,
    name: &'static str,
    caps: Capabilities,
    size: u64,
    /// Close the instance on drop (true for plugin instances the host opened; false for a
    /// filter's view of the layer below, which the host owns).
    owned: bool,
    failed: AtomicBool,
    pub emulation: Emulation,
}

// SAFETY: the ABI requires every entry to be callable from any thread, concurrently.
unsafe impl Send for ImportedBackend {}
// SAFETY: as above.
unsafe impl Sync for ImportedBackend {}

impl ImportedBackend {
    /// # Safety
    /// `h` must be null or point to a handle whose table and instance stay valid for the life
    /// of the returned value (and, with `owned`, whose instance nobody else closes).
    pub unsafe fn from_handle(
        h: *const GwBackendHandle,
        name: &'static str,
        owned: bool,
    ) -> std::result::Result<Self, BackendError> {
        if h.is_null() {
            return Err(BackendError::invalid(format!("{name}: no layer handle")));
        }
        // SAFETY: guaranteed by the caller.
        let h = unsafe { *h };
        // SAFETY: as above; the table begins with its size.
        let (vt, _) = unsafe { copy_sized(h.vtable) }
            .ok_or_else(|| BackendError::invalid(format!("{name}: invalid backend table")))?;
        // SAFETY: as above.
        unsafe { Self::new(vt, h.instance, name, owned) }
    }

    /// # Safety
    /// `instance` must have been produced by this table's `open` (or be the instance of a
    /// handle) and stay valid for the life of the returned value.
    pub unsafe fn new(
        vt: GwBackendVtable,
        instance: GwInstance,
        name: &'static str,
        owned: bool,
    ) -> std::result::Result<Self, BackendError> {
        let missing: Vec<&str> = [
            ("size", vt.size.is_none()),
            ("capabilities", vt.capabilities.is_none()),
            ("read", vt.read.is_none()),
            ("write", vt.write.is_none()),
            ("flush", vt.flush.is_none()),
        ]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(n, _)| *n)
        .collect();
        if !missing.is_empty() {
            return Err(BackendError::invalid(format!("{name}: required entries missing: {}", missing.join(", "))));
        }
        let (Some(size), Some(caps)) = (vt.size, vt.capabilities) else { unreachable!("checked above") };
        // SAFETY: entries and instance are valid per the caller.
        let (size, bits) = unsafe { (size(instance), caps(instance)) };
        let mut caps = bits_to_caps(bits);
        // A capability without the entry that implements it is not a capability.
        caps.can_trim &= vt.trim.is_some();
        caps.can_zero &= vt.zero.is_some();
        caps.can_fast_zero &= vt.zero.is_some();
        caps.can_extents &= vt.extents.is_some();
        caps.can_cache &= vt.cache.is_some();
        Ok(Self {
            vt,
            instance,
            name,
            caps,
            size,
            owned,
            failed: AtomicBool::new(false),
            emulation: Emulation::default(),
        })
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Call an entry with a fresh error buffer and map the result.
    fn call(&self, op: &str, f: impl FnOnce(*mut GwError) -> i32) -> Result<()> {
        if self.failed() {
            return Err(BackendError::new(
                ErrorKind::Io,
                format!("{}: plugin failed earlier; refusing {op}", self.name),
            ));
        }
        let mut err = GwError::default();
        let code = f(&mut err);
        if code == GW_OK {
            return Ok(());
        }
        let msg = err.message();
        if code == GW_EPANIC {
            self.failed.store(true, Ordering::Release);
            return Err(BackendError::new(
                ErrorKind::Io,
                format!("{}: {op}: plugin {msg}; instance marked failed", self.name),
            ));
        }
        let detail = if msg.is_empty() { format!("error {code}") } else { msg };
        Err(BackendError::new(kind_of(code), format!("{}: {op}: {detail}", self.name)))
    }

    fn zero_by_writes(&self, offset: u64, length: u64, fua: bool) -> Result<()> {
        self.emulation.zero_by_writes.fetch_add(1, Ordering::Relaxed);
        let chunk = length.min(1 << 20) as usize;
        let zeroes = vec![0u8; chunk];
        let mut done = 0;
        while done < length {
            let n = (length - done).min(chunk as u64) as usize;
            self.write_at(&zeroes[..n], offset + done, false)?;
            done += n as u64;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }
}

impl Drop for ImportedBackend {
    fn drop(&mut self) {
        if let (true, Some(close)) = (self.owned, self.vt.close) {
            // SAFETY: we own the instance and close it exactly once.
            unsafe { close(self.instance) };
        }
    }
}

impl Backend for ImportedBackend {
    fn kind(&self) -> &'static str {
        self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(f) = self.vt.read else { unreachable!("checked at construction") };
        // SAFETY: valid entry and instance; `buf` is ours for the call.
        self.call("read", |e| unsafe { f(self.instance, buf.as_mut_ptr(), buf.len(), offset, e) })
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        let Some(f) = self.vt.write else { unreachable!("checked at construction") };
        let emulate = fua && !self.caps.native_fua;
        let flags = if fua && !emulate { FLAG_FUA } else { 0 };
        // SAFETY: valid entry and instance; `buf` is ours for the call.
        self.call("write", |e| unsafe { f(self.instance, buf.as_ptr(), buf.len(), offset, flags, e) })?;
        if emulate {
            self.emulation.fua_by_flush.fetch_add(1, Ordering::Relaxed);
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        let Some(f) = self.vt.flush else { unreachable!("checked at construction") };
        // SAFETY: valid entry and instance.
        self.call("flush", |e| unsafe { f(self.instance, e) })
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<()> {
        let Some(f) = self.vt.trim.filter(|_| self.caps.can_trim) else { return Ok(()) };
        let flags = if fua { FLAG_FUA } else { 0 };
        // SAFETY: valid entry and instance.
        self.call("trim", |e| unsafe { f(self.instance, offset, length, flags, e) })
    }
    fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<()> {
        match self.vt.zero.filter(|_| self.caps.can_zero) {
            Some(f) => {
                let mut bits = if flags.fua { FLAG_FUA } else { 0 };
                if flags.may_trim {
                    bits |= FLAG_MAY_TRIM;
                }
                if flags.fast_only {
                    bits |= FLAG_FAST_ONLY;
                }
                // SAFETY: valid entry and instance.
                self.call("zero", |e| unsafe { f(self.instance, offset, length, bits, e) })
            }
            None if flags.fast_only => Err(BackendError::not_supported(format!("{}: fast zero", self.name))),
            None => self.zero_by_writes(offset, length, flags.fua),
        }
    }
    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let Some(f) = self.vt.extents.filter(|_| self.caps.can_extents) else {
            self.emulation.extents_as_data.fetch_add(1, Ordering::Relaxed);
            return Ok(vec![Extent { length, hole: false, zero: false }]);
        };
        let mut out = vec![GwExtent::default(); 1024];
        let mut n = 0usize;
        // SAFETY: valid entry and instance; `out` has room for its length; `n` is ours.
        self.call("extents", |e| unsafe { f(self.instance, offset, length, out.as_mut_ptr(), out.len(), &mut n, e) })?;
        out.truncate(n.min(1024));
        let ext: Vec<Extent> = out
            .iter()
            .map(|x| Extent { length: x.length, hole: x.flags & EXTENT_HOLE != 0, zero: x.flags & EXTENT_ZERO != 0 })
            .collect();
        if ext.is_empty() || ext.iter().any(|e| e.length == 0) {
            // A plugin that answered nonsense: describing the range as data is always true.
            return Ok(vec![Extent { length, hole: false, zero: false }]);
        }
        Ok(ext)
    }
    fn cache(&self, offset: u64, length: u64) -> Result<()> {
        let Some(f) = self.vt.cache.filter(|_| self.caps.can_cache) else {
            self.emulation.cache_as_noop.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        // SAFETY: valid entry and instance.
        self.call("cache", |e| unsafe { f(self.instance, offset, length, e) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_backend::memory::MemoryBackend;

    /// A backend that panics on write and fails reads, to exercise the shims' guards.
    struct Bad;
    impl Backend for Bad {
        fn kind(&self) -> &'static str {
            "bad"
        }
        fn size(&self) -> u64 {
            4096
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> Result<()> {
            Err(BackendError::new(ErrorKind::NoSpace, "full"))
        }
        fn write_at(&self, _: &[u8], _: u64, _: bool) -> Result<()> {
            panic!("boom")
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn trim(&self, _: u64, _: u64, _: bool) -> Result<()> {
            Ok(())
        }
        fn zero(&self, _: u64, _: u64, _: ZeroFlags) -> Result<()> {
            Ok(())
        }
        fn extents(&self, _: u64, l: u64) -> Result<Vec<Extent>> {
            Ok(vec![Extent { length: l, hole: false, zero: false }])
        }
        fn cache(&self, _: u64, _: u64) -> Result<()> {
            Ok(())
        }
    }

    fn roundtrip(b: Arc<dyn Backend>) -> (ExportedBackend, ImportedBackend) {
        let exported = export_backend(b);
        let h = exported.handle();
        // SAFETY: the handle stays valid while `exported` lives, which outlives the import
        // in every test (returned together, dropped in order).
        let imported = unsafe { ImportedBackend::from_handle(&h, "test", false) }.unwrap();
        (exported, imported)
    }

    #[test]
    fn export_then_import_preserves_behaviour() {
        let (_e, b) = roundtrip(Arc::new(MemoryBackend::new(1 << 20)));
        assert_eq!(b.size(), 1 << 20);
        let caps = b.capabilities();
        assert!(caps.can_zero && caps.can_extents && caps.native_fua && !caps.blocking);
        b.write_at(b"hello", 65536, true).unwrap();
        let mut buf = [0u8; 5];
        b.read_at(&mut buf, 65536).unwrap();
        assert_eq!(&buf, b"hello");
        let ext = b.extents(0, 1 << 20).unwrap();
        assert!(ext[0].hole && !ext[1].hole, "{ext:?}");
        b.zero(65536, 5, ZeroFlags { may_trim: false, fast_only: true, fua: false }).unwrap();
        b.read_at(&mut buf, 65536).unwrap();
        assert_eq!(buf, [0; 5]);
        assert_eq!(b.emulation.zero_by_writes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn errors_and_panics_cross_as_codes() {
        let (_e, b) = roundtrip(Arc::new(Bad));
        let mut buf = [0u8; 8];
        let e = b.read_at(&mut buf, 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert!(e.to_string().contains("full"), "{e}");
        let e = b.write_at(&buf, 0, false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io);
        assert!(e.to_string().contains("panicked: boom") && e.to_string().contains("marked failed"), "{e}");
        assert!(b.failed());
        let e = b.flush().unwrap_err();
        assert!(e.to_string().contains("failed earlier"), "{e}");
    }

    #[test]
    fn missing_optional_entries_are_emulated() {
        let exported = export_backend(Arc::new(MemoryBackend::new(1 << 20)));
        let mut vt = *exported.vtable;
        // Pretend to be a 1.0 table: everything from `zero` on is absent.
        vt.struct_size = BACKEND_VTABLE_SIZE_V1_0;
        // SAFETY: `vt` is a valid table whose struct_size we just lowered.
        let (old, _) = unsafe { copy_sized(&vt) }.unwrap();
        assert!(old.zero.is_none() && old.extents.is_none() && old.cache.is_none());
        // SAFETY: the instance belongs to `exported`, alive for this test; not owned here.
        let b = unsafe { ImportedBackend::new(old, exported.instance, "old", false) }.unwrap();
        b.write_at(&[7u8; 100], 0, false).unwrap();
        b.zero(0, 50, ZeroFlags::default()).unwrap();
        let mut buf = [1u8; 100];
        b.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..50], &[0u8; 50][..]);
        assert_eq!(&buf[50..], &[7u8; 50][..]);
        assert_eq!(b.emulation.zero_by_writes.load(Ordering::Relaxed), 1);
        assert!(b.zero(0, 50, ZeroFlags { fast_only: true, ..Default::default() }).is_err());
        assert_eq!(b.extents(0, 4096).unwrap(), vec![Extent { length: 4096, hole: false, zero: false }]);
        b.cache(0, 1).unwrap();
        assert_eq!(b.emulation.extents_as_data.load(Ordering::Relaxed), 1);
        assert_eq!(b.emulation.cache_as_noop.load(Ordering::Relaxed), 1);
        let caps = b.capabilities();
        assert!(!caps.can_zero && !caps.can_extents && !caps.can_cache);
    }
}
