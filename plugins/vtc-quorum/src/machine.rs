//! The controller's state machine: `handle(&Event) -> Vec<Action>`, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use gateway_sdk::{Action, Event};
use serde_json::json;

use crate::config::{Break, Config, ReportBy};
use crate::key::{Claim, Command, Eid, Hold, Key, Outcome, Resolved, Value};
use crate::msg::{Envelope, Msg, QueryState, MSG_VERSION};

/// An unchanged key exchange is sent again every this many exchange periods.
const EXCHANGE_REPEAT: u32 = 4;

/// What this controller currently sees of one server (volatile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerView {
    /// The control connection is up.
    pub connected: bool,
    /// The last report on that connection said operational.
    pub operational: bool,
    pub position: u64,
    pub copies_pending: u64,
}

/// This controller's own election in progress, with the elections reported to it.
#[derive(Debug, Clone)]
struct Open {
    eid: Eid,
    value: Value,
    started: u64,
    votes: BTreeMap<String, Result<(), String>>,
}

impl Open {
    fn yes(&self) -> usize {
        self.votes.values().filter(|v| v.is_ok()).count()
    }
}

/// The latest election this controller took part in or heard of, for status.
#[derive(Debug, Clone, Default)]
struct Tally {
    eid: Option<Eid>,
    value: Option<Value>,
    votes: BTreeMap<String, Result<(), String>>,
}

#[derive(Debug, Clone, Default)]
struct Stuck {
    since: u64,
    last_query: Option<u64>,
    refusers: BTreeSet<String>,
}

pub struct Machine {
    cfg: Config,
    now: u64,
    /// Lamport clock; the key's generation.
    clock: u64,
    /// `KeyLoaded` arrived.
    loaded: bool,
    /// The key is valid: this controller may elect yes and start elections.
    keyed: bool,
    /// What this controller knows (its key when `keyed`; otherwise a shadow, never saved).
    know: Key,
    view: BTreeMap<String, ServerView>,
    peers: BTreeSet<String>,
    open: Option<Open>,
    tally: Tally,
    /// How the last election that ended here ended: "3 of 8 controllers elected A; threshold 4".
    last_result: Option<String>,
    stuck: BTreeMap<Eid, Stuck>,
    known_aborted: Vec<Eid>,
    next_propose: u64,
    last_exchange: Option<u64>,
    last_exchange_sig: String,
    quiet_exchanges: u32,
    last_sig: String,
    status_dirty: bool,
    key_dirty: bool,
    out: Vec<Action>,
}

impl Machine {
    pub fn new(cfg: Config) -> Machine {
        let know = Key::genesis(&cfg.me, &cfg.servers);
        let view = cfg.servers.iter().map(|s| (s.clone(), ServerView::default())).collect();
        Machine {
            cfg,
            now: 0,
            clock: 0,
            loaded: false,
            keyed: false,
            know,
            view,
            peers: BTreeSet::new(),
            open: None,
            tally: Tally::default(),
            last_result: None,
            stuck: BTreeMap::new(),
            known_aborted: Vec::new(),
            next_propose: 0,
            last_exchange: None,
            last_exchange_sig: String::new(),
            quiet_exchanges: 0,
            last_sig: String::new(),
            status_dirty: true,
            key_dirty: false,
            out: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The key as it stands (valid only when [`Machine::keyed`]).
    pub fn key(&self) -> &Key {
        &self.know
    }

    pub fn keyed(&self) -> bool {
        self.keyed
    }

    pub fn view(&self, server: &str) -> Option<&ServerView> {
        self.view.get(server)
    }

    /// The promotion in force as far as this controller knows: the passed election with the
    /// highest position among those no final report has ended (they all name the same
    /// server), unless a shutdown command holds that server. Its server is online, or will be
    /// when its guarded promotion is re-sent (a restarted primary resumes it).
    pub fn in_force(&self) -> Option<(String, u64)> {
        let c = self.know.claims.iter().filter(|c| c.decided).max_by_key(|c| c.position)?;
        if self.know.held(&c.server).is_some() {
            return None;
        }
        Some((c.server.clone(), c.position))
    }

    pub fn handle(&mut self, event: &Event) -> Vec<Action> {
        self.out.clear();
        match event {
            Event::Started { node, role } => self.log("info", format!("started as {node} ({role})")),
            Event::KeyLoaded { key } => self.on_key_loaded(key.as_ref()),
            Event::Tick { now_ms } => {
                self.now = *now_ms;
                self.on_tick();
            }
            Event::ServerReport { server, operational, position, copies_pending } => {
                self.on_report(server, *operational, *position, *copies_pending)
            }
            Event::PeerUp { peer } => self.on_up(peer),
            Event::ControllerUp { controller } => self.on_up(controller),
            Event::PeerDown { peer, .. } => self.on_down(peer),
            Event::ControllerDown { controller } => self.on_down(controller),
            Event::ControllerMessage { from, body } => self.on_message(from, body),
            Event::ShutdownCommand { servers, mode, from } => {
                if self.is_peer(from) {
                    // A host that turns a peer's broadcast into a command event: record it only.
                    let cmd = Command {
                        gen: self.clock,
                        origin: from.clone(),
                        servers: servers.clone(),
                        mode: Some(mode.clone()),
                        ts: self.now,
                    };
                    self.record_command(&cmd, true);
                } else {
                    self.operator_shutdown(servers, mode);
                }
            }
            Event::ReturnCommand { servers, from } => {
                if self.is_peer(from) {
                    let cmd = Command {
                        gen: self.clock,
                        origin: from.clone(),
                        servers: servers.clone(),
                        mode: None,
                        ts: self.now,
                    };
                    self.record_command(&cmd, false);
                } else {
                    self.operator_return(servers);
                }
            }
            Event::Admin { command, args } => self.on_admin(command, args),
            _ => {}
        }
        // The status and the key's informational part (what each server was last seen doing)
        // are brought up to date at the next tick; promises and facts are saved at once.
        if !matches!(event, Event::Tick { .. }) {
            self.status_dirty = true;
        } else if self.loaded {
            if self.key_dirty {
                self.tick_clock();
                self.save();
            }
            if self.status_dirty || !self.out.is_empty() {
                self.status_dirty = false;
                self.status(false);
            }
        }
        std::mem::take(&mut self.out)
    }

    // ----- helpers -------------------------------------------------------------------------

    fn is_peer(&self, name: &str) -> bool {
        name != self.cfg.me && self.cfg.index(name).is_some()
    }

    fn log(&mut self, level: &str, message: String) {
        self.out.push(Action::Log { level: level.into(), message });
    }

    fn tick_clock(&mut self) {
        self.clock += 1;
    }

    /// Save the key (only a valid key is ever saved: a controller without one stays without).
    fn save(&mut self) {
        if !self.keyed || !self.loaded {
            return;
        }
        self.know.gen = self.clock;
        self.know.ts = self.now;
        self.key_dirty = false;
        self.out.push(Action::SaveKey { key: self.know.to_json() });
    }

    fn send(&mut self, to: &str, msg: Msg) {
        let env = Envelope { v: MSG_VERSION, gen: self.clock, finals: self.know.finals.clone(), hw: self.know.hw, msg };
        self.out.push(Action::SendToController { to: to.into(), body: env.to_json() });
    }

    fn idx_delay(&self) -> u64 {
        self.cfg.timing.stagger_ms * self.cfg.my_index() as u64
    }

    fn operational(&self, server: &str) -> bool {
        self.view.get(server).is_some_and(|v| v.connected && v.operational)
    }

    fn threshold_text(&self, yes: usize, of: usize, who: &str) -> String {
        format!("{yes} of {of} controllers elected {who}; threshold {}", self.cfg.threshold_count())
    }

    // ----- start ---------------------------------------------------------------------------

    fn on_key_loaded(&mut self, key: Option<&serde_json::Value>) {
        self.loaded = true;
        let parsed = match key {
            Some(v) => Key::from_saved(v, &self.cfg.me, &self.cfg.servers),
            None => Err("no shutdown key (missing, torn or corrupt)".into()),
        };
        match parsed {
            Ok(k) => {
                self.keyed = true;
                self.clock = self.clock.max(k.gen);
                self.know = k;
                self.know.clear_claims();
                self.log("info", format!("shutdown key loaded (generation {})", self.know.gen));
                if let Some((eid, value)) = self.know.open.clone() {
                    self.open = Some(Open { eid, value, started: self.now, votes: BTreeMap::new() });
                    self.abort_own("the controller restarted during the election".into());
                }
            }
            Err(why) => {
                self.keyed = false;
                self.log("warn", format!("{why}: this controller will not elect yes until an operator re-admits it"));
            }
        }
        self.next_propose = self.now + self.cfg.timing.retry_ms + self.idx_delay();
    }

    // ----- time ----------------------------------------------------------------------------

    fn on_tick(&mut self) {
        if !self.loaded {
            return;
        }
        let t = self.cfg.timing;
        if let Some(open) = &self.open {
            if self.now >= open.started + t.election_timeout_ms {
                self.abort_own("the election timed out".into());
            }
        }
        self.poll_stuck();
        let due = self.last_exchange.is_none_or(|l| self.now >= l + t.exchange_ms);
        if due {
            self.last_exchange = Some(self.now);
            // The key exchange goes out when what it carries changed, and every few periods
            // anyway (a peer may have missed it).
            let m = self.exchange_msg();
            let sig = format!("{m:?}{:?}", self.know.finals);
            self.quiet_exchanges += 1;
            if sig != self.last_exchange_sig || self.quiet_exchanges >= EXCHANGE_REPEAT {
                self.last_exchange_sig = sig;
                self.quiet_exchanges = 0;
                self.send("*", m);
            }
            self.reassert_online();
        }
        self.maybe_propose();
    }

    fn exchange_msg(&self) -> Msg {
        Msg::Exchange {
            claims: self.know.claims.iter().filter(|c| c.decided).cloned().collect(),
            holds: self.know.holds.clone(),
            outcome: self.know.outcome.clone(),
            shutdown: self.know.shutdown.clone(),
        }
    }

    /// Re-send the commands of the passed election in force (the host ignores them when done):
    /// the guarded promotion, and the other server's resync when it is back (late arrival).
    fn reassert_online(&mut self) {
        let Some((primary, position)) = self.in_force() else { return };
        if !self.operational(&primary) {
            return;
        }
        self.out.push(Action::GoOnline { target: format!("{primary}@{position}") });
        let other = self.cfg.other(&primary).to_owned();
        if self.operational(&other) && self.know.held(&other).is_none() {
            self.out.push(Action::GoOnline { target: format!("{primary}+{other}") });
        }
    }

    // ----- servers -------------------------------------------------------------------------

    fn on_report(&mut self, server: &str, operational: bool, position: u64, copies_pending: u64) {
        if !self.cfg.is_server(server) {
            return;
        }
        let was = self.operational(server);
        let v = self.view.entry(server.to_owned()).or_default();
        *v = ServerView { connected: true, operational, position, copies_pending };
        if position > self.know.hw {
            self.know.hw = position;
        }
        let rec = self.know.servers.entry(server.to_owned()).or_default();
        // The key agrees with the server if the server did not come back below what the key
        // recorded of it: compare before recording this report.
        let below = (position < rec.high).then_some(rec.high);
        rec.high = rec.high.max(position);
        rec.operational = operational;
        rec.position = position;
        rec.copies_pending = copies_pending;
        rec.final_report = !operational;
        if let Some(high) = below {
            self.log(
                "warn",
                format!("{server} reports position {position}, below {high} in the shutdown key: it lost data"),
            );
        }
        if !operational {
            // The server's final report at a graceful shutdown: it acknowledged nothing after.
            if self.know.note_final(server, position) {
                self.tick_clock();
                self.save();
            } else {
                self.key_dirty = true;
            }
        } else if !was {
            self.key_dirty = true;
            match self.in_force() {
                // The other server came back while online: resync it (never a second primary).
                Some((primary, _))
                    if primary != server && self.know.held(server).is_none() && self.operational(&primary) =>
                {
                    self.out.push(Action::GoOnline { target: format!("{primary}+{server}") });
                }
                // The primary in force came back: resume its promotion.
                Some((primary, _)) if primary == server => self.reassert_online(),
                _ => {}
            }
        }
    }

    fn on_up(&mut self, peer: &str) {
        if self.cfg.is_server(peer) {
            self.view.entry(peer.to_owned()).or_default().connected = true;
        } else if self.is_peer(peer) && self.peers.insert(peer.to_owned()) && self.loaded {
            let m = self.exchange_msg();
            self.send(peer, m);
        }
    }

    fn on_down(&mut self, peer: &str) {
        if self.cfg.is_server(peer) {
            let v = self.view.entry(peer.to_owned()).or_default();
            let was = v.operational;
            v.connected = false;
            v.operational = false;
            // The belief in the passed election stays: if the server restarted, re-sending its
            // guarded promotion resumes it (its epoch record is there), and a link that
            // blinked did not take it offline at all.
            if was {
                if let Some(rec) = self.know.servers.get_mut(peer) {
                    rec.operational = false;
                    rec.final_report = false;
                }
                self.key_dirty = true;
            }
        } else {
            self.peers.remove(peer);
        }
    }

    // ----- operator commands (FIG. 4 steps 430/450, FIG. 5 step 510; claim 4) --------------

    fn parse_servers(&self, servers: &[String]) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for s in servers {
            if s == "both" || s == "*" {
                out.extend(self.cfg.servers.iter().cloned());
            } else if self.cfg.is_server(s) {
                out.push(s.clone());
            } else {
                return Err(format!("unknown server {s:?} (servers: {})", self.cfg.servers.join(", ")));
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("name the servers (A, B or both)".into());
        }
        Ok(out)
    }

    fn operator_shutdown(&mut self, servers: &[String], mode: &str) {
        let servers = match self.parse_servers(servers) {
            Ok(s) => s,
            Err(e) => return self.out.push(Action::Refuse { reason: format!("shutdown: {e}") }),
        };
        if gateway_sdk::ShutdownMode::parse(mode).is_none() {
            let reason = format!("shutdown: unknown mode {mode:?} (normal, expedite, immediate, force)");
            return self.out.push(Action::Refuse { reason });
        }
        self.tick_clock();
        let cmd = Command {
            gen: self.clock,
            origin: self.cfg.me.clone(),
            servers: servers.clone(),
            mode: Some(mode.to_owned()),
            ts: self.now,
        };
        self.log("info", format!("shutdown of {} (mode {mode}) by operator; broadcasting", servers.join("+")));
        self.record_command(&cmd, true);
        self.send("*", Msg::Shutdown { cmd });
        for s in &servers {
            let reason = format!("shutdown command (mode {mode})");
            self.out.push(Action::GoOffline { target: s.clone(), reason });
            self.out.push(Action::ShutdownServer { server: s.clone(), mode: mode.to_owned() });
        }
    }

    fn operator_return(&mut self, servers: &[String]) {
        let servers = match self.parse_servers(servers) {
            Ok(s) => s,
            Err(e) => return self.out.push(Action::Refuse { reason: format!("return: {e}") }),
        };
        self.tick_clock();
        let cmd = Command { gen: self.clock, origin: self.cfg.me.clone(), servers, mode: None, ts: self.now };
        self.log("info", format!("return of {} by operator; broadcasting", cmd.servers.join("+")));
        self.record_command(&cmd, false);
        self.send("*", Msg::Return { cmd });
        // Return is when the controllers determine what goes online (step 460): soon. A
        // returned server joins the primary in force at once (the periodic re-send would do
        // the same at the next exchange).
        self.next_propose = self.next_propose.min(self.now + self.idx_delay());
        self.reassert_online();
    }

    /// Record a shutdown (`hold`) or return command in the key (steps 420/530: a key is
    /// always generated on a shutdown command).
    fn record_command(&mut self, cmd: &Command, hold: bool) {
        let h = Hold { gen: cmd.gen, origin: cmd.origin.clone(), held: hold, mode: cmd.mode.clone() };
        let mut changed = false;
        for s in &cmd.servers {
            if self.cfg.is_server(s) && self.know.merge_hold(s, &h) {
                changed = true;
            }
        }
        if hold && self.know.shutdown.as_ref().is_none_or(|c| (cmd.gen, &cmd.origin) > (c.gen, &c.origin)) {
            self.know.shutdown = Some(cmd.clone());
            self.know.mode = cmd.mode.clone();
            let mut at: Vec<String> = self.peers.iter().cloned().collect();
            at.push(self.cfg.me.clone());
            at.sort();
            self.know.controllers_at_shutdown = at;
            changed = true;
        }
        if changed {
            self.tick_clock();
            self.save();
        }
    }

    fn on_admin(&mut self, command: &str, args: &serde_json::Value) {
        let list = |v: Option<&serde_json::Value>| -> Vec<String> {
            match v {
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
                _ => Vec::new(),
            }
        };
        match command {
            "bootstrap" => {
                if self.keyed {
                    let reason = format!("bootstrap: this controller already has a key (generation {})", self.know.gen);
                    return self.out.push(Action::Refuse { reason });
                }
                // The operator sets the system up anew: a blank key (nothing known, nothing promised).
                let mut k = Key::genesis(&self.cfg.me, &self.cfg.servers);
                k.hw = self.know.hw;
                self.know = k;
                self.keyed = true;
                self.loaded = true;
                self.tick_clock();
                self.save();
                self.log("info", "bootstrapped with a blank shutdown key".into());
            }
            "status" => self.status(true),
            "shutdown" => {
                let mode = args.get("mode").and_then(|m| m.as_str()).unwrap_or("normal").to_owned();
                self.operator_shutdown(&list(args.get("servers")), &mode);
            }
            "return" => self.operator_return(&list(args.get("servers"))),
            _ => {}
        }
    }

    // ----- messages ------------------------------------------------------------------------

    fn on_message(&mut self, from: &str, body: &serde_json::Value) {
        if !self.is_peer(from) {
            return;
        }
        let env = match Envelope::from_json(body) {
            Ok(e) => e,
            Err(e) => return self.log("warn", format!("message from {from} ignored: {e}")),
        };
        self.clock = self.clock.max(env.gen);
        let mut changed = false;
        for (s, f) in &env.finals {
            if self.cfg.is_server(s) && self.know.final_of(s).is_none_or(|mine| *f > mine) {
                changed |= self.know.note_final(s, *f);
            }
        }
        if env.hw > self.know.hw {
            self.know.hw = env.hw;
        }
        if changed {
            self.tick_clock();
            self.save();
        }
        match env.msg {
            Msg::Shutdown { cmd } => self.record_command(&cmd, true),
            Msg::Return { cmd } => {
                self.record_command(&cmd, false);
                self.next_propose = self.next_propose.min(self.now + self.idx_delay());
            }
            Msg::ElectRequest { election, value } => self.on_request(from, election, value),
            Msg::Election { election, value, yes, reason } => self.on_election(from, election, value, yes, reason),
            Msg::Outcome { outcome } => self.learn_outcome(outcome, true),
            Msg::Abort { election, value, yes, of, reason } => {
                if self.know.release(&election) {
                    self.tick_clock();
                    self.save();
                }
                self.stuck.remove(&election);
                self.note_aborted(&election);
                if let Some(v) = &value {
                    let text = self.threshold_text(yes as usize, of as usize, &v.primary);
                    self.last_result = Some(format!("{text} ({reason})"));
                }
            }
            Msg::Query { election } => self.on_query(from, election),
            Msg::QueryReply { election, state, value } => self.on_query_reply(from, election, state, value),
            Msg::Exchange { claims, holds, outcome, shutdown } => {
                let mut changed = false;
                for c in claims.into_iter().filter(|c| c.decided && self.cfg.is_server(&c.server)) {
                    changed |= self.know.add_claim(c);
                }
                for (s, h) in &holds {
                    if self.cfg.is_server(s) && self.know.merge_hold(s, h) {
                        changed = true;
                    }
                }
                if let Some(cmd) = shutdown {
                    if self.know.shutdown.as_ref().is_none_or(|c| (cmd.gen, &cmd.origin) > (c.gen, &c.origin)) {
                        self.know.mode = cmd.mode.clone();
                        self.know.shutdown = Some(cmd);
                        changed = true;
                    }
                }
                if changed {
                    self.tick_clock();
                    self.save();
                }
                if let Some(o) = outcome {
                    self.learn_outcome(o, false);
                }
            }
        }
    }

    fn note_aborted(&mut self, e: &Eid) {
        if !self.known_aborted.contains(e) {
            self.known_aborted.push(e.clone());
            if self.known_aborted.len() > 64 {
                self.known_aborted.remove(0);
            }
        }
    }

    // ----- elections (steps 460-490 / 560-590) ---------------------------------------------

    /// Step 464/564: this controller's own determination, from its key and the server's report.
    /// `Ok` = elect yes.
    pub fn determine(&self, value: &Value) -> Result<(), String> {
        if !self.keyed {
            if self.cfg.brk == Some(Break::VoteWithoutKey) {
                // Deliberately broken (test-only): no key taken as a yes.
                return Ok(());
            }
            return Err("no shutdown key (missing, torn or corrupt)".into());
        }
        let x = value.primary.as_str();
        if !self.cfg.is_server(x) {
            return Err(format!("unknown server {x}"));
        }
        if let Some(h) = self.know.held(x) {
            let mode = h.mode.as_deref().unwrap_or("?");
            return Err(format!("{x} is held by a shutdown command (mode {mode}) until a return command"));
        }
        let v = match self.view.get(x) {
            Some(v) if v.connected && v.operational => v,
            Some(v) if v.connected => return Err(format!("{x} is not operational")),
            _ => return Err(format!("this controller cannot reach {x}")),
        };
        if v.position != value.position {
            return Err(format!("{x} reports position {}, not {}", v.position, value.position));
        }
        if v.copies_pending > 0 {
            return Err(format!("{x} is not current: {} copies pending towards it", v.copies_pending));
        }
        // The key and the server agree: the server has not lost what the key records of it.
        let recorded = self.know.servers.get(x).map_or(0, |r| r.high);
        if value.position < recorded {
            return Err(format!(
                "{x} does not agree with the shutdown key: it reports position {}, the key records {recorded}",
                value.position
            ));
        }
        // The server was current: no other server may hold acknowledged writes it lacks.
        if let Some(c) = self.know.claims.iter().find(|c| c.server != x) {
            return Err(format!(
                "{x} is not current: {} may hold acknowledged writes it lacks ({} {} at position {} in election {}, \
                 and {} has reported no final position since)",
                c.server,
                c.server,
                if c.decided { "went online" } else { "was elected" },
                c.position,
                c.election,
                c.server
            ));
        }
        for (s, f) in &self.know.finals {
            if s != x && value.position < *f {
                let mode = self.know.mode.as_deref().unwrap_or("?");
                return Err(format!(
                    "{x} is not current: it is at position {}, {s} stopped at {f} (shutdown mode {mode}: copies were \
                     pending towards {x})",
                    value.position
                ));
            }
        }
        if value.position < self.know.hw {
            return Err(format!(
                "{x} is not current: it is at position {}, behind position {} seen before",
                value.position, self.know.hw
            ));
        }
        Ok(())
    }

    /// Step 460/560: which server(s) this controller would place online now, or why none.
    pub fn candidate(&self) -> Result<Value, String> {
        let ops: Vec<&String> =
            self.cfg.servers.iter().filter(|s| self.operational(s) && self.know.held(s).is_none()).collect();
        if ops.is_empty() {
            let held: Vec<String> = self
                .cfg
                .servers
                .iter()
                .filter_map(|s| self.know.held(s).map(|h| format!("{s} (mode {})", h.mode.as_deref().unwrap_or("?"))))
                .collect();
            return Err(if held.is_empty() {
                "no server is operational".into()
            } else {
                format!("held by a shutdown command until a return command: {}", held.join(", "))
            });
        }
        let mut order = ops.clone();
        let claimed = |s: &str| self.know.claims.iter().any(|c| c.server == s);
        let pos = |s: &str| self.view.get(s).map_or(0, |v| v.position);
        order.sort_by_key(|s| (!claimed(s), std::cmp::Reverse(pos(s)), self.cfg.servers.iter().position(|x| x == *s)));
        let mut first_err = None;
        for p in order {
            let secondary = ops.iter().find(|s| **s != p).map(|s| (*s).clone());
            let value = Value { primary: p.clone(), secondary, position: pos(p) };
            match self.determine(&value) {
                Ok(()) => return Ok(value),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_default())
    }

    fn maybe_propose(&mut self) {
        let may = self.keyed || (self.loaded && self.cfg.brk == Some(Break::VoteWithoutKey));
        if !may || self.open.is_some() || self.in_force().is_some() || self.now < self.next_propose {
            return;
        }
        let Ok(value) = self.candidate() else { return };
        // Election numbers only grow, also past what others saw of this controller.
        let n = self.know.next_election.max(self.clock + 1);
        let eid = Eid { by: self.cfg.me.clone(), n };
        self.know.next_election = n + 1;
        self.know.note_vote(&eid);
        self.know.open = Some((eid.clone(), value.clone()));
        self.know.add_claim(Claim {
            server: value.primary.clone(),
            position: value.position,
            election: eid.clone(),
            decided: false,
        });
        self.tick_clock();
        self.save();
        self.log("info", format!("election {eid}: place {} online?", value.describe()));
        let mut votes = BTreeMap::new();
        votes.insert(self.cfg.me.clone(), Ok(()));
        self.open = Some(Open { eid: eid.clone(), value: value.clone(), started: self.now, votes: votes.clone() });
        self.tally = Tally { eid: Some(eid.clone()), value: Some(value.clone()), votes };
        self.out.push(Action::Vote { election: eid.to_string(), candidate: value.target(), yes: true });
        self.send("*", Msg::ElectRequest { election: eid.clone(), value: value.clone() });
        if self.cfg.report_by == ReportBy::Broadcast {
            self.send("*", Msg::Election { election: eid, value, yes: true, reason: String::new() });
        }
        self.check_decision();
    }

    fn on_request(&mut self, from: &str, election: Eid, value: Value) {
        if election.by != from {
            return;
        }
        // Another controller is electing: leave it the time to finish before starting one.
        self.next_propose = self.next_propose.max(self.now + self.cfg.timing.election_timeout_ms + self.idx_delay());
        // A repeated request for an election this controller already voted yes in.
        let mine = self.know.claims.iter().find(|c| c.election == election && !c.decided);
        let voted = self.keyed && mine.is_some_and(|c| c.server == value.primary && c.position == value.position);
        let answer = if self.know.refuses(&election) {
            Err(format!("election {election} was already refused here"))
        } else if mine.is_some() && !voted {
            Err(format!("election {election} was for another server or position"))
        } else if voted {
            Ok(())
        } else {
            self.determine(&value)
        };
        let yes = answer.is_ok();
        if yes && !voted {
            // Write-ahead: the vote is in the key before anyone hears it.
            self.know.note_vote(&election);
            self.know.add_claim(Claim {
                server: value.primary.clone(),
                position: value.position,
                election: election.clone(),
                decided: false,
            });
            self.stuck.insert(election.clone(), Stuck { since: self.now, ..Stuck::default() });
            self.tick_clock();
            self.save();
        }
        self.out.push(Action::Vote { election: election.to_string(), candidate: value.target(), yes });
        let reason = answer.clone().err().unwrap_or_default();
        if self.tally.eid.as_ref() != Some(&election) {
            self.tally = Tally { eid: Some(election.clone()), value: Some(value.clone()), ..Tally::default() };
        }
        self.tally.votes.insert(self.cfg.me.clone(), answer);
        let to = match self.cfg.report_by {
            ReportBy::Poll => from.to_owned(),
            ReportBy::Broadcast => "*".to_owned(),
        };
        self.send(&to, Msg::Election { election, value, yes, reason });
    }

    fn on_election(&mut self, from: &str, election: Eid, value: Value, yes: bool, reason: String) {
        let vote = if yes { Ok(()) } else { Err(reason) };
        if self.tally.eid.as_ref() != Some(&election) {
            self.tally = Tally { eid: Some(election.clone()), value: Some(value), ..Tally::default() };
        }
        self.tally.votes.insert(from.to_owned(), vote.clone());
        if let Some(open) = self.open.as_mut().filter(|o| o.eid == election) {
            open.votes.insert(from.to_owned(), vote);
            self.check_decision();
        }
    }

    /// Step 466/566: more than the threshold elected yes → step 480/580 (or 470/570).
    fn check_decision(&mut self) {
        let Some(open) = self.open.clone() else { return };
        let yes = open.yes();
        if !self.cfg.passes(yes) {
            // Enough refusals that even every vote still missing could not make it pass: end
            // it now rather than at the timeout (a refusal may still turn into a yes on a
            // later poll, but not into enough of them).
            let missing = self.cfg.controllers.len().saturating_sub(open.votes.len());
            if !self.cfg.passes(yes + missing) {
                let refused = open.votes.len() - yes;
                let why = format!("{refused} refused: it cannot get more than the threshold");
                self.abort_own(why);
            }
            return;
        }
        let of = self.cfg.controllers.len();
        self.open = None;
        self.know.open = None;
        self.know.push_resolved(Resolved { n: open.eid.n, decided: true, value: open.value.clone() });
        self.know.add_claim(Claim {
            server: open.value.primary.clone(),
            position: open.value.position,
            election: open.eid.clone(),
            decided: true,
        });
        self.tick_clock();
        let outcome = Outcome {
            election: open.eid.clone(),
            value: open.value.clone(),
            gen: self.clock,
            yes: yes as u32,
            of: of as u32,
        };
        self.know.outcome = Some(outcome.clone());
        self.save();
        let text = self.threshold_text(yes, of, &open.value.primary);
        self.last_result = Some(text.clone());
        self.log("info", format!("election {}: {text}; online with {}", open.eid, open.value.describe()));
        self.out.push(Action::GoOnline { target: open.value.target() });
        self.send("*", Msg::Outcome { outcome });
    }

    fn abort_own(&mut self, why: String) {
        let Some(open) = self.open.take() else { return };
        let yes = open.yes();
        let of = self.cfg.controllers.len();
        self.know.open = None;
        self.know.push_resolved(Resolved { n: open.eid.n, decided: false, value: open.value.clone() });
        self.know.release(&open.eid);
        self.tick_clock();
        self.save();
        let text = self.threshold_text(yes, of, &open.value.primary);
        self.last_result = Some(format!("{text} ({why})"));
        self.log("info", format!("election {}: {text}; staying offline ({why})", open.eid));
        self.note_aborted(&open.eid);
        self.send(
            "*",
            Msg::Abort { election: open.eid, value: Some(open.value), yes: yes as u32, of: of as u32, reason: why },
        );
        self.next_propose = self.now + self.cfg.timing.retry_ms + self.idx_delay();
    }

    fn learn_outcome(&mut self, o: Outcome, announce: bool) {
        if !self.cfg.is_server(&o.value.primary) {
            return;
        }
        let mut changed = self.know.add_claim(Claim {
            server: o.value.primary.clone(),
            position: o.value.position,
            election: o.election.clone(),
            decided: true,
        });
        self.stuck.remove(&o.election);
        if self.know.outcome.as_ref().is_none_or(|k| (o.gen, &o.election) > (k.gen, &k.election)) {
            self.know.outcome = Some(o.clone());
            changed = true;
        }
        if changed {
            self.tick_clock();
            self.save();
        }
        if announce && self.in_force().is_some_and(|(p, pos)| p == o.value.primary && pos == o.value.position) {
            self.tally.eid = Some(o.election.clone());
            self.tally.value = Some(o.value.clone());
            self.last_result = Some(self.threshold_text(o.yes as usize, o.of as usize, &o.value.primary));
            self.reassert_online();
        }
    }

    // ----- polls about elections whose end this controller never heard ---------------------

    fn poll_stuck(&mut self) {
        let standing: Vec<Eid> = self
            .know
            .claims
            .iter()
            .filter(|c| !c.decided && self.open.as_ref().is_none_or(|o| o.eid != c.election))
            .map(|c| c.election.clone())
            .collect();
        self.stuck.retain(|e, _| standing.contains(e));
        let stuck_ms = self.cfg.timing.stuck_ms;
        for e in standing {
            let now = self.now;
            let s = self.stuck.entry(e.clone()).or_insert_with(|| Stuck { since: now, ..Stuck::default() });
            if now >= s.since + stuck_ms && s.last_query.is_none_or(|l| now >= l + stuck_ms) {
                s.last_query = Some(now);
                self.send("*", Msg::Query { election: e });
            }
        }
    }

    fn on_query(&mut self, from: &str, election: Eid) {
        let claim = self.know.claims.iter().find(|c| c.election == election).cloned();
        let (state, value) = if election.by == self.cfg.me {
            if self.open.as_ref().is_some_and(|o| o.eid == election) {
                let v = self.open.as_ref().map(|o| o.value.clone());
                self.abort_own(format!("{from} asked about it"));
                (QueryState::Aborted, v)
            } else if let Some(r) = self.know.resolved(election.n) {
                (if r.decided { QueryState::Decided } else { QueryState::Aborted }, Some(r.value.clone()))
            } else {
                (QueryState::Unknown, None)
            }
        } else if let Some(c) = claim {
            let v = Value { primary: c.server.clone(), secondary: None, position: c.position };
            (if c.decided { QueryState::Decided } else { QueryState::VotedYes }, Some(v))
        } else if self.known_aborted.contains(&election) {
            (QueryState::Aborted, None)
        } else if self.know.may_have_voted(&election) {
            // A yes vote here may have been folded into a later passed election: never refuse.
            (QueryState::Unknown, None)
        } else if self.keyed {
            // Promise never to vote yes in it (nor in any earlier election of its proposer).
            let n = self.know.refused.entry(election.by.clone()).or_insert(0);
            if *n < election.n {
                *n = election.n;
                self.tick_clock();
                self.save();
            }
            (QueryState::Refused, None)
        } else {
            (QueryState::Unknown, None)
        };
        self.send(from, Msg::QueryReply { election, state, value });
    }

    fn on_query_reply(&mut self, from: &str, election: Eid, state: QueryState, value: Option<Value>) {
        let Some(claim) = self.know.claims.iter().find(|c| c.election == election && !c.decided).cloned() else {
            return;
        };
        match state {
            QueryState::Decided => {
                let value =
                    value.unwrap_or(Value { primary: claim.server.clone(), secondary: None, position: claim.position });
                let o = Outcome { election, value, gen: self.clock, yes: 0, of: self.cfg.controllers.len() as u32 };
                self.learn_outcome(o, false);
            }
            QueryState::Aborted => {
                self.know.release(&election);
                self.stuck.remove(&election);
                self.note_aborted(&election);
                self.tick_clock();
                self.save();
            }
            QueryState::Refused => {
                let need = self.cfg.refusals_to_kill();
                let s = self.stuck.entry(election.clone()).or_default();
                s.refusers.insert(from.to_owned());
                if s.refusers.len() >= need {
                    // At most `threshold` controllers can ever vote yes in it: it never passes.
                    self.know.release(&election);
                    self.stuck.remove(&election);
                    self.note_aborted(&election);
                    self.tick_clock();
                    self.save();
                    let of = self.cfg.controllers.len() as u32;
                    let reason = format!("{need} controllers refused it");
                    self.send("*", Msg::Abort { election, value: None, yes: 0, of, reason });
                }
            }
            QueryState::VotedYes | QueryState::Unknown => {}
        }
    }

    // ----- status (step 490/590: offline, and why) -----------------------------------------

    fn status(&mut self, force: bool) {
        let (outcome, reason) = match self.in_force() {
            Some((primary, _)) if self.operational(&primary) => {
                let other = self.cfg.other(&primary).to_owned();
                let both = self.operational(&other) && self.know.held(&other).is_none();
                let outcome = if both { format!("online {primary}+{other}") } else { format!("online {primary}") };
                let why = self.last_result.clone().unwrap_or_else(|| "elected".into());
                (outcome, why)
            }
            _ => {
                let why = match self.candidate() {
                    Ok(v) => match &self.last_result {
                        Some(r) => format!("{r}; electing {} again", v.describe()),
                        None => format!("electing {}", v.describe()),
                    },
                    Err(e) => match &self.last_result {
                        Some(r) if self.keyed => format!("{e} (last election: {r})"),
                        _ => e,
                    },
                };
                ("offline".to_owned(), why)
            }
        };
        let held: Vec<&String> = self.cfg.servers.iter().filter(|s| self.know.held(s).is_some()).collect();
        let sig = format!(
            "{outcome}|{reason}|{}|{:?}|{:?}|{held:?}|{:?}",
            self.keyed, self.tally.eid, self.tally.votes, self.know.mode
        );
        if !force && self.last_sig == sig {
            return;
        }
        self.last_sig = sig;
        let elections: serde_json::Map<String, serde_json::Value> = self
            .tally
            .votes
            .iter()
            .map(|(c, v)| {
                let s = match v {
                    Ok(()) => "yes".to_owned(),
                    Err(r) => format!("no: {r}"),
                };
                (c.clone(), serde_json::Value::String(s))
            })
            .collect();
        let value = json!({
            "outcome": outcome,
            "reason": reason,
            "generation": self.clock,
            "threshold": self.cfg.threshold_count(),
            "controllers": self.cfg.controllers.len(),
            "key": if self.keyed { "valid" } else { "missing" },
            "election": self.tally.eid.as_ref().map(|e| e.to_string()),
            "elections": elections,
            "mode": self.know.mode,
            "held": held,
        });
        self.out.push(Action::Report { key: "quorum".into(), value });
    }
}
