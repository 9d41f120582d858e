//! `pprc`: the replication state machine for two-site synchronous mirroring (PPRC Metro
//! Mirror-like), as a recovery-policy plugin.
//!
//! The policy is pure: the host's replication engine reports what happened (link up/down,
//! resync done, frozen, promoted...) and carries out the mechanisms the policy asks for
//! (`Replicate { op }`); operators and cluster managers send commands (`Event::Admin`). The
//! core is [`Machine`] (`handle(&Event) -> Vec<Action>`); [`Plugin`] wraps it for the ABI.
//! Configuration: see [`config`].
//!
//! # Layout
//! * [`state`]: the states and their names;
//! * [`config`]: the strict config parser;
//! * `machine`: per-set bookkeeping and how a transition emits actions;
//! * `engine`: the engine's `volume_set` events;
//! * [`commands`]: admin commands and the entry points.
//!
//! # The states, and seed 004 (IBM eRCMF's Automation Management Interface)
//!
//! A set's state is kept per site; the production site is the authority, the recovery site
//! records what its engine tells it.
//!
//! | state | seed 004 | meaning here |
//! |---|---|---|
//! | `Simplex` | PPRC simplex (no pair) | recovery site that has seen neither the link up nor a completed copy (its copy is not consistent) |
//! | `InSync` | InSync (full duplex) | mirroring; production serves; every update is at both sites before its ack |
//! | `OutOfSync` | OutOfSync (suspended) | production serves alone; changes tracked in the change bitmap |
//! | `Resyncing` | the resync phase (XDMode → OutOfSync → InSync in the seed's diagram) | changed regions being copied; `InSync` on `resync_complete` |
//! | `SplitSite` | SplitSite (after freeze) | host I/O held / mirroring stopped by a site split; `run` → `OutOfSync` |
//! | `RecoverySite-ForceSwap` | RecoverySite-ForceSwap | production moved here by `failover` while the other site was down; changes tracked |
//! | `XDMode`, `XDMode-OutOfSync` | extended distance | reserved; never entered (`mode = "xd"` is refused) |
//!
//! Start: each set is `OutOfSync` where it is produced (its initial copy is pending; still
//! `RecoverySite-ForceSwap` if the config's recorded `state` says so) and `Simplex` at the
//! recovery site (`OutOfSync` if the recorded state says its copy was complete). With
//! `auto_resync`, `link_up` at production starts the resync.
//!
//! The recovery site learns the set's state from its engine: a state name in `detail`
//! (`link_up`, `demoted`, `peer_state`) is taken as the production site's state;
//! `resync_started` → `Resyncing`, `resync_complete` → `InSync`; a bare `link_up` (no state
//! in `detail`) counts as mirroring established → `InSync`. Its copy counts as consistent
//! from `InSync` until a resync starts (`failover` without `force` needs that).
//!
//! Production moves when the engine says so: at once for `failover` and `demote` (local,
//! unconditional mechanisms), and for `swap` only on the engine's `promoted` / `demoted`
//! (a swap can fail, and then production stays where it was).
//!
//! The seed's entry points map to commands: `clgetERCMFdisks` = `online`,
//! `clreleaseERCMFdisks` = `offline`, `cljoinERCMFcleanup` = `join-cleanup`;
//! `clwait4ERCMFstate` (wait-for-state) and `clverifyERCMFconfig` (verify-config) belong to
//! the host: it waits on the `SetVolumeSetState` records, and `open` verifies the config.
//!
//! # Engine events (`volume_set`, by `change`)
//!
//! `link_up`, `link_down` (at either site: `InSync` → `OutOfSync`, or `SplitSite` with
//! `on_link_loss = "freeze"`; `Resyncing` → `OutOfSync`), `resync_started`,
//! `resync_complete`, `resync_failed` (→ `OutOfSync`, detail kept as the last error),
//! `frozen`, `released`, `promoted` (production = here), `demoted` (production = the peer),
//! `peer_is_production` (the peer has a newer generation: `demote` if this site thought it
//! was production), `peer_state` (recovery site: the production's state in `detail`),
//! `replication_error`. `PeerDown` counts as link loss; `PeerUp` only marks the peer
//! reachable (resync waits for the engine's `link_up`).
//!
//! Every state change emits `SetVolumeSetState` and a `Log` saying from → to and why; every
//! accepted command answers with a `Log` of its plan first; a refused one with a single
//! `Refuse` naming the command, the set and its state, and changes nothing.

pub mod commands;
pub mod config;
mod engine;
mod machine;
pub mod state;

#[cfg(test)]
mod tests;

use gateway_sdk::{Action, Event, Host, RecoveryPolicy};

pub use commands::Command;
pub use config::Config;
pub use engine::CHANGES;
pub use machine::{Machine, SetView, Side};
pub use state::State;

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
        let config = Config::from_json(config).map_err(|e| format!("pprc config: {e}"))?;
        Ok(Plugin { machine: Machine::new(config) })
    }

    fn on_event(&mut self, event: &Event) -> Vec<Action> {
        self.machine.handle(event)
    }
}

gateway_sdk::declare_plugin!(recovery_policy, Plugin, "pprc", env!("CARGO_PKG_VERSION"));
