//! Backend over a raw block device (a disk, partition, LV, loop device...).
//!
//! I/O is buffered and positional on one shared descriptor; `fdatasync` on a block device
//! writes back its page cache and flushes the device's volatile cache, so one flush covers
//! every connection. FUA writes use a second descriptor opened with `O_DSYNC`. Trim is
//! `BLKDISCARD`, zeroing `BLKZEROOUT`, and fast zeroing `fallocate(PUNCH_HOLE)`, for which
//! the kernel only uses the device's own write-zeroes command and never falls back to
//! writing zero pages. The kernel insists on logical-block alignment for all three, so
//! unaligned edges are either written (zero), skipped (trim), or refused (fast zero).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fallocate, posix_fadvise, FallocateFlags, PosixFadviseAdvice};

use crate::positional::Positional;
use crate::{check_range, Backend, BackendError, Capabilities, Extent, Result, ZeroFlags};

/// Largest zero buffer written for the unaligned edges of a zero request.
const ZERO_BUF: usize = 1 << 20;

/// Wrappers for the `<linux/fs.h>` block ioctls. The kernel defines BLKDISCARD and BLKZEROOUT
/// with `_IO` although they take a pointer, hence the `_bad` variants; BLKGETSIZE64's number
/// encodes `size_t` although it always writes a `u64`.
mod ioctl {
    nix::ioctl_read_bad!(blkgetsize64, nix::request_code_read!(0x12, 114, std::mem::size_of::<libc::size_t>()), u64);
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
}

/// A block device used as the export's storage.
pub struct BlockBackend {
    io: Positional,
    /// Logical block size: the alignment the kernel demands for discard and zero-out.
    block: u64,
    discard_probed: bool,
    write_zeroes_probed: bool,
    /// Cleared when the device answers EOPNOTSUPP at run time, so we stop asking.
    discard_ok: AtomicBool,
    write_zeroes_ok: AtomicBool,
}

impl BlockBackend {
    pub fn open(path: &Path, read_only: bool) -> Result<BlockBackend> {
        let shown = path.display();
        // Checked before opening: opening a FIFO would block, and a regular file is a mistake
        // the file backend exists for.
        let meta = std::fs::metadata(path).map_err(|e| BackendError::io(format!("{shown}: stat"), e))?;
        if !meta.file_type().is_block_device() {
            return Err(BackendError::invalid(format!(
                "{shown}: not a block device (use the file backend for image files)"
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| BackendError::io(format!("{shown}: open"), e))?;
        check_same_device(path, &file, meta.rdev())?;
        let fd = file.as_raw_fd();

        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live
        // local; `fd` is open (owned by `file`) for the duration of the call.
        unsafe { ioctl::blkgetsize64(fd, &mut size) }
            .map_err(|e| BackendError::errno(format!("{shown}: BLKGETSIZE64"), e))?;
        if size == 0 {
            return Err(BackendError::invalid(format!("{shown}: device has size 0 (no medium?)")));
        }
        if size > i64::MAX as u64 {
            return Err(BackendError::invalid(format!("{shown}: device size {size} is too large")));
        }
        let mut block: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points at a live local.
        let block = match unsafe { ioctl::blksszget(fd, &mut block) } {
            Ok(_) if block >= 512 && (block as u64).is_power_of_two() => block as u64,
            _ => 512,
        };

        let sysfs = |name: &str| queue_limit(meta.rdev(), name);
        let discard_probed = !read_only && !matches!(sysfs("discard_max_bytes"), Some(0));
        let write_zeroes_probed = !read_only && !matches!(sysfs("write_zeroes_max_bytes"), Some(0));
        let sync_file = if read_only { None } else { Some(reopen_dsync(path, &file, meta.rdev())?) };
        tracing::debug!(
            path = %shown, size, block, read_only, discard = discard_probed,
            write_zeroes = write_zeroes_probed, "opened block backend"
        );
        Ok(BlockBackend {
            io: Positional { path: path.to_owned(), file, sync_file, size, read_only },
            block,
            discard_probed,
            write_zeroes_probed,
            discard_ok: AtomicBool::new(discard_probed),
            write_zeroes_ok: AtomicBool::new(write_zeroes_probed),
        })
    }

    /// The logical blocks wholly inside `offset..end`, as `(start, end)`, if any.
    fn aligned_within(&self, offset: u64, end: u64) -> Option<(u64, u64)> {
        let start = offset.checked_next_multiple_of(self.block)?;
        let stop = end - end % self.block;
        (start < stop).then_some((start, stop))
    }

    fn write_zeroes(&self, offset: u64, end: u64) -> Result<()> {
        if offset >= end {
            return Ok(());
        }
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

    /// Write back (without a device flush) any dirty page cache in the range.
    fn writeback(&self, offset: u64, length: u64) -> Result<()> {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // Ranges were checked against `size`, which open() bounded by i64::MAX.
        let (off, len) = (offset as libc::off64_t, length as libc::off64_t);
        loop {
            // SAFETY: sync_file_range takes only integers; `fd` stays open (owned by
            // `self.io.file`) for the duration of the call.
            let r = unsafe { libc::sync_file_range(self.io.fd(), off, len, flags) };
            match Errno::result(r) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(BackendError::errno(self.io.ctx("sync_file_range"), e)),
            }
        }
    }

    fn fast_zero(&self, offset: u64, length: u64) -> Result<()> {
        let refuse = |why: &str| Err(BackendError::not_supported(self.io.ctx(format_args!("fast zero: {why}"))));
        if !self.write_zeroes_ok.load(Ordering::Relaxed) {
            return refuse("device has no write-zeroes command");
        }
        // `block` is a power of two (checked at open).
        if (offset | length) & (self.block - 1) != 0 {
            return refuse("range is not aligned to the logical block size");
        }
        // The kernel drops the range's page cache, dirty pages included, *before* it learns
        // that the device cannot zero it; written back first, a refusal loses nothing.
        self.writeback(offset, length)?;
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        loop {
            match fallocate(self.io.fd(), mode, offset as libc::off_t, length as libc::off_t) {
                Ok(()) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EOPNOTSUPP) => {
                    self.write_zeroes_ok.store(false, Ordering::Relaxed);
                    return refuse("device refused write-zeroes");
                }
                Err(e) => return Err(BackendError::errno(self.io.ctx(format_args!("fast zero {offset}+{length}")), e)),
            }
        }
    }
}

/// The device's request-queue limit `name` from sysfs, if it can be read. Partitions have no
/// `queue` directory of their own; theirs is their disk's, one level up.
fn queue_limit(rdev: u64, name: &str) -> Option<u64> {
    let dev = format!("/sys/dev/block/{}:{}", nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    [format!("{dev}/queue/{name}"), format!("{dev}/../queue/{name}")]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse().ok())
}

fn check_same_device(path: &Path, file: &File, rdev: u64) -> Result<()> {
    let meta = file.metadata().map_err(|e| BackendError::io(format!("{}: fstat", path.display()), e))?;
    if !meta.file_type().is_block_device() || meta.rdev() != rdev {
        return Err(BackendError::new(
            crate::ErrorKind::Io,
            format!("{}: device node was replaced while opening it", path.display()),
        ));
    }
    Ok(())
}

/// Open the already open device a second time with `O_DSYNC` (via `/proc/self/fd`, so that a
/// replaced device node cannot hand us another device; checked either way).
fn reopen_dsync(path: &Path, file: &File, rdev: u64) -> Result<File> {
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let open = |p: &Path| OpenOptions::new().write(true).custom_flags(libc::O_DSYNC).open(p);
    let sync_file = open(&proc_path)
        .or_else(|_| open(path))
        .map_err(|e| BackendError::io(format!("{}: open with O_DSYNC", path.display()), e))?;
    check_same_device(path, &sync_file, rdev)?;
    Ok(sync_file)
}

impl Backend for BlockBackend {
    fn kind(&self) -> &'static str {
        "block"
    }

    fn size(&self) -> u64 {
        self.io.size
    }

    fn capabilities(&self) -> Capabilities {
        let rw = !self.io.read_only;
        Capabilities {
            can_trim: self.discard_probed,
            can_zero: rw,
            can_fast_zero: self.write_zeroes_probed,
            can_extents: false,
            can_cache: true,
            can_multi_conn: true,
            native_fua: rw,
            blocking: true,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.io.ctx("read"), self.io.size, offset, buf.len() as u64)?;
        let len = buf.len();
        self.io
            .file
            .read_exact_at(buf, offset)
            .map_err(|e| BackendError::io(self.io.ctx(format_args!("read at {offset}+{len}")), e))
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.io.write_at(buf, offset, fua)
    }

    fn flush(&self) -> Result<()> {
        self.io.flush()
    }

    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<()> {
        self.io.writable("trim")?;
        let end = check_range(&self.io.ctx("trim"), self.io.size, offset, length)?;
        // Trim is advisory: partial blocks at the edges are simply kept.
        let Some((start, stop)) = self.aligned_within(offset, end) else {
            return Ok(());
        };
        if !self.discard_ok.load(Ordering::Relaxed) {
            return Ok(());
        }
        let range = [start, stop - start];
        // SAFETY: BLKDISCARD reads two u64s through the pointer, which points at a live
        // local array; `fd` stays open for the duration of the call.
        match unsafe { ioctl::blkdiscard(self.io.fd(), &range) } {
            Ok(_) => {}
            Err(Errno::EOPNOTSUPP) => {
                self.discard_ok.store(false, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => return Err(BackendError::errno(self.io.ctx(format_args!("BLKDISCARD {offset}+{length}")), e)),
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
        if flags.fast_only {
            self.fast_zero(offset, length)?;
        } else if let Some((start, stop)) = self.aligned_within(offset, end) {
            let range = [start, stop - start];
            // SAFETY: BLKZEROOUT reads two u64s through the pointer, which points at a live
            // local array; `fd` stays open for the duration of the call.
            unsafe { ioctl::blkzeroout(self.io.fd(), &range) }
                .map_err(|e| BackendError::errno(self.io.ctx(format_args!("BLKZEROOUT {start}+{}", range[1])), e))?;
            self.write_zeroes(offset, start)?;
            self.write_zeroes(stop, end)?;
        } else {
            self.write_zeroes(offset, end)?;
        }
        if flags.fua {
            self.io.fdatasync()?;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        check_range(&self.io.ctx("extents"), self.io.size, offset, length)?;
        if length == 0 {
            return Err(BackendError::invalid(self.io.ctx("extents of an empty range")));
        }
        Ok(vec![Extent { length, hole: false, zero: false }])
    }

    fn cache(&self, offset: u64, length: u64) -> Result<()> {
        check_range(&self.io.ctx("cache"), self.io.size, offset, length)?;
        // A zero length would mean "to the end of the device" to posix_fadvise.
        if length == 0 {
            return Ok(());
        }
        posix_fadvise(
            self.io.fd(),
            offset as libc::off_t,
            length as libc::off_t,
            PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        )
        .map_err(|e| BackendError::errno(self.io.ctx(format_args!("fadvise {offset}+{length}")), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// A loop device over a sparse file, detached on drop.
    struct Loop {
        device: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Loop {
        fn attach(size: u64) -> Option<Loop> {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("disk.img");
            File::create(&image).unwrap().set_len(size).unwrap();
            let out = match Command::new("losetup").arg("--find").arg("--show").arg(&image).output() {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("skipping: cannot run losetup: {e}");
                    return None;
                }
            };
            if !out.status.success() {
                eprintln!("skipping: losetup failed: {}", String::from_utf8_lossy(&out.stderr).trim());
                return None;
            }
            let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            Some(Loop { device, _dir: dir })
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            match Command::new("losetup").arg("-d").arg(&self.device).status() {
                Ok(status) if status.success() => {}
                other => eprintln!("losetup -d {} failed: {other:?}", self.device.display()),
            }
        }
    }

    fn read(b: &BlockBackend, offset: u64, length: usize) -> Vec<u8> {
        let mut buf = vec![0xa5; length];
        b.read_at(&mut buf, offset).unwrap();
        buf
    }

    #[test]
    fn loop_device() {
        let Some(dev) = Loop::attach(64 * MIB) else { return };
        let b = BlockBackend::open(&dev.device, false).unwrap();
        assert_eq!(b.size(), 64 * MIB);
        assert_eq!(b.kind(), "block");
        let caps = b.capabilities();
        eprintln!("{}: block size {}, {caps:?}", dev.device.display(), b.block);
        assert!(caps.can_zero && caps.native_fua && caps.can_multi_conn && !caps.can_extents);

        b.write_at(&vec![1; 4 * MIB as usize], 0, false).unwrap();
        b.write_at(&[2; 100], 4 * MIB - 50, true).unwrap();
        b.flush().unwrap();
        assert_eq!(read(&b, 4 * MIB - 60, 10), vec![1; 10]);
        assert_eq!(read(&b, 4 * MIB - 50, 100), vec![2; 100]);
        assert_eq!(b.extents(MIB, 10).unwrap(), vec![Extent { length: 10, hole: false, zero: false }]);
        b.cache(0, MIB).unwrap();

        // Slow zero, with unaligned edges written and the middle zeroed out.
        b.zero(100, MIB, ZeroFlags { fua: true, ..Default::default() }).unwrap();
        let got = read(&b, 0, 2 * MIB as usize);
        assert!(got[..100].iter().all(|&v| v == 1));
        assert!(got[100..MIB as usize + 100].iter().all(|&v| v == 0));
        assert!(got[MIB as usize + 100..].iter().all(|&v| v == 1));
        // Entirely inside one block.
        b.zero(2 * MIB + 3, 10, ZeroFlags::default()).unwrap();
        assert_eq!(read(&b, 2 * MIB, 16), [&[1u8; 3][..], &[0; 10], &[1; 3]].concat());

        // Fast zero: done by the device or refused with the contents intact.
        b.write_at(&vec![3; MIB as usize], 2 * MIB, false).unwrap();
        let fast = ZeroFlags { fast_only: true, ..Default::default() };
        match b.zero(2 * MIB, MIB, fast) {
            Ok(()) => assert_eq!(read(&b, 2 * MIB, MIB as usize), vec![0; MIB as usize]),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::NotSupported, "{e}");
                eprintln!("fast zero refused: {e}");
                assert_eq!(read(&b, 2 * MIB, MIB as usize), vec![3; MIB as usize]);
            }
        }
        let err = b.zero(2 * MIB + 1, 4096, fast).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotSupported);

        // Trim: contents afterwards are unspecified, but the bytes outside stay.
        b.write_at(&vec![4; 2 * MIB as usize], 8 * MIB, false).unwrap();
        b.trim(8 * MIB + 10, MIB, true).unwrap();
        assert_eq!(read(&b, 8 * MIB, 10), vec![4; 10]);
        assert_eq!(read(&b, 9 * MIB + 10, 100), vec![4; 100]);
        b.trim(0, 10, false).unwrap();

        assert_eq!(b.write_at(&[0; 2], 64 * MIB - 1, false).unwrap_err().kind, ErrorKind::Invalid);
        drop(b);

        let ro = BlockBackend::open(&dev.device, true).unwrap();
        assert_eq!(read(&ro, 0, 100), vec![1; 100]);
        assert_eq!(ro.write_at(&[0; 1], 0, false).unwrap_err().kind, ErrorKind::ReadOnly);
        assert_eq!(ro.trim(0, 4096, false).unwrap_err().kind, ErrorKind::ReadOnly);
        assert_eq!(ro.zero(0, 4096, ZeroFlags::default()).unwrap_err().kind, ErrorKind::ReadOnly);
    }

    #[test]
    fn refuses_non_devices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        File::create(&path).unwrap().set_len(MIB).unwrap();
        let err = BlockBackend::open(&path, false).err().unwrap();
        assert!(err.to_string().contains("not a block device"), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert!(BlockBackend::open(Path::new("/dev/null"), true).is_err());
        assert!(BlockBackend::open(&dir.path().join("missing"), true).is_err());
    }
}
