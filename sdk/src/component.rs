//! Backup components across the ABI: the [`BackupComponent`] trait plugins implement, the
//! table `declare_plugin!` exports for it, and [`ImportedComponent`], the host's view.
//!
//! Contract (written on the trait too): `submit` is called once per update, in the volume's
//! sequence order, never concurrently for one volume; the update's data is borrowed for the
//! call only (copy what you keep); the [`Completion`] must be completed exactly once, from any
//! thread. Dropping a `Completion` without completing it completes it with an error, so a bug
//! in a component can fail a host write but never hang it forever.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::abi::*;
use crate::backend::libc_errno;
use crate::{panic_message, Host};

/// What an update does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind<'a> {
    Write(&'a [u8]),
    Trim { length: u64 },
    Zero { length: u64, may_trim: bool },
}

/// One intercepted update, borrowed for the duration of `submit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update<'a> {
    pub volume: &'a str,
    pub seq: u64,
    pub offset: u64,
    pub kind: UpdateKind<'a>,
    pub fua: bool,
}

impl Update<'_> {
    pub fn length(&self) -> u64 {
        match self.kind {
            UpdateKind::Write(d) => d.len() as u64,
            UpdateKind::Trim { length } | UpdateKind::Zero { length, .. } => length,
        }
    }
}

/// Fires the host's completion callback exactly once.
pub struct Completion {
    raw: GwCompletion,
    done: bool,
}

// SAFETY: the ABI requires the completion callback to be callable from any thread.
unsafe impl Send for Completion {}

impl Completion {
    /// # Safety
    /// `raw` must be a completion the host handed over for one submission.
    pub unsafe fn from_raw(raw: GwCompletion) -> Self {
        Self { raw, done: false }
    }

    /// Complete with success or an error message (reported to the host as `EIO`).
    pub fn complete(mut self, result: Result<(), String>) {
        self.fire(result);
    }

    fn fire(&mut self, mut result: Result<(), String>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if std::thread::panicking() {
            result = Err("backup component panicked while holding this update".into());
        }
        let Some(f) = self.raw.complete else { return };
        let (status, msg) = match &result {
            Ok(()) => (GW_OK, ""),
            Err(m) => (libc_errno::EIO, m.as_str()),
        };
        // SAFETY: the host's callback with its own context, called once (guarded by `done`).
        unsafe { f(self.raw.ctx, status, GwStr::new(msg)) };
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.fire(Err("backup component dropped the update without completing it".into()));
    }
}

/// A backup component plugin.
///
/// Threading: `submit` for one volume is called in sequence order and never concurrently for
/// that volume; different volumes may call concurrently. `flush` is a barrier for the updates
/// submitted before it. Implementations must not block in `submit` or `flush` for long: queue
/// the work and complete later (from any thread).
pub trait BackupComponent: Send + Sync + Sized + 'static {
    fn open(host: &Host, config: &serde_json::Value) -> Result<Self, String>;
    /// Take an update; complete `done` once it is safe at this component's destination.
    fn submit(&self, update: Update<'_>, done: Completion);
    /// Complete `done` once every update of `volume` with `seq <= upto` is durable.
    fn flush(&self, volume: &str, upto: u64, done: Completion);
    /// Updates of `volume` up to `upto` form consistency set `set_id`.
    fn set_boundary(&self, _volume: &str, _set_id: u64, _upto: u64) {}
}

struct Instance<C> {
    inner: C,
    failed: AtomicBool,
}

/// # Safety
/// `inst` must come from this plugin's open and not be closed.
unsafe fn inst<'a, C>(i: GwInstance) -> &'a Instance<C> {
    // SAFETY: guaranteed by the caller.
    unsafe { &*(i as *const Instance<C>) }
}

unsafe extern "C" fn open_shim<C: BackupComponent>(
    host: *const GwHostApi,
    config: GwStr,
    _next: *const GwBackendHandle,
    out: *mut GwInstance,
    err: *mut GwError,
) -> i32 {
    // SAFETY: forwarded ABI arguments.
    unsafe {
        crate::open_instance(host, config, out, err, |h, c| {
            C::open(h, c).map(|inner| Instance { inner, failed: AtomicBool::new(false) })
        })
    }
}

/// Run a component call, catching a panic (which marks the instance failed). The completion
/// was moved into the call, so a panic drops it during unwinding and it fires with an error:
/// after `GW_EPANIC` the host must not reclaim it.
fn guarded<C>(s: &Instance<C>, f: impl FnOnce(&C)) -> i32 {
    match catch_unwind(AssertUnwindSafe(|| f(&s.inner))) {
        Ok(()) => GW_OK,
        Err(p) => {
            s.failed.store(true, Ordering::Release);
            eprintln!("backup component panicked: {}", panic_message(&p));
            GW_EPANIC
        }
    }
}

fn refused<C>(s: &Instance<C>) -> bool {
    s.failed.load(Ordering::Acquire)
}

unsafe extern "C" fn submit_shim<C: BackupComponent>(i: GwInstance, u: *const GwUpdate, done: GwCompletion) -> i32 {
    if u.is_null() {
        return libc_errno::EINVAL;
    }
    // SAFETY: the host passes its instance and an update valid for this call.
    let (s, u) = unsafe { (inst::<C>(i), &*u) };
    if refused(s) {
        return libc_errno::EIO;
    }
    // SAFETY: fields of a valid update, borrowed for the call.
    let volume = unsafe { u.volume.as_str() };
    let kind = match u.kind {
        UPDATE_WRITE if u.data.is_null() && u.length > 0 => return libc_errno::EINVAL,
        // SAFETY: `data` holds `length` bytes for writes, valid during the call.
        UPDATE_WRITE => UpdateKind::Write(unsafe { crate::raw_slice(u.data, u.length as usize) }),
        UPDATE_TRIM => UpdateKind::Trim { length: u.length },
        UPDATE_ZERO => UpdateKind::Zero { length: u.length, may_trim: u.flags & FLAG_MAY_TRIM != 0 },
        _ => return libc_errno::EINVAL,
    };
    let update = Update { volume, seq: u.seq, offset: u.offset, kind, fua: u.flags & FLAG_FUA != 0 };
    // SAFETY: the host's completion for this submission.
    let done = unsafe { Completion::from_raw(done) };
    guarded(s, |c| c.submit(update, done))
}

unsafe extern "C" fn flush_shim<C: BackupComponent>(
    i: GwInstance,
    volume: GwStr,
    upto: u64,
    done: GwCompletion,
) -> i32 {
    // SAFETY: the host passes its instance, a volume name and a completion for this call.
    let (s, volume) = unsafe { (inst::<C>(i), volume.as_str()) };
    if refused(s) {
        return libc_errno::EIO;
    }
    // SAFETY: the host's completion for this flush.
    let done = unsafe { Completion::from_raw(done) };
    guarded(s, |c| c.flush(volume, upto, done))
}

unsafe extern "C" fn boundary_shim<C: BackupComponent>(i: GwInstance, volume: GwStr, set_id: u64, upto: u64) -> i32 {
    // SAFETY: the host passes its instance and a volume name for this call.
    let (s, volume) = unsafe { (inst::<C>(i), volume.as_str()) };
    if refused(s) {
        return libc_errno::EIO;
    }
    guarded(s, |c| c.set_boundary(volume, set_id, upto))
}

/// The table a backup component plugin exports.
pub const fn component_vtable<C: BackupComponent>() -> GwComponentVtable {
    GwComponentVtable {
        struct_size: std::mem::size_of::<GwComponentVtable>(),
        open: Some(open_shim::<C>),
        close: Some(crate::close_boxed::<Instance<C>>),
        submit: Some(submit_shim::<C>),
        flush: Some(flush_shim::<C>),
        set_boundary: Some(boundary_shim::<C>),
    }
}

/// Host side: a callback invoked once with the component's verdict.
pub type Callback = Box<dyn FnOnce(Result<(), String>) + Send>;

unsafe extern "C" fn trampoline(ctx: *mut c_void, status: i32, msg: GwStr) {
    // SAFETY: ctx is the Box<Callback> leaked in `completion_for`, consumed exactly once here.
    let cb = unsafe { Box::from_raw(ctx as *mut Callback) };
    let result = if status == GW_OK {
        Ok(())
    } else {
        // SAFETY: the component passes a message valid for this call.
        let m = unsafe { msg.as_str() };
        Err(if m.is_empty() { format!("error {status}") } else { m.to_owned() })
    };
    let _ = catch_unwind(AssertUnwindSafe(move || cb(result)));
}

fn completion_for(cb: Callback) -> GwCompletion {
    GwCompletion { ctx: Box::into_raw(Box::new(cb)) as *mut c_void, complete: Some(trampoline) }
}

/// Take back a completion the component refused synchronously (it will never fire).
fn reclaim(c: GwCompletion) -> Callback {
    // SAFETY: `ctx` came from completion_for and was not consumed (the call was refused).
    *unsafe { Box::from_raw(c.ctx as *mut Callback) }
}

/// A backup component on the other side of the ABI, as the host uses it.
pub struct ImportedComponent {
    vt: GwComponentVtable,
    instance: GwInstance,
    name: String,
    failed: AtomicBool,
}

// SAFETY: the component contract allows calls from any thread.
unsafe impl Send for ImportedComponent {}
// SAFETY: as above.
unsafe impl Sync for ImportedComponent {}

impl ImportedComponent {
    /// # Safety
    /// `instance` must come from `vt.open` and stay owned by the returned value.
    pub unsafe fn new(vt: GwComponentVtable, instance: GwInstance, name: String) -> Result<Self, String> {
        if vt.submit.is_none() || vt.flush.is_none() {
            return Err(format!("{name}: required entries missing: submit and flush"));
        }
        Ok(Self { vt, instance, name, failed: AtomicBool::new(false) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A submission or flush was not accepted. After a panic the completion belongs to the
    /// plugin (it fires as it unwinds); any other refusal means it never fires, so it is
    /// reclaimed and run here.
    fn refused(&self, code: i32, what: &str, c: GwCompletion) {
        if code == GW_EPANIC {
            self.failed.store(true, Ordering::Release);
            return;
        }
        reclaim(c)(Err(format!("{}: {what} refused with code {code}", self.name)));
    }

    /// Hand an update to the component; `cb` runs exactly once with its verdict.
    pub fn submit(&self, update: &Update<'_>, cb: Callback) {
        if self.failed.load(Ordering::Acquire) {
            return cb(Err(format!("{}: component failed earlier", self.name)));
        }
        let (kind, data, mut flags) = match update.kind {
            UpdateKind::Write(d) => (UPDATE_WRITE, d.as_ptr(), 0),
            UpdateKind::Trim { .. } => (UPDATE_TRIM, std::ptr::null(), 0),
            UpdateKind::Zero { may_trim, .. } => {
                (UPDATE_ZERO, std::ptr::null(), if may_trim { FLAG_MAY_TRIM } else { 0 })
            }
        };
        if update.fua {
            flags |= FLAG_FUA;
        }
        let raw = GwUpdate {
            struct_size: std::mem::size_of::<GwUpdate>(),
            volume: GwStr::new(update.volume),
            seq: update.seq,
            offset: update.offset,
            length: update.length(),
            kind,
            flags,
            data,
        };
        let Some(f) = self.vt.submit else { return cb(Err("no submit entry".into())) };
        let c = completion_for(cb);
        // SAFETY: valid entry and instance; `raw` and its data live across the call.
        let code = unsafe { f(self.instance, &raw, c) };
        if code != GW_OK {
            self.refused(code, "update", c);
        }
    }

    /// Flush barrier; `cb` runs exactly once.
    pub fn flush(&self, volume: &str, upto: u64, cb: Callback) {
        if self.failed.load(Ordering::Acquire) {
            return cb(Err(format!("{}: component failed earlier", self.name)));
        }
        let Some(f) = self.vt.flush else { return cb(Err("no flush entry".into())) };
        let c = completion_for(cb);
        // SAFETY: valid entry and instance; the name lives across the call.
        let code = unsafe { f(self.instance, GwStr::new(volume), upto, c) };
        if code != GW_OK {
            self.refused(code, "flush", c);
        }
    }

    pub fn set_boundary(&self, volume: &str, set_id: u64, upto: u64) {
        if let Some(f) = self.vt.set_boundary {
            // SAFETY: valid entry and instance; the name lives across the call.
            unsafe { f(self.instance, GwStr::new(volume), set_id, upto) };
        }
    }
}

impl Drop for ImportedComponent {
    fn drop(&mut self) {
        if let Some(close) = self.vt.close {
            // SAFETY: we own the instance; closed exactly once.
            unsafe { close(self.instance) };
        }
    }
}
