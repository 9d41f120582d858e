//! Admin commands and the cluster manager's entry points (`Event::Admin`).
//!
//! Each command is planned from the set's current view without changing it: the plan is
//! either refused (one `Refuse` action naming the command, the set and its state; nothing
//! changes) or applied (a `Log` with the plan first, then the mechanisms and the state
//! changes in order). Commands this policy does not know are left to other policies (no
//! actions).

use std::fmt;

use gateway_sdk::Action;
use serde::Deserialize;
use serde_json::Value;

use crate::machine::{log, refuse, Machine, Op, Side, Step, VolumeSet};
use crate::state::State;

/// The commands, by the names the admin interface uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Freeze,
    Run,
    Suspend,
    Resync,
    Swap,
    Failover,
    Failback,
    Recover,
    /// Entry point `clgetERCMFdisks`: make the set servable at a site.
    Online,
    /// Entry point `clreleaseERCMFdisks`: release the set, handing it to the peer if moving.
    Offline,
    /// Entry point `cljoinERCMFcleanup`: the old site rejoined after a force swap.
    JoinCleanup,
    StatusQuery,
}

impl Command {
    pub const ALL: [Command; 12] = [
        Command::Freeze,
        Command::Run,
        Command::Suspend,
        Command::Resync,
        Command::Swap,
        Command::Failover,
        Command::Failback,
        Command::Recover,
        Command::Online,
        Command::Offline,
        Command::JoinCleanup,
        Command::StatusQuery,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Command::Freeze => "freeze",
            Command::Run => "run",
            Command::Suspend => "suspend",
            Command::Resync => "resync",
            Command::Swap => "swap",
            Command::Failover => "failover",
            Command::Failback => "failback",
            Command::Recover => "recover",
            Command::Online => "online",
            Command::Offline => "offline",
            Command::JoinCleanup => "join-cleanup",
            Command::StatusQuery => "status-query",
        }
    }

    /// By name; `_` is accepted for `-`.
    pub fn parse(name: &str) -> Option<Command> {
        let name = name.replace('_', "-");
        Command::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The arguments commands read; other keys are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Args {
    volume_set: Option<String>,
    /// `failover`, `recover`, `online`: take over even with the production site reachable
    /// or with an inconsistent local copy.
    force: bool,
    /// `online`: the site that wants to serve (default: this one).
    site: Option<String>,
    /// `offline`: the set is moving to the other site.
    moving_across_site: bool,
}

struct Plan {
    what: String,
    steps: Vec<Step>,
}

type Planned = Result<Plan, String>;

const SWAP: &str = "swap (production moves when the engine confirms)";

fn plan(what: impl Into<String>, steps: Vec<Step>) -> Planned {
    Ok(Plan { what: what.into(), steps })
}

fn nothing(why: impl fmt::Display) -> Planned {
    plan(format!("nothing to do: {why}"), vec![])
}

impl Machine {
    pub(crate) fn command(&mut self, command: &str, args: &Value) -> Vec<Action> {
        let Some(cmd) = Command::parse(command) else { return vec![] };
        let args: Args = match args {
            Value::Null => Args::default(),
            v => match Args::deserialize(v) {
                Ok(a) => a,
                Err(e) => return vec![refuse(format!("cannot {cmd}: bad arguments: {e}"))],
            },
        };
        if cmd == Command::StatusQuery && args.volume_set.is_none() {
            return self.sets.iter().map(|s| log("info", s.status_line())).collect();
        }
        let Some(name) = args.volume_set.as_deref() else {
            return vec![refuse(format!("cannot {cmd}: the arguments need \"volume_set\""))];
        };
        let Some(i) = self.index(name) else {
            let known: Vec<&str> = self.set_names().collect();
            let why = format!("cannot {cmd} {name}: no such volume set (this policy manages {})", known.join(", "));
            return vec![refuse(why)];
        };
        let s = &mut self.sets[i];
        if cmd == Command::StatusQuery {
            return vec![log("info", s.status_line())];
        }
        match plan_command(cmd, s, &args) {
            Err(reason) => vec![refuse(reason)],
            Ok(p) => {
                let summary = format!(
                    "{cmd} {} at {}: {}, production {}, peer {} {} → {}",
                    s.name(),
                    s.local,
                    s.state,
                    s.production_site(),
                    s.peer(),
                    s.peer_word(),
                    p.what
                );
                let mut out = vec![log("info", summary)];
                s.apply(p.steps, &mut out);
                out
            }
        }
    }
}

fn plan_command(cmd: Command, s: &VolumeSet, a: &Args) -> Planned {
    match cmd {
        Command::Freeze => {
            at_production(cmd, s)?;
            match s.state {
                State::InSync | State::OutOfSync | State::Resyncing => plan(
                    "freeze",
                    vec![Step::Op(Op::Freeze), Step::Become(State::SplitSite, "freeze: host I/O held".into())],
                ),
                st => {
                    Err(format!("cannot freeze {}: it is {st} (freeze needs InSync, OutOfSync or Resyncing)", s.name()))
                }
            }
        }
        Command::Run => {
            at_production(cmd, s)?;
            match s.state {
                State::SplitSite => plan("run", run_steps()),
                st => Err(format!("cannot run {}: it is {st} (run releases a SplitSite set)", s.name())),
            }
        }
        Command::Suspend => {
            at_production(cmd, s)?;
            match s.state {
                State::InSync | State::Resyncing => plan(
                    "suspend",
                    vec![Step::Op(Op::Suspend), Step::Become(State::OutOfSync, "suspend: changes tracked".into())],
                ),
                st => Err(format!("cannot suspend {}: it is {st} (suspend needs InSync or Resyncing)", s.name())),
            }
        }
        Command::Resync => {
            at_production(cmd, s)?;
            match s.state {
                State::OutOfSync | State::SplitSite | State::RecoverySiteForceSwap if s.peer_up => {
                    plan(ops_text(s), resync_steps(s, "resync"))
                }
                State::OutOfSync | State::SplitSite | State::RecoverySiteForceSwap => {
                    Err(format!("cannot resync {}: it is {} and peer {} is unreachable", s.name(), s.state, s.peer()))
                }
                st => Err(format!(
                    "cannot resync {}: it is {st} (resync needs OutOfSync, SplitSite or RecoverySite-ForceSwap)",
                    s.name()
                )),
            }
        }
        Command::Swap => match (s.state, s.peer_up) {
            (State::InSync, true) => plan(SWAP, swap_steps()),
            (State::InSync, false) => Err(format!(
                "cannot swap {}: it is InSync but peer {} is unreachable; use failover at the surviving site",
                s.name(),
                s.peer()
            )),
            (st, _) => Err(format!("cannot swap {}: it is {st} (swap needs InSync); run resync first", s.name())),
        },
        Command::Failover => {
            if s.is_production() {
                return Err(format!(
                    "cannot failover {} at {}: it is {} and {} is already production",
                    s.name(),
                    s.local,
                    s.state,
                    s.local
                ));
            }
            failover(cmd, s, a.force)
        }
        Command::Failback => {
            at_production(cmd, s)?;
            if s.cfg.home == s.local {
                return Err(format!(
                    "cannot failback {}: it is {} at its home production site {}; nothing to fail back",
                    s.name(),
                    s.state,
                    s.local
                ));
            }
            hand_over(cmd, s)
        }
        Command::Recover => recover(s, a.force),
        Command::Online => online(s, a),
        Command::Offline if !a.moving_across_site => nothing("not moving across sites"),
        Command::Offline => hand_over(cmd, s),
        Command::JoinCleanup => join_cleanup(s),
        Command::StatusQuery => nothing("status only"),
    }
}

fn at_production(cmd: Command, s: &VolumeSet) -> Result<(), String> {
    if s.is_production() {
        return Ok(());
    }
    Err(format!(
        "cannot {cmd} {} at {}: it is {} with production at {}; {cmd} runs at the production site",
        s.name(),
        s.local,
        s.state,
        s.production_site()
    ))
}

fn run_steps() -> Vec<Step> {
    vec![Step::Op(Op::Run), Step::Become(State::OutOfSync, "run: host I/O released, changes tracked".into())]
}

/// Copy the changed regions to the peer (releasing a SplitSite set first).
pub(crate) fn resync_steps(s: &VolumeSet, why: &str) -> Vec<Step> {
    let mut steps = if s.state == State::SplitSite { run_steps() } else { vec![] };
    let why = format!("{why}: copying changed regions to {}", s.peer());
    steps.extend([Step::Op(Op::Resync), Step::Become(State::Resyncing, why)]);
    steps
}

fn ops_text(s: &VolumeSet) -> &'static str {
    if s.state == State::SplitSite {
        "run, resync"
    } else {
        "resync"
    }
}

/// Production moves to the other site and the set stays InSync. The machine moves production
/// when the engine confirms (`promoted` / `demoted`): a swap can fail (the drain times out,
/// the peer refuses), and a failed swap must leave production where it was.
fn swap_steps() -> Vec<Step> {
    vec![Step::Op(Op::Swap)]
}

/// Take production here while the production site is gone (or forced).
fn failover(cmd: Command, s: &VolumeSet, force: bool) -> Planned {
    if s.peer_up && !force {
        return Err(format!(
            "cannot {cmd} {}: it is {} and production site {} is reachable; use swap for a planned move, or force: true",
            s.name(),
            s.state,
            s.production_site()
        ));
    }
    if !s.consistent && !force {
        return Err(format!(
            "cannot {cmd} {} at {}: it is {} and the copy here is not consistent (no resync from {} completed); \
             force: true takes it over anyway",
            s.name(),
            s.local,
            s.state,
            s.production_site()
        ));
    }
    let why = format!("failover: {} takes over from {}", s.local, s.production_site());
    plan(
        if force { "failover (forced)" } else { "failover" },
        vec![
            Step::Op(Op::Failover),
            Step::Production(Side::Local, why),
            Step::Become(State::RecoverySiteForceSwap, "failover: changes tracked for the other site".into()),
        ],
    )
}

/// Hand production to the peer: now if InSync, else after a resync (`failback`, `offline`
/// when moving across sites, `online` for the peer).
fn hand_over(cmd: Command, s: &VolumeSet) -> Planned {
    if !s.is_production() {
        return nothing(format!("production is already at {}", s.production_site()));
    }
    if !s.peer_up {
        return Err(format!(
            "cannot {cmd} {}: cannot release it to the peer: peer {} unreachable ({} is {} at {})",
            s.name(),
            s.peer(),
            s.name(),
            s.state,
            s.local
        ));
    }
    match s.state {
        State::InSync => plan(SWAP, swap_steps()),
        State::Resyncing => plan("swap when the running resync completes", vec![Step::PendingSwap]),
        State::OutOfSync | State::SplitSite | State::RecoverySiteForceSwap => {
            let mut steps = resync_steps(s, cmd.name());
            steps.push(Step::PendingSwap);
            plan(format!("{}, then swap when InSync", ops_text(s)), steps)
        }
        st => Err(format!("cannot {cmd} {}: it is {st} at production site {}", s.name(), s.local)),
    }
}

fn recover(s: &VolumeSet, force: bool) -> Planned {
    if s.peer_up {
        return Err(format!(
            "cannot recover {}: it is {} and peer {} is reachable; recover is for a lone surviving site \
             (use resync, swap or failback)",
            s.name(),
            s.state,
            s.peer()
        ));
    }
    if !s.is_production() {
        return failover(Command::Recover, s, force);
    }
    match s.state {
        State::SplitSite => plan("run", run_steps()),
        st => {
            Err(format!("cannot recover {}: it is {st} at production site {}; nothing to recover", s.name(), s.local))
        }
    }
}

fn online(s: &VolumeSet, a: &Args) -> Planned {
    let site = a.site.as_deref().unwrap_or(&s.local);
    if site == s.peer() {
        return hand_over(Command::Online, s);
    }
    if site != s.local {
        return Err(format!(
            "cannot online {} at {site}: it is {} and its sites are {} and {}",
            s.name(),
            s.state,
            s.local,
            s.peer()
        ));
    }
    if !s.is_production() {
        return match (s.peer_up, s.state) {
            (true, State::InSync) => plan(SWAP, swap_steps()),
            (true, st) => Err(format!(
                "cannot online {} at {}: it is {st} with production at {} (taking over from a reachable \
                 production site needs InSync); resync at {} first",
                s.name(),
                s.local,
                s.production_site(),
                s.production_site()
            )),
            (false, _) => failover(Command::Online, s, a.force),
        };
    }
    match s.state {
        State::OutOfSync | State::SplitSite if s.peer_up => plan(ops_text(s), resync_steps(s, "online")),
        State::SplitSite => plan("run", run_steps()),
        State::OutOfSync => nothing(format!("{} serves alone, changes tracked", s.local)),
        st => nothing(format!("{} serves ({st})", s.local)),
    }
}

fn join_cleanup(s: &VolumeSet) -> Planned {
    match (s.is_production(), s.state, s.peer_up) {
        (true, State::RecoverySiteForceSwap, true) => plan("resync", resync_steps(s, "join-cleanup")),
        (true, State::RecoverySiteForceSwap, false) => nothing(format!("peer {} is still unreachable", s.peer())),
        (false, _, _) => nothing(format!("production is at {}; the cleanup runs there", s.production_site())),
        (true, st, _) => nothing(format!("it is {st}, not RecoverySite-ForceSwap")),
    }
}
