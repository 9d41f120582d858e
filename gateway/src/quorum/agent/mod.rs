//! The server's side of quorum recovery, for one volume set with `recovery = "quorum"`.
//!
//! The server does not decide anything: it holds host I/O until a controller places it
//! online, reports what the controllers need (operational, position, copies pending towards
//! it) on every controller connection, and carries out their commands:
//! * `go_online P@p` / `P+S@p` / `P+S`: at P, the guarded promotion of the [`ledger`] (then
//!   it serves as primary and its data link goes out); at S, permission to join P as its
//!   secondary (it accepts P's data link and is resynced from it). Repeats are ignored: the
//!   controllers re-send the decision in force every second.
//! * `go_offline`: hold host I/O; a primary keeps its data link for the copies still pending
//!   (the shutdown that follows says whether they are finished).
//! * `save_key`: keep a copy of the controller's shutdown key ([`KeyCopies`]).
//! * `shutdown` with a mode: `normal` finishes the copies pending between the pair first
//!   (the primary resyncs what the peer lacks and hands it its sealed position; a secondary
//!   waits for that), `expedite` the same with a four times wider resync window, both up to a
//!   deadline; `immediate` stops now and leaves them pending (tracked in the change bitmap,
//!   resumed at the next sync-up); these three end with the **final report** (operational
//!   false, the position), which the server remembers and sends first on every later
//!   controller connection until it is promoted again. `force` stops now with no final report.
//!   Then the daemon exits (an orderly exit: flush, clean-stop record).
//!
//! The connection is the server's control port (`[node] control_listen`): a controller's first
//! request `{"op": "quorum-attach", "volume_set": ...}` turns it into a stream of
//! `{"report": {...}}` (server to controller, on attach, on every change and every second) and
//! `{"command": ...}` / `{"ping": true}` (controller to server) frames.
//!
//! [`ledger`]: super::ledger

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::keycopies::KeyCopies;
use super::ledger::{LedgerFile, Promotion};
use super::Mode;
use crate::replication::control;
use crate::replication::set::{Flow, Role, VolumeSet};
use crate::replication::Engine;

/// How long a `normal` or `expedite` shutdown may spend finishing copies.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

mod session;

pub use session::attach;

pub struct Agent {
    engine: Arc<Engine>,
    set: Arc<VolumeSet>,
    ledger: Arc<LedgerFile>,
    keys: Arc<KeyCopies>,
    stop: CancellationToken,
    shutting: Mutex<Option<Mode>>,
    /// Bumped on every change a report shows.
    changed: watch::Sender<u64>,
    /// The final report, once made: sessions send it and close.
    final_report: watch::Sender<Option<Value>>,
    /// The peer's position as last learned (what is pending towards this site).
    peer_position: AtomicU64,
    /// The sealed position the peer last adopted (+1; 0: none since start).
    peer_adopted: AtomicU64,
    /// The controllers attached now (one entry per connection).
    attached: Mutex<Vec<String>>,
    finals_sent: AtomicUsize,
    last_refusal: Mutex<String>,
    /// Several controllers send the same decision at once: one promotion at a time.
    promoting: tokio::sync::Mutex<()>,
    joining: std::sync::atomic::AtomicBool,
}

impl Agent {
    /// Hold the set's host I/O and start the seal loop.
    pub fn start(
        engine: Arc<Engine>,
        set: Arc<VolumeSet>,
        ledger: Arc<LedgerFile>,
        stop: CancellationToken,
    ) -> Arc<Agent> {
        let keys_dir = ledger.path().with_file_name(format!("{}.keys", set.name()));
        let agent = Arc::new(Agent {
            engine,
            set,
            ledger,
            keys: Arc::new(KeyCopies::open(keys_dir)),
            stop,
            shutting: Mutex::new(None),
            changed: watch::Sender::new(0),
            final_report: watch::Sender::new(None),
            peer_position: AtomicU64::new(0),
            peer_adopted: AtomicU64::new(0),
            attached: Mutex::new(Vec::new()),
            finals_sent: AtomicUsize::new(0),
            last_refusal: Mutex::new(String::new()),
            promoting: tokio::sync::Mutex::new(()),
            joining: std::sync::atomic::AtomicBool::new(false),
        });
        agent.hold(format!(
            "volume set {}: site {} is offline until the quorum controllers place it online",
            agent.set.name(),
            agent.engine.site()
        ));
        let l = agent.ledger.get();
        tracing::info!(set = agent.set.name(), position = l.position, epoch = ?l.epoch, last_final = ?l.last_final, "quorum-managed: holding host I/O until the controllers decide");
        tokio::spawn(agent.clone().seal_loop());
        agent
    }

    pub fn set(&self) -> &Arc<VolumeSet> {
        &self.set
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn online(&self) -> &'static str {
        let st = self.set.state();
        match (st.role, st.held, st.quorum_join) {
            (Role::Primary, false, _) => "primary",
            (Role::Secondary, _, true) => "secondary",
            _ => "offline",
        }
    }

    fn report(&self, operational: bool, position: u64) -> Value {
        let pending = match self.set.state().role {
            Role::Secondary => self.peer_position.load(Ordering::Relaxed).saturating_sub(position),
            Role::Primary => 0,
        };
        json!({"report": {
            "server": self.engine.site(), "operational": operational, "position": position,
            "copies_pending": pending, "online": self.online(), "keys": self.keys.summary(),
        }})
    }

    pub fn status(&self) -> Value {
        let l = self.ledger.get();
        json!({
            "online": self.online(), "position": l.position, "epoch": l.epoch, "last_final": l.last_final,
            "ledger_lost": self.ledger.lost(),
            "peer_position": self.peer_position.load(Ordering::Relaxed),
            "shutting_down": self.shutting.lock().map(|m| m.name()),
            "held": self.set.volumes.first().and_then(|v| v.host_io_hold()),
            "controllers": self.attached.lock().len(),
            "keys": self.keys.summary(),
        })
    }

    /// Hold host I/O. A primary that was sending keeps its data link (`draining`) so the
    /// copies pending towards the secondary can still be finished (a shutdown that follows
    /// decides whether they are); a joined secondary stays joined for the same reason.
    fn hold(&self, reason: String) {
        self.set.update(|st| {
            st.draining = st.sends();
            st.held = true;
        });
        for v in &self.set.volumes {
            v.hold_host_io(Some(reason.clone()));
        }
        self.bump();
    }

    // ----- commands ------------------------------------------------------------------------

    async fn command(self: &Arc<Self>, from: &str, body: &Value) {
        let result = match body["command"].as_str() {
            Some("go_online") => self.go_online(body["target"].as_str().unwrap_or_default()).await,
            Some("go_offline") => {
                let why = body["reason"].as_str().unwrap_or("controller command");
                if self.online() != "offline" {
                    tracing::warn!(set = self.set.name(), controller = from, "going offline: {why}");
                }
                self.hold(format!("volume set {}: offline ({why})", self.set.name()));
                Ok(())
            }
            Some("shutdown") => match Mode::parse(body["mode"].as_str().unwrap_or_default()) {
                Some(mode) => {
                    self.shutdown(from, mode);
                    Ok(())
                }
                None => Err(format!("unknown shutdown mode {}", body["mode"])),
            },
            Some("save_key") => {
                let keys = self.keys.clone();
                let (who, key) = (from.to_owned(), body["key"].clone());
                tokio::task::spawn_blocking(move || keys.save(&who, &key))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map(|_| ()))
            }
            _ if body.get("ping").is_some() => Ok(()),
            _ => Err(format!("unknown command {body}")),
        };
        if let Err(e) = result {
            let line = format!("{body}: {e}");
            let mut last = self.last_refusal.lock();
            if *last != line {
                tracing::warn!(set = self.set.name(), controller = from, "command not carried out: {line}");
                *last = line;
            }
        }
    }

    /// `P@p`, `P`, `P+S@p`, `P+S` (see the vtc-quorum host contract).
    async fn go_online(self: &Arc<Self>, target: &str) -> Result<(), String> {
        let (names, guard) = match target.split_once('@') {
            Some((n, g)) => (n, Some(g.parse::<u64>().map_err(|_| format!("bad position in {target:?}"))?)),
            None => (target, None),
        };
        let (primary, secondary) = match names.split_once('+') {
            Some((p, s)) => (p, Some(s)),
            None => (names, None),
        };
        if let Some(mode) = *self.shutting.lock() {
            return Err(format!("shutting down (mode {})", mode.name()));
        }
        let me = self.engine.site();
        if primary == me {
            if guard.is_some() || secondary.is_none() {
                self.promote(guard).await?;
            }
            if secondary.is_some() {
                if !self.set.state().link_up {
                    // S has been told to join: do not wait out the reconnect back-off.
                    self.set.reconnect.notify_one();
                }
                self.resync_secondary();
            }
            Ok(())
        } else if secondary == Some(me) {
            self.join()
        } else {
            Err(format!("the target names neither this site ({me})"))
        }
    }

    async fn promote(self: &Arc<Self>, guard: Option<u64>) -> Result<(), String> {
        let _one = self.promoting.lock().await;
        let st = self.set.state();
        if st.role == Role::Primary && !st.held {
            return Ok(());
        }
        let how = self.ledger.update(|l| l.promote(guard))?;
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.save())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("saving the epoch record: {e}"))?;
        let generation = match how {
            Promotion::Fresh(_) => st.generation + 1,
            Promotion::Resumed => st.generation,
        };
        self.engine.promote(&self.set, generation, Flow::Tracking);
        self.set.update(|st| {
            st.held = false;
            st.quorum_join = false;
            st.draining = false;
        });
        for v in &self.set.volumes {
            v.hold_host_io(None);
        }
        match how {
            Promotion::Fresh(p) => {
                tracing::warn!(set = self.set.name(), epoch = p, "placed online as primary by the quorum controllers")
            }
            Promotion::Resumed => tracing::warn!(
                set = self.set.name(),
                position = self.ledger.get().position,
                "placed online again as primary (the last promotion resumed)"
            ),
        }
        self.bump();
        Ok(())
    }

    /// `P+S` at P, and a primary finishing its copies at shutdown: once the data link to the
    /// secondary is up, resync what it lacks. After a takeover the replication policy waits
    /// for an operator's command (PPRC `join-cleanup`); here the controllers' decision is that
    /// command. (With `auto_resync`, other states resync by themselves; asking again is a
    /// no-op then.)
    fn resync_secondary(self: &Arc<Self>) {
        let st = self.set.state();
        if !(st.sends() && st.link_up && st.resync.is_none() && st.flow != Flow::Mirroring) {
            return;
        }
        if self.joining.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let args = json!({"volume_set": me.set.name()});
            if let Err(e) = me.engine.command("resync", args).await {
                tracing::info!(set = me.set.name(), "resync of the secondary did not start: {e}");
            }
            me.joining.store(false, Ordering::Release);
        });
    }

    /// `P+S` at S: accept P's data link. Only an offline server joins: one that serves as
    /// primary is never demoted by a join (the sim's host contract: "S, if up and offline").
    fn join(&self) -> Result<(), String> {
        let st = self.set.state();
        if st.quorum_join && st.role == Role::Secondary {
            return Ok(());
        }
        if st.role == Role::Primary && !st.held {
            return Err(format!(
                "site {} is online as primary; it does not join {}",
                self.engine.site(),
                self.set.cfg.peer_site
            ));
        }
        self.set.update(|st| st.quorum_join = true);
        if st.role == Role::Primary {
            self.engine.demote(&self.set, st.generation);
        }
        tracing::info!(set = self.set.name(), primary = %self.set.cfg.peer_site, "joining the online primary as its secondary");
        self.bump();
        Ok(())
    }

    fn shutdown(self: &Arc<Self>, from: &str, mode: Mode) {
        let first = {
            let mut s = self.shutting.lock();
            if s.is_some_and(|m| m >= mode) {
                return;
            }
            let first = s.is_none();
            *s = Some(mode);
            first
        };
        tracing::warn!(set = self.set.name(), controller = from, mode = mode.name(), "shutdown command");
        if mode == Mode::Expedite {
            self.set.expedite.store(true, Ordering::Relaxed);
        }
        // `normal` and `expedite` keep the data link (if it was up) while copies are finished;
        // `immediate` and `force` stop it now.
        self.hold(format!("volume set {}: shutting down (mode {})", self.set.name(), mode.name()));
        let finish = matches!(mode, Mode::Normal | Mode::Expedite);
        self.set.update(|st| {
            st.draining = st.draining && finish;
            // A secondary receives what is pending towards it (up to where the primary is).
            if finish && st.role == Role::Secondary {
                st.quorum_join = true;
            }
        });
        if first {
            tokio::spawn(self.clone().run_shutdown());
        }
    }

    async fn run_shutdown(self: Arc<Self>) {
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        loop {
            let mode = self.shutting.lock().unwrap_or(Mode::Force);
            if matches!(mode, Mode::Immediate | Mode::Force) {
                break;
            }
            self.resync_secondary();
            if self.copies_done().await {
                tracing::info!(set = self.set.name(), "pending copies finished");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(set = self.set.name(), "shutdown deadline passed: copies left pending (tracked)");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.set.update(|st| st.draining = false);
        if *self.shutting.lock() == Some(Mode::Force) {
            tracing::warn!(set = self.set.name(), "forced shutdown: stopping with no final report");
            self.stop.cancel();
            return;
        }
        self.final_stop().await;
    }

    /// Whether the copies pending between the pair are done, or cannot be done: the peer is
    /// gone, or (for a primary) this site stopped serving without a link to finish them on.
    async fn copies_done(&self) -> bool {
        let st = self.set.state();
        match st.role {
            Role::Primary => {
                if !st.draining {
                    return true;
                }
                if st.link_up {
                    return st.flow == Flow::Mirroring
                        && st.resync.is_none()
                        && self.set.dirty_bytes() == 0
                        && self.peer_adopted.load(Ordering::Relaxed) == self.ledger.get().position + 1;
                }
                // The link is down (the peer restarting, or not joined yet): worth waiting for
                // only while the peer answers.
                self.peer_state().await.is_none()
            }
            Role::Secondary => match self.peer_state().await {
                Some(r) => {
                    let peer_sending = r["online"] == "primary" || r["draining"] == true;
                    let in_sync = r["in_sync"] == true && r["position"].as_u64() == Some(self.ledger.get().position);
                    !peer_sending || in_sync
                }
                None => true,
            },
        }
    }

    /// The peer's quorum state over the control link, if it answers.
    async fn peer_state(&self) -> Option<Value> {
        let name = self.set.name();
        let req = json!({"op": "quorum-state", "volume_set": name});
        match control::request(self.set.cfg.peer_control, self.engine.site(), name, req).await {
            Ok(r) if r["ok"] == true => Some(r),
            _ => None,
        }
    }

    async fn final_stop(self: &Arc<Self>) {
        for v in &self.set.volumes {
            if let Err(e) = v.flush().await {
                tracing::error!(volume = v.name(), "flush before the final report failed: {e}");
            }
        }
        let position = self.ledger.update(|l| l.final_stop());
        let ledger = self.ledger.clone();
        match tokio::task::spawn_blocking(move || ledger.save()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(set = self.set.name(), "saving the final report failed: {e}"),
            Err(e) => tracing::error!(set = self.set.name(), "saving the final report failed: {e}"),
        }
        tracing::warn!(set = self.set.name(), position, "final report; this server stops");
        self.final_report.send_replace(Some(self.report(false, position)));
        // Give the open controller connections a moment to carry it; it is sent again on
        // every connection after the restart anyway.
        for _ in 0..20 {
            if self.finals_sent.load(Ordering::Acquire) >= self.attached.lock().len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The controllers save their keys as they learn of the shutdown (the one given the
        // command broadcasts it): keep the connections a moment for those copies.
        let mode = self.shutting.lock().map(|m| m.name());
        for _ in 0..40 {
            let keys = self.keys.summary();
            if self.attached.lock().iter().all(|c| keys[c]["mode"].as_str() == mode) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
    }

    // ----- the peer's requests ---------------------------------------------------------------

    pub async fn peer_request(&self, op: &str, req: &Value) -> Value {
        let st = self.set.state();
        match op {
            "quorum-state" => json!({
                "ok": true, "online": self.online(), "position": self.ledger.get().position,
                "draining": st.draining, "link_up": st.link_up,
                "in_sync": st.flow == Flow::Mirroring && st.resync.is_none() && self.set.dirty_bytes() == 0,
            }),
            "quorum-position" => {
                let Some(p) = req["position"].as_u64() else {
                    return json!({"ok": false, "error": "quorum-position needs `position`"});
                };
                if st.role != Role::Secondary {
                    return json!({"ok": false, "error": format!("site {} is not the secondary of {}", self.engine.site(), self.set.name())});
                }
                // Everything the primary acknowledged up to `p` was applied here; make it
                // durable before claiming the position.
                for v in &self.set.volumes {
                    if let Err(e) = v.flush().await {
                        return json!({"ok": false, "error": format!("flush of {}: {e}", v.name())});
                    }
                }
                self.peer_position.store(p, Ordering::Relaxed);
                if self.ledger.update(|l| l.adopt(p)) {
                    let ledger = self.ledger.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || ledger.save())
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                    {
                        return json!({"ok": false, "error": format!("saving the position: {e}")});
                    }
                }
                self.bump();
                json!({"ok": true, "position": self.ledger.get().position})
            }
            other => json!({"ok": false, "error": format!("unknown quorum request {other}")}),
        }
    }

    /// While this site is the serving primary and the peer holds everything, seal the
    /// position and hand it to the peer.
    async fn seal_loop(self: Arc<Self>) {
        let mut changed = self.set.subscribe();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = changed.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            // The set changes on every resync step: take a burst of changes as one.
            tokio::time::sleep(Duration::from_millis(100)).await;
            changed.borrow_and_update();
            let st = self.set.state();
            if !(st.sends() && st.link_up && st.flow == Flow::Mirroring && st.resync.is_none()) {
                continue;
            }
            let Some(p) = self.ledger.update(|l| (self.set.dirty_bytes() == 0).then(|| l.seal())) else { continue };
            if self.peer_adopted.load(Ordering::Relaxed) == p + 1 {
                continue;
            }
            let name = self.set.name();
            let req = json!({"op": "quorum-position", "volume_set": name, "position": p});
            match control::request(self.set.cfg.peer_control, self.engine.site(), name, req).await {
                Ok(r) if r["ok"] == true => {
                    self.peer_adopted.store(p + 1, Ordering::Relaxed);
                    self.peer_position.store(p, Ordering::Relaxed);
                    tracing::info!(set = name, position = p, "the secondary holds everything: position sealed");
                    self.bump();
                }
                Ok(r) => tracing::debug!(set = name, "the secondary did not take position {p}: {}", r["error"]),
                Err(e) => tracing::debug!(set = name, "handing position {p} to the secondary failed: {e}"),
            }
        }
    }
}
