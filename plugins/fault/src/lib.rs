//! `fault`: a filter that injects failures, for testing how the gateway and its clients
//! behave when storage misbehaves. Stack it over any backend:
//!
//! ```toml
//! [[export]]
//! name = "flaky"
//! size = "64MiB"
//! [export.backend]
//! type = "memory"
//! [[export.filter]]
//! plugin = "fault"
//! config = { rules = [{ op = "write", error = "ENOSPC", after = 100 }] }
//! ```
//!
//! With an empty config it passes every call through unchanged.
//!
//! # Config
//! Every key is optional; an unknown key or a bad value makes `open` fail with a message
//! naming the key (e.g. ``unknown key `rules[0].eror` ``), so the gateway refuses to start.
//!
//! * `rules`: a list of error rules, each
//!   `{ op, error, rate, trigger_file, after, count }`:
//!   * `op` (required): `"read"`, `"write"`, `"flush"`, `"trim"`, `"zero"`, `"extents"`,
//!     `"cache"` or `"any"`;
//!   * `error` (required): `"EIO"`, `"ENOSPC"`, `"EPERM"`, `"EINVAL"`, `"ENOTSUP"` or
//!     `"ESHUTDOWN"` (case-insensitive). The call fails with the matching `ErrorKind`
//!     (`Io`, `NoSpace`, `ReadOnly`, `Invalid`, `NotSupported`, `Shutdown`), which the host
//!     sends to the client as that errno, with the message `fault injected: ENOSPC on write`;
//!   * `rate` (default 1.0): probability, 0.0 to 1.0, that a matching call fails;
//!   * `trigger_file`: the rule is active only while this file exists (checked on every
//!     call, so a test can switch a fault on and off under a live connection);
//!   * `after` (default 0): let the first N matching calls through;
//!   * `count`: fail at most N calls.
//!
//!   A call *matches* a rule when its operation is selected and the trigger file (if any)
//!   exists; only matching calls count towards `after`. Rules are checked in order and the
//!   first that fires decides; later rules do not see that call.
//! * `delay_ms`: a table of milliseconds per operation, e.g. `{ read = 10, write = 5 }`;
//!   `any` sets the default for operations not listed. The call sleeps that long before
//!   anything else happens to it.
//! * `hang`: `{ op, trigger_file }` (also `rate`, `after`, `count`, as for rules), or a list
//!   of them. A matching call blocks while the trigger file exists (polled every 10 ms), then
//!   proceeds normally: a hung request. `trigger_file` is required. A hang longer than the
//!   export's `plugin_call_timeout_ms` fails the request with EIO and the export with it.
//! * `drop`: `{ op, trigger_file, rate, after, count }`, or a list of them: a matching call
//!   reports success without reaching the layer below — a lost write. `op` defaults to
//!   `"write"`; it may be `"write"`, `"flush"`, `"trim"`, `"zero"` or `"any"` (all four).
//!   Drops are considered only for calls no error rule failed.
//! * `seed` (default 0x5EED): seed of the generator behind `rate`, a small xorshift shared by
//!   all rules: for a given seed and order of calls the same calls fail.
//!
//! Order for each call: delay, then hang, then error rules, then drop, then the layer below.
//!
//! # Notes
//! * If any delay or hang is configured the filter reports the `blocking` capability, so the
//!   host runs its calls off the async reactor (and its call timeout applies); otherwise it
//!   reports the layer below's capabilities unchanged.
//! * The filter sees what the host sends down, after the host's own emulation: on a layer
//!   without native zeroing the host writes zero buffers (they meet `write` rules), and on one
//!   without native FUA a FUA write is followed by a flush (which meets `flush` rules).
//! * The rule set is logged at open (info level, plugin `fault`); each injected error and
//!   drop is logged at debug level, and the start and end of each hang at info level.

mod engine;

pub use engine::{Engine, Errno, Op, OpSel, Verdict};

use gateway_sdk::{Backend, BackendError, Capabilities, Extent, Filter, Host, Next, ZeroFlags};

pub struct Fault {
    next: Next,
    engine: Engine,
    host: Host,
}

impl Fault {
    /// Delay, hang and decide: `Ok(true)` passes the call down, `Ok(false)` drops it.
    fn gate(&self, op: Op, what: impl Fn() -> String) -> Result<bool, BackendError> {
        let delay = self.engine.delay(op);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if let Some(trigger) = self.engine.hang(op) {
            let start = std::time::Instant::now();
            self.host.log(3, "fault", &format!("{} hangs while {} exists", what(), trigger.display()));
            while std::fs::symlink_metadata(trigger).is_ok() {
                std::thread::sleep(engine::HANG_POLL);
            }
            self.host.log(3, "fault", &format!("{} resumes after {:?}", what(), start.elapsed()));
        }
        match self.engine.verdict(op) {
            Verdict::Pass => Ok(true),
            Verdict::Drop => {
                self.host.log(4, "fault", &format!("dropped {}", what()));
                Ok(false)
            }
            Verdict::Fail(e) => {
                self.host.log(4, "fault", &format!("{}: {}", what(), e.context));
                Err(e)
            }
        }
    }
}

fn range(op: Op, offset: u64, length: u64) -> impl Fn() -> String {
    move || format!("{} of {length} bytes at {offset}", op.name())
}

impl Filter for Fault {
    fn open(host: &Host, config: &gateway_sdk::serde_json::Value, next: Next) -> Result<Self, String> {
        let engine = Engine::from_config(config)?;
        host.log(3, "fault", &format!("fault filter: {engine}"));
        Ok(Fault { next, engine, host: *host })
    }

    fn next(&self) -> &Next {
        &self.next
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = self.next.capabilities();
        c.blocking |= self.engine.blocks();
        c
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        self.gate(Op::Read, range(Op::Read, offset, buf.len() as u64))?;
        self.next.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), BackendError> {
        if self.gate(Op::Write, range(Op::Write, offset, buf.len() as u64))? {
            self.next.write_at(buf, offset, fua)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        if self.gate(Op::Flush, || "flush".to_owned())? {
            self.next.flush()?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), BackendError> {
        if self.gate(Op::Trim, range(Op::Trim, offset, length))? {
            self.next.trim(offset, length, fua)?;
        }
        Ok(())
    }

    fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<(), BackendError> {
        if self.gate(Op::Zero, range(Op::Zero, offset, length))? {
            self.next.zero(offset, length, flags)?;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, BackendError> {
        self.gate(Op::Extents, range(Op::Extents, offset, length))?;
        self.next.extents(offset, length)
    }

    fn cache(&self, offset: u64, length: u64) -> Result<(), BackendError> {
        self.gate(Op::Cache, range(Op::Cache, offset, length))?;
        self.next.cache(offset, length)
    }
}

gateway_sdk::declare_plugin!(filter, Fault, "fault", env!("CARGO_PKG_VERSION"));
