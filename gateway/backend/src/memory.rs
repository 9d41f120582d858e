//! Sparse RAM backend, for tests and benchmarks.
//!
//! The export is cut into 64 KiB chunks, each behind its own reader-writer lock and allocated
//! on first write, so concurrent small random I/Os from many threads rarely meet on a lock and
//! untouched space costs almost nothing. The chunk table itself is two-level: the top level
//! (at most [`MAX_PAGES`] slots) is allocated up front and each page of chunk slots only when
//! something is first written there. This keeps `new` cheap and infallible for any size, even
//! `u64::MAX`; when memory really runs out, writes fail with [`ErrorKind::NoSpace`] instead of
//! aborting the process.
//!
//! Chunks that were never written (or were wholly trimmed or zeroed) read as zeroes and are
//! reported as holes.

use std::sync::OnceLock;

use parking_lot::RwLock;

use crate::{check_range, push_extent, Backend, BackendError, Capabilities, ErrorKind, Extent, Result, ZeroFlags};

const CHUNK_SHIFT: u32 = 16;
const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;
const CHUNK_MASK: u64 = (1 << CHUNK_SHIFT) - 1;
/// Smallest page of chunk slots: 1024 slots (16 KiB of table) cover 64 MiB of export.
const MIN_PAGE_SHIFT: u32 = 10;
/// Upper bound on the top-level table, so that its up-front cost stays around 1 MiB whatever
/// the size; huge exports get proportionally bigger pages instead.
const MAX_PAGES: u64 = 1 << 16;
/// Bound on the extents returned by one call (the caller asks again from where we stopped).
const MAX_EXTENTS: usize = 1024;

/// One chunk; `None` is a hole. The thin `Box<[u8; N]>` keeps a slot at 16 bytes.
type Chunk = RwLock<Option<Box<[u8; CHUNK_SIZE]>>>;
type Page = Box<[Chunk]>;

/// Sparse, chunked RAM of a fixed size, lost when dropped.
pub struct MemoryBackend {
    size: u64,
    /// log2 of the number of chunk slots per page.
    page_shift: u32,
    pages: Box<[OnceLock<Page>]>,
}

impl MemoryBackend {
    pub fn new(size: u64) -> Self {
        let chunks = size.div_ceil(CHUNK_SIZE as u64);
        let page_chunks = chunks.div_ceil(MAX_PAGES).next_power_of_two().max(1 << MIN_PAGE_SHIFT);
        let page_shift = page_chunks.trailing_zeros();
        // At most MAX_PAGES entries by construction, so this allocation is small.
        let n_pages = chunks.div_ceil(page_chunks) as usize;
        let pages = (0..n_pages).map(|_| OnceLock::new()).collect();
        Self { size, page_shift, pages }
    }

    fn chunk_count(&self) -> u64 {
        self.size.div_ceil(CHUNK_SIZE as u64)
    }

    /// Bytes of export covered by one page.
    fn page_bytes_shift(&self) -> u32 {
        self.page_shift + CHUNK_SHIFT
    }

    /// The page holding byte `pos`, if it was ever allocated, with the index of the chunk
    /// within it.
    fn lookup(&self, pos: u64) -> Option<(&Page, usize)> {
        let page = self.pages.get(usize::try_from(pos >> self.page_bytes_shift()).ok()?)?.get()?;
        let slot = (pos >> CHUNK_SHIFT) & ((1 << self.page_shift) - 1);
        Some((page, usize::try_from(slot).ok()?))
    }

    fn chunk(&self, pos: u64) -> Option<&Chunk> {
        let (page, slot) = self.lookup(pos)?;
        page.get(slot)
    }

    /// The chunk slot for byte `pos`, allocating its page if needed.
    fn chunk_for_write(&self, pos: u64) -> Result<&Chunk> {
        let page_idx = pos >> self.page_bytes_shift();
        let cell = usize::try_from(page_idx)
            .ok()
            .and_then(|i| self.pages.get(i))
            .ok_or_else(|| BackendError::invalid(format!("memory: offset {pos} out of range")))?;
        if cell.get().is_none() {
            let first_chunk = page_idx << self.page_shift;
            let len = (self.chunk_count() - first_chunk).min(1 << self.page_shift);
            let page = alloc_page(len)?;
            // Another thread may have won the race; its page is as good as ours.
            let _ = cell.set(page);
        }
        let slot = (pos >> CHUNK_SHIFT) & ((1 << self.page_shift) - 1);
        cell.get()
            .and_then(|page| usize::try_from(slot).ok().and_then(|s| page.get(s)))
            .ok_or_else(|| BackendError::invalid(format!("memory: offset {pos} out of range")))
    }

    /// Zero a range, dropping the chunks it covers entirely.
    fn clear(&self, offset: u64, end: u64) {
        let mut pos = offset;
        while pos < end {
            let Some((page, slot)) = self.lookup(pos) else {
                // Nothing was ever written in this page: skip it whole.
                pos = next_boundary(pos, self.page_bytes_shift()).min(end);
                continue;
            };
            let next = next_boundary(pos, CHUNK_SHIFT).min(end);
            if let Some(chunk) = page.get(slot) {
                let within = (pos & CHUNK_MASK) as usize;
                let n = (next - pos) as usize;
                let mut guard = chunk.write();
                if n == CHUNK_SIZE {
                    *guard = None;
                } else if let Some(data) = guard.as_mut() {
                    data[within..within + n].fill(0);
                }
            }
            pos = next;
        }
    }
}

/// First multiple of `1 << shift` strictly above `pos` (saturating at `u64::MAX`).
fn next_boundary(pos: u64, shift: u32) -> u64 {
    ((pos >> shift) + 1).checked_shl(shift).filter(|&b| b > pos).unwrap_or(u64::MAX)
}

fn out_of_memory(what: &str) -> BackendError {
    BackendError::new(ErrorKind::NoSpace, format!("memory: out of memory allocating {what}"))
}

fn alloc_page(len: u64) -> Result<Page> {
    let len = usize::try_from(len).map_err(|_| out_of_memory("a chunk table page"))?;
    let mut v: Vec<Chunk> = Vec::new();
    v.try_reserve_exact(len).map_err(|_| out_of_memory("a chunk table page"))?;
    v.extend((0..len).map(|_| RwLock::new(None)));
    Ok(v.into_boxed_slice())
}

fn alloc_chunk() -> Result<Box<[u8; CHUNK_SIZE]>> {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(CHUNK_SIZE).map_err(|_| out_of_memory("a chunk"))?;
    v.resize(CHUNK_SIZE, 0);
    v.into_boxed_slice().try_into().map_err(|_| out_of_memory("a chunk"))
}

impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_trim: true,
            can_zero: true,
            can_fast_zero: true,
            can_extents: true,
            can_cache: false,
            can_multi_conn: true,
            native_fua: true,
            blocking: false,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("memory: read", self.size, offset, buf.len() as u64)?;
        let mut pos = offset;
        for dst in chunk_pieces_mut(buf, offset) {
            let within = (pos & CHUNK_MASK) as usize;
            match self.chunk(pos) {
                Some(chunk) => match chunk.read().as_ref() {
                    Some(data) => dst.copy_from_slice(&data[within..within + dst.len()]),
                    None => dst.fill(0),
                },
                None => dst.fill(0),
            }
            pos += dst.len() as u64;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
        check_range("memory: write", self.size, offset, buf.len() as u64)?;
        let mut pos = offset;
        for src in chunk_pieces(buf, offset) {
            let within = (pos & CHUNK_MASK) as usize;
            let chunk = self.chunk_for_write(pos)?;
            let mut guard = chunk.write();
            if guard.is_none() {
                *guard = Some(alloc_chunk()?);
            }
            if let Some(data) = guard.as_mut() {
                data[within..within + src.len()].copy_from_slice(src);
            }
            pos += src.len() as u64;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn trim(&self, offset: u64, length: u64, _fua: bool) -> Result<()> {
        let end = check_range("memory: trim", self.size, offset, length)?;
        self.clear(offset, end);
        Ok(())
    }

    fn zero(&self, offset: u64, length: u64, _flags: ZeroFlags) -> Result<()> {
        // Dropping whole chunks is both the fast path and the NO_HOLE-compatible one: a
        // RAM hole costs nothing to fill later, so there is no allocation to preserve.
        let end = check_range("memory: zero", self.size, offset, length)?;
        self.clear(offset, end);
        Ok(())
    }

    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let end = check_range("memory: extents", self.size, offset, length)?;
        if length == 0 {
            return Err(BackendError::invalid("memory: extents of an empty range"));
        }
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let (hole, next) = match self.lookup(pos) {
                None => (true, next_boundary(pos, self.page_bytes_shift()).min(end)),
                Some((page, slot)) => {
                    let allocated = page.get(slot).is_some_and(|c| c.read().is_some());
                    (!allocated, next_boundary(pos, CHUNK_SHIFT).min(end))
                }
            };
            if !push_extent(&mut out, next - pos, hole, MAX_EXTENTS) {
                break;
            }
            pos = next;
        }
        Ok(out)
    }

    fn cache(&self, offset: u64, length: u64) -> Result<()> {
        check_range("memory: cache", self.size, offset, length)?;
        Ok(())
    }
}

/// Split `buf` (which starts at export offset `offset`) at chunk boundaries.
fn chunk_pieces_mut(buf: &mut [u8], offset: u64) -> impl Iterator<Item = &mut [u8]> {
    let first = (CHUNK_SIZE - (offset & CHUNK_MASK) as usize).min(buf.len());
    let (head, tail) = buf.split_at_mut(first);
    std::iter::once(head).filter(|h| !h.is_empty()).chain(tail.chunks_mut(CHUNK_SIZE))
}

fn chunk_pieces(buf: &[u8], offset: u64) -> impl Iterator<Item = &[u8]> {
    let first = (CHUNK_SIZE - (offset & CHUNK_MASK) as usize).min(buf.len());
    let (head, tail) = buf.split_at(first);
    std::iter::once(head).filter(|h| !h.is_empty()).chain(tail.chunks(CHUNK_SIZE))
}
