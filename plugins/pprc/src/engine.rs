//! What the replication engine reports (`volume_set` events) and how each report moves a
//! set. The engine has already done the mechanical part (suspended, froze, copied); the
//! machine records the state, and starts what the configuration asks for (`auto_resync`,
//! a pending hand-over, demoting a stale production).

use gateway_sdk::Action;

use crate::commands::resync_steps;
use crate::config::LinkLoss;
use crate::machine::{log, Machine, Op, Side, Step, VolumeSet};
use crate::state::State;

/// The changes the engine reports, in `Event::VolumeSet.change`.
pub const CHANGES: [&str; 12] = [
    "link_up",
    "link_down",
    "resync_started",
    "resync_complete",
    "resync_failed",
    "frozen",
    "released",
    "promoted",
    "demoted",
    "peer_is_production",
    "peer_state",
    "replication_error",
];

impl Machine {
    /// `Event::VolumeSet`; an empty `local_site` or `detail` means "not given".
    pub(crate) fn engine_event(
        &mut self,
        volume_set: &str,
        change: &str,
        local_site: &str,
        detail: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.index(volume_set) else {
            out.push(log("warn", format!("engine reported {change} for unknown volume set {volume_set}")));
            return;
        };
        if !local_site.is_empty() && local_site != self.local_site() {
            let msg = format!(
                "ignored {change} on {volume_set}: the engine says it runs at {local_site}, this policy at {}",
                self.local_site()
            );
            out.push(log("warn", msg));
            return;
        }
        let s = &mut self.sets[i];
        let steps = match change {
            "link_up" => link_up(s, detail, out),
            "link_down" => link_lost(s, &with_detail("link down", detail)),
            "resync_started" => {
                s.peer_up = true;
                vec![Step::Become(State::Resyncing, with_detail("the engine started a resync", detail))]
            }
            "resync_complete" => resync_complete(s, out),
            "resync_failed" => {
                let why = with_detail("resync failed", detail);
                s.last_error = Some(why.clone());
                out.push(log("error", format!("{} at {}: {why}", s.name(), s.local)));
                if s.state == State::Resyncing {
                    vec![Step::Become(State::OutOfSync, why)]
                } else {
                    vec![]
                }
            }
            "replication_error" => {
                s.last_error = Some(with_detail("replication error", detail));
                out.push(log("warn", format!("{} at {}: {}", s.name(), s.local, with_detail("error", detail))));
                vec![]
            }
            "frozen" => match s.state {
                State::InSync | State::OutOfSync | State::Resyncing => {
                    vec![Step::Become(State::SplitSite, with_detail("the engine froze host I/O", detail))]
                }
                _ => vec![],
            },
            "released" if s.state == State::SplitSite => {
                vec![Step::Become(State::OutOfSync, with_detail("the engine released host I/O", detail))]
            }
            "released" => vec![],
            "promoted" => promoted(s, detail),
            "demoted" => demoted(s, detail, out),
            "peer_is_production" if s.is_production() => {
                let why =
                    with_detail(&format!("{} reports it is production with a newer generation", s.peer()), detail);
                out.push(log("warn", format!("{} at {}: {why}; demoting this site", s.name(), s.local)));
                vec![
                    Step::Op(Op::Demote),
                    Step::Production(Side::Peer, why),
                    Step::Become(State::OutOfSync, format!("this copy must be resynced from {}", s.peer())),
                ]
            }
            "peer_is_production" => vec![],
            "peer_state" if !s.is_production() => adopt(s, detail, "the production site reports it", out),
            "peer_state" => vec![],
            other => {
                out.push(log("debug", format!("{}: ignored unknown engine change `{other}`", s.name())));
                vec![]
            }
        };
        s.apply(steps, out);
    }
}

fn with_detail(what: &str, detail: &str) -> String {
    if detail.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {detail}")
    }
}

fn link_up(s: &mut VolumeSet, detail: &str, out: &mut Vec<Action>) -> Vec<Step> {
    s.peer_up = true;
    if !s.is_production() {
        // The production's state when the engine passes it on; else the engine's link_up at
        // a recovery site means mirroring is established (its receiver accepted the link).
        return match State::from_name(detail) {
            Some(_) => adopt(s, detail, "link up; the production site reports it", out),
            None if s.state == State::Resyncing => vec![],
            None => vec![Step::Become(State::InSync, with_detail("link up", detail))],
        };
    }
    let note = match s.state {
        State::OutOfSync if s.cfg.auto_resync => return resync_steps(s, "link up; auto_resync"),
        State::OutOfSync => "auto_resync is off: run resync",
        State::SplitSite => "it stays SplitSite until `run` (or `resync`)",
        State::RecoverySiteForceSwap => "run join-cleanup (or resync) to bring the peer up to date",
        _ => return vec![],
    };
    out.push(log("info", format!("{} at {}: link to {} up; {note}", s.name(), s.local, s.peer())));
    vec![]
}

/// The peer or the link is gone: a mirroring set stops mirroring.
pub(crate) fn link_lost(s: &mut VolumeSet, why: &str) -> Vec<Step> {
    s.peer_up = false;
    match s.state {
        State::InSync => match s.cfg.on_link_loss {
            LinkLoss::Freeze => vec![Step::Become(State::SplitSite, format!("{why}; on_link_loss = freeze"))],
            LinkLoss::Continue => vec![Step::Become(State::OutOfSync, format!("{why}; on_link_loss = continue"))],
        },
        State::Resyncing => vec![Step::Become(State::OutOfSync, format!("resync interrupted: {why}"))],
        _ => vec![],
    }
}

fn resync_complete(s: &mut VolumeSet, out: &mut Vec<Action>) -> Vec<Step> {
    if s.is_production() && s.state != State::Resyncing {
        let msg = format!("{}: ignored resync_complete: it is {}, not Resyncing", s.name(), s.state);
        out.push(log("debug", msg));
        return vec![];
    }
    if !s.is_production() && !s.peer_up {
        out.push(log("debug", format!("{}: ignored resync_complete: the link is down", s.name())));
        return vec![];
    }
    let mut steps = vec![Step::Become(State::InSync, "resync complete".into())];
    if s.is_production() && s.pending_swap {
        out.push(log("info", format!("{}: handing production to {} now that it is InSync", s.name(), s.peer())));
        steps.push(Step::Op(Op::Swap));
    }
    steps
}

fn promoted(s: &VolumeSet, detail: &str) -> Vec<Step> {
    if s.is_production() {
        return vec![];
    }
    let state = match s.state {
        _ if !s.peer_up => State::RecoverySiteForceSwap,
        State::Simplex | State::Resyncing => State::OutOfSync,
        other => other,
    };
    vec![
        Step::Production(Side::Local, with_detail("the engine promoted this site", detail)),
        Step::Become(state, "promoted".into()),
    ]
}

fn demoted(s: &mut VolumeSet, detail: &str, out: &mut Vec<Action>) -> Vec<Step> {
    if !s.is_production() {
        return adopt(s, detail, "demoted; the production site reports it", out);
    }
    let mut steps = vec![Step::Production(Side::Peer, "the engine demoted this site".into())];
    let adopted = adopt(s, detail, "demoted; the production site reports it", out);
    if adopted.is_empty() {
        let state = if s.state == State::InSync && s.peer_up { State::InSync } else { State::OutOfSync };
        steps.push(Step::Become(state, "demoted".into()));
    }
    steps.extend(adopted);
    steps
}

/// At the recovery site: take the production site's state from `detail`, if it names one
/// this site can hold now.
fn adopt(s: &VolumeSet, detail: &str, why: &str, out: &mut Vec<Action>) -> Vec<Step> {
    let state = match State::from_name(detail) {
        None if detail.is_empty() => return vec![],
        None => {
            out.push(log("debug", format!("{}: `{detail}` names no state; kept {}", s.name(), s.state)));
            return vec![];
        }
        Some(st) => st,
    };
    if state.is_reserved() || (matches!(state, State::InSync | State::Resyncing) && !s.peer_up) {
        let msg =
            format!("{}: not adopting {state} from the engine (peer {}); kept {}", s.name(), s.peer_word(), s.state);
        out.push(log("warn", msg));
        return vec![];
    }
    vec![Step::Become(state, why.into())]
}
