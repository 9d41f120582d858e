//! The persistent change bitmap: which regions of a volume may differ from the peer.
//!
//! One bit per region (64 KiB by default). A bit is set, **and made durable**, before the
//! write that dirtied it is acknowledged to the host, so after a crash or restart of this
//! site the bitmap still covers every acknowledged change the peer may lack. Bits are
//! cleared only when the peer has the region again (after resync, or lazily once mirrored
//! updates to it were acknowledged), and a cleared bitmap is persisted too.
//!
//! On disk: a 40-byte header (magic `GWBM`, format version, volume size, region size, region
//! count, CRC32C of the bits) and the bits. It is rewritten whole through a temporary file and
//! `rename` (the bitmap of a 1 TiB volume at 64 KiB regions is 2 MiB), so a torn write leaves
//! the previous version. A bitmap that fails its checks is never read as clean: every region
//! is marked dirty and the caller is told.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parking_lot_free::Mutex;

/// Avoid a dependency for one lock: std's mutex, poisoning mapped to "take the data anyway"
/// (the bitmap's state is a plain bit array, valid at every instruction boundary).
mod parking_lot_free {
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(v: T) -> Self {
            Self(std::sync::Mutex::new(v))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
    }
}

const MAGIC: &[u8; 4] = b"GWBM";
const FORMAT: u32 = 1;
const HEADER: usize = 40;
pub const DEFAULT_REGION: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BitmapError {
    #[error("change bitmap {path}: {op}: {source}")]
    Io { path: String, op: &'static str, source: std::io::Error },
    #[error("change bitmap {path}: region size {region} must be a power of two of at least 4096")]
    BadRegion { path: String, region: u64 },
}

/// How a bitmap was found at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Created,
    Loaded,
    /// The file was unreadable, corrupt, or for another geometry: every region was marked
    /// dirty (a full resync), never clean.
    Reset(String),
}

pub struct ChangeBitmap {
    path: PathBuf,
    region: u64,
    regions: u64,
    volume_size: u64,
    bits: Mutex<Vec<u64>>,
    /// One writer at a time: persists share a temporary file.
    persisting: Mutex<()>,
}

impl ChangeBitmap {
    pub fn open(path: &Path, volume_size: u64, region: u64) -> Result<(ChangeBitmap, Opened), BitmapError> {
        let p = path.display().to_string();
        if !region.is_power_of_two() || region < 4096 {
            return Err(BitmapError::BadRegion { path: p, region });
        }
        let regions = volume_size.div_ceil(region);
        let words = regions.div_ceil(64) as usize;
        let bm = |bits| ChangeBitmap {
            path: path.to_path_buf(),
            region,
            regions,
            volume_size,
            bits: Mutex::new(bits),
            persisting: Mutex::new(()),
        };
        let io = |op, source| BitmapError::Io { path: p.clone(), op, source };
        let mut raw = Vec::new();
        match File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let b = bm(vec![0; words]);
                b.persist()?;
                return Ok((b, Opened::Created));
            }
            Err(e) => return Err(io("open", e)),
            Ok(mut f) => f.read_to_end(&mut raw).map_err(|e| io("read", e))?,
        };
        match parse(&raw, volume_size, region, regions, words) {
            Ok(bits) => Ok((bm(bits), Opened::Loaded)),
            Err(why) => {
                let b = bm(vec![0; words]);
                b.set_all();
                b.persist()?;
                Ok((b, Opened::Reset(why)))
            }
        }
    }

    pub fn region_size(&self) -> u64 {
        self.region
    }

    pub fn regions(&self) -> u64 {
        self.regions
    }

    fn range(&self, offset: u64, length: u64) -> std::ops::Range<u64> {
        let first = offset / self.region;
        let end = offset.saturating_add(length.max(1)).div_ceil(self.region).min(self.regions);
        first..end
    }

    /// Set the bits covering `offset..offset+length` in memory; true if any was newly set
    /// (the caller must then [`persist`](Self::persist) before acknowledging).
    pub fn set(&self, offset: u64, length: u64) -> bool {
        let mut bits = self.bits.lock();
        let mut newly = false;
        for r in self.range(offset, length) {
            let (w, b) = ((r / 64) as usize, r % 64);
            if bits[w] & (1 << b) == 0 {
                bits[w] |= 1 << b;
                newly = true;
            }
        }
        newly
    }

    /// Set bits and make them durable before returning (only does I/O for new bits).
    pub fn mark(&self, offset: u64, length: u64) -> Result<bool, BitmapError> {
        let newly = self.set(offset, length);
        if newly {
            self.persist()?;
        }
        Ok(newly)
    }

    pub fn is_dirty(&self, region: u64) -> bool {
        let bits = self.bits.lock();
        region < self.regions && bits[(region / 64) as usize] & (1 << (region % 64)) != 0
    }

    /// Any region overlapping the range dirty?
    pub fn any_dirty(&self, offset: u64, length: u64) -> bool {
        self.range(offset, length).any(|r| self.is_dirty(r))
    }

    /// Clear one region in memory (persist separately, typically once per batch).
    pub fn clear(&self, region: u64) {
        if region < self.regions {
            self.bits.lock()[(region / 64) as usize] &= !(1 << (region % 64));
        }
    }

    pub fn set_all(&self) {
        let mut bits = self.bits.lock();
        for (i, w) in bits.iter_mut().enumerate() {
            let start = i as u64 * 64;
            let n = self.regions.saturating_sub(start).min(64);
            *w = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        }
    }

    pub fn clear_all(&self) {
        self.bits.lock().iter_mut().for_each(|w| *w = 0);
    }

    /// Merge another bitmap's dirty regions (same geometry) into this one, in memory.
    pub fn merge_words(&self, other: &[u64]) {
        let mut bits = self.bits.lock();
        for (w, o) in bits.iter_mut().zip(other) {
            *w |= o;
        }
    }

    pub fn words(&self) -> Vec<u64> {
        self.bits.lock().clone()
    }

    /// Dirty regions in ascending order.
    pub fn dirty_regions(&self) -> Vec<u64> {
        let bits = self.bits.lock();
        let mut out = Vec::new();
        for (i, w) in bits.iter().enumerate() {
            let mut w = *w;
            while w != 0 {
                let b = w.trailing_zeros() as u64;
                out.push(i as u64 * 64 + b);
                w &= w - 1;
            }
        }
        out
    }

    pub fn dirty_count(&self) -> u64 {
        self.bits.lock().iter().map(|w| w.count_ones() as u64).sum()
    }

    /// Bytes of the volume covered by dirty regions (the last region may be short).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_regions().iter().map(|r| self.region_extent(*r).1).sum()
    }

    /// Offset and length of a region within the volume.
    pub fn region_extent(&self, region: u64) -> (u64, u64) {
        let off = region * self.region;
        (off, self.region.min(self.volume_size.saturating_sub(off)))
    }

    /// Write the bitmap durably (temporary file, fsync, rename, fsync of the directory).
    pub fn persist(&self) -> Result<(), BitmapError> {
        let p = self.path.display().to_string();
        let io = |op, source| BitmapError::Io { path: p.clone(), op, source };
        // Taken before the bits are copied, so the last writer always writes the newest bits.
        let _one_writer = self.persisting.lock();
        let bits = self.bits.lock().clone();
        let mut body = Vec::with_capacity(bits.len() * 8);
        for w in &bits {
            body.extend_from_slice(&w.to_le_bytes());
        }
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&self.volume_size.to_le_bytes());
        out.extend_from_slice(&self.region.to_le_bytes());
        out.extend_from_slice(&self.regions.to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&body);
        let tmp = self.path.with_extension("tmp");
        {
            let mut f =
                OpenOptions::new().create(true).write(true).truncate(true).open(&tmp).map_err(|e| io("create", e))?;
            f.write_all(&out).map_err(|e| io("write", e))?;
            f.sync_data().map_err(|e| io("fsync", e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| io("rename", e))?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync directory", e))?;
        }
        Ok(())
    }
}

fn parse(raw: &[u8], volume_size: u64, region: u64, regions: u64, words: usize) -> Result<Vec<u64>, String> {
    if raw.len() < HEADER || &raw[..4] != MAGIC {
        return Err("not a change bitmap (bad magic or too short)".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[i..i + 8]);
        u64::from_le_bytes(a)
    };
    if u32_at(4) != FORMAT {
        return Err(format!("unknown bitmap format {}", u32_at(4)));
    }
    if (u64_at(8), u64_at(16), u64_at(24)) != (volume_size, region, regions) {
        return Err(format!(
            "geometry changed (file: size {} region {}; now: size {volume_size} region {region})",
            u64_at(8),
            u64_at(16)
        ));
    }
    let body = &raw[HEADER..];
    if body.len() != words * 8 {
        return Err("bitmap length does not match its geometry".into());
    }
    if crc32c::crc32c(body) != u32_at(32) {
        return Err("bitmap checksum mismatch".into());
    }
    Ok(body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0xff; 8]))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_reopen_and_corruption_means_all_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vol.bitmap");
        let size = 10 * DEFAULT_REGION + 100;
        let (b, how) = ChangeBitmap::open(&p, size, DEFAULT_REGION).unwrap();
        assert_eq!(how, Opened::Created);
        assert_eq!(b.regions(), 11);
        assert!(b.mark(DEFAULT_REGION - 1, 2).unwrap());
        assert!(!b.mark(DEFAULT_REGION, 10).unwrap(), "already dirty: no new bit");
        assert!(b.mark(size - 1, 1).unwrap());
        assert_eq!(b.dirty_regions(), vec![0, 1, 10]);
        assert_eq!(b.dirty_bytes(), 2 * DEFAULT_REGION + 100);
        drop(b);
        let (b, how) = ChangeBitmap::open(&p, size, DEFAULT_REGION).unwrap();
        assert_eq!(how, Opened::Loaded);
        assert_eq!(b.dirty_regions(), vec![0, 1, 10]);
        b.clear(1);
        b.persist().unwrap();
        drop(b);
        let mut raw = std::fs::read(&p).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0x80;
        std::fs::write(&p, &raw).unwrap();
        let (b, how) = ChangeBitmap::open(&p, size, DEFAULT_REGION).unwrap();
        assert!(matches!(how, Opened::Reset(ref why) if why.contains("checksum")), "{how:?}");
        assert_eq!(b.dirty_count(), 11, "a corrupt bitmap is never read as clean");
        let (_, how) = ChangeBitmap::open(&p, size * 2, DEFAULT_REGION).unwrap();
        assert!(matches!(how, Opened::Reset(ref why) if why.contains("geometry")), "{how:?}");
    }

    #[test]
    fn merge_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = ChangeBitmap::open(&dir.path().join("a"), 1 << 30, DEFAULT_REGION).unwrap();
        let (b, _) = ChangeBitmap::open(&dir.path().join("b"), 1 << 30, DEFAULT_REGION).unwrap();
        a.set(0, 1);
        b.set(5 * DEFAULT_REGION, 1);
        a.merge_words(&b.words());
        assert_eq!(a.dirty_regions(), vec![0, 5]);
        a.clear_all();
        assert_eq!(a.dirty_count(), 0);
        assert!(ChangeBitmap::open(&dir.path().join("c"), 1 << 20, 1000).is_err());
    }
}
