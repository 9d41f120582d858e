//! Two-site synchronous replication: the engine at the I/O edge.
//!
//! * [`set`]: a volume set at run time (role, flow, bitmaps, queue, persisted state);
//! * [`observer`]: the built-in **peer** backup component on each replicated volume's write
//!   path;
//! * [`sender`]: the production site's data link (updates out, acks in);
//! * [`receiver`]: the recovery site's data link (apply in order, ack);
//! * [`control`]: the separate control connection (JSON requests between sites);
//! * [`resync`]: incremental resync of the regions the change bitmap marks;
//! * `mechanisms`: what the policy can ask for (suspend, freeze/run, resync, swap, failover,
//!   demote) and the freeze timer;
//! * `peer`: requests from the peer's control connection, status, configuration checks;
//! * [`link`]: frames over sockets, with deadlines.
//!
//! The engine carries out **mechanisms** (suspend, resync, freeze, run, swap, failover,
//! demote). **Decisions** belong to the recovery policy plugin (`plugins/pprc` by default):
//! the engine reports what happens as `Event::VolumeSet` and admin commands as
//! `Event::Admin`, and executes the `Action`s the policy returns. Wire formats live in the
//! `gateway-replication` crate.

pub mod control;
pub mod link;
mod mechanisms;
pub mod observer;
mod peer;
pub mod receiver;
pub mod resync;
pub mod sender;
pub mod set;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gateway_replication::bitmap::{ChangeBitmap, Opened};
use gateway_sdk::policy::{Action, Event, ImportedPolicy};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NodeConfig};
use crate::quorum::agent::Agent;
use crate::quorum::ledger::LedgerFile;
use crate::volume::Volume;
pub use mechanisms::arm_freeze_timer;
use observer::PeerObserver;
use set::{Flow, Persisted, Role, VolumeSet};

/// Reports from the engine's tasks to the policy loop.
#[derive(Clone)]
pub struct Events(mpsc::UnboundedSender<(String, String, String)>, Arc<tokio::sync::Notify>);

impl Events {
    pub fn send(&self, set: &str, change: &str, detail: &str) {
        let _ = self.0.send((set.to_owned(), change.to_owned(), detail.to_owned()));
        self.1.notify_one();
    }
}

/// Peer observers to attach to volumes before they are built, keyed by volume name.
pub fn observers(config: &Config) -> HashMap<String, Arc<PeerObserver>> {
    config
        .volume_sets
        .iter()
        .flat_map(|s| s.volumes.iter())
        .map(|v| (v.clone(), Arc::new(PeerObserver::default())))
        .collect()
}

pub struct Engine {
    node: NodeConfig,
    sets: Vec<Arc<VolumeSet>>,
    policy: tokio::sync::Mutex<ImportedPolicy>,
    events: Events,
    /// Engine reports not yet given to the policy. Drained in order under `pump`, by the
    /// event loop and by every admin command before it asks the policy, so a command is always
    /// judged on everything that happened before it.
    events_rx: Mutex<mpsc::UnboundedReceiver<(String, String, String)>>,
    pump: tokio::sync::Mutex<()>,
    sessions: Mutex<HashMap<String, CancellationToken>>,
    started: Instant,
    /// The quorum agents of the sets with `recovery = "quorum"`, made at start.
    agents: std::sync::OnceLock<Vec<Arc<Agent>>>,
}

fn secondary_reason(set: &str, production: &str) -> String {
    format!(
        "volume set {set}: this site holds the recovery copy (production is site {production}); host writes are refused until a swap or failover"
    )
}

impl Engine {
    /// Build the engine for `config`'s volume sets. `volumes` are the node's exports, already
    /// carrying the observers from [`observers`]; `policy` is the loaded state-machine plugin.
    pub fn build(
        config: &Config,
        volumes: &[Arc<Volume>],
        observers: &HashMap<String, Arc<PeerObserver>>,
        data_dir: &Path,
        load_policy: impl FnOnce(Value) -> anyhow::Result<ImportedPolicy>,
    ) -> anyhow::Result<Option<Arc<Engine>>> {
        let Some(node) = config.node.clone() else { return Ok(None) };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sets = Vec::new();
        let mut policy_sets = Vec::new();
        for cfg in &config.volume_sets {
            let state_path = data_dir.join(format!("{}.state.json", cfg.name));
            let first_start = !state_path.exists();
            let persisted: Persisted = if first_start {
                let role = if cfg.production == node.site { Role::Primary } else { Role::Secondary };
                Persisted {
                    role,
                    production: cfg.production.clone(),
                    generation: 1,
                    logical: "Simplex".into(),
                    clean: true,
                }
            } else {
                let text = std::fs::read_to_string(&state_path)
                    .with_context(|| format!("reading {}", state_path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a volume set state file", state_path.display()))?
            };
            let mut set_volumes = Vec::new();
            let mut bitmaps = HashMap::new();
            for name in &cfg.volumes {
                let v =
                    volumes.iter().find(|v| v.name() == name).cloned().context("volume of a set is not an export")?;
                let path = data_dir.join(format!("{}.{}.bitmap", cfg.name, name));
                let (bm, opened) = ChangeBitmap::open(&path, v.size(), cfg.region_size)?;
                if let Opened::Reset(why) = &opened {
                    tracing::warn!(set = %cfg.name, volume = %name, "change bitmap reset to all dirty: {why}");
                }
                let full = persisted.role == Role::Primary
                    && ((first_start && cfg.initial_full_sync) || (!first_start && !persisted.clean));
                if full {
                    if !first_start {
                        tracing::warn!(set = %cfg.name, volume = %name, "previous run did not stop cleanly: every region will be resynced");
                    }
                    bm.set_all();
                    bm.persist()?;
                }
                bitmaps.insert(name.clone(), Arc::new(bm));
                set_volumes.push(v);
            }
            policy_sets.push(json!({
                "name": cfg.name, "mode": "sync", "production": persisted.production, "peer": cfg.peer_site,
                "home": cfg.production, "state": persisted.logical,
                "on_link_loss": match cfg.on_link_loss { crate::config::LinkLossPolicy::Continue => "continue", _ => "freeze" },
                "auto_resync": cfg.auto_resync,
            }));
            let ledger = match cfg.recovery {
                crate::config::Recovery::Quorum => {
                    let path = data_dir.join(format!("{}.quorum.ledger", cfg.name));
                    Some(Arc::new(LedgerFile::open(path)?))
                }
                crate::config::Recovery::Operator => None,
            };
            let set =
                VolumeSet::new(cfg.clone(), node.site.clone(), set_volumes, bitmaps, persisted, state_path, ledger);
            for name in &cfg.volumes {
                if let Some(o) = observers.get(name) {
                    o.bind(set.clone());
                }
            }
            set.persist(false)?;
            sets.push(set);
        }
        let policy = load_policy(json!({ "local_site": node.site, "sets": policy_sets }))?;
        Ok(Some(Arc::new(Engine {
            node,
            sets,
            policy: tokio::sync::Mutex::new(policy),
            events: Events(tx, Arc::new(tokio::sync::Notify::new())),
            events_rx: Mutex::new(rx),
            pump: tokio::sync::Mutex::new(()),
            sessions: Mutex::new(HashMap::new()),
            started: Instant::now(),
            agents: std::sync::OnceLock::new(),
        })))
    }

    pub fn site(&self) -> &str {
        &self.node.site
    }

    pub fn set(&self, name: &str) -> Option<Arc<VolumeSet>> {
        self.sets.iter().find(|s| s.name() == name).cloned()
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn sets(&self) -> &[Arc<VolumeSet>] {
        &self.sets
    }

    /// Bind the listeners, settle roles with the peer, start every task.
    pub async fn start(self: &Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let data = TcpListener::bind(self.node.replication_listen)
            .await
            .with_context(|| format!("cannot listen for replication on {}", self.node.replication_listen))?;
        let control = TcpListener::bind(self.node.control_listen)
            .await
            .with_context(|| format!("cannot listen for control on {}", self.node.control_listen))?;
        tracing::info!(site = self.site(), replication = %data.local_addr()?, control = %control.local_addr()?, "replication listening");
        let mut agents = Vec::new();
        for set in &self.sets {
            self.settle_role(set).await;
            let st = set.state();
            let reason = (st.role == Role::Secondary).then(|| secondary_reason(set.name(), &st.production));
            for v in &set.volumes {
                v.block_host_writes(reason.clone());
            }
            if let Some(ledger) = &set.ledger {
                agents.push(Agent::start(self.clone(), set.clone(), ledger.clone(), shutdown.clone()));
            }
        }
        let _ = self.agents.set(agents);
        tokio::spawn(receiver::serve(data, self.clone(), shutdown.clone()));
        tokio::spawn(control::serve(control, self.clone(), shutdown.clone()));
        tokio::spawn(self.clone().event_loop(shutdown.clone()));
        self.deliver(&Event::Started { node: self.site().to_owned(), role: "server".into() }).await;
        for set in &self.sets {
            let change = if set.state().role == Role::Primary { "promoted" } else { "demoted" };
            self.events.send(set.name(), change, "state at start");
            tokio::spawn(sender::run(set.clone(), self.events.clone(), shutdown.clone()));
        }
        Ok(())
    }

    /// A production site that restarts asks its peer first: if the peer took over (newer
    /// generation), this site steps down before serving a single write.
    async fn settle_role(&self, set: &Arc<VolumeSet>) {
        let st = set.state();
        if st.role != Role::Primary {
            return;
        }
        let q = control::request(
            set.cfg.peer_control,
            self.site(),
            set.name(),
            json!({"op": "state", "volume_set": set.name()}),
        )
        .await;
        match q {
            Ok(v) if v["role"] == "primary" && v["generation"].as_u64().unwrap_or(0) > st.generation => {
                let g = v["generation"].as_u64().unwrap_or(st.generation);
                tracing::warn!(
                    set = set.name(),
                    peer_generation = g,
                    "peer took over while this site was down: stepping down"
                );
                self.demote(set, g);
            }
            Ok(_) => {}
            Err(e) if set.ledger.is_some() => {
                tracing::warn!(set = set.name(), "peer not reachable at start ({e}); the quorum controllers decide")
            }
            Err(e) => tracing::warn!(set = set.name(), "peer not reachable at start ({e}); serving as production"),
        }
    }

    pub fn replace_session(&self, set: &str, token: CancellationToken) {
        if let Some(old) = self.sessions.lock().insert(set.to_owned(), token) {
            old.cancel();
        }
    }

    /// The quorum agent of a set, if the set is quorum-managed.
    pub fn agent(&self, set: &str) -> Option<Arc<Agent>> {
        self.agents.get()?.iter().find(|a| a.set().name() == set).cloned()
    }

    /// The peer wants to send us updates with `generation`: accept if it is entitled to.
    pub async fn accept_primary(&self, set: &Arc<VolumeSet>, generation: u64) -> Result<(), String> {
        let st = set.state();
        if set.ledger.is_some() {
            if st.held && !st.quorum_join {
                return Err(format!(
                    "site {} is held offline by the quorum controllers; it joins {} as its secondary when they say so",
                    self.site(),
                    set.cfg.peer_site
                ));
            }
            if st.quorum_join && st.role == Role::Secondary {
                // The controllers placed the peer online and this site as its secondary: their
                // decision, not the generation numbers, says who is production.
                set.update(|s| {
                    s.generation = s.generation.max(generation);
                    s.production = set.cfg.peer_site.clone();
                });
                let _ = set.persist(false);
                return Ok(());
            }
        }
        match st.role {
            Role::Secondary if generation >= st.generation => {
                set.update(|s| {
                    s.generation = generation;
                    s.production = set.cfg.peer_site.clone();
                });
                let _ = set.persist(false);
                Ok(())
            }
            Role::Secondary => {
                Err(format!("stale generation {generation}: this site knows generation {}", st.generation))
            }
            Role::Primary if generation > st.generation => {
                tracing::warn!(
                    set = set.name(),
                    generation,
                    "peer is production with a newer generation: stepping down"
                );
                self.demote(set, generation);
                Ok(())
            }
            Role::Primary => Err(format!(
                "stale: site {} is production of {} with generation {} (yours is {generation})",
                self.site(),
                set.name(),
                st.generation
            )),
        }
    }

    pub(crate) fn demote(&self, set: &Arc<VolumeSet>, generation: u64) {
        set.update(|s| {
            s.role = Role::Secondary;
            s.production = set.cfg.peer_site.clone();
            s.generation = s.generation.max(generation);
            s.flow = Flow::Tracking;
        });
        let reason = secondary_reason(set.name(), &set.cfg.peer_site);
        for v in &set.volumes {
            v.block_host_writes(Some(reason.clone()));
        }
        let _ = set.persist(false);
        self.events.send(set.name(), "demoted", "");
    }

    pub(crate) fn promote(&self, set: &Arc<VolumeSet>, generation: u64, flow: Flow) {
        set.update(|s| {
            s.role = Role::Primary;
            s.production = self.site().to_owned();
            s.generation = generation;
            s.flow = flow;
        });
        for v in &set.volumes {
            v.block_host_writes(None);
        }
        let _ = set.persist(false);
        self.events.send(set.name(), "promoted", "");
    }

    async fn event_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let wake = self.events.1.clone();
        loop {
            let _guard = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let g = self.pump.lock().await;
                    self.drain().await;
                    self.deliver(&Event::Tick { now_ms: self.started.elapsed().as_millis() as u64 }).await;
                    g
                }
                _ = wake.notified() => {
                    let g = self.pump.lock().await;
                    self.drain().await;
                    g
                }
            };
        }
    }

    /// Deliver every queued engine report, in order. Call with `pump` held.
    async fn drain(self: &Arc<Self>) {
        loop {
            let next = self.events_rx.lock().try_recv();
            let Ok((set, change, detail)) = next else { return };
            let production = self.set(&set).map(|s| s.state().production).unwrap_or_default();
            let event =
                Event::VolumeSet { volume_set: set, change, local_site: self.site().to_owned(), production, detail };
            self.deliver(&event).await;
        }
    }

    /// Feed an event to the policy and carry out its actions.
    async fn deliver(self: &Arc<Self>, event: &Event) {
        let actions = {
            let mut p = self.policy.lock().await;
            match p.on_event(event) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!("policy: {e}");
                    return;
                }
            }
        };
        for a in actions {
            if let Err(e) = self.execute(&a).await {
                tracing::warn!(action = %a.to_json(), "action failed: {e}");
                if let Action::Replicate { volume_set, op } = &a {
                    self.mechanism_failed(volume_set, op, &e);
                }
            }
        }
    }

    /// Tell the policy a mechanism it asked for did not happen. A resync that could not start
    /// (e.g. the control link is down while the data link is up) is offered again shortly, as
    /// a fresh `link_up`, while the link stays up and the set stays out of sync.
    fn mechanism_failed(self: &Arc<Self>, name: &str, op: &str, error: &str) {
        if op != "resync" {
            self.events.send(name, "replication_error", &format!("{op}: {error}"));
            return;
        }
        self.events.send(name, "resync_failed", error);
        let Some(set) = self.set(name) else { return };
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let st = set.state();
            if st.role == Role::Primary && st.link_up && st.resync.is_none() && st.flow != Flow::Mirroring {
                events.send(set.name(), "link_up", "retry after a resync that could not start");
            }
        });
    }

    async fn execute(self: &Arc<Self>, action: &Action) -> Result<(), String> {
        match action {
            Action::SetVolumeSetState { volume_set, state } => {
                let set = self.set(volume_set).ok_or_else(|| format!("unknown volume set {volume_set}"))?;
                set.update(|s| s.logical = state.clone());
                set.persist(false).map_err(|e| e.to_string())?;
                if set.state().role == Role::Primary {
                    // The recovery site shows (and decides on) the production site's state.
                    let (addr, site, name, state) =
                        (set.cfg.peer_control, self.site().to_owned(), volume_set.clone(), state.clone());
                    tokio::spawn(async move {
                        let req = json!({"op": "peer-state", "volume_set": name, "state": state});
                        if let Err(e) = control::request(addr, &site, &name, req).await {
                            tracing::debug!(set = %name, "could not tell the peer our state: {e}");
                        }
                    });
                }
                Ok(())
            }
            Action::Replicate { volume_set, op } => self.mechanism(volume_set, op).await,
            Action::Log { level, message } => {
                match level.as_str() {
                    "error" => tracing::error!(policy = "replication", "{message}"),
                    "warn" => tracing::warn!(policy = "replication", "{message}"),
                    _ => tracing::info!(policy = "replication", "{message}"),
                }
                Ok(())
            }
            Action::Refuse { reason } => Err(reason.clone()),
            other => {
                tracing::warn!(action = %other.to_json(), "action not carried out: the replication engine has no mechanism for it");
                Ok(())
            }
        }
    }

    /// An admin command that goes through the policy; returns an error naming the reason.
    pub async fn command(self: &Arc<Self>, command: &str, args: Value) -> Result<Value, String> {
        let name = args["volume_set"].as_str().unwrap_or_default().to_owned();
        let set = self
            .set(&name)
            .ok_or_else(|| format!("unknown volume set `{name}` (this site has: {})", self.set_names()))?;
        if set.ledger.is_some()
            && matches!(command, "swap" | "failover" | "failback" | "recover" | "online" | "offline")
        {
            return Err(format!(
                "{command} {name}: the volume set is quorum-managed (recovery = \"quorum\"): the controllers decide which site is online; use `gateway ctl shutdown`/`return` on a controller"
            ));
        }
        let pump = self.pump.lock().await;
        self.drain().await;
        let actions = {
            let mut p = self.policy.lock().await;
            p.on_event(&Event::Admin { command: command.to_owned(), args: args.clone() })?
        };
        drop(pump);
        if let Some(Action::Refuse { reason }) = actions.iter().find(|a| matches!(a, Action::Refuse { .. })) {
            return Err(reason.clone());
        }
        for a in &actions {
            self.execute(a).await.map_err(|e| format!("{command} {name}: {e} (state {})", set.state().logical))?;
        }
        if command == "online" {
            let site = args["site"].as_str().unwrap_or(self.site()).to_owned();
            let timeout = Duration::from_millis(args["timeout_ms"].as_u64().unwrap_or(60_000));
            self.wait_for(&set, timeout, |st| {
                st.production == site
                    && matches!(st.logical.as_str(), "InSync" | "OutOfSync" | "RecoverySite-ForceSwap")
            })
            .await
            .map_err(|st| format!("online {name} at {site}: still {st} after {timeout:?}"))?;
        }
        Ok(
            json!({"volume_set": name, "state": set.state().logical, "actions": actions.iter().map(|a| a.to_json()).collect::<Vec<_>>()}),
        )
    }

    fn set_names(&self) -> String {
        self.sets.iter().map(|s| s.name().to_owned()).collect::<Vec<_>>().join(", ")
    }

    /// Wait until `ok(state)` holds; on timeout, the state it was left in.
    pub async fn wait_for(
        &self,
        set: &Arc<VolumeSet>,
        timeout: Duration,
        ok: impl Fn(&set::SetState) -> bool,
    ) -> Result<(), String> {
        let mut rx = set.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let st = set.state();
            if ok(&st) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Err(st.logical);
            }
        }
    }

    /// Orderly stop: record that every set stopped cleanly (volumes are flushed by then).
    pub fn stopped_cleanly(&self) {
        for s in &self.sets {
            for bm in s.bitmaps.values() {
                let _ = bm.persist();
            }
            if let Err(e) = s.persist(true) {
                tracing::error!(set = s.name(), "cannot record clean shutdown: {e}");
            }
        }
    }
}
