//! The `Backstore` trait: where FsCore keeps the bytes of regular files.
//!
//! FsCore owns the tree; a backstore owns content objects, each one version of
//! one regular file's data, named by a [`ContentId`]. The backstore knows
//! nothing about branches, paths or snapshots: sharing and copy-on-write are
//! decided in FsCore, which asks the backstore to `clone_object` before a
//! shared object is written. `agentfs-hostfs` is the real implementation;
//! [`mem::MemBackstore`] serves tests that need no disk.

pub mod mem;

use crate::attr::StatFs;
use crate::ids::ContentId;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

/// What a backstore holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackstoreUsage {
    /// Content objects that exist.
    pub objects: u64,
    /// Bytes those objects occupy on the host (allocated, not apparent size).
    pub bytes: u64,
}

/// Storage for content objects. Every method may be called from many threads at once.
pub trait Backstore: Send + Sync + 'static {
    /// Create a new, empty content object.
    fn create(&self) -> io::Result<ContentId>;
    /// Create a new object holding the same bytes as `src`: a reflink (FICLONE)
    /// where the host filesystem supports it, else a copy.
    fn clone_object(&self, src: ContentId) -> io::Result<ContentId>;
    /// Read up to `buf.len()` bytes at `offset`; fewer only at end of object.
    fn read_at(&self, id: ContentId, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Write all of `data` at `offset`.
    fn write_at(&self, id: ContentId, data: &[u8], offset: u64) -> io::Result<()>;
    /// Truncate or extend (with a hole) to `len` bytes.
    fn set_len(&self, id: ContentId, len: u64) -> io::Result<()>;
    /// `fallocate(2)` with Linux `mode` flags (`FALLOC_FL_*`).
    fn fallocate(&self, id: ContentId, mode: i32, offset: u64, len: u64) -> io::Result<()>;
    /// Make the object's data (and, unless `data_only`, its metadata) durable.
    fn sync(&self, id: ContentId, data_only: bool) -> io::Result<()>;
    /// Delete the object. Its id is never handed out again.
    fn remove(&self, id: ContentId) -> io::Result<()>;
    /// Bytes allocated for the object on the host (for `st_blocks`).
    fn allocated_bytes(&self, id: ContentId) -> io::Result<u64>;
    /// The object's length and last modification, as the host sees them: the
    /// truth for files the kernel writes directly (passthrough).
    fn len_and_mtime(&self, id: ContentId) -> io::Result<(u64, SystemTime)>;
    /// Set the object's modification time (so a file the kernel writes
    /// directly keeps the mtime a user gave it).
    fn set_mtime(&self, id: ContentId, mtime: SystemTime) -> io::Result<()>;
    /// `lseek` with `SEEK_DATA` or `SEEK_HOLE` (`whence`) on the object.
    fn seek(&self, id: ContentId, offset: u64, whence: i32) -> io::Result<u64>;
    /// Capacity numbers of the filesystem the backstore lives on.
    fn statfs(&self) -> io::Result<StatFs>;
    /// Objects and bytes held now.
    fn usage(&self) -> BackstoreUsage;
    /// Flush everything the backstore holds to stable storage (`syncfs`).
    fn sync_all(&self) -> io::Result<()>;
    /// Every object that exists (for recovery, which removes those no tree
    /// names). Backstores that cannot list answer `Unsupported`.
    fn list_objects(&self) -> io::Result<Vec<ContentId>> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Whether `create` would answer now without waiting on the storage (an
    /// object made ahead of time is ready). A hint for where to run a create;
    /// `false`, the default, is always safe.
    fn create_is_quick(&self) -> bool {
        false
    }
    /// Whether objects are being made ahead of time, so that `create_is_quick`
    /// saying no means a burst of creates is outrunning that, not that none
    /// has been asked for yet. `false`, the default, is always safe.
    fn makes_objects_ahead(&self) -> bool {
        false
    }
    /// Whether [`Backstore::host_file`] of `id` would answer now without
    /// asking the storage (the file is open already). A hint for where to
    /// run an open; `false`, the default, is always safe.
    fn host_file_is_quick(&self, id: ContentId) -> bool {
        let _ = id;
        false
    }
    /// An open host file of the object, for a passthrough data path. Backstores
    /// without host files answer `Unsupported`.
    fn host_file(&self, id: ContentId) -> io::Result<Arc<File>> {
        let _ = id;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}
