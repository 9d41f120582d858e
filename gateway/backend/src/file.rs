//! Backend over a sparse regular file (a raw disk image).
//!
//! I/O is positional on one shared descriptor, so any number of threads and connections can
//! use it at once and a single `fdatasync` makes every completed write durable
//! (`can_multi_conn`). FUA writes go through a second descriptor of the same inode opened
//! with `O_DSYNC`, which makes just that write durable without flushing the whole file.
//! Trim and zero use `fallocate`; allocation is reported with `SEEK_DATA`/`SEEK_HOLE`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fallocate, posix_fadvise, FallocateFlags, PosixFadviseAdvice};
use nix::unistd::{lseek, Whence};

use crate::positional::Positional;
use crate::{check_range, push_extent, Backend, BackendError, Capabilities, Extent, Result, ZeroFlags};

/// Bound on the extents returned by one call (the caller asks again from where we stopped).
const MAX_EXTENTS: usize = 1024;
/// Largest zero buffer written when zeroing has to fall back to plain writes.
const ZERO_BUF: usize = 1 << 20;

const PUNCH: FallocateFlags = FallocateFlags::FALLOC_FL_PUNCH_HOLE.union(FallocateFlags::FALLOC_FL_KEEP_SIZE);

/// A regular file used as the export's storage.
pub struct FileBackend {
    io: Positional,
    /// What the open-time probe found; fixed, because capabilities are advertised once.
    punch_probed: bool,
    /// Cleared when the filesystem answers EOPNOTSUPP at run time, so we stop asking.
    punch_ok: AtomicBool,
    zero_range_ok: AtomicBool,
}

fn unsupported(e: Errno) -> bool {
    matches!(e, Errno::EOPNOTSUPP | Errno::ENOSYS)
}

impl FileBackend {
    /// Open (or, when `size` is given and the file is missing, create) a disk image.
    ///
    /// An existing image is never resized: a configured `size` that differs from the file's
    /// is refused, naming both.
    pub fn open(path: &Path, size: Option<u64>, read_only: bool) -> Result<FileBackend> {
        let shown = path.display();
        if size == Some(0) {
            return Err(BackendError::invalid(format!("{shown}: refusing an export of size 0")));
        }
        if size.is_some_and(|s| s > i64::MAX as u64) {
            return Err(BackendError::invalid(format!("{shown}: size exceeds the largest file")));
        }
        let file = match OpenOptions::new().read(true).write(!read_only).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match size {
                None => {
                    return Err(BackendError::io(
                        format!("{shown}: image does not exist and no size is configured to create it"),
                        e,
                    ))
                }
                Some(_) if read_only => {
                    return Err(BackendError::io(
                        format!("{shown}: image does not exist (not creating it for a read-only export)"),
                        e,
                    ))
                }
                Some(size) => create(path, size)?,
            },
            Err(e) => return Err(BackendError::io(format!("{shown}: open"), e)),
        };
        let meta = file.metadata().map_err(|e| BackendError::io(format!("{shown}: fstat"), e))?;
        if !meta.file_type().is_file() {
            return Err(BackendError::invalid(format!(
                "{shown}: not a regular file (use the block backend for devices)"
            )));
        }
        let actual = meta.len();
        let size = match size {
            Some(configured) if configured != actual => {
                return Err(BackendError::invalid(format!(
                    "{shown}: image is {actual} bytes but the configured size is {configured} \
                     bytes; refusing to resize an existing image"
                )))
            }
            Some(configured) => configured,
            None if actual == 0 => {
                return Err(BackendError::invalid(format!("{shown}: image is empty; refusing an export of size 0")))
            }
            None => actual,
        };
        let sync_file = if read_only { None } else { Some(reopen_dsync(path, &file, &meta)?) };
        let punch_probed = !read_only && probe_punch(file.as_raw_fd(), size);
        tracing::debug!(path = %shown, size, read_only, punch = punch_probed, "opened file backend");
        Ok(FileBackend {
            io: Positional { path: path.to_owned(), file, sync_file, size, read_only },
            punch_probed,
            punch_ok: AtomicBool::new(punch_probed),
            zero_range_ok: AtomicBool::new(!read_only),
        })
    }

    fn fallocate(&self, mode: FallocateFlags, offset: u64, length: u64) -> std::result::Result<(), Errno> {
        // Ranges were checked against `size`, which open() bounded by i64::MAX.
        let off = libc::off_t::try_from(offset).map_err(|_| Errno::EFBIG)?;
        let len = libc::off_t::try_from(length).map_err(|_| Errno::EFBIG)?;
        loop {
            match fallocate(self.io.fd(), mode, off, len) {
                Err(Errno::EINTR) => continue,
                r => return r,
            }
        }
    }

    /// Punch a hole; `Ok(false)` when the filesystem cannot.
    fn punch(&self, offset: u64, length: u64) -> Result<bool> {
        if !self.punch_ok.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.fallocate(PUNCH, offset, length) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(e) => {
                self.punch_ok.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(BackendError::errno(self.io.ctx(format_args!("punch hole {offset}+{length}")), e)),
        }
    }

    /// Zero without deallocating, by fallocate alone; `Ok(false)` when that is impossible here.
    fn zero_allocated(&self, offset: u64, length: u64) -> Result<bool> {
        if self.zero_range_ok.load(Ordering::Relaxed) {
            // No KEEP_SIZE: if the file was cut short behind our back, growing it back
            // towards the export size is what a write there would do too.
            match self.fallocate(FallocateFlags::FALLOC_FL_ZERO_RANGE, offset, length) {
                Ok(()) => return Ok(true),
                Err(e) if unsupported(e) => self.zero_range_ok.store(false, Ordering::Relaxed),
                Err(e) => {
                    return Err(BackendError::errno(self.io.ctx(format_args!("zero range {offset}+{length}")), e))
                }
            }
        }
        if !self.punch(offset, length)? {
            return Ok(false);
        }
        // The range now reads as zeroes; reallocating it only honours NO_HOLE, so a
        // filesystem that cannot preallocate still gets a correct (if sparse) result.
        match self.fallocate(FallocateFlags::empty(), offset, length) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(e) => Ok(true),
            Err(e) => Err(BackendError::errno(self.io.ctx(format_args!("reallocate {offset}+{length}")), e)),
        }
    }

    fn write_zeroes(&self, offset: u64, end: u64) -> Result<()> {
        let zeroes = vec![0u8; ZERO_BUF.min((end - offset) as usize)];
        let mut pos = offset;
        while pos < end {
            let n = zeroes.len().min((end - pos) as usize);
            self.io
                .file
                .write_all_at(&zeroes[..n], pos)
                .map_err(|e| BackendError::io(self.io.ctx(format_args!("write zeroes at {pos}+{n}")), e))?;
            pos += n as u64;
        }
        Ok(())
    }
}

/// Create a missing image sparse, with its parent directories.
fn create(path: &Path, size: u64) -> Result<File> {
    let shown = path.display();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| BackendError::io(format!("{shown}: create parent directories"), e))?;
    }
    let file = match OpenOptions::new().read(true).write(true).create_new(true).open(path) {
        Ok(f) => f,
        // Someone else created it meanwhile: use theirs (its size is checked by the caller).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| BackendError::io(format!("{shown}: open"), e));
        }
        Err(e) => return Err(BackendError::io(format!("{shown}: create"), e)),
    };
    if let Err(e) = file.set_len(size) {
        // Leave nothing behind that the next start would refuse as a size mismatch.
        let _ = std::fs::remove_file(path);
        return Err(BackendError::io(format!("{shown}: set length {size}"), e));
    }
    tracing::info!(path = %shown, size, "created sparse image");
    Ok(file)
}

/// Open the already open file a second time with `O_DSYNC`.
///
/// Via `/proc/self/fd` so that a rename or replacement of `path` since the first open cannot
/// hand us another file; the inode is checked either way.
fn reopen_dsync(path: &Path, file: &File, meta: &std::fs::Metadata) -> Result<File> {
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let open = |p: &Path| OpenOptions::new().write(true).custom_flags(libc::O_DSYNC).open(p);
    let sync_file = open(&proc_path)
        .or_else(|_| open(path))
        .map_err(|e| BackendError::io(format!("{}: open with O_DSYNC", path.display()), e))?;
    let sync_meta = sync_file.metadata().map_err(|e| BackendError::io(format!("{}: fstat", path.display()), e))?;
    if (sync_meta.dev(), sync_meta.ino()) != (meta.dev(), meta.ino()) {
        return Err(BackendError::new(
            crate::ErrorKind::Io,
            format!("{}: file was replaced while opening it", path.display()),
        ));
    }
    Ok(sync_file)
}

/// Whether the filesystem can punch holes.
///
/// A zero-length fallocate proves nothing (the VFS rejects it with EINVAL before asking the
/// filesystem), so punch one block past the end of the export, with KEEP_SIZE: there is no
/// data there to lose and the size does not change, but the filesystem still validates the
/// mode and answers EOPNOTSUPP if it has no hole punching. Any other failure is inconclusive;
/// we then assume support and let a run-time EOPNOTSUPP turn trims into no-ops.
fn probe_punch(fd: RawFd, size: u64) -> bool {
    const BLOCK: u64 = 4096;
    let Some(off) = size.checked_next_multiple_of(BLOCK).and_then(|o| i64::try_from(o).ok()) else {
        return true;
    };
    if off.checked_add(BLOCK as i64).is_none() {
        return true;
    }
    match fallocate(fd, PUNCH, off, BLOCK as i64) {
        Ok(()) => true,
        Err(e) if unsupported(e) => false,
        Err(e) => {
            tracing::debug!(error = %e, "hole punching probe inconclusive; assuming support");
            true
        }
    }
}

impl Backend for FileBackend {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn size(&self) -> u64 {
        self.io.size
    }

    fn capabilities(&self) -> Capabilities {
        let rw = !self.io.read_only;
        Capabilities {
            can_trim: self.punch_probed,
            can_zero: rw,
            // Hole punching alone suffices for every fast variant (see `zero`).
            can_fast_zero: self.punch_probed,
            can_extents: true,
            can_cache: true,
            can_multi_conn: true,
            native_fua: rw,
            blocking: true,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.io.ctx("read"), self.io.size, offset, buf.len() as u64)?;
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            match self.io.file.read_at(&mut buf[done..], pos) {
                // The file was cut short behind our back: past its end is a hole.
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let len = buf.len();
                    return Err(BackendError::io(self.io.ctx(format_args!("read at {offset}+{len}")), e));
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.io.write_at(buf, offset, fua)
    }

    fn flush(&self) -> Result<()> {
        self.io.flush()
    }

    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<()> {
        self.io.writable("trim")?;
        check_range(&self.io.ctx("trim"), self.io.size, offset, length)?;
        if length == 0 || !self.punch(offset, length)? {
            return Ok(());
        }
        if fua {
            self.io.fdatasync()?;
        }
        Ok(())
    }

    fn zero(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<()> {
        self.io.writable("zero")?;
        let end = check_range(&self.io.ctx("zero"), self.io.size, offset, length)?;
        if length == 0 {
            return Ok(());
        }
        // On Linux a punched hole reads back as zeroes, so it is the cheapest zero.
        let done = (flags.may_trim && self.punch(offset, length)?) || self.zero_allocated(offset, length)?;
        if !done {
            if flags.fast_only {
                return Err(BackendError::not_supported(self.io.ctx("fast zero")));
            }
            self.write_zeroes(offset, end)?;
        }
        if flags.fua {
            self.io.fdatasync()?;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let end = check_range(&self.io.ctx("extents"), self.io.size, offset, length)?;
        if length == 0 {
            return Err(BackendError::invalid(self.io.ctx("extents of an empty range")));
        }
        let file_len = self.io.file.metadata().map_err(|e| BackendError::io(self.io.ctx("fstat"), e))?.len();
        let seek = |pos: u64, whence: Whence| -> Result<Option<u64>> {
            let off = libc::off_t::try_from(pos).map_err(|_| BackendError::invalid(self.io.ctx("seek")))?;
            match lseek(self.io.fd(), off, whence) {
                Ok(found) => Ok(Some(u64::try_from(found).unwrap_or(pos))),
                Err(Errno::ENXIO) => Ok(None),
                Err(e) => Err(BackendError::errno(self.io.ctx(format_args!("lseek {whence:?} at {pos}")), e)),
            }
        };
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            // Reporting data where there is a hole is always safe, the reverse never: every
            // race (the file changing between the two seeks) resolves towards data.
            let (hole, next) = if pos >= file_len {
                (true, end)
            } else {
                match seek(pos, Whence::SeekData)? {
                    None => (true, end),
                    Some(data) if data > pos => (true, data.min(end)),
                    Some(_) => match seek(pos, Whence::SeekHole)? {
                        Some(h) if h > pos => (false, h.min(end)),
                        _ => (false, end),
                    },
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
        check_range(&self.io.ctx("cache"), self.io.size, offset, length)?;
        // A zero length would mean "to the end of the file" to posix_fadvise.
        if length == 0 {
            return Ok(());
        }
        let off = libc::off_t::try_from(offset).map_err(|_| BackendError::invalid(self.io.ctx("cache")))?;
        let len = libc::off_t::try_from(length).map_err(|_| BackendError::invalid(self.io.ctx("cache")))?;
        posix_fadvise(self.io.fd(), off, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED)
            .map_err(|e| BackendError::errno(self.io.ctx(format_args!("fadvise {offset}+{length}")), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{testutil, ErrorKind};
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 256 * 1024 + 777;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn matches_model(ops in testutil::ops(SIZE, 30)) {
            let dir = tempfile::tempdir().unwrap();
            let backend = FileBackend::open(&dir.path().join("disk.img"), Some(SIZE), false).unwrap();
            // Whether a punched range reads back as zeroes is the filesystem's business, so
            // trimmed bytes are "unspecified" in the model.
            testutil::check(&backend, &ops, false)?;
        }

        /// The same on a filesystem without any fallocate support (simulated): trim is a
        /// no-op, fast zero refuses without changing anything, and zero writes zeroes.
        #[test]
        fn matches_model_without_fallocate(ops in testutil::ops(SIZE, 30)) {
            let dir = tempfile::tempdir().unwrap();
            let backend = without_fallocate(FileBackend::open(&dir.path().join("disk.img"), Some(SIZE), false).unwrap());
            testutil::check(&backend, &ops, false)?;
        }

        /// ... and with hole punching but no ZERO_RANGE (like tmpfs): punch, then reallocate.
        #[test]
        fn matches_model_without_zero_range(ops in testutil::ops(SIZE, 30)) {
            let dir = tempfile::tempdir().unwrap();
            let backend = FileBackend::open(&dir.path().join("disk.img"), Some(SIZE), false).unwrap();
            backend.zero_range_ok.store(false, Ordering::Relaxed);
            testutil::check(&backend, &ops, false)?;
        }
    }

    fn without_fallocate(mut f: FileBackend) -> FileBackend {
        f.punch_probed = false;
        f.punch_ok.store(false, Ordering::Relaxed);
        f.zero_range_ok.store(false, Ordering::Relaxed);
        f
    }

    #[test]
    fn fast_zero_without_fallocate_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = without_fallocate(FileBackend::open(&dir.path().join("disk.img"), Some(4 * MIB), false).unwrap());
        assert!(!f.capabilities().can_fast_zero && !f.capabilities().can_trim);
        f.write_at(&vec![1; (3 * MIB) as usize], 0, false).unwrap();
        for may_trim in [false, true] {
            let err = f.zero(0, 3 * MIB, ZeroFlags { may_trim, fast_only: true, fua: true }).unwrap_err();
            assert_eq!(err.kind, ErrorKind::NotSupported);
        }
        f.trim(0, MIB, true).unwrap();
        let mut buf = vec![0; (3 * MIB) as usize];
        f.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 1));
        // The slow path writes zeroes in bounded buffers, across several of them here.
        f.zero(100, 3 * MIB - 200, ZeroFlags { may_trim: true, fua: true, ..Default::default() }).unwrap();
        f.read_at(&mut buf, 0).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 1) && buf[3 * MIB as usize - 100..].iter().all(|&b| b == 1));
        assert!(buf[100..3 * MIB as usize - 100].iter().all(|&b| b == 0));
    }

    #[test]
    fn works_on_tmpfs() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("no /dev/shm; skipping");
            return;
        };
        let f = FileBackend::open(&dir.path().join("disk.img"), Some(MIB), false).unwrap();
        f.write_at(&vec![1; MIB as usize], 0, false).unwrap();
        f.zero(0, 8192, ZeroFlags { fast_only: true, ..Default::default() }).unwrap();
        f.trim(8192, 8192, false).unwrap();
        let mut buf = vec![9; 3 * 8192];
        f.read_at(&mut buf, 0).unwrap();
        assert!(buf[..2 * 8192].iter().all(|&b| b == 0) && buf[2 * 8192..].iter().all(|&b| b == 1));
        // Preallocated but never written space counts as a hole (unwritten extents, or
        // pages not yet uptodate on tmpfs), which is fine: it reads as zeroes.
        let extents = f.extents(0, MIB).unwrap();
        assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), MIB);
        assert_eq!(extents.last().map(|e| e.hole), Some(false), "{extents:?}");
    }

    fn hole(length: u64) -> Extent {
        Extent { length, hole: true, zero: true }
    }

    fn data(length: u64) -> Extent {
        Extent { length, hole: false, zero: false }
    }

    #[test]
    fn creates_missing_image_sparse_with_parents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/disk.img");
        let f = FileBackend::open(&path, Some(4 * MIB), false).unwrap();
        assert_eq!(f.size(), 4 * MIB);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * MIB);
        assert_eq!(f.extents(0, 4 * MIB).unwrap(), vec![hole(4 * MIB)]);
        // Reopening without a size takes the file's.
        drop(f);
        assert_eq!(FileBackend::open(&path, None, true).unwrap().size(), 4 * MIB);
    }

    #[test]
    fn refuses_missing_image_without_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.img");
        let err = FileBackend::open(&path, None, false).err().unwrap();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert!(!path.exists());
        let err = FileBackend::open(&path, Some(MIB), true).err().unwrap();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn refuses_size_mismatch_without_touching_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![3u8; 4096]).unwrap();
        let err = FileBackend::open(&path, Some(MIB), false).err().unwrap();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()) && text.contains("4096"), "{text}");
        assert!(text.contains(&MIB.to_string()), "{text}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![3u8; 4096]);
        assert_eq!(FileBackend::open(&path, Some(4096), false).unwrap().size(), 4096);
    }

    #[test]
    fn refuses_size_zero_and_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        assert!(FileBackend::open(&path, Some(0), false).is_err());
        assert!(!path.exists());
        std::fs::write(&path, b"").unwrap();
        assert!(FileBackend::open(&path, None, false).is_err());
        let err = FileBackend::open(dir.path(), None, true).err().unwrap();
        assert!(err.to_string().contains("regular file"), "{err}");
    }

    #[test]
    fn punch_shows_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileBackend::open(&dir.path().join("disk.img"), Some(4 * MIB), false).unwrap();
        f.write_at(&vec![1; (2 * MIB) as usize], 0, false).unwrap();
        f.write_at(&vec![2; MIB as usize], 2 * MIB, true).unwrap();
        f.flush().unwrap();
        assert_eq!(f.extents(0, 4 * MIB).unwrap(), vec![data(3 * MIB), hole(MIB)]);
        if !f.capabilities().can_trim {
            eprintln!("filesystem of the temporary directory cannot punch holes; skipping");
            return;
        }
        f.trim(MIB, MIB / 2, true).unwrap();
        let quarter = MIB / 4;
        f.zero(2 * MIB + quarter, quarter, ZeroFlags { may_trim: true, fast_only: true, fua: false }).unwrap();
        assert_eq!(
            f.extents(0, 4 * MIB).unwrap(),
            vec![data(MIB), hole(MIB / 2), data(MIB / 2 + quarter), hole(quarter), data(2 * quarter), hole(MIB)]
        );
        // Zeroing without may_trim leaves the range allocated or at worst reports it as
        // unwritten (a hole); it must read as zeroes either way.
        f.zero(0, 4096, ZeroFlags { fast_only: true, ..Default::default() }).unwrap();
        let mut buf = vec![9; 8192];
        f.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0) && buf[4096..].iter().all(|&b| b == 1));
        // Requests in the middle of runs are clipped to the request.
        assert_eq!(f.extents(MIB + 10, 100).unwrap(), vec![hole(100)]);
        assert_eq!(f.extents(MIB - 10, 20).unwrap(), vec![data(10), hole(10)]);
    }

    #[test]
    fn short_file_reads_zeroes_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let f = FileBackend::open(&path, Some(MIB), false).unwrap();
        f.write_at(&[5; 8192], 0, false).unwrap();
        // Someone truncates the image behind our back.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
        let mut buf = vec![9; 8192];
        f.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 5) && buf[4096..].iter().all(|&b| b == 0));
        assert_eq!(f.extents(0, MIB).unwrap(), vec![data(4096), hole(MIB - 4096)]);
        let mut tail = vec![9; 100];
        f.read_at(&mut tail, MIB - 100).unwrap();
        assert_eq!(tail, vec![0; 100]);
    }

    #[test]
    fn read_only_refuses_mutations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![4u8; 8192]).unwrap();
        let f = FileBackend::open(&path, None, true).unwrap();
        let mut buf = [0; 16];
        f.read_at(&mut buf, 100).unwrap();
        assert_eq!(buf, [4; 16]);
        assert_eq!(f.write_at(&buf, 0, false).unwrap_err().kind, ErrorKind::ReadOnly);
        assert_eq!(f.trim(0, 4096, false).unwrap_err().kind, ErrorKind::ReadOnly);
        assert_eq!(f.zero(0, 4096, ZeroFlags::default()).unwrap_err().kind, ErrorKind::ReadOnly);
        f.flush().unwrap();
        f.cache(0, 8192).unwrap();
        assert!(!f.capabilities().can_trim && !f.capabilities().can_zero);
        assert_eq!(std::fs::read(&path).unwrap(), vec![4u8; 8192]);
    }

    #[test]
    fn extent_count_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3000 * 8192;
        let f = FileBackend::open(&dir.path().join("disk.img"), Some(size), false).unwrap();
        for i in 0..3000 {
            f.write_at(&[1; 4096], i * 8192, false).unwrap();
        }
        let extents = f.extents(0, size).unwrap();
        assert_eq!(extents.len(), MAX_EXTENTS);
        assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), MAX_EXTENTS as u64 * 4096);
    }
}
