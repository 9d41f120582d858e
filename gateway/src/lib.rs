//! The storage gateway: exports volumes over NBD from pluggable backends.
//!
//! Layout (see `ARCHITECTURE.md` for the data path):
//! * [`config`]: the TOML configuration, validated with file/line/key errors;
//! * [`volume`]: an export's backend and its write path, where every mutation is numbered
//!   and handed to mirroring observers before the host is acknowledged;
//! * [`server`]: the NBD server (negotiation, request checking and execution, connections);
//! * [`replication`]: two-site synchronous mirroring (the engine at the I/O edge);
//! * [`quorum`]: recovery of a server pair by controller agreement (controllers, and the
//!   servers' side of it);
//! * [`cli`]: the `gateway` command line.
//!
//! The NBD codec lives in the `nbd-proto` crate and the backends in `gateway-backend`.

pub mod admin;
pub mod assemble;
pub mod cli;
pub mod config;
pub mod plugin;
pub mod quorum;
pub mod replication;
pub mod server;
pub mod volume;
