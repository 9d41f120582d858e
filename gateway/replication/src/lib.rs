//! Replication between two sites: the pieces that need no runtime.
//!
//! * [`frame`]: the replication link's framed, versioned, CRC32C-checked wire format;
//! * [`bitmap`]: the persistent change bitmap that tracks what the peer may lack.
//!
//! The engine that moves updates (the peer backup component at the production site, the
//! applier at the recovery site, resync, the control connection) lives in
//! `gateway::replication`, at the I/O edge.

pub mod bitmap;
pub mod frame;
