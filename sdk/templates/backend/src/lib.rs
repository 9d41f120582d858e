//! A RAM disk: the smallest complete backend. Config: `{ "size": <bytes> }`.
use std::sync::Mutex;

use gateway_sdk::serde_json::Value;
use gateway_sdk::{Backend, BackendError, BackendPlugin, Capabilities, Extent, Host, ZeroFlags};

pub struct RamDisk(Mutex<Vec<u8>>);

impl RamDisk {
    /// Run `f` on the bytes at `offset..offset + len` (the host validates ranges; we check anyway).
    fn with<T>(&self, offset: u64, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> Result<T, BackendError> {
        let mut disk = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let bytes = disk.get_mut(start..start.saturating_add(len));
        bytes.map(f).ok_or_else(|| BackendError::invalid("ramdisk: range outside the disk"))
    }
}

impl BackendPlugin for RamDisk {
    fn open(_host: &Host, config: &Value) -> Result<Self, String> {
        let size = config.get("size").and_then(Value::as_u64).ok_or("`size` (bytes) is required")?;
        Ok(RamDisk(Mutex::new(vec![0; usize::try_from(size).map_err(|_| "`size` is too large")?])))
    }
}

impl Backend for RamDisk {
    fn kind(&self) -> &'static str {
        "ramdisk"
    }
    fn size(&self) -> u64 {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() as u64
    }
    fn capabilities(&self) -> Capabilities {
        // Native zero; everything else is emulated or passed over by the host. RAM never
        // blocks, so calls run inline; a flush through any connection covers all of them.
        Capabilities { can_zero: true, can_multi_conn: true, ..Capabilities::default() }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        self.with(offset, buf.len(), |d| buf.copy_from_slice(d))
    }
    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<(), BackendError> {
        self.with(offset, buf.len(), |d| d.copy_from_slice(buf))
    }
    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn trim(&self, _offset: u64, _length: u64, _fua: bool) -> Result<(), BackendError> {
        Ok(()) // can_trim is false: never called by the host, but the trait requires it.
    }
    fn zero(&self, offset: u64, length: u64, _flags: ZeroFlags) -> Result<(), BackendError> {
        let len = usize::try_from(length).map_err(|_| BackendError::invalid("ramdisk: zero too long"))?;
        self.with(offset, len, |d| d.fill(0))
    }
    fn extents(&self, _offset: u64, length: u64) -> Result<Vec<Extent>, BackendError> {
        Ok(vec![Extent { length, hole: false, zero: false }]) // can_extents is false
    }
    fn cache(&self, _offset: u64, _length: u64) -> Result<(), BackendError> {
        Ok(())
    }
}

gateway_sdk::declare_plugin!(backend, RamDisk, "ramdisk", env!("CARGO_PKG_VERSION"));
