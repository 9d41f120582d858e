//! The simulated system: two servers, N controllers, the links between them, and the host
//! that carries out the policy's actions. One step is 100 ms of simulated time.
//!
//! # The host contract (what the simulator does with each action)
//!
//! * `SaveKey { key }`: the controller's durable store now holds `key`, unless the write is
//!   torn: then the store is corrupt (the next start gets `KeyLoaded { key: None }`), the
//!   controller crashes on the spot and the actions after it in that batch are not carried
//!   out (a torn write is a crash during the write).
//! * `SendToController { to, body }` (`to = "*"`: every other controller): one message per
//!   target, delivered as `ControllerMessage { from, body }` after 1..=max_delay steps,
//!   possibly reordered, lost at the configured drop rate, and lost when the link is down at
//!   sending or delivery or the target crashes meanwhile.
//! * `ShutdownServer { server, mode }`, `GoOffline`, `GoOnline`: sent over the controller's
//!   control connection to that server, so carried out only while it is up. Modes: `normal`
//!   stops serving, finishes the copies pending between the pair (towards the other server, and
//!   towards itself up to where the other was), then sends its final report and goes down
//!   (after a deadline it goes down anyway, leaving them pending); `expedite` the same at three
//!   times the copy rate; `immediate` sends the final report at once and goes down, copies left
//!   pending; `force` goes down at once with no final report.
//! * `GoOnline { target }`: `P@p` promotes P to primary if it is not online and its position is
//!   exactly p — the promotion appends an epoch record (position p + 1, acknowledged) — or if
//!   its position is above p, its last epoch record is at or below p + 1 and it has not gone
//!   down gracefully since (P resumes its last promotion after a crash or a forced stop; an
//!   election of P that found it already online names a later position than its epoch
//!   record). `P` promotes P unguarded. `P+S@p` /
//!   `P+S`: the same (no promotion without `@p`), then S, if up and offline, joins P as its
//!   mirror secondary and is resynced from it.
//! * `Report { key: "quorum", value }`: the controller's status; `value.outcome` is compared
//!   with the real state ("online A", "online A+B", "offline") by the late-arrival check.
//! * `Vote`, `Log`, `Refuse`, anything else: recorded in the trace only.
//!
//! Every controller gets a `Tick` every 500 ms.
//!
//! A server that went down gracefully remembers its final report and sends it again, before
//! its first report, on every control connection it opens until it is promoted again.
//!
//! Servers: the primary takes host writes (each acknowledged at once: `acked`) and copies them
//! to its secondary at a bounded rate; a secondary whose primary goes away goes offline. A
//! server sends `ServerReport` on every control connection when it opens, every 2 s and on
//! every change; the connection's events arrive in order (a small random delay), and a
//! server's crash or a cut link ends the connection (`PeerDown`; what was in flight is lost).

use std::collections::VecDeque;

use gateway_sdk::policy::ImportedPolicy;
use gateway_sdk::{Action, Event};
use serde_json::{json, Value};

use crate::rng::Rng;
use crate::source::PolicySource;

pub const STEP_MS: u64 = 100;
const REPORT_EVERY: u64 = 20;
/// Each controller gets a `Tick` every this many steps.
const TICK_EVERY: u64 = 5;
const DRAIN_STEPS: u64 = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Offline,
    Primary,
    Secondary,
}

pub use gateway_sdk::ShutdownMode as Mode;

#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub mode: Mode,
    pub deadline: u64,
    /// Copies pending towards this server when the shutdown began: receive up to here.
    pub target_in: u64,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub up: bool,
    pub role: Role,
    /// Position: the last write (or epoch record) it holds. Histories are prefixes of one
    /// history as long as the invariants hold.
    pub pos: u64,
    /// The other server's position as this one last heard it (for `copies_pending`).
    pub peer_known: u64,
    pub drain: Option<Drain>,
    /// Promoted since its last final report reached a controller: some controller may not
    /// know it stopped.
    pub promoted_since_final: bool,
    /// The position of its last epoch record (written when it was promoted).
    pub epoch: Option<u64>,
    /// It went down gracefully (final report) since that epoch record.
    pub graceful_since_epoch: bool,
    /// The position of its last graceful stop, while it has not been promoted since: the
    /// server remembers its final report and sends it again first on every new connection.
    pub last_final: Option<u64>,
    phase: u64,
}

impl Server {
    fn pending(&self) -> u64 {
        self.peer_known.saturating_sub(self.pos)
    }
}

#[derive(Debug, Clone)]
enum Store {
    Empty,
    Key(Value),
    Corrupt,
}

#[derive(Default)]
struct Conn {
    live: bool,
    last_due: u64,
    queue: VecDeque<(u64, Event)>,
}

pub struct Ctrl {
    pub name: String,
    pub up: bool,
    policy: Option<ImportedPolicy>,
    store: Store,
    started: u64,
    conns: [Conn; 2],
    peers: Vec<bool>,
    /// The last `Report { key: "quorum" }` value.
    pub status: Option<Value>,
    pub torn: bool,
}

struct InFlight {
    due: u64,
    seq: u64,
    from: usize,
    to: usize,
    body: Value,
}

/// What a schedule sets once.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub controllers: usize,
    /// The `threshold` config entry (`None`: the policy's default, more than 50 %).
    pub threshold: Option<Value>,
    /// The threshold as a number of controllers (to know how many may be lost).
    pub threshold_count: usize,
    pub report_by: &'static str,
    pub write_pm: u32,
    pub copy_rate: u64,
    /// Merged into every controller's config (e.g. a test-only `_break`).
    pub extra: Value,
}

/// Fault knobs the schedule turns during a run.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub drop_pm: u32,
    pub torn_pm: u32,
    pub max_delay: u64,
    pub conn_delay: u64,
}

pub struct World<'a> {
    pub cfg: WorldConfig,
    source: &'a PolicySource,
    pub rng: Rng,
    pub step: u64,
    pub servers: [Server; 2],
    /// The highest acknowledged position.
    pub acked: u64,
    pub ctrls: Vec<Ctrl>,
    pub cc: Vec<Vec<bool>>,
    pub cs: Vec<[bool; 2]>,
    pub ss: bool,
    pub faults: Faults,
    msgs: Vec<InFlight>,
    seq: u64,
    pub trace: Option<Vec<String>>,
    pub torn_seen: bool,
    pub violation: Option<String>,
    /// Policy calls made (events delivered).
    pub calls: u64,
}

pub const SERVERS: [&str; 2] = ["A", "B"];

impl<'a> World<'a> {
    pub fn new(cfg: WorldConfig, source: &'a PolicySource, seed: u64, tracing: bool) -> World<'a> {
        let n = cfg.controllers;
        let mut rng = Rng::new(seed);
        let server = |name: &str, phase: u64| Server {
            name: name.to_owned(),
            up: true,
            role: Role::Offline,
            pos: 0,
            peer_known: 0,
            drain: None,
            promoted_since_final: false,
            epoch: None,
            graceful_since_epoch: false,
            last_final: None,
            phase,
        };
        let servers = [server(SERVERS[0], rng.below(REPORT_EVERY)), server(SERVERS[1], rng.below(REPORT_EVERY))];
        let ctrls = (0..n)
            .map(|i| Ctrl {
                name: format!("c{}", i + 1),
                up: false,
                policy: None,
                store: Store::Empty,
                started: 0,
                conns: [Conn::default(), Conn::default()],
                peers: vec![false; n],
                status: None,
                torn: false,
            })
            .collect();
        World {
            cfg,
            source,
            rng,
            step: 0,
            servers,
            acked: 0,
            ctrls,
            cc: vec![vec![true; n]; n],
            cs: vec![[true; 2]; n],
            ss: true,
            faults: Faults { drop_pm: 0, torn_pm: 0, max_delay: 3, conn_delay: 1 },
            msgs: Vec::new(),
            seq: 0,
            trace: tracing.then(Vec::new),
            torn_seen: false,
            violation: None,
            calls: 0,
        }
    }

    pub fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("[{:>4}] {}", self.step, line()));
        }
    }

    pub fn fail(&mut self, why: String) {
        if self.violation.is_none() {
            let why = format!("step {}: {why}", self.step);
            self.note(|| format!("VIOLATION {why}"));
            self.violation = Some(why);
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.ctrls.iter().map(|c| c.name.clone()).collect()
    }

    fn config_for(&self, i: usize) -> Value {
        let mut c = json!({
            "controller": self.ctrls[i].name,
            "controllers": self.names(),
            "servers": SERVERS,
            "report_by": self.cfg.report_by,
        });
        if let Some(t) = &self.cfg.threshold {
            c["threshold"] = t.clone();
        }
        if let Value::Object(extra) = &self.cfg.extra {
            for (k, v) in extra {
                c[k] = v.clone();
            }
        }
        c
    }

    // ----- controllers ---------------------------------------------------------------------

    pub fn start_ctrl(&mut self, i: usize) {
        if self.ctrls[i].up {
            return;
        }
        let config = self.config_for(i);
        let policy = match self.source.open(&config) {
            Ok(p) => p,
            Err(e) => return self.fail(format!("opening the policy for {} failed: {e}", self.ctrls[i].name)),
        };
        let c = &mut self.ctrls[i];
        c.policy = Some(policy);
        c.up = true;
        c.started = self.step;
        c.status = None;
        let key = match &c.store {
            Store::Key(v) => Some(v.clone()),
            Store::Empty | Store::Corrupt => None,
        };
        let name = c.name.clone();
        self.note(|| format!("start {name} (key {})", if key.is_some() { "intact" } else { "none" }));
        self.deliver(i, Event::Started { node: name, role: "controller".into() });
        self.deliver(i, Event::KeyLoaded { key });
    }

    pub fn crash_ctrl(&mut self, i: usize) {
        if !self.ctrls[i].up {
            return;
        }
        let name = self.ctrls[i].name.clone();
        self.note(|| format!("crash {name}"));
        let c = &mut self.ctrls[i];
        c.up = false;
        c.policy = None;
        c.status = None;
        for conn in &mut c.conns {
            conn.live = false;
            conn.queue.clear();
        }
        c.peers.iter_mut().for_each(|p| *p = false);
        self.msgs.retain(|m| m.to != i);
    }

    /// An operator's command to one controller.
    pub fn command(&mut self, i: usize, ev: Event) {
        if self.ctrls[i].up {
            self.deliver(i, ev);
        }
    }

    fn deliver(&mut self, i: usize, ev: Event) {
        if !self.ctrls[i].up || self.violation.is_some() {
            return;
        }
        if self.trace.is_some() {
            let name = self.ctrls[i].name.clone();
            let text = ev.to_json();
            self.note(|| format!("{name} <- {text}"));
        }
        let Some(p) = self.ctrls[i].policy.as_mut() else { return };
        self.calls += 1;
        match p.on_event(&ev) {
            Ok(actions) => self.exec(i, actions),
            Err(e) => {
                let name = self.ctrls[i].name.clone();
                self.fail(format!("the policy at {name} failed: {e}"));
            }
        }
    }

    fn exec(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            if !self.ctrls[i].up || self.violation.is_some() {
                return;
            }
            let name = self.ctrls[i].name.clone();
            match a {
                Action::SaveKey { key } => {
                    if self.faults.torn_pm > 0 && self.rng.chance(self.faults.torn_pm) {
                        self.note(|| format!("{name} SaveKey TORN: store corrupt, {name} crashes"));
                        self.ctrls[i].store = Store::Corrupt;
                        self.ctrls[i].torn = true;
                        self.torn_seen = true;
                        self.crash_ctrl(i);
                        return;
                    }
                    if self.trace.is_some() {
                        let text = key.to_string();
                        self.note(|| format!("{name} SaveKey {text}"));
                    }
                    self.ctrls[i].store = Store::Key(key);
                }
                Action::SendToController { to, body } => self.send(i, &to, body),
                Action::ShutdownServer { server, mode } => match (self.server_index(&server), Mode::parse(&mode)) {
                    (Some(s), Some(m)) if self.ctrls[i].conns[s].live => self.shutdown(s, m),
                    _ => self.note(|| format!("{name} ShutdownServer {server} {mode}: not carried out")),
                },
                Action::GoOnline { target } => self.go_online(i, &target),
                Action::GoOffline { target, reason } => {
                    for part in target.split('@').next().unwrap_or("").split('+') {
                        match self.server_index(part) {
                            Some(s) if self.ctrls[i].conns[s].live => {
                                self.note(|| format!("{name} GoOffline {part} ({reason})"));
                                self.go_offline(s);
                            }
                            _ => self.note(|| format!("{name} GoOffline {part}: not carried out")),
                        }
                    }
                }
                Action::Report { key, value } => {
                    if self.trace.is_some() {
                        let text = value.to_string();
                        self.note(|| format!("{name} Report {key} {text}"));
                    }
                    if key == "quorum" {
                        self.ctrls[i].status = Some(value);
                    }
                }
                other => {
                    if self.trace.is_some() {
                        let text = other.to_json();
                        self.note(|| format!("{name} {text}"));
                    }
                }
            }
        }
    }

    fn send(&mut self, i: usize, to: &str, body: Value) {
        let targets: Vec<usize> = if to == "*" {
            (0..self.ctrls.len()).filter(|j| *j != i).collect()
        } else {
            match self.ctrls.iter().position(|c| c.name == to) {
                Some(j) if j != i => vec![j],
                _ => {
                    let name = self.ctrls[i].name.clone();
                    return self.note(|| format!("{name} SendToController {to}: no such controller"));
                }
            }
        };
        for j in targets {
            if !self.cc[i][j] || self.rng.chance(self.faults.drop_pm) {
                continue;
            }
            let due = self.step + 1 + self.rng.below(self.faults.max_delay.max(1));
            self.seq += 1;
            self.msgs.push(InFlight { due, seq: self.seq, from: i, to: j, body: body.clone() });
        }
    }

    // ----- servers -------------------------------------------------------------------------

    pub fn server_index(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    fn report_event(&self, s: usize) -> Event {
        let srv = &self.servers[s];
        Event::ServerReport {
            server: srv.name.clone(),
            operational: true,
            position: srv.pos,
            copies_pending: srv.pending(),
        }
    }

    fn push_conn(&mut self, i: usize, s: usize, ev: Event) {
        let due = self.step + self.rng.below(self.faults.conn_delay + 1);
        let conn = &mut self.ctrls[i].conns[s];
        let due = due.max(conn.last_due);
        conn.last_due = due;
        conn.queue.push_back((due, ev));
    }

    fn report_all(&mut self, s: usize) {
        if !self.servers[s].up {
            return;
        }
        let ev = self.report_event(s);
        for i in 0..self.ctrls.len() {
            if self.ctrls[i].conns[s].live {
                self.push_conn(i, s, ev.clone());
            }
        }
    }

    /// End every control connection of server `s` (crash, forced stop).
    fn cut_server(&mut self, s: usize, reason: &str) {
        let peer = self.servers[s].name.clone();
        for i in 0..self.ctrls.len() {
            let conn = &mut self.ctrls[i].conns[s];
            if conn.live {
                conn.live = false;
                conn.queue.clear();
                conn.last_due = self.step;
                conn.queue.push_back((self.step, Event::PeerDown { peer: peer.clone(), reason: reason.into() }));
            }
        }
    }

    fn take_down(&mut self, s: usize) {
        let o = 1 - s;
        let srv = &mut self.servers[s];
        srv.up = false;
        srv.role = Role::Offline;
        srv.drain = None;
        if self.servers[o].role == Role::Secondary {
            self.servers[o].role = Role::Offline;
            self.report_all(o);
        }
    }

    pub fn crash_server(&mut self, s: usize) {
        if !self.servers[s].up {
            return;
        }
        let name = self.servers[s].name.clone();
        self.note(|| format!("crash server {name}"));
        self.cut_server(s, "connection lost");
        self.take_down(s);
    }

    pub fn restart_server(&mut self, s: usize) {
        if self.servers[s].up {
            return;
        }
        let srv = &mut self.servers[s];
        srv.up = true;
        srv.role = Role::Offline;
        srv.drain = None;
        let (name, pos) = (srv.name.clone(), srv.pos);
        self.note(|| format!("restart server {name} (position {pos})"));
    }

    fn final_down(&mut self, s: usize) {
        let srv = &self.servers[s];
        let ev = Event::ServerReport {
            server: srv.name.clone(),
            operational: false,
            position: srv.pos,
            copies_pending: srv.pending(),
        };
        let (name, pos, pending) = (srv.name.clone(), srv.pos, srv.pending());
        self.note(|| format!("server {name} goes down gracefully at position {pos} ({pending} pending towards it)"));
        let mut sent = false;
        for i in 0..self.ctrls.len() {
            if self.ctrls[i].conns[s].live {
                self.push_conn(i, s, ev.clone());
                let down = Event::PeerDown { peer: name.clone(), reason: "server shut down".into() };
                self.push_conn(i, s, down);
                self.ctrls[i].conns[s].live = false;
                sent = true;
            }
        }
        if sent {
            self.servers[s].promoted_since_final = false;
        }
        self.servers[s].graceful_since_epoch = true;
        self.servers[s].last_final = Some(self.servers[s].pos);
        self.take_down(s);
    }

    fn shutdown(&mut self, s: usize, mode: Mode) {
        let o = 1 - s;
        if !self.servers[s].up {
            return;
        }
        if let Some(d) = self.servers[s].drain {
            if d.mode >= mode {
                return;
            }
        }
        let name = self.servers[s].name.clone();
        self.note(|| format!("server {name}: shutdown, mode {}", mode.name()));
        self.go_offline(s);
        match mode {
            Mode::Force => {
                self.cut_server(s, "forced shutdown");
                self.take_down(s);
            }
            Mode::Immediate => self.final_down(s),
            Mode::Normal | Mode::Expedite => {
                let target_in =
                    if self.servers[o].up { self.servers[o].pos.max(self.servers[s].pos) } else { self.servers[s].pos };
                let deadline = self.servers[s].drain.map_or(self.step + DRAIN_STEPS, |d| d.deadline);
                self.servers[s].drain = Some(Drain { mode, deadline, target_in });
                self.report_all(s);
            }
        }
    }

    fn go_offline(&mut self, s: usize) {
        let o = 1 - s;
        let was = self.servers[s].role;
        self.servers[s].role = Role::Offline;
        if was == Role::Primary && self.servers[o].role == Role::Secondary {
            self.servers[o].role = Role::Offline;
            self.report_all(o);
        }
        if was != Role::Offline {
            self.report_all(s);
        }
    }

    fn go_online(&mut self, i: usize, target: &str) {
        let name = self.ctrls[i].name.clone();
        let (names, guard) = match target.split_once('@') {
            Some((n, g)) => match g.parse::<u64>() {
                Ok(g) => (n, Some(g)),
                Err(_) => return self.note(|| format!("{name} GoOnline {target}: bad target")),
            },
            None => (target, None),
        };
        let (p, sec) = match names.split_once('+') {
            Some((p, s)) => (p, Some(s)),
            None => (names, None),
        };
        let Some(p) = self.server_index(p) else {
            return self.note(|| format!("{name} GoOnline {target}: bad target"));
        };
        let sec = match sec.map(|s| self.server_index(s)) {
            Some(None) => return self.note(|| format!("{name} GoOnline {target}: bad target")),
            Some(Some(s)) if s == p => return self.note(|| format!("{name} GoOnline {target}: bad target")),
            Some(Some(s)) => Some(s),
            None => None,
        };
        if !self.ctrls[i].conns[p].live {
            return self.note(|| format!("{name} GoOnline {target}: not connected to the primary"));
        }
        if guard.is_some() || sec.is_none() {
            self.promote(&name, p, guard);
        }
        if let Some(s) = sec {
            self.join(&name, p, s);
        }
    }

    fn promote(&mut self, by: &str, s: usize, guard: Option<u64>) {
        let o = 1 - s;
        let srv = &self.servers[s];
        let name = srv.name.clone();
        if !srv.up || srv.drain.is_some() || srv.role == Role::Primary {
            return;
        }
        // A first promotion at exactly `g`, or its last promotion resumed after a crash or a
        // forced stop: its epoch record is at or below g + 1 (an election of the same server
        // that found it already online names a later position) and it has not stopped
        // gracefully since.
        let resume =
            guard.is_some_and(|g| srv.pos > g && srv.epoch.is_some_and(|e| e <= g + 1) && !srv.graceful_since_epoch);
        if let Some(g) = guard {
            if srv.pos != g && !resume {
                let pos = srv.pos;
                return self.note(|| format!("{by} GoOnline {name}@{g}: refused, {name} is at {pos}"));
            }
        }
        if srv.pos < self.acked {
            let (pos, acked) = (srv.pos, self.acked);
            return self.fail(format!(
                "{by} placed {name} online as primary at position {pos}, but writes up to {acked} were acknowledged: \
                 it lacks acknowledged writes the other server had"
            ));
        }
        if self.servers[o].up && self.servers[o].role == Role::Primary {
            let other = self.servers[o].name.clone();
            return self.fail(format!(
                "{by} placed {name} online as primary while {other} is online as primary: two independent primaries"
            ));
        }
        let srv = &mut self.servers[s];
        srv.role = Role::Primary;
        if !resume {
            srv.pos += 1;
            srv.epoch = Some(srv.pos);
            srv.graceful_since_epoch = false;
        }
        srv.promoted_since_final = true;
        srv.last_final = None;
        self.acked = self.acked.max(srv.pos);
        let pos = srv.pos;
        let how = if resume { "resumed" } else { "epoch record" };
        self.note(|| format!("{by}: {name} ONLINE as primary ({how} at {pos})"));
        if self.servers[o].role == Role::Secondary {
            self.servers[o].role = Role::Offline;
            self.report_all(o);
        }
        self.report_all(s);
    }

    fn join(&mut self, by: &str, p: usize, s: usize) {
        let (pr, se) = (&self.servers[p], &self.servers[s]);
        if !(pr.up && pr.role == Role::Primary && se.up && se.role == Role::Offline && se.drain.is_none()) {
            return;
        }
        let (pn, sn) = (pr.name.clone(), se.name.clone());
        self.servers[s].role = Role::Secondary;
        self.note(|| format!("{by}: {sn} joins {pn} as secondary (resync)"));
        self.report_all(s);
    }

    // ----- one step ------------------------------------------------------------------------

    pub fn step(&mut self) {
        if self.violation.is_some() {
            return;
        }
        self.step += 1;
        self.servers_run();
        self.update_links();
        for s in 0..2 {
            if self.servers[s].up && (self.step + self.servers[s].phase).is_multiple_of(REPORT_EVERY) {
                self.report_all(s);
            }
        }
        self.deliver_conns();
        self.deliver_msgs();
        for i in 0..self.ctrls.len() {
            let age = self.step - self.ctrls[i].started;
            if self.ctrls[i].up && (age + i as u64).is_multiple_of(TICK_EVERY) {
                self.deliver(i, Event::Tick { now_ms: age * STEP_MS });
            }
        }
        self.check();
    }

    fn servers_run(&mut self) {
        let rate = self.cfg.copy_rate;
        // Host writes at the primary, acknowledged at once.
        for s in 0..2 {
            if self.servers[s].up && self.servers[s].role == Role::Primary && self.rng.chance(self.cfg.write_pm) {
                self.servers[s].pos += 1;
                self.acked = self.acked.max(self.servers[s].pos);
            }
        }
        for s in 0..2 {
            let o = 1 - s;
            // Mirroring towards the secondary.
            if self.servers[s].role == Role::Secondary {
                if !(self.servers[o].up && self.servers[o].role == Role::Primary) {
                    self.servers[s].role = Role::Offline;
                    self.report_all(s);
                } else if self.ss {
                    let gap = self.servers[o].pos.saturating_sub(self.servers[s].pos);
                    self.servers[s].pos += gap.min(rate);
                }
            }
        }
        for s in 0..2 {
            let Some(d) = self.servers[s].drain else { continue };
            let o = 1 - s;
            let rate = if d.mode == Mode::Expedite { rate * 3 } else { rate };
            if self.ss && self.servers[o].up {
                if self.servers[s].pos > self.servers[o].pos {
                    let gap = self.servers[s].pos - self.servers[o].pos;
                    self.servers[o].pos += gap.min(rate);
                } else if self.servers[s].pos < d.target_in && self.servers[o].pos > self.servers[s].pos {
                    let upto = d.target_in.min(self.servers[o].pos);
                    self.servers[s].pos += upto.saturating_sub(self.servers[s].pos).min(rate);
                }
            }
            let out_done = self.servers[s].pos <= self.servers[o].pos;
            let in_done = self.servers[s].pos >= d.target_in || !self.servers[o].up;
            if (out_done && in_done) || self.step >= d.deadline {
                self.final_down(s);
            }
        }
        if self.ss && self.servers[0].up && self.servers[1].up {
            self.servers[0].peer_known = self.servers[1].pos;
            self.servers[1].peer_known = self.servers[0].pos;
        }
    }

    fn update_links(&mut self) {
        let n = self.ctrls.len();
        for i in 0..n {
            for s in 0..2 {
                let should = self.ctrls[i].up && self.servers[s].up && self.cs[i][s];
                let live = self.ctrls[i].conns[s].live;
                if should && !live {
                    self.ctrls[i].conns[s].live = true;
                    let peer = self.servers[s].name.clone();
                    self.push_conn(i, s, Event::PeerUp { peer: peer.clone() });
                    if let Some(f) = self.servers[s].last_final {
                        let final_report =
                            Event::ServerReport { server: peer, operational: false, position: f, copies_pending: 0 };
                        self.push_conn(i, s, final_report);
                        self.servers[s].promoted_since_final = false;
                    }
                    let r = self.report_event(s);
                    self.push_conn(i, s, r);
                } else if !should && live {
                    let peer = self.servers[s].name.clone();
                    let conn = &mut self.ctrls[i].conns[s];
                    conn.live = false;
                    conn.queue.clear();
                    conn.last_due = self.step;
                    conn.queue.push_back((self.step, Event::PeerDown { peer, reason: "link down".into() }));
                }
            }
        }
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let should = self.ctrls[i].up && self.ctrls[j].up && self.cc[i][j];
                if should != self.ctrls[i].peers[j] {
                    self.ctrls[i].peers[j] = should;
                    let controller = self.ctrls[j].name.clone();
                    if should {
                        self.deliver(i, Event::ControllerUp { controller });
                    } else {
                        self.deliver(i, Event::ControllerDown { controller });
                    }
                }
            }
        }
    }

    fn deliver_conns(&mut self) {
        for i in 0..self.ctrls.len() {
            for s in 0..2 {
                loop {
                    let c = &mut self.ctrls[i];
                    if !c.up {
                        break;
                    }
                    match c.conns[s].queue.front() {
                        Some((due, _)) if *due <= self.step => {}
                        _ => break,
                    }
                    let Some((_, ev)) = c.conns[s].queue.pop_front() else { break };
                    self.deliver(i, ev);
                }
            }
        }
    }

    fn deliver_msgs(&mut self) {
        let step = self.step;
        let mut due: Vec<InFlight> = Vec::new();
        let mut i = 0;
        while i < self.msgs.len() {
            if self.msgs[i].due <= step {
                due.push(self.msgs.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|m| (m.due, m.seq));
        for m in due {
            if !self.ctrls[m.to].up || !self.cc[m.from][m.to] {
                continue;
            }
            let from = self.ctrls[m.from].name.clone();
            self.deliver(m.to, Event::ControllerMessage { from, body: m.body });
        }
    }

    // ----- invariants ----------------------------------------------------------------------

    fn check(&mut self) {
        let primaries: Vec<usize> =
            (0..2).filter(|s| self.servers[*s].up && self.servers[*s].role == Role::Primary).collect();
        if primaries.len() > 1 {
            return self.fail("two servers online as independent primaries".into());
        }
        if let Some(&p) = primaries.first() {
            if self.servers[p].pos < self.acked {
                let (name, pos, acked) = (self.servers[p].name.clone(), self.servers[p].pos, self.acked);
                self.fail(format!("{name} is online at position {pos}, but writes up to {acked} were acknowledged"));
            }
        }
    }

    /// The real state, as a status would say it.
    pub fn outcome(&self) -> String {
        for p in 0..2 {
            let (pr, se) = (&self.servers[p], &self.servers[1 - p]);
            if pr.up && pr.role == Role::Primary {
                return if se.up && se.role == Role::Secondary {
                    format!("online {}+{}", pr.name, se.name)
                } else {
                    format!("online {}", pr.name)
                };
            }
        }
        "offline".into()
    }

    pub fn primary(&self) -> Option<usize> {
        (0..2).find(|s| self.servers[*s].up && self.servers[*s].role == Role::Primary)
    }

    pub fn online_both(&self) -> bool {
        self.outcome().contains('+')
    }

    /// Every running controller's last status says what is really so.
    pub fn statuses_agree(&self) -> bool {
        let real = self.outcome();
        self.ctrls
            .iter()
            .filter(|c| c.up)
            .all(|c| c.status.as_ref().and_then(|v| v.get("outcome")).and_then(|o| o.as_str()) == Some(real.as_str()))
    }

    pub fn status_summary(&self) -> String {
        self.ctrls
            .iter()
            .filter(|c| c.up)
            .map(|c| {
                let s = c.status.as_ref();
                let o = s.and_then(|v| v.get("outcome")).and_then(|o| o.as_str()).unwrap_or("-");
                let r = s.and_then(|v| v.get("reason")).and_then(|o| o.as_str()).unwrap_or("-");
                format!("{}: {o} ({r})", c.name)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn state_line(&self) -> String {
        let srv = |s: &Server| {
            format!(
                "{}{} {:?} pos {}{}",
                s.name,
                if s.up { "" } else { " DOWN" },
                s.role,
                s.pos,
                if s.drain.is_some() { " draining" } else { "" }
            )
        };
        let up: Vec<&str> = self.ctrls.iter().filter(|c| c.up).map(|c| c.name.as_str()).collect();
        format!(
            "{}; {}; acked {}; controllers up: {}",
            srv(&self.servers[0]),
            srv(&self.servers[1]),
            self.acked,
            up.join(",")
        )
    }

    pub fn heal_links(&mut self) {
        let n = self.ctrls.len();
        self.cc = vec![vec![true; n]; n];
        self.cs = vec![[true; 2]; n];
        self.ss = true;
        self.note(|| "links healed".into());
    }

    pub fn draining(&self) -> bool {
        self.servers.iter().any(|s| s.drain.is_some())
    }

    /// Controllers whose store never tore.
    pub fn intact(&self) -> usize {
        self.ctrls.iter().filter(|c| !c.torn).count()
    }
}
