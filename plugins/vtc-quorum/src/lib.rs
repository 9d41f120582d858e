//! `vtc-quorum`: recovery of a server pair by controller agreement (seeds 000 and 001: a
//! method for peer-to-peer system recovery with virtual tape controllers, VTCs), as a
//! recovery-policy plugin.
//!
//! One instance runs in each controller. The two servers (site A, site B) are reached over
//! each controller's control connections; the controllers talk to each other. The policy is
//! pure: the host feeds it events and carries out its actions (see "What the host provides").
//! The core is [`Machine`]; [`Plugin`] wraps it for the ABI. Configuration: [`config`]; the
//! durable shutdown key: [`key`]; the controller-to-controller messages: [`msg`]. The
//! simulator (`sim`, `cargo run -p sim -- --policy vtc-quorum`) runs this same plugin against
//! simulated servers, controllers and links and checks the invariants below.
//!
//! # The method, step by step (FIG. 4: both servers shut down; FIG. 5: one, then the other)
//!
//! | step | what it says | here |
//! |---|---|---|
//! | 410 / 505 | two servers interconnected by several controllers | [`Config`]: `servers`, `controllers` |
//! | 420 / 530 | each controller generates and saves a shutdown key (continuously, or on a shutdown) | `Machine::save`: at once for every promise and fact (votes, elections started and ended, final reports, commands, refusals); the rest of the key (what each server was last seen doing) at the next tick; always in `record_command` for a shutdown command. The host persists [`Action::SaveKey`] |
//! | 430 / 510 | a command takes one or both servers out, with a mode; given to one controller, which broadcasts it (claim 4) | `operator_shutdown`: records the command in the key (mode, timestamp, generation, the controllers operational), broadcasts `shutdown` (every controller records it too), and asks the host for `GoOffline` + `ShutdownServer { mode }`. The servers stay held (never elected) until a return command |
//! | — modes | normal / expedite / immediate / force | carried out by the host on the pending copy work: `normal` finishes it, `expedite` finishes it with more bandwidth, `immediate` stops now leaving it pending (resumed at the next sync-up), `force` stops now doing nothing more (no final report). The mode is in the key and the status; its effect on an election comes through the final reports: after `immediate` the other server's final position is above the lagging one's, after `force` there is none |
//! | 440 / 520, 540 | the servers go out of operation (commanded, or a failure) | graceful: the server's final `ServerReport { operational: false }` (→ `finals`); a failure: `PeerDown` |
//! | 450 / 550 | a command to bring servers back; a server comes back | `operator_return` (`return` broadcast, releases the holds); `ServerReport { operational: true }` |
//! | 460 / 560 | are both servers operational? | `candidate`: the operational, released servers, the current one first |
//! | 470 / 570 | both: sync up and go online with both | value `P+S@p`: the host promotes P (the current one) and resyncs S from it (compares copy tokens, completes the pending copies) |
//! | 462 / 562 | set the agreement threshold | [`Config::threshold_count`] (a count, or a percentage of the controllers; default more than 50 %) |
//! | 464 / 564 | each controller decides from its saved key, and reports its election (broadcast or poll) | `determine` (below); `elect_request` polls, `election` answers (to the poller with `report_by = "poll"`, to every controller with `"broadcast"`); the yes is in the key before it is sent |
//! | 466 / 566 | more controllers elected yes than the threshold? | [`Config::passes`] in `check_decision`: strictly greater |
//! | 480 / 580 | online with that server only | `GoOnline { target: "P@p" }`, `outcome` broadcast; late arrivals learn it from it and from the key exchange |
//! | 490 / 590 | otherwise stay offline | the election is aborted (`abort`, with the tally) and retried later; the status says why: `{"outcome": "offline", "reason": "2 of 4 controllers elected B; threshold 2 (the election timed out)", "elections": {"c1": "yes", "c3": "no: ..."}}` |
//!
//! ## When a controller elects yes (step 464/564)
//!
//! `determine` answers yes to "place X online at position p" only when all hold:
//! 1. it has a valid shutdown key (a missing, torn or corrupt key is "no", never "yes");
//! 2. X is not held by a shutdown command that no return command has released;
//! 3. it sees X operational itself, at exactly position p, with no copies pending towards X;
//! 4. the key agrees with X: X does not report a position below the highest the key records
//!    for it (a server that lost data does not agree);
//! 5. X was current: the key shows no other server that may hold acknowledged writes X lacks —
//!    no claim on the other server (a passed election of it, or this controller's own yes
//!    vote for it, that no final report has ended), p is not below the other server's final
//!    position (after `immediate` with copies pending towards X it is), and p is not below
//!    the highest position any server ever reported.
//!
//! With both servers operational the same election is held for the pair with the current one
//! as primary. (The patent goes online with both without counting; here each controller sees
//! the servers through its own links, and a group that sees both must not race a group that
//! elected one of them alone.)
//!
//! # Why two servers never both serve, and none serves without the acknowledged writes
//!
//! * A yes vote for X at p is written to the key before it is sent and stays a claim; the
//!   controller elects the other server only when no claim on X remains: X reported a final
//!   position above p (it stopped after that promotion), or X's election is known never to
//!   pass (its proposer aborted it, durably, or so many controllers promised — durably — never
//!   to vote yes in it that it cannot get more than the threshold). Any two groups of more
//!   than the threshold overlap (the config refuses a threshold where they would not), so for
//!   any two passing elections some controller voted in both, and it voted in the later one
//!   only after the earlier primary stopped, and only for a position at or above where it
//!   stopped.
//! * `GoOnline { target: "X@p" }` is guarded: the host promotes X only if X is not online and
//!   its position is exactly p, appending an epoch record at p+1 — or, after a crash or a
//!   forced stop, resumes X's last promotion if its epoch record is at or below p+1 and it has
//!   not stopped gracefully since. Every report after a promotion at p is above p and every
//!   report before it at most p, so a final report ends exactly the claims it should, whenever
//!   it arrives.
//! * A controller without a key never votes yes and never starts an election: it may have
//!   forgotten a yes vote, and then two elections could both pass.
//!
//! # Late arrivals
//!
//! A controller that comes back learns passed elections, final positions and holds from the
//! key exchange (`exchange`, sent when a peer comes up, when it changes, and every few
//! seconds) and from the `outcome` broadcast; its status then shows the outcome. The passed
//! election in force ([`Machine::in_force`]) is re-sent every second (the host ignores what is
//! done), so a primary that restarts resumes; a server that comes back while the other is
//! online is resynced as its secondary (`GoOnline { target: "P+S" }`: a join, never a
//! promotion).
//!
//! # What the host provides
//!
//! The production host is the gateway (`gateway/src/quorum`: the controller role, and the
//! servers' agent and position ledger); the simulator (`sim`) is the other one.
//!
//! Events: `Started`, then `KeyLoaded` with the saved key (or none) before anything else;
//! `Tick { now_ms }` regularly (every 100-500 ms); `ServerReport` on each control connection
//! when it opens, regularly and on every change, in order per connection, with
//! `operational: false` **only** as the server's final report at a graceful shutdown (normal,
//! expedite, immediate) — and a server remembers that report and sends it again first on every
//! connection it opens until it is promoted again; `PeerUp`/`PeerDown` for the control
//! connections to servers (a server restart always ends them); `ControllerUp`/`ControllerDown`
//! (or `PeerUp`/`PeerDown` naming a controller); `ControllerMessage` for every
//! `SendToController` addressed to this controller (`to = "*"`: every other controller);
//! `ShutdownCommand`/`ReturnCommand` from the operator (`from = "operator"`), or `Admin`
//! `shutdown {servers, mode}`, `return {servers}`, `status`, and `bootstrap` (a blank key for a
//! controller that has none: only when the system is set up anew).
//!
//! Actions, in order (a `SaveKey` must be durable before the actions after it are carried
//! out): `SaveKey` (fsync'd, checksummed store; a torn or corrupt record is loaded as none);
//! `SendToController`; `ShutdownServer { mode }` and `GoOffline` (stop serving hosts), carried
//! over the control connection; `GoOnline { target }`: `P@p` (promote P as above), `P+S@p`
//! (the same, then resync S from P as its mirror secondary), `P+S` (only the resync, if P is
//! online); `Report { key: "quorum" }` (the status); `Vote` and `Log` (informational);
//! `Refuse` (a bad operator command).

pub mod config;
pub mod key;
mod machine;
pub mod msg;

#[cfg(test)]
mod tests;

use gateway_sdk::{Action, Event, Host, RecoveryPolicy};

pub use config::{Break, Config, ReportBy, Threshold};
pub use key::{Key, Value};
pub use machine::{Machine, ServerView};

/// The plugin: the machine behind the recovery-policy ABI.
pub struct Plugin {
    machine: Machine,
}

impl Plugin {
    pub fn machine(&self) -> &Machine {
        &self.machine
    }
}

impl RecoveryPolicy for Plugin {
    fn open(_host: &Host, config: &serde_json::Value) -> Result<Self, String> {
        let config = Config::from_json(config).map_err(|e| format!("vtc-quorum config: {e}"))?;
        Ok(Plugin { machine: Machine::new(config) })
    }

    fn on_event(&mut self, event: &Event) -> Vec<Action> {
        self.machine.handle(event)
    }
}

gateway_sdk::declare_plugin!(recovery_policy, Plugin, "vtc-quorum", env!("CARGO_PKG_VERSION"));
