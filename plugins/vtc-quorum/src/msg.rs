//! The messages controllers send each other (`Action::SendToController`, received as
//! `Event::ControllerMessage`), versioned.
//!
//! Every body is an envelope `{"v": 1, "gen": g, "finals": {...}, "hw": h, "msg": {...}}`:
//! the sender's Lamport generation (receivers move their clock past it), and the facts every
//! message carries because they only ever make a receiver more careful — the final positions
//! servers reported at graceful shutdowns, and the highest position seen. `msg.kind` is one of:
//!
//! | kind | sent by, to | meaning (patent step) |
//! |---|---|---|
//! | `shutdown` | the controller given an operator's shutdown command, to all (claim 4) | servers taken out of service, with the mode (430/510) |
//! | `return` | the controller given a return command, to all | servers released to be placed online (450) |
//! | `elect_request` | a controller that sees a server it would place online, to all | poll: "elect on this" (464/564) |
//! | `election` | every controller, to the requester (`poll`) or to all (`broadcast`) | its own determination, yes/no with the reason (464/564) |
//! | `outcome` | the requester, to all, once more than the threshold elected yes | the system went online with that server (480/580, 470/570); late arrivals learn it |
//! | `abort` | the requester, to all, when its election cannot pass | stays offline, with the tally (490/590) |
//! | `query` | a controller whose yes vote never saw its election end, to all | poll: how did that election end? |
//! | `query_reply` | to the asker | `decided`, `aborted`, `voted_yes`, `refused` (never will vote yes in it), `unknown` |
//! | `exchange` | every controller, to all, periodically and when a peer comes up | key exchange: passed elections still in force, holds, last outcome, last shutdown command |
//!
//! A body with another `v`, or that does not parse, is logged and ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::key::{Claim, Command, Eid, Hold, Outcome, Value};

pub const MSG_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub gen: u64,
    #[serde(default)]
    pub finals: BTreeMap<String, u64>,
    #[serde(default)]
    pub hw: u64,
    pub msg: Msg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryState {
    Decided,
    Aborted,
    VotedYes,
    Refused,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Msg {
    Shutdown {
        cmd: Command,
    },
    Return {
        cmd: Command,
    },
    ElectRequest {
        election: Eid,
        value: Value,
    },
    Election {
        election: Eid,
        value: Value,
        yes: bool,
        reason: String,
    },
    Outcome {
        outcome: Outcome,
    },
    Abort {
        election: Eid,
        #[serde(default)]
        value: Option<Value>,
        yes: u32,
        of: u32,
        reason: String,
    },
    Query {
        election: Eid,
    },
    QueryReply {
        election: Eid,
        state: QueryState,
        #[serde(default)]
        value: Option<Value>,
    },
    Exchange {
        claims: Vec<Claim>,
        holds: BTreeMap<String, Hold>,
        outcome: Option<Outcome>,
        shutdown: Option<Command>,
    },
}

impl Envelope {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Envelope, String> {
        match v.get("v").and_then(|v| v.as_u64()) {
            Some(n) if n == u64::from(MSG_VERSION) => {}
            Some(n) => return Err(format!("message version {n} (this policy speaks {MSG_VERSION})")),
            None => return Err("message has no version".into()),
        }
        Envelope::deserialize(v).map_err(|e| format!("unreadable message: {e}"))
    }
}
