//! The built-in memory backend, built as a plugin: proves the built-in backends and plugins
//! share one interface, and lets the benchmark measure what the ABI costs.
//!
//! Config: `{ "size": "1GiB" }` (bytes, or a number with K/M/G/T).

use gateway_sdk::{Backend, BackendError, BackendPlugin, Capabilities, Extent, Host, ZeroFlags};

pub struct Memory(gateway_backend::memory::MemoryBackend);

fn parse_size(v: &gateway_sdk::serde_json::Value) -> Result<u64, String> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    let s = v.as_str().ok_or("`size` must be a number of bytes or a string like \"1GiB\"")?;
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        u => return Err(format!("unknown size unit `{u}`")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

impl BackendPlugin for Memory {
    fn open(_host: &Host, config: &gateway_sdk::serde_json::Value) -> Result<Self, String> {
        let size = parse_size(config.get("size").ok_or("missing `size`")?)?;
        if size == 0 {
            return Err("`size` must be greater than zero".into());
        }
        Ok(Memory(gateway_backend::memory::MemoryBackend::new(size)))
    }
}

impl Backend for Memory {
    fn kind(&self) -> &'static str {
        "memory-plugin"
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), BackendError> {
        self.0.write_at(buf, offset, fua)
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.0.flush()
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), BackendError> {
        self.0.trim(offset, length, fua)
    }
    fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<(), BackendError> {
        self.0.zero(offset, length, flags)
    }
    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, BackendError> {
        self.0.extents(offset, length)
    }
    fn cache(&self, offset: u64, length: u64) -> Result<(), BackendError> {
        self.0.cache(offset, length)
    }
}

gateway_sdk::declare_plugin!(backend, Memory, "memory", env!("CARGO_PKG_VERSION"));
