//! STUB API (bodies being written): the public surface of FsCore.
#![allow(unused_variables)]

use crate::attr::{Attr, DirEntry, SetAttr, StatFs};
use crate::backstore::{Backstore, BackstoreUsage};
use crate::binding::{BindingInfo, ProcessInfo, ProcessTable};
use crate::creds::Ctx;
use crate::error::FsResult;
use crate::ids::{BranchId, HandleId, NodeId, SnapshotId};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

/// How FsCore is set up.
pub struct CoreConfig {
    /// Where process facts come from (`ProcFs` in production).
    pub process_table: Box<dyn ProcessTable>,
    /// Name of the branch that exists from the start.
    pub default_branch_name: String,
}

/// Flags of `rename`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// Flags of `setxattr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XattrSet {
    /// Create or replace.
    #[default]
    Any,
    /// Fail with EEXIST if present (XATTR_CREATE).
    Create,
    /// Fail with ENODATA if absent (XATTR_REPLACE).
    Replace,
}

/// The open(2) flags FsCore acts on, decoded from the raw flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
}

impl OpenFlags {
    /// Decode raw `open(2)` flags.
    pub fn from_raw(flags: i32) -> OpenFlags {
        let acc = flags & libc::O_ACCMODE;
        OpenFlags {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

/// A snapshot as the control plane lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub name: String,
    /// The branch it was taken of.
    pub branch: BranchId,
    pub created: SystemTime,
    /// Branches created from it that still exist.
    pub children: Vec<BranchId>,
}

/// A branch as the control plane lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchInfo {
    pub id: BranchId,
    pub name: String,
    /// The snapshot it was created from; `None` for the default branch.
    pub from: Option<SnapshotId>,
    pub created: SystemTime,
    pub is_default: bool,
    /// Open file and directory handles in this branch.
    pub open_handles: usize,
    /// Live processes bound to it.
    pub bound_processes: usize,
}

/// Counters for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStats {
    pub branches: usize,
    pub snapshots: usize,
    pub open_handles: usize,
    pub bindings: usize,
    pub content_objects: u64,
    pub content_bytes: u64,
    /// Copy-on-write clones made since start.
    pub cow_clones: u64,
}

/// The filesystem core. All methods take `&self` and may run on many threads at once.
pub struct FsCore {
    _backstore: Arc<dyn Backstore>,
}

impl FsCore {
    pub fn new(backstore: Arc<dyn Backstore>, config: CoreConfig) -> FsCore { todo!() }
    pub fn default_branch(&self) -> BranchId { todo!() }

    // ---- namespace ----
    pub fn lookup(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr) -> FsResult<Attr> { todo!() }
    pub fn getattr(&self, b: BranchId, node: NodeId) -> FsResult<Attr> { todo!() }
    pub fn setattr(&self, ctx: &Ctx, b: BranchId, node: NodeId, set: &SetAttr) -> FsResult<Attr> { todo!() }
    pub fn readlink(&self, b: BranchId, node: NodeId) -> FsResult<Vec<u8>> { todo!() }
    /// `mode` carries the file type bits (`S_IFREG`, `S_IFIFO`, ...); umask already applied or not per `umask`.
    pub fn mknod(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr, mode: u32, umask: u32, rdev: u32) -> FsResult<Attr> { todo!() }
    pub fn mkdir(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr, mode: u32, umask: u32) -> FsResult<Attr> { todo!() }
    pub fn symlink(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr, target: &[u8]) -> FsResult<Attr> { todo!() }
    pub fn unlink(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr) -> FsResult<()> { todo!() }
    pub fn rmdir(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr) -> FsResult<()> { todo!() }
    pub fn rename(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr, new_parent: NodeId, new_name: &OsStr, flags: RenameFlags) -> FsResult<()> { todo!() }
    pub fn link(&self, ctx: &Ctx, b: BranchId, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> FsResult<Attr> { todo!() }
    pub fn access(&self, ctx: &Ctx, b: BranchId, node: NodeId, mask: i32) -> FsResult<()> { todo!() }

    // ---- files ----
    /// Open a regular file. Opening for writing makes shared content private
    /// (copy-on-write) before it returns.
    pub fn open(&self, ctx: &Ctx, b: BranchId, node: NodeId, flags: OpenFlags) -> FsResult<HandleId> { todo!() }
    pub fn create(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr, mode: u32, umask: u32, flags: OpenFlags, exclusive: bool) -> FsResult<(Attr, HandleId)> { todo!() }
    pub fn read(&self, fh: HandleId, offset: u64, size: u32) -> FsResult<Vec<u8>> { todo!() }
    /// Write; returns bytes written. `offset` is ignored for handles opened with O_APPEND.
    pub fn write(&self, ctx: &Ctx, fh: HandleId, offset: u64, data: &[u8]) -> FsResult<u32> { todo!() }
    pub fn fsync(&self, fh: HandleId, data_only: bool) -> FsResult<()> { todo!() }
    pub fn fallocate(&self, ctx: &Ctx, fh: HandleId, mode: i32, offset: u64, len: u64) -> FsResult<()> { todo!() }
    /// `SEEK_DATA` / `SEEK_HOLE`.
    pub fn lseek(&self, fh: HandleId, offset: u64, whence: i32) -> FsResult<u64> { todo!() }
    pub fn release(&self, fh: HandleId) -> FsResult<()> { todo!() }
    /// The branch and node a handle is open on.
    pub fn handle_target(&self, fh: HandleId) -> FsResult<(BranchId, NodeId)> { todo!() }

    // ---- directories ----
    pub fn opendir(&self, ctx: &Ctx, b: BranchId, node: NodeId) -> FsResult<HandleId> { todo!() }
    /// Entries after cookie `offset` (0 = start), including `.` and `..`, at most `max`.
    pub fn readdir(&self, fh: HandleId, offset: u64, max: usize) -> FsResult<Vec<DirEntry>> { todo!() }
    pub fn releasedir(&self, fh: HandleId) -> FsResult<()> { todo!() }

    // ---- xattrs ----
    pub fn setxattr(&self, ctx: &Ctx, b: BranchId, node: NodeId, name: &OsStr, value: &[u8], how: XattrSet) -> FsResult<()> { todo!() }
    pub fn getxattr(&self, ctx: &Ctx, b: BranchId, node: NodeId, name: &OsStr) -> FsResult<Vec<u8>> { todo!() }
    /// Names, each NUL-terminated, concatenated (the `listxattr(2)` format).
    pub fn listxattr(&self, ctx: &Ctx, b: BranchId, node: NodeId) -> FsResult<Vec<u8>> { todo!() }
    pub fn removexattr(&self, ctx: &Ctx, b: BranchId, node: NodeId, name: &OsStr) -> FsResult<()> { todo!() }

    // ---- filesystem ----
    pub fn statfs(&self) -> FsResult<StatFs> { todo!() }
    /// Flush everything to stable storage.
    pub fn sync_all(&self) -> FsResult<()> { todo!() }
    pub fn stats(&self) -> CoreStats { todo!() }
    pub fn usage(&self) -> BackstoreUsage { todo!() }

    // ---- snapshots and branches ----
    pub fn snapshot_create(&self, b: BranchId, name: Option<String>) -> FsResult<SnapshotInfo> { todo!() }
    pub fn snapshot_list(&self) -> Vec<SnapshotInfo> { todo!() }
    pub fn snapshot_delete(&self, s: SnapshotId) -> FsResult<()> { todo!() }
    pub fn branch_create(&self, from: SnapshotId, name: Option<String>) -> FsResult<BranchInfo> { todo!() }
    pub fn branch_list(&self) -> Vec<BranchInfo> { todo!() }
    /// Refused with `Busy` while processes are bound or handles open, unless `force`.
    pub fn branch_delete(&self, b: BranchId, force: bool) -> FsResult<()> { todo!() }
    /// A branch by name or id text (`b3` or `3`).
    pub fn find_branch(&self, name_or_id: &str) -> FsResult<BranchId> { todo!() }
    /// A snapshot by name or id text (`s3` or `3`).
    pub fn find_snapshot(&self, name_or_id: &str) -> FsResult<SnapshotId> { todo!() }
    pub fn branch_info(&self, b: BranchId) -> FsResult<BranchInfo> { todo!() }
    /// Whether the branch exists (for inode validation).
    pub fn branch_exists(&self, b: BranchId) -> bool { todo!() }

    // ---- bindings ----
    pub fn bind(&self, pid: u32, b: BranchId) -> FsResult<ProcessInfo> { todo!() }
    pub fn unbind(&self, pid: u32) -> FsResult<bool> { todo!() }
    /// The branch process `pid` sees (its own, its nearest bound ancestor's, or the default).
    pub fn branch_of(&self, pid: u32) -> BranchId { todo!() }
    pub fn bindings(&self) -> Vec<BindingInfo> { todo!() }
    /// Facts about a process (for the control plane's ownership checks).
    pub fn process(&self, pid: u32) -> Option<ProcessInfo> { todo!() }
}
