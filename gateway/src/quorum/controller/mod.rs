//! The controller role (`[controller]`): the host of the vtc-quorum policy in a real process.
//!
//! One task owns the policy and feeds it, in order: `Started`, `KeyLoaded` (from the
//! [`RecordFile`]), then everything that happens — `Tick` every 250 ms, `ControllerUp`/`Down`
//! and `ControllerMessage` from the other controllers, `PeerUp`/`PeerDown` and
//! `ServerReport` from the two servers, and the operator's commands. It carries out the
//! actions in order, and a `SaveKey` is fsync'd before the next action runs (a vote is in
//! the key before it is sent).
//!
//! Links (all reconnect by themselves, every 500 ms):
//! * to every other controller: an outbound connection that carries this controller's
//!   messages (`{"body": ...}`), and whose state is `ControllerUp`/`ControllerDown`; inbound
//!   connections from the others deliver theirs. Messages queued while a peer is down are
//!   kept (bounded) and sent late: the policy tolerates delay, loss and reordering.
//! * to each server's control port: `quorum-attach`, then reports in and commands out
//!   (`GoOnline` goes to every server its target names; commands for a server that is not
//!   connected are dropped, as the policy expects).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_sdk::policy::{Action, Event, ImportedPolicy};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::record::{Loaded, RecordFile};
use crate::config::ControllerConfig;
use crate::replication::link;

const TICK: Duration = Duration::from_millis(250);
const RECONNECT: Duration = Duration::from_millis(500);
/// After a refusal (a configuration problem, not an outage): try again less often.
const REFUSED_PAUSE: Duration = Duration::from_secs(5);
const PING: Duration = Duration::from_secs(1);
/// Messages kept for a peer that is down; more are dropped (the policy re-sends).
const PEER_QUEUE: usize = 1024;

enum Input {
    Event(Event),
    /// An operator command: the policy's actions (or its refusal) come back.
    Operator(Event, oneshot::Sender<Result<(), String>>),
}

/// What status shows besides the policy's own report.
#[derive(Default)]
struct View {
    report: Value,
    key: Option<Value>,
    key_store: String,
    servers: BTreeMap<String, (bool, Value)>,
    peers: BTreeMap<String, bool>,
}

mod links;

pub struct Controller {
    cfg: ControllerConfig,
    store: Arc<RecordFile>,
    input: mpsc::UnboundedSender<Input>,
    input_rx: Mutex<Option<mpsc::UnboundedReceiver<Input>>>,
    policy: Mutex<Option<ImportedPolicy>>,
    view: Mutex<View>,
    peer_queues: HashMap<String, mpsc::Sender<Value>>,
    peer_rx: Mutex<HashMap<String, mpsc::Receiver<Value>>>,
    server_queues: Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>,
}

impl Controller {
    /// `policy` is the loaded vtc-quorum (or compatible) plugin, opened with
    /// [`ControllerConfig::policy_config`].
    pub fn new(cfg: ControllerConfig, data_dir: &Path, policy: ImportedPolicy) -> Arc<Controller> {
        let key_path = if cfg.key_file.is_absolute() { cfg.key_file.clone() } else { data_dir.join(&cfg.key_file) };
        let (input, input_rx) = mpsc::unbounded_channel();
        let mut peer_queues = HashMap::new();
        let mut peer_rx = HashMap::new();
        let mut view = View::default();
        for p in &cfg.peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            peer_queues.insert(p.id.clone(), tx);
            peer_rx.insert(p.id.clone(), rx);
            view.peers.insert(p.id.clone(), false);
        }
        for s in &cfg.servers {
            view.servers.insert(s.name.clone(), (false, Value::Null));
        }
        Arc::new(Controller {
            cfg,
            store: Arc::new(RecordFile::new(key_path)),
            input,
            input_rx: Mutex::new(Some(input_rx)),
            policy: Mutex::new(Some(policy)),
            view: Mutex::new(view),
            peer_queues,
            peer_rx: Mutex::new(peer_rx),
            server_queues: Mutex::new(HashMap::new()),
        })
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    /// Bind the controller port and start every task.
    pub async fn start(self: &Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("controller {}: cannot listen on {}: {e}", self.cfg.id, self.cfg.listen))?;
        tracing::info!(controller = %self.cfg.id, listen = %self.cfg.listen, key = %self.store.path().display(), "quorum controller listening");
        let (Some(rx), Some(policy)) = (self.input_rx.lock().take(), self.policy.lock().take()) else {
            anyhow::bail!("controller {} started twice", self.cfg.id);
        };
        tokio::spawn(self.clone().policy_loop(policy, rx, stop.clone()));
        let me = self.clone();
        tokio::spawn(link::accept_loop(listener, stop.clone(), "controller", move |stream, addr| {
            let me = me.clone();
            async move {
                if let Err(e) = me.inbound(stream).await {
                    tracing::info!(%addr, "controller connection ended: {e}");
                }
            }
        }));
        let queues: Vec<(String, mpsc::Receiver<Value>)> = self.peer_rx.lock().drain().collect();
        for (peer, rx) in queues {
            tokio::spawn(self.clone().outbound(peer, rx, stop.clone()));
        }
        for s in self.cfg.servers.clone() {
            tokio::spawn(self.clone().server_link(s.name, s.control, stop.clone()));
        }
        Ok(())
    }

    fn event(&self, e: Event) {
        let _ = self.input.send(Input::Event(e));
    }

    // ----- the policy --------------------------------------------------------------------------

    async fn policy_loop(
        self: Arc<Self>,
        mut policy: ImportedPolicy,
        mut rx: mpsc::UnboundedReceiver<Input>,
        stop: CancellationToken,
    ) {
        let started = Instant::now();
        let loaded = {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.load()).await.unwrap_or_else(|e| Loaded::Corrupt(e.to_string()))
        };
        match &loaded {
            Loaded::Found(_) => tracing::info!(controller = %self.cfg.id, "shutdown key loaded"),
            Loaded::Missing => {
                // The policy warns that it will not elect yes; say how a new system starts.
                tracing::info!(controller = %self.cfg.id, key = %self.store.path().display(), "no shutdown key file (a new system is set up with `gateway ctl quorum bootstrap`)")
            }
            Loaded::Corrupt(why) => {
                tracing::error!(controller = %self.cfg.id, "shutdown key {} is unusable ({why}): this controller will not elect yes", self.store.path().display())
            }
        }
        {
            let mut v = self.view.lock();
            v.key = loaded.key().cloned();
            v.key_store = loaded.describe();
        }
        // Failures are logged by `run`; the loop goes on (a later step may succeed).
        let _ = self.run(&mut policy, &Event::Started { node: self.cfg.id.clone(), role: "controller".into() }).await;
        let _ = self.run(&mut policy, &Event::KeyLoaded { key: loaded.key().cloned() }).await;
        let mut tick = tokio::time::interval(TICK);
        loop {
            let input = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => Input::Event(Event::Tick { now_ms: started.elapsed().as_millis() as u64 }),
                i = rx.recv() => match i { Some(i) => i, None => return },
            };
            match input {
                Input::Event(e) => {
                    let _ = self.run(&mut policy, &e).await;
                }
                Input::Operator(e, reply) => {
                    let r = self.run(&mut policy, &e).await;
                    let _ = reply.send(r);
                }
            }
        }
    }

    /// Feed one event and carry out the actions; a `Refuse` among them is the result.
    async fn run(&self, policy: &mut ImportedPolicy, event: &Event) -> Result<(), String> {
        let actions = match policy.on_event(event) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(controller = %self.cfg.id, "policy: {e}");
                return Err(format!("the recovery policy failed: {e}"));
            }
        };
        if let Some(Action::Refuse { reason }) = actions.iter().find(|a| matches!(a, Action::Refuse { .. })) {
            return Err(reason.clone());
        }
        for a in actions {
            if let Err(e) = self.execute(a).await {
                // A key that is not durable must not be relied on by what follows it.
                tracing::error!(controller = %self.cfg.id, "{e}; the rest of this step is not carried out");
                return Err(e);
            }
        }
        Ok(())
    }

    async fn execute(&self, action: Action) -> Result<(), String> {
        match action {
            Action::SaveKey { key } => {
                let store = self.store.clone();
                let k = key.clone();
                tokio::task::spawn_blocking(move || store.save(&k))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("saving the shutdown key failed: {e}"))?;
                // Step 420: the key is saved in each controller and in each operational server.
                for server in self.server_queues.lock().values() {
                    let _ = server.send(json!({"command": "save_key", "key": key}));
                }
                let mut v = self.view.lock();
                v.key = Some(key);
                v.key_store = "valid".into();
            }
            Action::SendToController { to, body } => {
                for (peer, q) in &self.peer_queues {
                    if (to == "*" || *peer == to) && q.try_send(body.clone()).is_err() {
                        tracing::debug!(peer, "controller queue full: message dropped");
                    }
                }
            }
            Action::GoOnline { target } => {
                let names = target.split('@').next().unwrap_or_default();
                for server in names.split('+') {
                    self.command(server, json!({"command": "go_online", "target": target}));
                }
            }
            Action::GoOffline { target, reason } => {
                for server in target.split('@').next().unwrap_or_default().split('+') {
                    self.command(server, json!({"command": "go_offline", "reason": reason}));
                }
            }
            Action::ShutdownServer { server, mode } => {
                self.command(&server, json!({"command": "shutdown", "mode": mode}));
            }
            Action::Report { key, value } if key == "quorum" => self.view.lock().report = value,
            Action::Log { level, message } => match level.as_str() {
                "error" => tracing::error!(controller = %self.cfg.id, "{message}"),
                "warn" => tracing::warn!(controller = %self.cfg.id, "{message}"),
                "debug" => tracing::debug!(controller = %self.cfg.id, "{message}"),
                _ => tracing::info!(controller = %self.cfg.id, "{message}"),
            },
            Action::Vote { election, candidate, yes } => {
                tracing::info!(controller = %self.cfg.id, election, candidate, yes, "election")
            }
            other => {
                tracing::warn!(controller = %self.cfg.id, action = %other.to_json(), "action not carried out: a controller has no mechanism for it")
            }
        }
        Ok(())
    }

    fn command(&self, server: &str, body: Value) {
        match self.server_queues.lock().get(server) {
            Some(q) => {
                let _ = q.send(body);
            }
            None => tracing::debug!(server, %body, "server not connected: command not carried out"),
        }
    }

    // ----- operator ----------------------------------------------------------------------------

    /// `shutdown`, `return`, `bootstrap` and `quorum-status` from the admin socket.
    pub async fn admin(&self, command: &str, req: &Value) -> Result<Value, String> {
        let servers = || -> Vec<String> {
            match &req["servers"] {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) => a.iter().filter_map(|s| s.as_str().map(String::from)).collect(),
                _ => Vec::new(),
            }
        };
        let from = "operator".to_string();
        let event = match command {
            "shutdown" => {
                let mode = req["mode"].as_str().unwrap_or("normal").to_owned();
                Event::ShutdownCommand { servers: servers(), mode, from }
            }
            "return" => Event::ReturnCommand { servers: servers(), from },
            "quorum-bootstrap" => Event::Admin { command: "bootstrap".into(), args: json!({}) },
            "quorum-status" => Event::Admin { command: "status".into(), args: json!({}) },
            other => return Err(format!("unknown controller command `{other}`")),
        };
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::Operator(event, tx)).map_err(|_| "the controller is stopping".to_string())?;
        rx.await.map_err(|_| "the controller is stopping".to_string())??;
        Ok(self.status())
    }

    pub fn status(&self) -> Value {
        let v = self.view.lock();
        let mut out = match &v.report {
            Value::Object(m) => Value::Object(m.clone()),
            _ => json!({"outcome": "unknown", "reason": "the policy has not reported yet"}),
        };
        out["controller"] = json!(self.cfg.id);
        out["volume_set"] = json!(self.cfg.volume_set);
        out["key_store"] = json!(v.key_store);
        out["saved_key"] = v.key.clone().unwrap_or(Value::Null);
        out["servers"] = v
            .servers
            .iter()
            .map(|(name, (connected, r))| {
                let mut s = json!({"connected": connected});
                if let Value::Object(m) = r {
                    for (k, val) in m {
                        s[k] = val.clone();
                    }
                }
                (name.clone(), s)
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        out["peers"] = v.peers.iter().map(|(k, up)| (k.clone(), json!(up))).collect::<serde_json::Map<_, _>>().into();
        out
    }
}
