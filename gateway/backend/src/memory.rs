//! Sparse RAM backend, for tests and benchmarks.
//!
//! The export is cut into 64 KiB chunks, each behind its own reader-writer lock and allocated
//! on first write, so concurrent small random I/Os from many threads rarely meet on a lock and
//! untouched space costs almost nothing. The chunk table itself is two-level: the top level
//! (at most 65536 slots) is allocated up front and each page of chunk slots only when
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
/// Upper bound on the top-level table, so that its up-front cost stays under 2 MiB whatever
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

    /// log2 of the bytes of export covered by one page.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;
    use proptest::prelude::*;
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_model(ops in testutil::ops(5 * CHUNK_SIZE as u64 + 1234, 40)) {
            let backend = MemoryBackend::new(5 * CHUNK_SIZE as u64 + 1234);
            testutil::check(&backend, &ops, true)?;
        }
    }

    fn extent(length: u64, hole: bool) -> Extent {
        Extent { length, hole, zero: hole }
    }

    #[test]
    fn whole_chunks_are_deallocated() {
        let c = CHUNK_SIZE as u64;
        let m = MemoryBackend::new(4 * c);
        m.write_at(&vec![7; 3 * CHUNK_SIZE], 0, false).unwrap();
        assert_eq!(m.extents(0, 4 * c).unwrap(), vec![extent(3 * c, false), extent(c, true)]);
        // Trim takes the middle chunk away; a partial zero leaves its chunk allocated.
        m.trim(c, c, false).unwrap();
        m.zero(2 * c, 10, ZeroFlags { fast_only: true, ..Default::default() }).unwrap();
        assert_eq!(
            m.extents(0, 4 * c).unwrap(),
            vec![extent(c, false), extent(c, true), extent(c, false), extent(c, true)]
        );
        let mut buf = vec![1; 20];
        m.read_at(&mut buf, 2 * c).unwrap();
        assert_eq!(&buf[..10], &[0; 10]);
        assert_eq!(&buf[10..], &[7; 10]);
        // A request in the middle of a run reports from its own offset and stops at its end.
        assert_eq!(m.extents(c + 5, c).unwrap(), vec![extent(c - 5, true), extent(5, false)]);
    }

    #[test]
    fn extent_count_is_bounded() {
        let c = CHUNK_SIZE as u64;
        let m = MemoryBackend::new(3000 * c);
        for i in (0..3000).step_by(2) {
            m.write_at(&[1], i * c, false).unwrap();
        }
        let extents = m.extents(0, 3000 * c).unwrap();
        assert_eq!(extents.len(), MAX_EXTENTS);
        assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), MAX_EXTENTS as u64 * c);
    }

    #[test]
    fn huge_sizes_cost_nothing_until_written() {
        let m = MemoryBackend::new(u64::MAX);
        assert!(m.pages.len() as u64 <= MAX_PAGES);
        let mut buf = [1u8; 4096];
        m.read_at(&mut buf, u64::MAX - 4096).unwrap();
        assert_eq!(buf, [0; 4096]);
        assert_eq!(m.extents(0, u64::MAX).unwrap(), vec![extent(u64::MAX, true)]);
        m.zero(0, u64::MAX, ZeroFlags::default()).unwrap();
        assert!(m.read_at(&mut buf, u64::MAX - 10).unwrap_err().kind == ErrorKind::Invalid);

        let pib = 1u64 << 50;
        let m = MemoryBackend::new(pib);
        m.write_at(&[9; 4096], pib - 4096, true).unwrap();
        m.read_at(&mut buf, pib - 4096).unwrap();
        assert_eq!(buf, [9; 4096]);
        let c = CHUNK_SIZE as u64;
        assert_eq!(m.extents(pib - 2 * c, 2 * c).unwrap(), vec![extent(c, true), extent(c, false)]);
    }

    #[test]
    fn out_of_range_is_invalid() {
        let m = MemoryBackend::new(MIB);
        let err = m.write_at(&[0; 2], MIB - 1, false).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert_eq!(m.trim(u64::MAX, 2, false).unwrap_err().kind, ErrorKind::Invalid);
        assert_eq!(m.extents(MIB, 0).unwrap_err().kind, ErrorKind::Invalid);
        let empty = MemoryBackend::new(0);
        empty.read_at(&mut [], 0).unwrap();
    }

    #[test]
    fn concurrent_random_io() {
        let size = 64 * MIB;
        let m = Arc::new(MemoryBackend::new(size));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    // Each thread owns the 4 KiB blocks congruent to t mod 8, spread over
                    // every chunk, so threads constantly meet on the same chunks.
                    let mut x = t + 1;
                    for _ in 0..4000 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let block = ((x >> 33) % (size / 4096 / 8)) * 8 + t;
                        let data = testutil::pattern(t as u8, block * 4096, 4096);
                        m.write_at(&data, block * 4096, false).unwrap();
                        let mut back = vec![0; 4096];
                        m.read_at(&mut back, block * 4096).unwrap();
                        assert_eq!(back, data);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
