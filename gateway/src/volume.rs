//! A volume: one export's backend plus its **write path**, the single place every write, trim
//! and zero passes, in order, before the host is acknowledged.
//!
//! Why one place: mirroring (sync and extended-distance replication, the journal, any backup
//! component plugin) must see every mutation exactly once, numbered in the order they were
//! admitted, and must be able to hold the acknowledgement until its copy is safe. So the NBD
//! server never touches a backend's mutating calls directly; it calls [`Volume::write`],
//! [`Volume::trim`], [`Volume::zero`] and [`Volume::flush`].
//!
//! Ordering: a short mutex admits each update, gives it the next sequence number and hands it
//! to every [`UpdateObserver`] while still held, so observers see updates in sequence order.
//! The backend I/O and the wait for observers' completions happen after the mutex is
//! released, so concurrent writes still run in parallel. With no observers attached (a volume
//! that is not replicated) the cost is one uncontended lock per mutation.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_backend::{Backend, BackendError, Capabilities, ErrorKind, Extent, ZeroFlags};
use parking_lot::Mutex;

/// Whether host requests may run now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostAccess {
    Open,
    /// They wait (e.g. a quorum-managed server not placed online), with the reason.
    Held(String),
    /// They fail with the reason (the daemon is stopping while they were held).
    Refused(String),
}

/// What a mutation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateKind {
    Write(Bytes),
    Trim { length: u64 },
    Zero { length: u64, may_trim: bool },
}

/// One admitted mutation, as observers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Position in the volume's total order of mutations, from 1.
    pub seq: u64,
    pub offset: u64,
    pub kind: UpdateKind,
    /// The host asked for this update to be durable on acknowledgement.
    pub fua: bool,
}

/// Completion of an observer's handling of one update or barrier. It resolves exactly once;
/// an error fails the host's request (the backend may already hold the data: the host must
/// treat a failed write's range as undefined, as with any block device).
pub type Completion = Pin<Box<dyn Future<Output = std::result::Result<(), ObserverError>> + Send>>;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{observer}: {message}")]
pub struct ObserverError {
    pub observer: String,
    pub message: String,
}

/// A consumer of a volume's mutation stream (replication, journals, backup components).
///
/// `on_update` and `on_flush` are called with the admission lock held: they must only enqueue
/// (copying what they need; `Bytes` clones are cheap) and return a completion; they must never
/// block or do I/O inline.
pub trait UpdateObserver: Send + Sync {
    fn on_update(&self, volume: &str, update: &Update) -> Completion;
    /// A flush barrier: every update with `seq <= upto` must be durable at the observer's
    /// destination when the completion resolves.
    fn on_flush(&self, volume: &str, upto: u64) -> Completion;
}

/// Errors from the write path, mapped onto NBD errors by the server.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("blocking task failed: {0}")]
    Join(String),
    #[error(transparent)]
    Observer(#[from] ObserverError),
}

impl VolumeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            VolumeError::Backend(e) => e.kind,
            VolumeError::Join(_) | VolumeError::Observer(_) => ErrorKind::Io,
        }
    }
}

pub type Result<T> = std::result::Result<T, VolumeError>;

/// Zero buffers are written in pieces of this size when a backend cannot zero natively.
const ZERO_CHUNK: u64 = 1 << 20;

pub struct Volume {
    name: String,
    description: String,
    read_only: bool,
    backend: Arc<dyn Backend>,
    caps: Capabilities,
    size: u64,
    admission: Mutex<u64>,
    observers: Vec<Arc<dyn UpdateObserver>>,
    /// Bound on one blocking backend call (set for plugin-backed exports).
    call_timeout: Option<Duration>,
    /// Set when a call timed out: the stuck thread cannot be reclaimed, so the export fails
    /// every later request at once instead of piling more threads onto a hung plugin.
    failed: AtomicBool,
    /// Why hosts may not write now (e.g. this site holds the recovery copy of a replicated
    /// volume), or `None` when they may. Writes from the replication link are not gated.
    host_write_block: Mutex<Option<String>>,
    /// Why host I/O of every kind (reads too) waits now, or `None` when it may proceed: a
    /// quorum-managed server holds its volumes until the controllers place it online.
    host_hold: tokio::sync::watch::Sender<HostAccess>,
    /// Host mutations hold this shared from admission until their local I/O is done; a
    /// resync takes it exclusively to read a region consistently with what it has already
    /// queued for the peer (see `gateway::replication`).
    gate: tokio::sync::RwLock<()>,
    /// Ranges of mutations between admission and the end of their local I/O. An update that
    /// overlaps one waits for it, so overlapping updates reach the backend in sequence order,
    /// the order every observer (a mirror, a journal) applies them in.
    in_flight: Mutex<Vec<(u64, u64, u64)>>,
    in_flight_done: tokio::sync::Notify,
    next_hold: std::sync::atomic::AtomicU64,
}

/// A mutation's hold on the volume from before admission until its local I/O is done.
struct Hold<'a> {
    volume: &'a Volume,
    id: u64,
    _gate: tokio::sync::RwLockReadGuard<'a, ()>,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.volume.in_flight.lock().retain(|r| r.2 != self.id);
        self.volume.in_flight_done.notify_waiters();
    }
}

impl Volume {
    pub fn new(name: String, description: String, read_only: bool, backend: Arc<dyn Backend>) -> Self {
        let caps = backend.capabilities();
        let size = backend.size();
        Self {
            name,
            description,
            read_only,
            backend,
            caps,
            size,
            admission: Mutex::new(0),
            observers: Vec::new(),
            call_timeout: None,
            failed: AtomicBool::new(false),
            host_write_block: Mutex::new(None),
            host_hold: tokio::sync::watch::Sender::new(HostAccess::Open),
            gate: tokio::sync::RwLock::new(()),
            in_flight: Mutex::new(Vec::new()),
            in_flight_done: tokio::sync::Notify::new(),
            next_hold: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Wait until no in-flight mutation overlaps `offset..offset+length`, then reserve it.
    async fn hold(&self, offset: u64, length: u64) -> Hold<'_> {
        let gate = self.gate.read().await;
        let end = offset.saturating_add(length.max(1));
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed);
        loop {
            let notified = self.in_flight_done.notified();
            {
                let mut list = self.in_flight.lock();
                if !list.iter().any(|&(s, e, _)| s < end && offset < e) {
                    list.push((offset, end, id));
                    break;
                }
            }
            notified.await;
        }
        Hold { volume: self, id, _gate: gate }
    }

    /// Refuse (or allow again) host writes, with the reason hosts are told.
    pub fn block_host_writes(&self, reason: Option<String>) {
        *self.host_write_block.lock() = reason;
    }

    /// Why host writes are refused now, if they are (configured read-only or blocked).
    pub fn host_write_refusal(&self) -> Option<String> {
        if self.read_only {
            return Some(format!("export `{}` is read-only", self.name));
        }
        self.host_write_block.lock().clone()
    }

    /// Hold (or release) every host request, with the reason status shows.
    pub fn hold_host_io(&self, reason: Option<String>) {
        self.host_hold.send_replace(reason.map_or(HostAccess::Open, HostAccess::Held));
    }

    /// The daemon is stopping: requests that are held, or would be, fail with `reason`
    /// instead of waiting for a release that will not come.
    pub fn refuse_held(&self, reason: &str) {
        self.host_hold.send_if_modified(|a| match a {
            HostAccess::Held(_) => {
                *a = HostAccess::Refused(reason.to_owned());
                true
            }
            _ => false,
        });
    }

    /// Why host requests are held now, if they are.
    pub fn host_io_hold(&self) -> Option<String> {
        match &*self.host_hold.borrow() {
            HostAccess::Open => None,
            HostAccess::Held(r) | HostAccess::Refused(r) => Some(r.clone()),
        }
    }

    /// Wait until host requests may proceed (at once when they are not held); an error if
    /// they are refused instead.
    pub async fn host_io_allowed(&self) -> Result<()> {
        if matches!(*self.host_hold.borrow(), HostAccess::Open) {
            return Ok(());
        }
        let mut rx = self.host_hold.subscribe();
        // The sender lives as long as the volume, so this only ends with a decision.
        let access = rx.wait_for(|a| !matches!(a, HostAccess::Held(_))).await.map(|a| a.clone());
        match access {
            Ok(HostAccess::Open) => Ok(()),
            Ok(HostAccess::Refused(r)) | Ok(HostAccess::Held(r)) => {
                Err(BackendError::new(ErrorKind::Shutdown, r).into())
            }
            Err(_) => Err(BackendError::new(ErrorKind::Shutdown, "volume closed").into()),
        }
    }

    /// Run `f` while no host mutation is between admission and the end of its local I/O.
    pub async fn exclusive<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let _g = self.gate.write().await;
        f.await
    }

    /// Fail (EIO) any blocking backend call that takes longer than `t`, and the export with it.
    pub fn with_call_timeout(mut self, t: Duration) -> Self {
        self.call_timeout = Some(t);
        self
    }

    /// Requests finish without waiting on anything: the backend never blocks and no
    /// observer holds the acknowledgement (so the server may run them in line).
    pub fn completes_inline(&self) -> bool {
        !self.caps.blocking && self.observers.is_empty() && matches!(*self.host_hold.borrow(), HostAccess::Open)
    }

    /// Whether a timed-out call has failed this export.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn failed_error(&self) -> VolumeError {
        BackendError::new(ErrorKind::Io, format!("export `{}` failed: a backend call timed out earlier", self.name))
            .into()
    }

    /// Attach a mutation consumer; done while building the volume, before it serves.
    pub fn with_observer(mut self, observer: Arc<dyn UpdateObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn description(&self) -> &str {
        &self.description
    }
    pub fn read_only(&self) -> bool {
        self.read_only
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }
    pub fn backend_kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Run a backend call where it belongs: inline for RAM, on the blocking pool otherwise.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> std::result::Result<T, BackendError> + Send + 'static,
    {
        if self.failed() {
            return Err(self.failed_error());
        }
        if !self.caps.blocking {
            return Ok(f(&*self.backend)?);
        }
        let backend = Arc::clone(&self.backend);
        let task = tokio::task::spawn_blocking(move || f(&*backend));
        let joined = match self.call_timeout {
            None => task.await,
            Some(t) => match tokio::time::timeout(t, task).await {
                Ok(r) => r,
                Err(_) => {
                    self.failed.store(true, Ordering::Release);
                    tracing::error!(export = %self.name, "backend call timed out after {t:?}; export marked failed");
                    let msg =
                        format!("export `{}`: backend call timed out after {t:?}; export marked failed", self.name);
                    return Err(BackendError::new(ErrorKind::Io, msg).into());
                }
            },
        };
        joined.map_err(|e| VolumeError::Join(e.to_string()))?.map_err(Into::into)
    }

    /// Read into a caller-provided buffer, which is handed back filled.
    pub async fn read(&self, mut buf: bytes::BytesMut, offset: u64) -> Result<bytes::BytesMut> {
        if !self.caps.blocking && !self.failed() {
            self.backend.read_at(&mut buf, offset)?;
            return Ok(buf);
        }
        self.run(move |b| b.read_at(&mut buf, offset).map(|()| buf)).await
    }

    pub async fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        if !self.caps.can_extents {
            return Ok(vec![Extent { length: length.max(1), hole: false, zero: false }]);
        }
        self.run(move |b| b.extents(offset, length)).await
    }

    pub async fn cache(&self, offset: u64, length: u64) -> Result<()> {
        if !self.caps.can_cache {
            return Ok(());
        }
        self.run(move |b| b.cache(offset, length)).await
    }

    /// Admit an update: number it and hand it to every observer, in order.
    fn admit(&self, offset: u64, kind: UpdateKind, fua: bool) -> Vec<Completion> {
        let mut seq = self.admission.lock();
        *seq += 1;
        if self.observers.is_empty() {
            return Vec::new();
        }
        let update = Update { seq: *seq, offset, kind, fua };
        self.observers.iter().map(|o| o.on_update(&self.name, &update)).collect()
    }

    async fn finish(&self, local: Result<()>, pending: Vec<Completion>) -> Result<()> {
        // Wait for every observer even if the local write failed, so none is left dangling.
        let mut first_err = local.err();
        for c in pending {
            if let Err(e) = c.await {
                first_err.get_or_insert(e.into());
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn fua_emulated(&self, fua: bool) -> bool {
        fua && !self.caps.native_fua
    }

    pub async fn write(&self, data: Bytes, offset: u64, fua: bool) -> Result<()> {
        let gate = self.hold(offset, data.len() as u64).await;
        let pending = self.admit(offset, UpdateKind::Write(data.clone()), fua);
        let native_fua = fua && self.caps.native_fua;
        let flush_after = self.fua_emulated(fua);
        let local = self
            .run(move |b| {
                b.write_at(&data, offset, native_fua)?;
                if flush_after {
                    b.flush()?;
                }
                Ok(())
            })
            .await;
        drop(gate);
        self.finish(local, pending).await
    }

    pub async fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<()> {
        let gate = self.hold(offset, length).await;
        let pending = self.admit(offset, UpdateKind::Trim { length }, fua);
        let local = if self.caps.can_trim { self.run(move |b| b.trim(offset, length, fua)).await } else { Ok(()) };
        drop(gate);
        self.finish(local, pending).await
    }

    /// Make a range read as zeroes. `fast_only` fails with `NotSupported` at once, changing
    /// nothing and admitting nothing, when the backend cannot zero faster than writing.
    pub async fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<()> {
        if flags.fast_only && !self.caps.can_fast_zero {
            return Err(BackendError::not_supported(format!("{}: fast zero", self.name)).into());
        }
        let gate = self.hold(offset, length).await;
        if flags.fast_only {
            // Try before admitting: a fast zero that the backend refuses must not reach the
            // observers, since the volume did not change.
            self.run(move |b| b.zero(offset, length, flags)).await?;
            let pending = self.admit(offset, UpdateKind::Zero { length, may_trim: flags.may_trim }, flags.fua);
            drop(gate);
            return self.finish(Ok(()), pending).await;
        }
        let pending = self.admit(offset, UpdateKind::Zero { length, may_trim: flags.may_trim }, flags.fua);
        let native = self.caps.can_zero;
        let flush_after = self.fua_emulated(flags.fua);
        let local = self
            .run(move |b| {
                if native {
                    b.zero(offset, length, flags)?;
                } else {
                    let zeroes = vec![0u8; ZERO_CHUNK.min(length) as usize];
                    let mut done = 0;
                    while done < length {
                        let n = (length - done).min(ZERO_CHUNK) as usize;
                        b.write_at(&zeroes[..n], offset + done, false)?;
                        done += n as u64;
                    }
                }
                if flush_after || (!native && flags.fua) {
                    b.flush()?;
                }
                Ok(())
            })
            .await;
        drop(gate);
        self.finish(local, pending).await
    }

    /// Make every acknowledged update durable, locally and at every observer.
    pub async fn flush(&self) -> Result<()> {
        let pending: Vec<Completion> = {
            let seq = self.admission.lock();
            self.observers.iter().map(|o| o.on_flush(&self.name, *seq)).collect()
        };
        let local = self.run(|b| b.flush()).await;
        self.finish(local, pending).await
    }

    /// Number of updates admitted so far.
    pub fn last_seq(&self) -> u64 {
        *self.admission.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_backend::memory::MemoryBackend;

    /// Records what it sees; completes at once or fails, as told.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<(u64, u64, String)>>,
        fail: bool,
    }

    impl UpdateObserver for Recorder {
        fn on_update(&self, _volume: &str, u: &Update) -> Completion {
            let what = match &u.kind {
                UpdateKind::Write(d) => format!("w{}", d.len()),
                UpdateKind::Trim { length } => format!("t{length}"),
                UpdateKind::Zero { length, .. } => format!("z{length}"),
            };
            self.seen.lock().push((u.seq, u.offset, what));
            let fail = self.fail;
            Box::pin(async move {
                if fail {
                    Err(ObserverError { observer: "recorder".into(), message: "link down".into() })
                } else {
                    Ok(())
                }
            })
        }
        fn on_flush(&self, _volume: &str, upto: u64) -> Completion {
            self.seen.lock().push((upto, 0, "flush".into()));
            Box::pin(async { Ok(()) })
        }
    }

    fn volume(rec: Arc<Recorder>) -> Volume {
        Volume::new("v".into(), String::new(), false, Arc::new(MemoryBackend::new(1 << 20))).with_observer(rec)
    }

    #[tokio::test]
    async fn held_host_io_waits_for_the_release_or_fails_at_shutdown() {
        let v = Arc::new(volume(Arc::new(Recorder::default())));
        assert!(v.host_io_allowed().await.is_ok());
        v.hold_host_io(Some("offline until placed online".into()));
        assert!(!v.completes_inline());
        let waiting = tokio::spawn({
            let v = v.clone();
            async move { v.host_io_allowed().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a held request must wait");
        v.hold_host_io(None);
        assert!(waiting.await.unwrap().is_ok());

        v.hold_host_io(Some("offline".into()));
        let waiting = tokio::spawn({
            let v = v.clone();
            async move { v.host_io_allowed().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        v.refuse_held("stopping");
        let e = waiting.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Shutdown);
        assert!(e.to_string().contains("stopping"), "{e}");
        assert_eq!(v.host_io_hold().as_deref(), Some("stopping"));
    }

    #[tokio::test]
    async fn every_mutation_passes_in_order() {
        let rec = Arc::new(Recorder::default());
        let v = Arc::new(volume(rec.clone()));
        v.write(Bytes::from_static(b"abcd"), 0, false).await.unwrap();
        v.trim(4096, 4096, false).await.unwrap();
        v.zero(8192, 512, ZeroFlags::default()).await.unwrap();
        v.flush().await.unwrap();
        let tasks: Vec<_> = (0..32u64)
            .map(|i| {
                let v = v.clone();
                tokio::spawn(async move { v.write(Bytes::from(vec![i as u8; 512]), 65536 + i * 512, false).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let seen = rec.seen.lock().clone();
        assert_eq!(
            &seen[..4],
            &[(1, 0, "w4".into()), (2, 4096, "t4096".into()), (3, 8192, "z512".into()), (3, 0, "flush".into())]
        );
        let seqs: Vec<u64> = seen[4..].iter().map(|s| s.0).collect();
        assert_eq!(seqs, (4..36).collect::<Vec<_>>(), "observers see sequence numbers in admission order");
        assert_eq!(v.last_seq(), 35);
        let mut buf = bytes::BytesMut::zeroed(4);
        buf = v.read(buf, 0).await.unwrap();
        assert_eq!(&buf[..], b"abcd");
    }

    #[tokio::test]
    async fn observer_failure_fails_the_host_request() {
        let rec = Arc::new(Recorder { fail: true, ..Default::default() });
        let v = volume(rec);
        let err = v.write(Bytes::from_static(b"x"), 0, false).await.unwrap_err();
        assert_eq!(err.to_string(), "recorder: link down");
        assert_eq!(err.kind(), ErrorKind::Io);
    }
}
