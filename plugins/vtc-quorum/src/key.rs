//! The shutdown key: what one controller knows and has promised, saved durably by the host
//! (`Action::SaveKey`) on every change, and given back at start (`Event::KeyLoaded`).
//!
//! It is the patent's shutdown key (steps 420/530: the status of each server, the shutdown
//! mode, a timestamp, a generation number) plus what a controller must never forget to keep
//! its elections safe:
//!
//! * `servers`: the last report of each server (operational, position = the last replicated
//!   sequence / copy token, copies pending towards it, and whether that report was the
//!   server's final one at a graceful shutdown);
//! * `finals`: the highest final position each server reported when it went out of operation
//!   gracefully (it acknowledged nothing after it);
//! * `hw`: the highest position any server ever reported (no server returning below it can be
//!   current);
//! * `claims`: servers that may be serving as the sole primary, each with the position it was
//!   elected at and the election: yes votes this controller cast (standing until the election
//!   ends) and the passed election of each server at the highest position (decided). A claim
//!   on X at p ends when X reports a final position above p (X went online at p, which
//!   appends an epoch record, and has since stopped), or, for a standing vote, when its
//!   election is known never to pass;
//! * `holds`: servers an operator's shutdown command took out of service and no return command
//!   has released yet (each with the Lamport generation of the command that set it);
//! * `refused`: per proposer, the highest election number this controller promised never to
//!   vote yes in (its answer to a poll about an election it never saw); `voted`: per
//!   proposer, the highest election number it voted yes in (it never promises to refuse one
//!   at or below it);
//! * `next_election`, `open`, `resolved`: the elections this controller started.
//!
//! The host stores it fsync'd and checksummed; a missing, torn or corrupt key reaches the
//! policy as `KeyLoaded { key: None }` and this controller never elects yes again (a key it
//! made up could forget a vote it cast, and then two elections could both pass). An operator
//! re-admits it with the `bootstrap` command only when the whole system is being set up anew.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub const KEY_VERSION: u32 = 1;

/// An election: the controller that started it and its number there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Eid {
    pub by: String,
    pub n: u64,
}

impl fmt::Display for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.by, self.n)
    }
}

/// What an election would place online: `primary` at `position` (the guard: the host promotes
/// it only if its position is exactly that), with `secondary` resynced from it when present.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Value {
    pub primary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
    pub position: u64,
}

impl Value {
    /// The `GoOnline` target: `P@p` or `P+S@p`.
    pub fn target(&self) -> String {
        match &self.secondary {
            Some(s) => format!("{}+{}@{}", self.primary, s, self.position),
            None => format!("{}@{}", self.primary, self.position),
        }
    }

    pub fn describe(&self) -> String {
        match &self.secondary {
            Some(s) => format!("{}+{} (primary {} at {})", self.primary, s, self.primary, self.position),
            None => format!("{} alone at {}", self.primary, self.position),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub server: String,
    pub position: u64,
    pub election: Eid,
    /// The election passed (otherwise: this controller's standing yes vote).
    pub decided: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServerRec {
    pub operational: bool,
    pub position: u64,
    pub copies_pending: u64,
    /// The highest position the server ever reported (it must not come back below it).
    #[serde(default)]
    pub high: u64,
    /// The record is the server's final report at a graceful shutdown.
    #[serde(default)]
    pub final_report: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Lamport generation of the command that set this.
    pub gen: u64,
    pub origin: String,
    pub held: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl Hold {
    pub fn newer_than(&self, other: &Hold) -> bool {
        (self.gen, &self.origin) > (other.gen, &other.origin)
    }
}

/// A shutdown or return command as the key records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub gen: u64,
    pub origin: String,
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Timestamp (the origin's clock, ms since it started).
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub n: u64,
    pub decided: bool,
    pub value: Value,
}

/// The last election outcome this controller decided or learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub election: Eid,
    pub value: Value,
    pub gen: u64,
    pub yes: u32,
    pub of: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub v: u32,
    pub controller: String,
    /// Generation number: this controller's Lamport clock when the key was made.
    pub gen: u64,
    /// Timestamp: ms since this controller started.
    pub ts: u64,
    /// The mode of the last shutdown command.
    pub mode: Option<String>,
    pub shutdown: Option<Command>,
    /// Controllers this one saw operational when it recorded the last shutdown command.
    #[serde(default)]
    pub controllers_at_shutdown: Vec<String>,
    pub servers: BTreeMap<String, ServerRec>,
    pub hw: u64,
    pub finals: BTreeMap<String, u64>,
    pub claims: Vec<Claim>,
    pub holds: BTreeMap<String, Hold>,
    pub refused: BTreeMap<String, u64>,
    /// Per proposer, the highest election number this controller voted yes in: it never
    /// claims to have refused one at or below it (the vote may be pruned from `claims`).
    #[serde(default)]
    pub voted: BTreeMap<String, u64>,
    pub next_election: u64,
    pub open: Option<(Eid, Value)>,
    pub resolved: Vec<Resolved>,
    pub outcome: Option<Outcome>,
}

/// How many of its own resolved elections a controller remembers (to answer polls).
pub const RESOLVED_KEPT: usize = 8;

impl Key {
    /// A blank key: nothing known, nothing promised (`bootstrap`).
    pub fn genesis(controller: &str, servers: &[String; 2]) -> Key {
        Key {
            v: KEY_VERSION,
            controller: controller.to_owned(),
            gen: 0,
            ts: 0,
            mode: None,
            shutdown: None,
            controllers_at_shutdown: Vec::new(),
            servers: servers.iter().map(|s| (s.clone(), ServerRec::default())).collect(),
            hw: 0,
            finals: BTreeMap::new(),
            claims: Vec::new(),
            holds: BTreeMap::new(),
            refused: BTreeMap::new(),
            voted: BTreeMap::new(),
            next_election: 1,
            open: None,
            resolved: Vec::new(),
            outcome: None,
        }
    }

    /// Parse a saved key; `None` (with why) if it is not a key of this controller and pair.
    pub fn from_saved(v: &serde_json::Value, controller: &str, servers: &[String; 2]) -> Result<Key, String> {
        let k: Key = serde_json::from_value(v.clone()).map_err(|e| format!("unreadable key: {e}"))?;
        if k.v != KEY_VERSION {
            return Err(format!("key version {} (this policy reads {KEY_VERSION})", k.v));
        }
        if k.controller != controller {
            return Err(format!("key belongs to controller {:?}", k.controller));
        }
        if k.servers.keys().any(|s| !servers.contains(s)) {
            return Err("key names servers that are not configured".into());
        }
        Ok(k)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn final_of(&self, server: &str) -> Option<u64> {
        self.finals.get(server).copied()
    }

    pub fn max_final(&self) -> u64 {
        self.finals.values().copied().max().unwrap_or(0)
    }

    /// Record a final report; returns whether anything changed.
    pub fn note_final(&mut self, server: &str, position: u64) -> bool {
        let prev = self.finals.get(server).copied();
        let mut changed = false;
        if prev.is_none_or(|p| position > p) {
            self.finals.insert(server.to_owned(), position);
            changed = true;
        }
        if position > self.hw {
            self.hw = position;
            changed = true;
        }
        self.clear_claims() || changed
    }

    /// Drop claims that a final report has ended (the server stopped after passing that
    /// position). Returns whether any was dropped.
    pub fn clear_claims(&mut self) -> bool {
        let before = self.claims.len();
        let finals = &self.finals;
        self.claims.retain(|c| finals.get(&c.server).is_none_or(|f| *f <= c.position));
        self.claims.len() != before
    }

    /// Add a claim. Of the passed elections of one server only the one at the highest
    /// position is kept: it blocks every other server as well as the lower ones do, and only a
    /// final report above it (which is above the lower ones too) ends it.
    pub fn add_claim(&mut self, claim: Claim) -> bool {
        if self.finals.get(&claim.server).is_some_and(|f| *f > claim.position) {
            return false;
        }
        let top = self.claims.iter().filter(|c| c.decided && c.server == claim.server).map(|c| c.position).max();
        if claim.decided {
            if top.is_some_and(|t| t >= claim.position) {
                // Already covered; a standing vote of this very election is now decided.
                let before = self.claims.len();
                self.claims.retain(|c| c.decided || c.election != claim.election);
                return self.claims.len() != before;
            }
            self.claims.retain(|c| !(c.server == claim.server && (c.decided || c.election == claim.election)));
            self.claims.push(claim);
            return true;
        }
        if self.claims.iter().any(|c| c.election == claim.election && c.server == claim.server) {
            return false;
        }
        self.claims.push(claim);
        true
    }

    /// Remove a standing (undecided) vote of election `e`.
    pub fn release(&mut self, e: &Eid) -> bool {
        let before = self.claims.len();
        self.claims.retain(|c| c.decided || &c.election != e);
        self.claims.len() != before
    }

    pub fn held(&self, server: &str) -> Option<&Hold> {
        self.holds.get(server).filter(|h| h.held)
    }

    pub fn merge_hold(&mut self, server: &str, hold: &Hold) -> bool {
        match self.holds.get(server) {
            Some(h) if !hold.newer_than(h) => false,
            _ => {
                self.holds.insert(server.to_owned(), hold.clone());
                true
            }
        }
    }

    pub fn note_vote(&mut self, e: &Eid) {
        let n = self.voted.entry(e.by.clone()).or_insert(0);
        *n = (*n).max(e.n);
    }

    pub fn may_have_voted(&self, e: &Eid) -> bool {
        self.voted.get(&e.by).is_some_and(|n| e.n <= *n)
    }

    pub fn refuses(&self, e: &Eid) -> bool {
        self.refused.get(&e.by).is_some_and(|n| e.n <= *n)
    }

    pub fn resolved(&self, n: u64) -> Option<&Resolved> {
        self.resolved.iter().find(|r| r.n == n)
    }

    pub fn push_resolved(&mut self, r: Resolved) {
        self.resolved.push(r);
        if self.resolved.len() > RESOLVED_KEPT {
            let drop = self.resolved.len() - RESOLVED_KEPT;
            self.resolved.drain(..drop);
        }
    }
}
