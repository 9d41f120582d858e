//! Backend errors: a small matchable kind plus context and the OS error, mapped onto the NBD
//! error numbers at the protocol edge.

use std::io;

pub type Result<T> = std::result::Result<T, BackendError>;

/// What went wrong, in terms a protocol front end can translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Media or OS I/O failure.
    Io,
    /// Out of space (ENOSPC, EDQUOT, EFBIG).
    NoSpace,
    /// Writing to something opened read-only (EROFS, EPERM, EACCES).
    ReadOnly,
    /// The request itself is wrong (range, alignment).
    Invalid,
    /// The operation (or its fast variant) is not available.
    NotSupported,
    /// The backend is shutting down or has failed permanently.
    Shutdown,
}

/// An error from a backend call.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {kind:?}{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct BackendError {
    pub kind: ErrorKind,
    pub context: String,
    #[source]
    pub source: Option<io::Error>,
}

impl BackendError {
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self { kind, context: context.into(), source: None }
    }

    /// Wrap an OS error, classifying it by errno.
    pub fn io(context: impl Into<String>, err: io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => ErrorKind::NoSpace,
            Some(libc::EROFS) | Some(libc::EPERM) | Some(libc::EACCES) => ErrorKind::ReadOnly,
            Some(libc::EINVAL) => ErrorKind::Invalid,
            Some(libc::EOPNOTSUPP) => ErrorKind::NotSupported,
            _ => ErrorKind::Io,
        };
        Self { kind, context: context.into(), source: Some(err) }
    }

    pub fn not_supported(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotSupported, context)
    }

    pub fn invalid(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, context)
    }

    pub fn read_only(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::ReadOnly, context)
    }

    /// Wrap an errno as returned by `nix`, classifying it like [`BackendError::io`].
    pub fn errno(context: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Self::io(context, io::Error::from(errno))
    }
}
