//! The machine: per volume set, the state, the production site, whether the peer is
//! reachable, whether the local copy is a consistent image, a pending hand-over, and the
//! last error. `handle` is the whole interface; the engine events are in `engine.rs`, the
//! admin commands in `commands.rs`.

use gateway_sdk::{Action, Event};

use crate::config::{Config, SetConfig};
use crate::state::State;

pub(crate) fn log(level: &str, message: String) -> Action {
    Action::Log { level: level.into(), message }
}

fn set_state(volume_set: &str, state: State) -> Action {
    Action::SetVolumeSetState { volume_set: volume_set.into(), state: state.name().into() }
}

pub(crate) fn refuse(reason: String) -> Action {
    Action::Refuse { reason }
}

/// One of the two sites of a pair, relative to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Local,
    Peer,
}

/// A mechanism the engine carries out (`Replicate { op }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Freeze,
    Run,
    Suspend,
    Resync,
    Swap,
    Failover,
    Demote,
}

impl Op {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Op::Freeze => "freeze",
            Op::Run => "run",
            Op::Suspend => "suspend",
            Op::Resync => "resync",
            Op::Swap => "swap",
            Op::Failover => "failover",
            Op::Demote => "demote",
        }
    }
}

/// One step of a transition, applied in order; each emits its actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Ask the engine for a mechanism.
    Op(Op),
    /// Enter a state, for a reason (no-op if already there).
    Become(State, String),
    /// Move production, for a reason (no-op if already there).
    Production(Side, String),
    /// Hand production to the peer when the running resync completes.
    PendingSwap,
}

/// A volume set as this site sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeSet {
    pub(crate) cfg: SetConfig,
    pub(crate) local: String,
    pub(crate) state: State,
    pub(crate) production: Side,
    pub(crate) peer_up: bool,
    /// The local copy is a consistent image (always at production; at the recovery site
    /// once a resync completed, until the next resync starts).
    pub(crate) consistent: bool,
    /// A hand-over to the peer waits for the running resync (only while `Resyncing` at
    /// production).
    pub(crate) pending_swap: bool,
    pub(crate) last_error: Option<String>,
}

impl VolumeSet {
    /// The link is not up yet at start: production tracks changes (`OutOfSync`, or still
    /// `RecoverySite-ForceSwap` after a forced takeover); the recovery site is `Simplex`
    /// unless its recorded state says its copy was complete (then `OutOfSync`).
    fn new(cfg: SetConfig, local: &str) -> VolumeSet {
        use State::*;
        let production = if cfg.production == local { Side::Local } else { Side::Peer };
        let (state, consistent) = match (production, cfg.recorded) {
            (Side::Local, Some(RecoverySiteForceSwap)) => (RecoverySiteForceSwap, true),
            (Side::Local, _) => (OutOfSync, true),
            (Side::Peer, Some(InSync | OutOfSync | SplitSite | RecoverySiteForceSwap)) => (OutOfSync, true),
            (Side::Peer, _) => (Simplex, false),
        };
        VolumeSet {
            cfg,
            local: local.to_owned(),
            state,
            production,
            peer_up: false,
            consistent,
            pending_swap: false,
            last_error: None,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(crate) fn peer(&self) -> &str {
        &self.cfg.peer
    }

    pub(crate) fn is_production(&self) -> bool {
        self.production == Side::Local
    }

    pub(crate) fn site(&self, side: Side) -> &str {
        match side {
            Side::Local => &self.local,
            Side::Peer => &self.cfg.peer,
        }
    }

    pub(crate) fn production_site(&self) -> &str {
        self.site(self.production)
    }

    pub(crate) fn peer_word(&self) -> &'static str {
        if self.peer_up {
            "up"
        } else {
            "down"
        }
    }

    pub(crate) fn apply(&mut self, steps: Vec<Step>, out: &mut Vec<Action>) {
        for step in steps {
            match step {
                Step::Op(op) => out.push(Action::Replicate { volume_set: self.cfg.name.clone(), op: op.name().into() }),
                Step::Become(state, why) => self.enter(state, &why, out),
                Step::Production(side, why) => self.move_production(side, &why, out),
                Step::PendingSwap => self.pending_swap = self.is_production() && self.state == State::Resyncing,
            }
        }
    }

    fn enter(&mut self, new: State, why: &str, out: &mut Vec<Action>) {
        let old = self.state;
        if old == new || new.is_reserved() {
            return;
        }
        self.state = new;
        if self.is_production() || new == State::InSync {
            self.consistent = true;
        } else if matches!(new, State::Resyncing | State::Simplex) {
            self.consistent = false;
        }
        if new != State::Resyncing {
            self.pending_swap = false;
        }
        let level = match (old, new) {
            (_, State::SplitSite | State::RecoverySiteForceSwap) | (State::InSync, _) => "warn",
            _ => "info",
        };
        out.push(set_state(&self.cfg.name, new));
        out.push(log(level, format!("{} at {}: {old} → {new} ({why})", self.cfg.name, self.local)));
    }

    fn move_production(&mut self, side: Side, why: &str, out: &mut Vec<Action>) {
        if self.production == side {
            return;
        }
        let from = self.production_site().to_owned();
        self.production = side;
        self.pending_swap = false;
        if side == Side::Local {
            self.consistent = true;
        }
        let msg = format!("{} at {}: production {from} → {} ({why})", self.cfg.name, self.local, self.site(side));
        out.push(log("warn", msg));
    }

    fn view(&self) -> SetView {
        SetView {
            name: self.cfg.name.clone(),
            home: self.cfg.home.clone(),
            state: self.state,
            local_site: self.local.clone(),
            peer: self.cfg.peer.clone(),
            production: self.production_site().to_owned(),
            peer_up: self.peer_up,
            consistent: self.consistent,
            pending_swap: self.pending_swap,
            last_error: self.last_error.clone(),
        }
    }

    pub(crate) fn status_line(&self) -> String {
        format!(
            "{} at {}: {}, production {}, peer {} {}, {}{}, last error: {}",
            self.cfg.name,
            self.local,
            self.state,
            self.production_site(),
            self.cfg.peer,
            self.peer_word(),
            if self.consistent { "local copy consistent" } else { "local copy not consistent" },
            if self.pending_swap { ", hand-over to the peer pending" } else { "" },
            self.last_error.as_deref().unwrap_or("none"),
        )
    }
}

/// What the machine holds for one volume set, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetView {
    pub name: String,
    pub state: State,
    pub local_site: String,
    pub peer: String,
    /// Where `failback` returns production to.
    pub home: String,
    /// Always `local_site` or `peer`.
    pub production: String,
    pub peer_up: bool,
    pub consistent: bool,
    pub pending_swap: bool,
    pub last_error: Option<String>,
}

/// The replication state machine for every volume set of one site. Pure: no I/O, no clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    local: String,
    pub(crate) sets: Vec<VolumeSet>,
}

impl Machine {
    /// Each set starts `OutOfSync` where it is produced (its initial copy is pending) and
    /// `Simplex` at the recovery site (nothing received yet), with the peer unreachable.
    pub fn new(config: Config) -> Machine {
        let local = config.local_site;
        let sets = config.sets.into_iter().map(|c| VolumeSet::new(c, &local)).collect();
        Machine { local, sets }
    }

    pub fn local_site(&self) -> &str {
        &self.local
    }

    pub fn set_names(&self) -> impl Iterator<Item = &str> {
        self.sets.iter().map(|s| s.name())
    }

    pub fn view(&self, volume_set: &str) -> Option<SetView> {
        self.sets.iter().find(|s| s.name() == volume_set).map(VolumeSet::view)
    }

    pub fn state(&self, volume_set: &str) -> Option<State> {
        self.view(volume_set).map(|v| v.state)
    }

    pub(crate) fn index(&self, volume_set: &str) -> Option<usize> {
        self.sets.iter().position(|s| s.name() == volume_set)
    }

    /// Feed one event; the answer is the actions for the host, in order.
    pub fn handle(&mut self, event: &Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Started { .. } => self.started(&mut out),
            Event::PeerUp { peer } => {
                for s in self.sets.iter_mut().filter(|s| s.cfg.peer == *peer && !s.peer_up) {
                    s.peer_up = true;
                    out.push(log("info", format!("{} at {}: peer {peer} reachable", s.name(), s.local)));
                }
            }
            Event::PeerDown { peer, reason } => {
                for s in self.sets.iter_mut().filter(|s| s.cfg.peer == *peer) {
                    let steps = crate::engine::link_lost(s, &format!("peer {peer} down: {reason}"));
                    s.apply(steps, &mut out);
                }
            }
            Event::ReplicationError { volume_set, code, message } => {
                if let Some(i) = self.index(volume_set) {
                    let s = &mut self.sets[i];
                    s.last_error = Some(format!("replication error {code}: {message}"));
                    out.push(log("warn", format!("{volume_set} at {}: replication error {code}: {message}", s.local)));
                }
            }
            Event::Admin { command, args } => return self.command(command, args),
            Event::VolumeSet { volume_set, change, local_site, production: _, detail } => {
                self.engine_event(volume_set, change, local_site, detail, &mut out)
            }
            // A `volume_set` report missing a field the SDK's variant requires still counts.
            Event::Unknown(v) if v["type"] == "volume_set" => {
                let text = |k: &str| v[k].as_str().unwrap_or_default();
                self.engine_event(text("volume_set"), text("change"), text("local_site"), text("detail"), &mut out)
            }
            _ => {}
        }
        out
    }

    /// Announce every set's state (the host records it) and start what the state allows.
    fn started(&mut self, out: &mut Vec<Action>) {
        for s in &mut self.sets {
            out.push(set_state(&s.cfg.name, s.state));
            let why = match (s.is_production(), s.state) {
                (true, State::OutOfSync) => "; changes tracked until the peer has a full copy",
                (false, State::Simplex) => "; waiting for the production site's copy",
                _ => "",
            };
            out.push(log("info", format!("started: {}{why}", s.status_line())));
            if s.is_production() && s.state == State::OutOfSync && s.peer_up && s.cfg.auto_resync {
                s.apply(crate::commands::resync_steps(s, "peer up at start; auto_resync"), out);
            }
        }
    }
}
