//! The one error type of FsCore and its exhaustive errno mapping.
//!
//! Every variant names a condition a caller can act on. `errno()` has no
//! catch-all arm, so a new variant does not compile until someone decides which
//! errno the kernel should see for it.

use std::io;

/// Result of every FsCore operation.
pub type FsResult<T> = Result<T, FsError>;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("permission denied")]
    Access,
    #[error("operation not permitted")]
    Perm,
    #[error("invalid argument")]
    Invalid,
    #[error("name too long")]
    NameTooLong,
    #[error("no such attribute")]
    NoXattr,
    #[error("attribute value does not fit the buffer")]
    Range,
    #[error("attribute too large")]
    TooBig,
    #[error("operation not supported")]
    NotSupported,
    #[error("cross-device link")]
    CrossDevice,
    #[error("too many links")]
    TooManyLinks,
    #[error("bad file handle")]
    BadHandle,
    #[error("stale handle: the branch or node is gone")]
    Stale,
    #[error("read-only: snapshots never change")]
    ReadOnly,
    #[error("too many levels of symbolic links")]
    Loop,
    #[error("file too large")]
    FileTooBig,
    #[error("busy: {0}")]
    Busy(String),
    #[error("no such branch or snapshot: {0}")]
    UnknownView(String),
    #[error("name already taken: {0}")]
    NameTaken(String),
    #[error("backstore I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl FsError {
    /// The errno the kernel should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Access => libc::EACCES,
            FsError::Perm => libc::EPERM,
            FsError::Invalid => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NoXattr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::TooBig => libc::E2BIG,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::CrossDevice => libc::EXDEV,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::BadHandle => libc::EBADF,
            FsError::Stale => libc::ESTALE,
            FsError::ReadOnly => libc::EROFS,
            FsError::Loop => libc::ELOOP,
            FsError::FileTooBig => libc::EFBIG,
            FsError::Busy(_) => libc::EBUSY,
            FsError::UnknownView(_) => libc::ENOENT,
            FsError::NameTaken(_) => libc::EEXIST,
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// Whether this error is worth a warning in the log (the caller did nothing wrong).
    pub fn is_internal(&self) -> bool {
        matches!(self, FsError::Io(_) | FsError::Stale)
    }
}
