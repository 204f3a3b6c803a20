//! `.agentfs/snapshots`: every snapshot by name, as a read-only directory.
//!
//! `.agentfs/snapshots/<name>` (a name or an id, as the CLI takes them) is the
//! root of the snapshot's read-only view in FsCore
//! ([`FsCore::snapshot_browse`]), made on first lookup. Below it everything is
//! the ordinary branch code on inodes flagged as the snapshot's
//! ([`crate::inode`]): lookups, attributes, readdir, readlink, xattrs and
//! reads work, every change is refused by FsCore with EROFS, and reads of a
//! file may pass through to its content object (a snapshot's objects are
//! never written again).
//!
//! Snapshots come and go, so the names in `.agentfs/snapshots` and the
//! attributes of each view root are never cached (TTL 0, as in
//! `.agentfs/branches`): a deleted snapshot's name is gone at the next path
//! walk. Below a view root nothing ever changes, so entries and attributes
//! are cached with the normal TTL; once the snapshot is deleted, any request
//! that reaches FsCore for one of its inodes gets ESTALE.

use super::AgentFs;
use crate::attr::file_attr;
use crate::inode::{self, Ino};
use crate::reply::Call;
use crate::tri;
use crate::wire::{ReplyDirectory, ReplyDirectoryPlus, ReplyEntry};
use agentfs_core::{BranchId, FsCore, FsError, FsResult, NodeId, SnapshotId};
use fuser::{FileAttr, FileType, Generation, INodeNo};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::Duration;

/// The read-only view of the snapshot named (or numbered) `name`.
fn browse(core: &FsCore, name: &OsStr) -> FsResult<BranchId> {
    let s = name
        .to_str()
        .and_then(|n| core.find_snapshot(n).ok())
        .ok_or(FsError::NotFound)?;
    view_of(core, s)
}

/// The read-only view of snapshot `s`; deleted meanwhile, it is no name either.
fn view_of(core: &FsCore, s: SnapshotId) -> FsResult<BranchId> {
    core.snapshot_browse(s).map_err(|_| FsError::NotFound)
}

/// Attributes of the root of a snapshot's view, as its inode.
fn root_attr(core: &FsCore, view: BranchId) -> FsResult<FileAttr> {
    let attr = core.getattr(view, NodeId::ROOT)?;
    let ino = inode::view_root(view)?;
    Ok(file_attr(ino, &attr))
}

/// The entries of `.agentfs/snapshots`: (ino, type, name), `.` and `..` first.
fn entries(core: &FsCore) -> Vec<(u64, FileType, String)> {
    let mut all = vec![
        (inode::SNAPSHOTS_DIR_INO, FileType::Directory, ".".into()),
        (inode::AGENTFS_DIR_INO, FileType::Directory, "..".into()),
    ];
    for (id, name) in core.snapshot_names() {
        // A snapshot whose id does not fit an inode number is left out (its
        // lookup is EIO) rather than failing the whole listing.
        if let Ok(ino) = inode::view_root(BranchId::snapshot_view(id)) {
            all.push((ino, FileType::Directory, name));
        }
    }
    all
}

impl AgentFs {
    /// Lookup of `name` in `.agentfs/snapshots`.
    pub(super) fn lookup_snapshot(&self, call: Call, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_os_string();
        self.submit_meta(call, move |core, call| {
            let view = tri!(call, reply, browse(core, &name));
            let attr = tri!(call, reply, root_attr(core, view));
            let zero = Duration::ZERO;
            reply.entry_with_ttls(&zero, &zero, &attr, Generation(0));
        });
    }

    /// readdir of `.agentfs/snapshots`: one directory per snapshot, by name;
    /// cookies count the entries (1 and 2 are `.` and `..`).
    pub(super) fn readdir_snapshots(&self, call: Call, offset: u64, mut reply: ReplyDirectory) {
        self.submit_meta(call, move |core, _call| {
            let all = entries(core);
            for (i, (ino, kind, name)) in all.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    /// readdirplus of `.agentfs/snapshots`: as readdir, with each view root's
    /// attributes, uncached like its lookups.
    pub(super) fn readdirplus_snapshots(
        &self,
        call: Call,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let virt = Arc::clone(&self.virt);
        self.submit_meta(call, move |core, call| {
            let own = |t: Ino| virt.attr(t).ok_or(FsError::NotFound);
            let mut all: Vec<(u64, OsString, FileAttr)> = vec![
                (1, ".".into(), tri!(call, reply, own(Ino::SnapshotsDir))),
                (2, "..".into(), tri!(call, reply, own(Ino::AgentfsDir))),
            ];
            for (id, name) in core.snapshot_names() {
                // A snapshot deleted since the list was taken is left out.
                let Ok(attr) = view_of(core, id).and_then(|v| root_attr(core, v)) else {
                    continue;
                };
                let cookie = all.len() as u64 + 1;
                all.push((cookie, name.into(), attr));
            }
            let zero = Duration::ZERO;
            for (cookie, name, attr) in all.into_iter().filter(|e| e.0 > offset) {
                if reply.add(attr.ino, cookie, &name, &zero, &attr, Generation(0)) {
                    break;
                }
            }
            reply.ok();
        });
    }
}
