//! Quorum recovery of a server pair (seeds 000 and 001): N **controllers** decide, each from
//! its own saved shutdown key, whether a server that returned alone may go online, and the
//! system goes online with it only when more than a threshold of them agree.
//!
//! The decisions are the recovery-policy plugin's (`plugins/vtc-quorum`, the same code the
//! simulator in `sim/` checks); this module is the host around it, at the I/O edge:
//! * [`controller`]: the `[controller]` role of a gateway process: it runs the policy, keeps
//!   the key in a [`record`] file, talks to the other controllers and to both servers, and
//!   takes the operator's `shutdown`/`return`/`quorum status` commands;
//! * [`agent`]: the servers' side, one per volume set with `recovery = "quorum"`: it holds
//!   host I/O until a controller places the server online, reports its [`ledger`] position,
//!   and carries out go-online, go-offline and shutdown commands;
//! * [`ledger`]: what a position means and how it moves (tracking, seal, epoch records,
//!   final reports); [`record`]: the fsync'd, checksummed record files keys and ledgers live in;
//!   [`keycopies`]: the copies of every controller's key a server keeps.
//!
//! Wire: every connection uses the replication link's checked frames (`gateway-replication`),
//! with JSON bodies in `Request` frames: controller to controller on the controller's
//! `listen` port, controller to server on the server's control port (see [`agent`]).

pub mod agent;
pub mod controller;
pub mod keycopies;
pub mod ledger;
pub mod record;

pub use gateway_sdk::ShutdownMode as Mode;
