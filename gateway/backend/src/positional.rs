//! What the file and block backends share: the path, a descriptor for ordinary positional
//! I/O and an `O_DSYNC` twin for FUA writes, the size and the read-only flag, and the calls
//! that are the same for a regular file and a block device.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::{check_range, BackendError, Result};

pub(crate) struct Positional {
    pub path: PathBuf,
    pub file: File,
    /// Opened with `O_DSYNC`: a write through it is durable on return (FUA). None when
    /// read-only.
    pub sync_file: Option<File>,
    pub size: u64,
    pub read_only: bool,
}

impl Positional {
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// An error context naming the path and the operation.
    pub fn ctx(&self, op: impl std::fmt::Display) -> String {
        format!("{}: {op}", self.path.display())
    }

    pub fn writable(&self, op: &str) -> Result<()> {
        if self.read_only {
            return Err(BackendError::read_only(self.ctx(format_args!("{op} on a read-only export"))));
        }
        Ok(())
    }

    pub fn fdatasync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| BackendError::io(self.ctx("fdatasync"), e))
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.writable("write")?;
        check_range(&self.ctx("write"), self.size, offset, buf.len() as u64)?;
        let target = match (&self.sync_file, fua) {
            (Some(sync_file), true) => sync_file,
            _ => &self.file,
        };
        target
            .write_all_at(buf, offset)
            .map_err(|e| BackendError::io(self.ctx(format_args!("write at {offset}+{}", buf.len())), e))
    }

    pub fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.fdatasync()
    }
}
