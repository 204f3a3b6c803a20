//! Read-only views of snapshots: what `<mount>/.agentfs/snapshots/<name>/`
//! shows.
//!
//! A snapshot is a frozen [`Tree`](super::tree::Tree); every read operation of
//! FsCore works on a branch. Rather than a second set of read operations, a
//! snapshot is browsed through a hidden, read-only [`BranchState`] whose tree
//! is an O(1) clone of the snapshot's: lookups, attributes, readdir, readlink,
//! xattrs and reads are the ordinary branch operations, and the checks that
//! make it read-only sit where every change of a branch passes (the tree
//! commit, the copy-on-write of content, open for writing, truncate), so no
//! operation, present or future, can change it by forgetting a check.
//!
//! Such a view:
//! - has the id [`BranchId::snapshot_view`]`(s)`, with [`SNAPSHOT_VIEW_BIT`]
//!   set, so it never collides with a real branch (those count up from 1);
//! - is made on first use ([`FsCore::snapshot_browse`]) and dropped with its
//!   snapshot (`snapshot_delete`): from then on its inodes are stale, and
//!   handles already open keep reading the tree they opened, as handles of a
//!   deleted branch do;
//! - is in no list: not `branch_list`, `find_branch`, `status` counts, bindings;
//! - is never journaled or checkpointed (its `journal` is `None` and it lives
//!   outside `Registry::branches`, which is all the checkpoint walks), so
//!   nothing of it survives a remount: it is made again on the next browse;
//! - has an epoch of its own, which no content object carries, so even a
//!   change that slipped past the read-only checks would copy before writing,
//!   never write a snapshot's object in place. Its objects are immutable anyway
//!   (a snapshot's objects are never written again: the branch moved to a new
//!   epoch, and files open for writing gave the snapshot a copy), which is why
//!   a read-only open may hand them to the kernel for passthrough reads.

use super::{BranchState, FsCore};
use crate::error::{FsError, FsResult};
use crate::ids::{BranchId, SnapshotId};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

/// Set in the id of every snapshot view; the other bits are the snapshot id.
pub(crate) const SNAPSHOT_VIEW_BIT: u64 = 1 << 62;

impl BranchId {
    /// The id of the read-only view of snapshot `s`.
    pub fn snapshot_view(s: SnapshotId) -> BranchId {
        BranchId(SNAPSHOT_VIEW_BIT | s.0)
    }

    /// The snapshot this id views, if it is a snapshot view.
    pub fn viewed_snapshot(self) -> Option<SnapshotId> {
        (self.0 & SNAPSHOT_VIEW_BIT != 0).then_some(SnapshotId(self.0 & !SNAPSHOT_VIEW_BIT))
    }
}

impl BranchState {
    /// Whether this is a snapshot's read-only view.
    pub(super) fn read_only(&self) -> bool {
        self.id.viewed_snapshot().is_some()
    }

    /// `ReadOnly` for a snapshot view: the check every change of a branch
    /// passes before it touches a tree or a content object.
    pub(super) fn check_writable(&self) -> FsResult<()> {
        if self.read_only() {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }
}

impl FsCore {
    /// The branch id under which snapshot `s` can be read (never written):
    /// its read-only view, made now if this is its first use. `UnknownView`
    /// if there is no such snapshot.
    pub fn snapshot_browse(&self, s: SnapshotId) -> FsResult<BranchId> {
        let id = BranchId::snapshot_view(s);
        if self.registry.read().snapshot_views.contains_key(&s) {
            return Ok(id);
        }
        let mut reg = self.registry.write();
        let snap = reg
            .snapshots
            .get(&s)
            .cloned()
            .ok_or_else(|| FsError::UnknownView(s.to_string()))?;
        reg.snapshot_views.entry(s).or_insert_with(|| {
            Arc::new(BranchState {
                id,
                name: snap.name.clone(),
                from: Some(s),
                created: snap.created,
                snapshot_lock: Mutex::new(()),
                tree: RwLock::new(snap.tree.read().clone()),
                epoch: AtomicU64::new(self.new_epoch()),
                open: Mutex::new(HashMap::new()),
                direct_ends: Mutex::default(),
                kernel_refs: Mutex::new(HashMap::new()),
                orphans: Mutex::default(),
                open_handles: AtomicUsize::new(0),
                journal: None,
            })
        });
        Ok(id)
    }

    /// Whether `b` names a tree that can be read now: a live branch, or the
    /// view of a live snapshot that has been browsed.
    pub fn tree_exists(&self, b: BranchId) -> bool {
        let reg = self.registry.read();
        match b.viewed_snapshot() {
            Some(s) => reg.snapshot_views.contains_key(&s),
            None => reg.branches.contains_key(&b),
        }
    }

    /// Whether `b` is read-only (a snapshot's view).
    pub fn is_read_only(&self, b: BranchId) -> bool {
        b.viewed_snapshot().is_some()
    }

    /// Every snapshot's id and name, in id order: what a listing of
    /// snapshots by path needs, without the child branches `snapshot_list`
    /// finds for each (a walk of every branch per snapshot).
    pub fn snapshot_names(&self) -> Vec<(SnapshotId, String)> {
        let mut all: Vec<(SnapshotId, String)> = self
            .registry
            .read()
            .snapshots
            .values()
            .map(|s| (s.id, s.name.clone()))
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_ids_round_trip_and_never_look_like_branches() {
        let v = BranchId::snapshot_view(SnapshotId(7));
        assert_eq!(v.viewed_snapshot(), Some(SnapshotId(7)));
        assert_ne!(v, BranchId(7));
        for b in [1, 2, 1 << 40] {
            assert_eq!(BranchId(b).viewed_snapshot(), None);
        }
    }
}
