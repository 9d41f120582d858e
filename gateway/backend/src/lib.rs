//! Storage backends: where an export's bytes live.
//!
//! Layout of the gateway (see `ARCHITECTURE.md`): the NBD server (`gateway::server`) decodes
//! requests with `nbd-proto`, validates them against the export, and calls the export's
//! write path (`gateway::volume`), which hands every mutation, in order, to a [`Backend`].
//! This crate holds the [`Backend`] contract and the built-in implementations:
//!
//! * [`file::FileBackend`]: a sparse regular file (positional I/O, `fdatasync`, `fallocate`,
//!   `SEEK_DATA`/`SEEK_HOLE`);
//! * [`block::BlockBackend`]: a raw block device (`BLKGETSIZE64`, `BLKDISCARD`, `BLKZEROOUT`);
//! * [`memory::MemoryBackend`]: sparse, chunked RAM, for tests and benchmarks.
//!
//! The contract is deliberately synchronous and buffer-oriented (the caller owns every buffer
//! for the duration of the call; nothing is retained afterwards) so that the plugin SDK can
//! expose the very same shape over a C ABI. Callers that run on an async runtime dispatch
//! calls of a backend whose [`Capabilities::blocking`] is set onto a blocking thread pool.

pub mod block;
pub mod error;
pub mod file;
pub mod memory;
mod positional;
#[cfg(test)]
mod testutil;

pub use error::{BackendError, ErrorKind, Result};

use std::path::PathBuf;
use std::sync::Arc;

/// What a backend can do natively. The server advertises NBD transmission flags from this,
/// so every field must be true only when the backend really has the property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `trim` deallocates (or at least forgets) data.
    pub can_trim: bool,
    /// `zero` is implemented natively (not by the caller writing zero buffers).
    pub can_zero: bool,
    /// `zero` with [`ZeroFlags::fast_only`] can succeed (otherwise it always fails fast).
    pub can_fast_zero: bool,
    /// `extents` reports real allocation; when false, everything is reported as data.
    pub can_extents: bool,
    /// `cache` does something useful (prefetch); when false, it is a successful no-op.
    pub can_cache: bool,
    /// A `flush` through any caller makes every write that completed before it durable,
    /// whichever connection issued it (NBD `CAN_MULTI_CONN`).
    pub can_multi_conn: bool,
    /// `write_at(.., fua = true)` is durable on return without a separate flush.
    pub native_fua: bool,
    /// Calls may block on I/O; async callers must run them off the reactor.
    pub blocking: bool,
}

/// Flags for [`Backend::zero`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The range may be deallocated as long as it reads back as zeroes
    /// (NBD: `NO_HOLE` not set).
    pub may_trim: bool,
    /// Fail with [`ErrorKind::NotSupported`] at once unless zeroing is faster than writing
    /// zero buffers (NBD `FAST_ZERO`); the contents must be unchanged on that failure.
    pub fast_only: bool,
    /// Durable on return (NBD `FUA`).
    pub fua: bool,
}

/// One run of blocks with the same allocation state, as reported by [`Backend::extents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// Not allocated (NBD `base:allocation` `NBD_STATE_HOLE`).
    pub hole: bool,
    /// Known to read as zeroes (NBD `NBD_STATE_ZERO`).
    pub zero: bool,
}

/// Storage behind one export.
///
/// Contract:
/// * Offsets and lengths passed in are already validated by the caller to lie within
///   `0..size()`; a backend may still return [`ErrorKind::Invalid`] defensively.
/// * Every method may be called concurrently from many threads (`&self`); a backend
///   serialises internally where it must.
/// * Buffers are owned by the caller and valid only for the duration of the call.
/// * A method returns once the operation is complete (there is no separate completion);
///   with `fua`, once it is also durable.
pub trait Backend: Send + Sync + 'static {
    /// Short name of the implementation, for logs and status (`"file"`, `"memory"`, ...).
    fn kind(&self) -> &'static str;
    /// Size in bytes; fixed for the lifetime of the backend.
    fn size(&self) -> u64;
    fn capabilities(&self) -> Capabilities;
    /// Fill `buf` with the bytes at `offset..offset + buf.len()`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Discard a range; afterwards its contents are unspecified (they may or may not read as
    /// zeroes). Must succeed as a no-op when `can_trim` is false.
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<()>;
    /// Make a range read back as zeroes.
    fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<()>;
    /// Allocation state of the range starting at `offset`: extents in order, the first one
    /// starting at `offset`, together covering at least one byte and at most `length` bytes.
    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>>;
    /// Hint that the range will be read soon.
    fn cache(&self, offset: u64, length: u64) -> Result<()>;
}

/// Defensive bounds check shared by the backends: `offset..offset + length` must lie within
/// `0..size`. Returns the end of the range.
pub(crate) fn check_range(what: &str, size: u64, offset: u64, length: u64) -> Result<u64> {
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(end),
        _ => Err(BackendError::invalid(format!("{what}: range {offset}+{length} is outside the export (size {size})"))),
    }
}

/// Append a run to an extent list, merging it into the last one when the state is the same.
/// Returns false (appending nothing) when that would make more than `max` extents; the
/// caller then stops and returns what it has, which the contract allows.
pub(crate) fn push_extent(out: &mut Vec<Extent>, length: u64, hole: bool, max: usize) -> bool {
    if let Some(last) = out.last_mut().filter(|last| last.hole == hole) {
        last.length += length;
    } else if out.len() >= max {
        return false;
    } else {
        out.push(Extent { length, hole, zero: hole });
    }
    true
}

/// Which backend to open, as named by the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// A regular file, created sparse with `size` bytes if missing. When the file exists
    /// and `size` is given, the sizes must match (a mismatch is refused rather than
    /// silently truncating or growing someone's image).
    File { path: PathBuf, size: Option<u64> },
    /// A raw block device; its size comes from the device.
    Block { path: PathBuf },
    /// Sparse RAM of `size` bytes, lost at exit.
    Memory { size: u64 },
}

/// Open the backend a spec names. `read_only` opens files and devices without write access.
pub fn open(spec: &BackendSpec, read_only: bool) -> Result<Arc<dyn Backend>> {
    Ok(match spec {
        BackendSpec::File { path, size } => Arc::new(file::FileBackend::open(path, *size, read_only)?),
        BackendSpec::Block { path } => Arc::new(block::BlockBackend::open(path, read_only)?),
        BackendSpec::Memory { size } => Arc::new(memory::MemoryBackend::new(*size)),
    })
}

/// A shared backend is a backend: lets `Arc<dyn Backend>` stand wherever a `Backend` is
/// expected (the plugin SDK exports the layer below a filter this way).
impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        (**self).write_at(buf, offset, fua)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<()> {
        (**self).trim(offset, length, fua)
    }
    fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<()> {
        (**self).zero(offset, length, flags)
    }
    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        (**self).extents(offset, length)
    }
    fn cache(&self, offset: u64, length: u64) -> Result<()> {
        (**self).cache(offset, length)
    }
}
