//! Why a backstore root could not be opened. Each message names the path and
//! what the user can do about it, because it is shown as-is by the mount binary.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HostFsError {
    #[error(
        "backstore root {} exists but is not a directory: move that file away or pass another backstore root",
        .path.display()
    )]
    NotADirectory { path: PathBuf },

    #[error(
        "backstore root {} is not writable and searchable by uid {uid} ({source}): fix its owner or \
         permissions (it needs rwx for this user, on a read-write filesystem) or pass another backstore root",
        .path.display()
    )]
    NotWritable {
        path: PathBuf,
        uid: u32,
        #[source]
        source: io::Error,
    },

    #[error(
        "backstore root {} is already in use by another AgentFS mount (the lock {} is held): unmount that \
         mount first, or pass another backstore root",
        .path.display(),
        .lock.display()
    )]
    InUse { path: PathBuf, lock: PathBuf },

    #[error("backstore root {}: cannot {op}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}
