//! A filter that lets the first `max_writes` writes through and refuses the rest (EPERM), as a
//! write-once medium would. Config: `{ "max_writes": <n> }`. Only `write_at` is overridden:
//! every other call (reads, flush, zero, trim, ...) passes through to the layer below.
use std::sync::atomic::{AtomicU64, Ordering};

use gateway_sdk::serde_json::Value;
use gateway_sdk::{Backend, BackendError, Filter, Host, Next};

pub struct WriteLimit {
    next: Next,
    host: Host,
    max_writes: u64,
    writes: AtomicU64,
}

impl Filter for WriteLimit {
    fn open(host: &Host, config: &Value, next: Next) -> Result<Self, String> {
        let max_writes = config.get("max_writes").and_then(Value::as_u64).ok_or("`max_writes` is required")?;
        Ok(WriteLimit { next, host: *host, max_writes, writes: AtomicU64::new(0) })
    }
    fn next(&self) -> &Next {
        &self.next
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), BackendError> {
        // Calls arrive from many threads at once: count atomically.
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if n >= self.max_writes {
            if n == self.max_writes {
                self.host.log(2, "write-limit", &format!("{n} writes done; refusing writes from now on"));
            }
            return Err(BackendError::read_only(format!("write-limit: only {} writes allowed", self.max_writes)));
        }
        self.next.write_at(buf, offset, fua)
    }
}

gateway_sdk::declare_plugin!(filter, WriteLimit, "write-limit", env!("CARGO_PKG_VERSION"));
