//! `testkit`: a deliberately misbehaving backend plugin, for testing how the host contains
//! plugins that panic, fail or hang. (A plugin library exports one entry point, so the
//! misbehaviours are modes of one backend rather than separate plugins.)
//!
//! Config: `{ mode = "...", size = BYTES }`, both optional (`mode` defaults to `"ok"`, `size`
//! to 64 MiB; `size` also takes strings like `"16MiB"`). Unknown keys are refused.
//! Storage is RAM, as in the memory backend; the mode picks what goes wrong:
//!
//! * `"ok"`: behaves (a plain memory backend);
//! * `"panic-in-open"`: `open` panics (the host must refuse the config, naming the panic);
//! * `"panic-on-OP"`: every `OP` call panics with `testkit: panic on OP`;
//! * `"error-on-OP"`: every `OP` call fails with `ErrorKind::Io` and the message
//!   `testkit: injected OP error`;
//! * `"block-on-OP"`: every `OP` call blocks forever (a loop of sleeps), logging
//!   `testkit: OP blocked forever` (info) once per call as it starts;
//!
//! where `OP` is `read`, `write`, `flush`, `trim` or `zero`.
//!
//! The backend reports the `blocking` capability, so the host runs its calls on its blocking
//! pool and applies the export's `plugin_call_timeout_ms` to them.

use std::time::Duration;

use gateway_backend::memory::MemoryBackend;
use gateway_sdk::serde_json::Value;
use gateway_sdk::{Backend, BackendError, BackendPlugin, Capabilities, ErrorKind, Extent, Host, ZeroFlags};

pub const DEFAULT_SIZE: u64 = 64 << 20;

const OPS: [&str; 5] = ["read", "write", "flush", "trim", "zero"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Panic,
    Error,
    Block,
}

/// What misbehaves: `None` for `"ok"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub Option<(Action, &'static str)>);

impl Mode {
    /// Parse a mode other than `panic-in-open` (which never yields an instance).
    pub fn parse(s: &str) -> Result<Mode, String> {
        if s == "ok" {
            return Ok(Mode(None));
        }
        let bad = || {
            format!(
                "`mode`: unknown mode `{s}` (expected ok, panic-in-open, or panic-on-OP, error-on-OP, block-on-OP \
                 with OP one of {})",
                OPS.join(", ")
            )
        };
        let (action, op) = s.split_once("-on-").ok_or_else(bad)?;
        let action = match action {
            "panic" => Action::Panic,
            "error" => Action::Error,
            "block" => Action::Block,
            _ => return Err(bad()),
        };
        let op = OPS.iter().find(|o| **o == op).ok_or_else(bad)?;
        Ok(Mode(Some((action, op))))
    }
}

pub struct Misbehave {
    mem: MemoryBackend,
    mode: Mode,
    host: Host,
}

fn parse_size(v: &Value) -> Result<u64, String> {
    let n = if let Some(n) = v.as_u64() {
        n
    } else {
        let s = v.as_str().ok_or_else(|| format!("`size`: expected bytes or a string like \"16MiB\", got {v}"))?;
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`size`: `{s}` is not a size"))?;
        let shift = match unit {
            "" | "B" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            u => return Err(format!("`size`: unknown unit `{u}`")),
        };
        n.checked_mul(1 << shift).ok_or_else(|| format!("`size`: `{s}` is too large"))?
    };
    if n == 0 {
        return Err("`size`: must be greater than zero".into());
    }
    Ok(n)
}

impl Misbehave {
    /// Misbehave if the mode says so for `op`.
    fn check(&self, op: &'static str) -> Result<(), BackendError> {
        match self.mode.0 {
            Some((Action::Panic, o)) if o == op => panic!("testkit: panic on {op}"),
            Some((Action::Error, o)) if o == op => {
                Err(BackendError::new(ErrorKind::Io, format!("testkit: injected {op} error")))
            }
            Some((Action::Block, o)) if o == op => {
                self.host.log(3, "testkit", &format!("testkit: {op} blocked forever"));
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            _ => Ok(()),
        }
    }
}

impl BackendPlugin for Misbehave {
    fn open(host: &Host, config: &Value) -> Result<Self, String> {
        let t = config.as_object().ok_or_else(|| format!("config: expected a table, got {config}"))?;
        if let Some(k) = t.keys().find(|k| !["mode", "size"].contains(&k.as_str())) {
            return Err(format!("unknown key `{k}` (expected mode, size)"));
        }
        let mode = match t.get("mode") {
            None => "ok",
            Some(v) => v.as_str().ok_or_else(|| format!("`mode`: expected a string, got {v}"))?,
        };
        if mode == "panic-in-open" {
            panic!("testkit: panic in open, as configured");
        }
        let parsed = Mode::parse(mode)?;
        let size = t.get("size").map(parse_size).transpose()?.unwrap_or(DEFAULT_SIZE);
        host.log(3, "testkit", &format!("testkit backend: mode {mode}, size {size}"));
        Ok(Misbehave { mem: MemoryBackend::new(size), mode: parsed, host: *host })
    }
}

impl Backend for Misbehave {
    fn kind(&self) -> &'static str {
        "testkit"
    }
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { blocking: true, ..self.mem.capabilities() }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        self.check("read")?;
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), BackendError> {
        self.check("write")?;
        self.mem.write_at(buf, offset, fua)
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.check("flush")?;
        self.mem.flush()
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), BackendError> {
        self.check("trim")?;
        self.mem.trim(offset, length, fua)
    }
    fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<(), BackendError> {
        self.check("zero")?;
        self.mem.zero(offset, length, flags)
    }
    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, BackendError> {
        self.mem.extents(offset, length)
    }
    fn cache(&self, offset: u64, length: u64) -> Result<(), BackendError> {
        self.mem.cache(offset, length)
    }
}

gateway_sdk::declare_plugin!(backend, Misbehave, "testkit", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::serde_json::json;

    fn open(cfg: Value) -> Result<Misbehave, String> {
        Misbehave::open(&Host::standalone(), &cfg)
    }

    #[test]
    fn modes() {
        assert_eq!(Mode::parse("ok"), Ok(Mode(None)));
        assert_eq!(Mode::parse("panic-on-write"), Ok(Mode(Some((Action::Panic, "write")))));
        assert_eq!(Mode::parse("block-on-flush"), Ok(Mode(Some((Action::Block, "flush")))));
        for bad in ["panic", "panic-on-extents", "explode-on-write", ""] {
            assert!(Mode::parse(bad).unwrap_err().contains("unknown mode"), "{bad}");
        }
    }

    #[test]
    fn error_on_read_fails_reads_only() {
        let b = open(json!({ "mode": "error-on-read", "size": "1MiB" })).unwrap();
        assert_eq!(b.size(), 1 << 20);
        assert!(b.capabilities().blocking);
        b.write_at(b"abc", 0, false).unwrap();
        let e = b.read_at(&mut [0; 3], 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io);
        assert_eq!(e.context, "testkit: injected read error");
    }

    #[test]
    fn ok_mode_stores_data() {
        let b = open(json!({})).unwrap();
        assert_eq!(b.size(), DEFAULT_SIZE);
        b.write_at(b"abc", 4096, false).unwrap();
        let mut buf = [0; 3];
        b.read_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"abc");
    }

    #[test]
    fn panics_where_configured() {
        let b = open(json!({ "mode": "panic-on-write" })).unwrap();
        b.read_at(&mut [0; 8], 0).unwrap();
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.write_at(b"x", 0, false))).unwrap_err();
        assert_eq!(gateway_sdk::panic_message(&p), "testkit: panic on write");
        let p = std::panic::catch_unwind(|| open(json!({ "mode": "panic-in-open" }))).err().unwrap();
        assert!(gateway_sdk::panic_message(&p).contains("panic in open"));
    }

    #[test]
    fn bad_config() {
        assert!(open(json!({ "mood": "ok" })).err().unwrap().contains("unknown key `mood`"));
        assert!(open(json!({ "mode": 3 })).err().unwrap().contains("`mode`"));
        assert!(open(json!({ "size": 0 })).err().unwrap().contains("`size`"));
        assert!(open(json!({ "size": "1XB" })).err().unwrap().contains("`size`"));
    }
}
