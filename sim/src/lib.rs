//! `sim`: a deterministic simulator for quorum-recovery policies (`vtc-quorum` and later
//! ones): two servers, N controllers and the links between them, with the policy under test
//! loaded through the plugin ABI exactly as the daemon loads it, one instance per controller.
//!
//! Each schedule is seeded and single-threaded: the same seed replays the same run, event for
//! event. The simulator plays the host of every controller ([`world`] documents what it does
//! with each action), injects faults ([`schedule`]: crashes and restarts of any node at any
//! step, message loss, delay and reordering, partitions, torn key writes, shutdown commands in
//! every mode), and checks after every step:
//!
//! * never two servers online as independent primaries;
//! * never a server online as primary that lacks acknowledged writes (the simulator tracks
//!   every acknowledged write; no operator override is ever given, so no exemption applies);
//! * liveness within a bound: after boot and after healing, the system comes online with both
//!   servers; when one server returns current after a shutdown (FIG. 4) or the other stops
//!   (FIG. 5), and more than the threshold of controllers can talk, it comes online with it;
//!   late controllers and servers learn the outcome (every controller's status agrees with
//!   the real state) and the late server is resynced, never a second primary;
//! * when the servers return on two sides of a partition, only a side of more than the
//!   threshold goes online (and it does).
//!
//! Liveness is checked only in schedules where no key write tore (a controller that lost its
//! key never elects yes again, by design). A server is "current" for the liveness checks when
//! it holds every acknowledged write and the other server's stop is known to the controllers
//! (its final report reached them): after `force`, or a crash, the controllers cannot know
//! the other server acknowledged nothing more, and staying offline is right.
//!
//! A violation stops the schedule; the campaign re-runs it with tracing and prints the trace
//! and the command that replays it (`--replay SEED`).
//!
//! # What a policy must accept
//!
//! Its config: `{"controller": "c1", "controllers": ["c1", ...], "servers": ["A", "B"],
//! "report_by": "poll"|"broadcast", "threshold": {...}}` (threshold only when not the
//! default), plus whatever `--config` adds. The events and actions of the quorum-recovery
//! vocabulary of `gateway_sdk::policy`, with the host semantics in [`world`]; its status as
//! `Report { key: "quorum", value: {"outcome": "online A" | "online A+B" | "offline", ...} }`.

pub mod campaign;
pub mod rng;
pub mod schedule;
pub mod source;
pub mod world;

pub use campaign::{campaign, describe_failure, schedule_seed, Campaign, Report};
pub use schedule::{run, Run};
pub use source::PolicySource;
