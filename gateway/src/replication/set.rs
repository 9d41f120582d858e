//! One volume set at run time: its role at this site, how updates flow, its change bitmaps,
//! the queue of updates for the peer, and its persisted state.
//!
//! Flow of a host update at the production site (see [`Flow`]):
//! * `Mirroring`: the update goes into the ordered queue; the data link sends it and the
//!   host's acknowledgement waits for the peer's ack (sync mirroring);
//! * `Tracking` (suspended): the region is marked in the change bitmap, durably, before the
//!   host is acknowledged;
//! * `Frozen`: the acknowledgement is held until `run` or the freeze timeout, then tracked.
//!
//! When the link is lost, everything queued or in flight is converted to tracking (or held,
//! under freeze): nothing the host was told is done can be missing from both the peer and the
//! bitmap.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gateway_replication::bitmap::ChangeBitmap;
use gateway_replication::frame::UpdateOp;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{LinkLossPolicy, VolumeSetConfig};
use crate::quorum::ledger::LedgerFile;
use crate::volume::Volume;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// This site serves the set's volumes and mirrors to the peer.
    Primary,
    /// This site holds the recovery copy: hosts may read, the peer writes.
    Secondary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    Mirroring,
    Tracking,
    Frozen,
}

/// Resync progress, for status.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub total_bytes: u64,
    pub done_bytes: u64,
    #[serde(skip)]
    pub started: Option<Instant>,
}

impl Progress {
    pub fn rate(&self) -> f64 {
        let secs = self.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        if secs > 0.0 {
            self.done_bytes as f64 / secs
        } else {
            0.0
        }
    }

    pub fn eta_secs(&self) -> Option<f64> {
        let r = self.rate();
        (r > 0.0).then(|| self.total_bytes.saturating_sub(self.done_bytes) as f64 / r)
    }
}

/// What survives a restart (besides the bitmaps).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Persisted {
    pub role: Role,
    pub production: String,
    pub generation: u64,
    pub logical: String,
    /// False while running; true after an orderly shutdown flushed everything.
    pub clean: bool,
}

#[derive(Debug, Clone)]
pub struct SetState {
    pub role: Role,
    pub production: String,
    pub generation: u64,
    pub flow: Flow,
    pub link_up: bool,
    pub logical: String,
    pub last_error: Option<String>,
    pub resync: Option<Progress>,
    pub frozen_since: Option<Instant>,
    /// Quorum-managed (`recovery = "quorum"`) and not placed online by the controllers: host
    /// I/O is held and no data link goes out.
    pub held: bool,
    /// Quorum-managed: the controllers placed this site as the online primary's secondary,
    /// so it accepts the primary's data link while held.
    pub quorum_join: bool,
    /// Quorum-managed, shutting down with `normal`/`expedite`: held, but the data link stays
    /// until the copies pending towards the peer are done.
    pub draining: bool,
}

impl SetState {
    /// Whether this site sends the set's updates to the peer (it is the production site and
    /// not held offline).
    pub fn sends(&self) -> bool {
        self.role == Role::Primary && (!self.held || self.draining)
    }
}

/// An update (or barrier, or resync block) on its way to the peer.
pub enum Item {
    Update { volume: String, seq: u64, offset: u64, op: UpdateOp, flags: u8, length: u64, data: Bytes, done: Done },
    Flush { done: Done },
    Resync { volume: String, offset: u64, data: Bytes, done: Done },
}

pub type Done = oneshot::Sender<Result<(), String>>;

pub struct VolumeSet {
    pub cfg: VolumeSetConfig,
    pub site: String,
    pub volumes: Vec<Arc<Volume>>,
    pub bitmaps: HashMap<String, Arc<ChangeBitmap>>,
    state: Mutex<SetState>,
    /// Bumped on every state change; waiters (freeze holds, wait-for-state) watch it.
    changed: watch::Sender<u64>,
    queue: mpsc::UnboundedSender<Item>,
    queue_rx: Mutex<Option<mpsc::UnboundedReceiver<Item>>>,
    state_path: PathBuf,
    /// Bytes of resync data acknowledged by the peer since start (status and tests).
    pub resync_bytes_sent: AtomicU64,
    pub updates_sent: AtomicU64,
    /// The set's quorum position (`recovery = "quorum"` only; see `crate::quorum::ledger`).
    pub ledger: Option<Arc<LedgerFile>>,
    /// A resync runs with a wider window (an `expedite` shutdown is finishing it).
    pub expedite: std::sync::atomic::AtomicBool,
    /// Wakes the data link's reconnect back-off (the peer is known to accept now).
    pub reconnect: tokio::sync::Notify,
}

impl VolumeSet {
    pub fn new(
        cfg: VolumeSetConfig,
        site: String,
        volumes: Vec<Arc<Volume>>,
        bitmaps: HashMap<String, Arc<ChangeBitmap>>,
        persisted: Persisted,
        state_path: PathBuf,
        ledger: Option<Arc<LedgerFile>>,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::unbounded_channel();
        let (changed, _) = watch::channel(0);
        let state = SetState {
            role: persisted.role,
            production: persisted.production,
            generation: persisted.generation,
            // Nothing is mirrored until a session is up and a resync (possibly empty) ran.
            flow: Flow::Tracking,
            link_up: false,
            logical: persisted.logical,
            last_error: None,
            resync: None,
            frozen_since: None,
            held: ledger.is_some(),
            quorum_join: false,
            draining: false,
        };
        Arc::new(Self {
            cfg,
            site,
            volumes,
            bitmaps,
            state: Mutex::new(state),
            changed,
            queue,
            queue_rx: Mutex::new(Some(rx)),
            state_path,
            resync_bytes_sent: AtomicU64::new(0),
            updates_sent: AtomicU64::new(0),
            ledger,
            expedite: std::sync::atomic::AtomicBool::new(false),
            reconnect: tokio::sync::Notify::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn state(&self) -> SetState {
        self.state.lock().clone()
    }

    /// Change the state under the lock, then wake every waiter.
    pub fn update<T>(&self, f: impl FnOnce(&mut SetState) -> T) -> T {
        let out = f(&mut self.state.lock());
        self.changed.send_modify(|v| *v += 1);
        out
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn take_queue(&self) -> Option<mpsc::UnboundedReceiver<Item>> {
        self.queue_rx.lock().take()
    }

    pub fn volume(&self, name: &str) -> Option<&Arc<Volume>> {
        self.volumes.iter().find(|v| v.name() == name)
    }

    /// Route an update at admission time (called with the volume's admission lock held, so
    /// the queue receives updates in sequence order). Returns a receiver for its verdict.
    pub fn route(
        self: &Arc<Self>,
        item_for_queue: impl FnOnce(Done) -> Item,
        volume: &str,
        offset: u64,
        length: u64,
    ) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        let st = self.state.lock();
        match (st.role, st.flow) {
            (Role::Secondary, _) => {
                // Writes at the secondary come from the replication link (hosts are gated).
                let _ = tx.send(Ok(()));
            }
            (Role::Primary, Flow::Mirroring) => {
                if let Err(mpsc::error::SendError(item)) = self.queue.send(item_for_queue(tx)) {
                    drop(st);
                    self.track(item);
                }
            }
            (Role::Primary, Flow::Tracking) | (Role::Primary, Flow::Frozen) => {
                drop(st);
                let set = self.clone();
                let volume = volume.to_owned();
                tokio::spawn(async move {
                    let r = set.track_region(&volume, offset, length).await;
                    let _ = tx.send(r);
                });
            }
        }
        rx
    }

    /// Queue an item for the peer; if the session side is gone, handle it as link loss.
    pub fn enqueue(self: &Arc<Self>, item: Item) {
        if let Err(mpsc::error::SendError(item)) = self.queue.send(item) {
            self.track(item);
        }
    }

    /// Mark a region in the bitmap durably, then (under freeze) wait for the release. A
    /// quorum-managed set first moves its position on if it was sealed (in the same step as
    /// the mark, so a seal never misses the region), durably, before the host hears back.
    pub async fn track_region(&self, volume: &str, offset: u64, length: u64) -> Result<(), String> {
        let bm = self.bitmaps.get(volume).cloned();
        let mark = || bm.as_ref().is_some_and(|b| b.set(offset, length));
        let newly = match &self.ledger {
            Some(l) => l.update(|l| {
                l.track();
                mark()
            }),
            None => mark(),
        };
        if let Some(l) = self.ledger.clone().filter(|l| l.needs_save()) {
            tokio::task::spawn_blocking(move || l.save())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("saving the quorum position: {e}"))?;
        }
        if let (true, Some(bm)) = (newly, bm) {
            tokio::task::spawn_blocking(move || bm.persist())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        self.wait_unfrozen().await
    }

    /// Wait while the set is frozen; fail if this site stopped being production meanwhile.
    pub async fn wait_unfrozen(&self) -> Result<(), String> {
        let mut rx = self.subscribe();
        loop {
            {
                let st = self.state.lock();
                if st.role == Role::Secondary {
                    return Err(format!("volume set {} is no longer production at this site", self.cfg.name));
                }
                if st.flow != Flow::Frozen {
                    return Ok(());
                }
            }
            if rx.changed().await.is_err() {
                return Err("volume set shut down".into());
            }
        }
    }

    /// Convert an item that will not reach the peer: updates are tracked (and their
    /// verdict given once durable in the bitmap, or after a freeze is released); barriers
    /// complete (nothing more is owed to the peer); resync blocks fail.
    pub fn track(self: &Arc<Self>, item: Item) {
        match item {
            Item::Update { volume, offset, length, done, .. } => {
                let set = self.clone();
                tokio::spawn(async move {
                    let r = set.track_region(&volume, offset, length).await;
                    let _ = done.send(r);
                });
            }
            Item::Flush { done } => {
                let _ = done.send(Ok(()));
            }
            Item::Resync { done, .. } => {
                let _ = done.send(Err("link lost during resync".into()));
            }
        }
    }

    /// The link is lost: switch the flow per the set's policy. Returns the new flow.
    pub fn on_link_lost(&self, why: &str) -> Flow {
        self.update(|st| {
            if st.role == Role::Primary {
                st.link_up = false;
            }
            st.last_error = Some(why.to_owned());
            if st.role == Role::Primary && st.flow == Flow::Mirroring {
                st.flow = match self.cfg.on_link_loss {
                    LinkLossPolicy::Continue => Flow::Tracking,
                    LinkLossPolicy::Freeze => {
                        st.frozen_since = Some(Instant::now());
                        Flow::Frozen
                    }
                };
            }
            if st.resync.is_some() {
                st.resync = None;
            }
            st.flow
        })
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.bitmaps.values().map(|b| b.dirty_bytes()).sum()
    }

    pub fn persist(&self, clean: bool) -> std::io::Result<()> {
        let st = self.state();
        let p = Persisted {
            role: st.role,
            production: st.production,
            generation: st.generation,
            logical: st.logical,
            clean,
        };
        let tmp = self.state_path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(&p).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &self.state_path)
    }
}

/// Updates sent on the current session and not yet acknowledged, oldest first.
#[derive(Default)]
pub struct Inflight {
    pub items: VecDeque<Item>,
}
