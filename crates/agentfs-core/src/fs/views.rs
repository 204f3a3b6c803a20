//! Snapshots, branches and process bindings: the operations the control plane
//! drives.
//!
//! `snapshot_create` freezes a branch in O(1): the snapshot is a clone of the
//! persistent tree, and the branch moves to a new epoch so every object it
//! shared is copied before its next write. Files open for writing at that
//! moment are the exception that costs: the snapshot gets its own copy of each
//! (their writers may bypass FsCore once a passthrough data path exists), taken
//! while their writers are held still, so the snapshot is point-in-time.

use super::tree::{Body, Content};
use super::{BranchState, FsCore, SnapshotState};
use crate::attr::StatFs;
use crate::backstore::BackstoreUsage;
use crate::binding::{BindingInfo, ProcessInfo};
use crate::error::{FsError, FsResult};
use crate::ids::{BranchId, NodeId, SnapshotId};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a delete or `--delete` commit waits for handles being closed
/// ([`FsCore::users_after_closes`]).
pub(crate) const CLOSE_GRACE: Duration = Duration::from_millis(500);
use std::time::SystemTime;

/// Longest snapshot or branch name, in bytes.
const VIEW_NAME_MAX: usize = 128;

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

/// Names are for people and scripts: printable, no path characters, and never
/// shaped like an id (`b3`, `s3`, `3`), so "name or id" is never ambiguous.
fn check_view_name(name: &str) -> FsResult<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-+@:".contains(c);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let id_like = digits(name) || name.strip_prefix(['b', 's']).is_some_and(digits);
    if name.is_empty()
        || name.len() > VIEW_NAME_MAX
        || !name.chars().all(ok_char)
        || name.starts_with(['-', '.'])
        || id_like
    {
        return Err(FsError::Invalid);
    }
    Ok(())
}

/// The number in an id text: `b3`/`s3` (with the right prefix) or `3`.
fn parse_id(text: &str, prefix: char) -> Option<u64> {
    text.strip_prefix(prefix).unwrap_or(text).parse().ok()
}

impl FsCore {
    fn branch_view(&self, b: &BranchState) -> BranchInfo {
        BranchInfo {
            id: b.id,
            name: b.name.clone(),
            from: b.from,
            created: b.created,
            is_default: b.id == self.default_branch,
            open_handles: b.open_handles.load(Ordering::Acquire),
            bound_processes: self.bindings.count_for(b.id),
        }
    }

    fn snapshot_view(&self, s: &SnapshotState) -> SnapshotInfo {
        let reg = self.registry.read();
        let mut children: Vec<BranchId> = reg
            .branches
            .values()
            .filter(|b| b.from == Some(s.id))
            .map(|b| b.id)
            .collect();
        children.sort();
        SnapshotInfo {
            id: s.id,
            name: s.name.clone(),
            branch: s.branch,
            created: s.created,
            children,
        }
    }

    pub fn snapshot_create(&self, b: BranchId, name: Option<String>) -> FsResult<SnapshotInfo> {
        let branch = self
            .registry
            .read()
            .branches
            .get(&b)
            .cloned()
            .ok_or_else(|| FsError::UnknownView(b.to_string()))?;
        if let Some(n) = &name {
            check_view_name(n)?;
            if self
                .registry
                .read()
                .snapshots
                .values()
                .any(|s| &s.name == n)
            {
                return Err(FsError::NameTaken(n.clone()));
            }
        }
        // An overlay's lower directory read between freezing the tree and
        // registering the snapshot would miss the snapshot: none is read meanwhile.
        let _loading = self.lower.get().map(|l| l.loading.lock());
        // No checkpoint between this snapshot's two journal records.
        let _gate = self.journal.get().map(|j| j.gate.read());
        let _serial = branch.snapshot_lock.lock();

        let (frozen, tag) = self.freeze(&branch, true)?;

        let mut reg = self.registry.write();
        if let Some(n) = &name {
            if reg.snapshots.values().any(|s| &s.name == n) {
                return Err(FsError::NameTaken(n.clone()));
            }
        }
        reg.next_snapshot += 1;
        let id = SnapshotId(reg.next_snapshot);
        let state = Arc::new(SnapshotState {
            id,
            name: name.unwrap_or_else(|| format!("snap-{}", id.0)),
            branch: b,
            created: SystemTime::now(),
            tree: parking_lot::RwLock::new(frozen),
        });
        if let (Some(j), Some(tag)) = (&branch.journal, tag) {
            j.append(&super::record::snapshot_create(
                id,
                &state.name,
                b,
                state.created,
                tag,
            ));
        }
        reg.snapshots.insert(id, Arc::clone(&state));
        drop(reg);
        // Durable when it returns: the objects it names, then its records.
        self.make_durable(true)?;
        Ok(self.snapshot_view(&state))
    }

    /// Branch `branch`'s tree as of now, made safe to share: files open for
    /// writing get their own copy in the returned tree (taken while their
    /// writers are held still), nodes kept only for open handles are left
    /// out, and the branch moves to a new epoch so it copies every object it
    /// shared before its next write. With `record`, the tree is journaled as a
    /// frozen tree under the returned tag (for a `snapshot_create` record to
    /// name). The caller holds `branch.snapshot_lock` (and, with `record`, the
    /// journal's gate).
    pub(super) fn freeze(
        &self,
        branch: &BranchState,
        record: bool,
    ) -> FsResult<(super::tree::Tree, Option<u64>)> {
        // Objects being written through open handles, still this branch's alone.
        let writers: Vec<NodeId> = branch
            .open
            .lock()
            .iter()
            .filter(|(_, c)| c.pins_content())
            .map(|(n, _)| *n)
            .collect();
        let mut live: Vec<(NodeId, Arc<Content>)> = {
            let t = branch.tree.read();
            let epoch = branch.epoch();
            writers
                .into_iter()
                .filter_map(|n| {
                    let c = t.get(n)?.content()?.clone();
                    (c.epoch() == epoch).then_some((n, c))
                })
                .collect()
        };
        live.sort_by_key(|(_, c)| c.id);
        // Hold their writers still (in a fixed order: only snapshot-create takes
        // more than one) and copy each for the snapshot.
        let guards: Vec<_> = live.iter().map(|(_, c)| c.io.write_arc()).collect();
        // The copies are taken under the tree lock too: a write through FUSE
        // passthrough is not held still by `guards`, so a copy taken before
        // the tree is cloned could miss a write that came before a change the
        // clone has (a file created after it, say).
        let tree = branch.tree.write();
        let mut copies = Vec::with_capacity(live.len());
        for (n, c) in &live {
            let copy = Content::new(
                self.backstore.clone_object(c.id)?,
                super::FROZEN_EPOCH,
                &self.reaper,
            );
            self.cow_clones.fetch_add(1, Ordering::Relaxed);
            self.note_object_changed(&copy);
            copies.push((*n, Arc::clone(c), copy));
        }

        let (frozen, tag) = {
            let mut frozen = tree.clone();
            if record && branch.journal.is_some() {
                frozen.start_log();
            }
            let open = branch.open.lock();
            for (n, old, copy) in &copies {
                let Some(mut node) = frozen.edit(*n) else {
                    continue;
                };
                if let Body::File { content: Some(c) } = &mut node.body {
                    if Arc::ptr_eq(c, old) {
                        *c = Arc::clone(copy);
                        if open.get(n).is_some_and(|c| c.passthrough_writers > 0) {
                            // The kernel wrote the object directly: the copy's
                            // length is the file's, and the time of the last
                            // write is the original's (the copy's is when it
                            // was made), with the ctime the branch's node gets
                            // when its last writer closes (`fold_direct_writes`).
                            let len = self.backstore.len_and_mtime(copy.id).map(|(l, _)| l);
                            let mtime = self.backstore.len_and_mtime(old.id).map(|(_, t)| t);
                            if let (Ok(len), Ok(mtime)) = (len, mtime) {
                                node.meta.size = len;
                                node.meta.mtime = mtime;
                                node.meta.ctime = node.meta.ctime.max(mtime);
                            }
                        }
                        frozen.insert(*n, node);
                    }
                }
            }
            // Unlinked files kept only for open handles, or because the kernel
            // still holds them, are not part of the snapshot.
            let held = branch.orphans.lock();
            for n in open.keys().chain(held.iter()) {
                if frozen.get(*n).is_some_and(|node| node.meta.nlink == 0) {
                    frozen.remove(*n);
                }
            }
            drop(held);
            drop(open);
            // The snapshot's tree as of now, recorded under the tree lock.
            let tag = branch.journal.as_ref().filter(|_| record).map(|j| {
                let tag = j.tag();
                let mut touched = frozen.take_log();
                j.append(&super::record::freeze(
                    branch.id,
                    tag,
                    &tree,
                    &frozen,
                    &mut touched,
                ));
                tag
            });
            let epoch = self.new_epoch();
            branch.epoch.store(epoch, Ordering::Release);
            for (_, c) in &live {
                c.epoch.store(epoch, Ordering::Release);
            }
            (frozen, tag)
        };
        drop(tree);
        drop(guards);
        drop(copies);

        Ok((frozen, tag))
    }

    pub fn snapshot_list(&self) -> Vec<SnapshotInfo> {
        let mut all: Vec<Arc<SnapshotState>> =
            self.registry.read().snapshots.values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all.iter().map(|s| self.snapshot_view(s)).collect()
    }

    /// Delete a snapshot. Branches made from it keep what they share with it.
    /// Its read-only view (if it was browsed) goes with it: its inodes are
    /// stale from now on.
    pub fn snapshot_delete(&self, s: SnapshotId) -> FsResult<()> {
        let gone = {
            let mut reg = self.registry.write();
            let gone = reg
                .snapshots
                .remove(&s)
                .ok_or_else(|| FsError::UnknownView(s.to_string()))?;
            if let Some(j) = self.journal.get() {
                j.append(&super::record::snapshot_delete(s));
            }
            (gone, reg.snapshot_views.remove(&s))
        };
        drop(gone);
        self.make_durable(false)?;
        self.reap_now();
        Ok(())
    }

    pub fn branch_create(&self, from: SnapshotId, name: Option<String>) -> FsResult<BranchInfo> {
        if let Some(n) = &name {
            check_view_name(n)?;
        }
        let snap = self
            .registry
            .read()
            .snapshots
            .get(&from)
            .cloned()
            .ok_or_else(|| FsError::UnknownView(from.to_string()))?;
        let reg = self.registry.read();
        if let Some(n) = &name {
            if reg.branches.values().any(|b| &b.name == n) {
                return Err(FsError::NameTaken(n.clone()));
            }
        }
        let id = BranchId(reg.next_branch + 1);
        drop(reg);
        let name = name.unwrap_or_else(|| format!("branch-{}", id.0));
        // A lower directory read while the branch is being made must be read
        // in it too (the journal replays it so): none is read meanwhile.
        let _loading = self.lower.get().map(|l| l.loading.lock());
        let state = self.new_branch_state(&name, Some(from), snap.tree.read().clone());
        // Names are checked and taken under two registry locks; undo a race loser.
        let dup = self
            .registry
            .read()
            .branches
            .values()
            .filter(|b| b.name == name)
            .count()
            > 1;
        if dup {
            let mut reg = self.registry.write();
            reg.branches.remove(&state.id);
            if let Some(j) = self.journal.get() {
                j.append(&super::record::branch_delete(state.id));
            }
            return Err(FsError::NameTaken(name));
        }
        self.make_durable(false)?;
        Ok(self.branch_view(&state))
    }

    pub fn branch_list(&self) -> Vec<BranchInfo> {
        let mut all: Vec<Arc<BranchState>> =
            self.registry.read().branches.values().cloned().collect();
        all.sort_by_key(|b| b.id);
        all.iter().map(|b| self.branch_view(b)).collect()
    }

    /// Delete a branch and free what only it held. Refused with `Busy` while
    /// processes are bound to it or handles are open in it, unless `force`
    /// (then its bindings go, and open handles keep working on the deleted
    /// tree until they close).
    pub fn branch_delete(&self, b: BranchId, force: bool) -> FsResult<()> {
        if b == self.default_branch {
            return Err(FsError::Busy("the default branch cannot be deleted".into()));
        }
        let branch = self
            .registry
            .read()
            .branches
            .get(&b)
            .cloned()
            .ok_or_else(|| FsError::UnknownView(b.to_string()))?;
        if !force {
            let (bound, open) = self.users_after_closes(&branch);
            if bound > 0 || open > 0 {
                return Err(FsError::Busy(format!(
                    "branch {} \"{}\" has {bound} bound process(es) and {open} open handle(s); use --force",
                    b, branch.name
                )));
            }
        }
        self.bindings.unbind_branch(b);
        let gone = {
            let mut reg = self.registry.write();
            if let Some(j) = self.journal.get() {
                j.append(&super::record::branch_delete(b));
            }
            reg.branches.remove(&b)
        };
        drop(branch);
        drop(gone);
        self.make_durable(false)?;
        self.reap_now();
        Ok(())
    }

    /// The processes bound to `branch` and the handles open in it, once the
    /// handles being closed are: close(2) returns before the kernel sends
    /// its RELEASE, so a script that deletes or commits a branch right after
    /// its last process exited would otherwise be refused for a handle about
    /// to go. Waits up to [`CLOSE_GRACE`] while no process is bound and
    /// handles are open; holds no lock while waiting.
    pub(super) fn users_after_closes(&self, branch: &BranchState) -> (usize, usize) {
        let start = std::time::Instant::now();
        loop {
            let bound = self.bindings.count_for(branch.id);
            let open = branch.open_handles.load(Ordering::Acquire);
            if bound > 0 || open == 0 || start.elapsed() >= CLOSE_GRACE {
                return (bound, open);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn find_branch(&self, name_or_id: &str) -> FsResult<BranchId> {
        let reg = self.registry.read();
        if let Some(b) = reg.branches.values().find(|b| b.name == name_or_id) {
            return Ok(b.id);
        }
        parse_id(name_or_id, 'b')
            .map(BranchId)
            .filter(|id| reg.branches.contains_key(id))
            .ok_or_else(|| {
                FsError::UnknownView(format!("no branch named or numbered {name_or_id:?}"))
            })
    }

    pub fn find_snapshot(&self, name_or_id: &str) -> FsResult<SnapshotId> {
        let reg = self.registry.read();
        if let Some(s) = reg.snapshots.values().find(|s| s.name == name_or_id) {
            return Ok(s.id);
        }
        parse_id(name_or_id, 's')
            .map(SnapshotId)
            .filter(|id| reg.snapshots.contains_key(id))
            .ok_or_else(|| {
                FsError::UnknownView(format!("no snapshot named or numbered {name_or_id:?}"))
            })
    }

    pub fn branch_info(&self, b: BranchId) -> FsResult<BranchInfo> {
        let branch = self
            .registry
            .read()
            .branches
            .get(&b)
            .cloned()
            .ok_or_else(|| FsError::UnknownView(b.to_string()))?;
        Ok(self.branch_view(&branch))
    }

    pub fn branch_exists(&self, b: BranchId) -> bool {
        self.registry.read().branches.contains_key(&b)
    }

    /// Bind process `pid` to branch `b`; it reaches the branch through the
    /// shared mount root.
    pub fn bind(&self, pid: u32, b: BranchId) -> FsResult<ProcessInfo> {
        self.bind_view(pid, b, true)
    }

    /// Bind process `pid` to branch `b`. `shares_root` is false for a process
    /// that sees the branch through a private view of its own root (a mount
    /// namespace): it never looks names up in the shared root.
    pub fn bind_view(&self, pid: u32, b: BranchId, shares_root: bool) -> FsResult<ProcessInfo> {
        if !self.branch_exists(b) {
            return Err(FsError::UnknownView(b.to_string()));
        }
        self.bindings
            .bind(pid, b, shares_root)
            .ok_or_else(|| FsError::UnknownView(format!("no process {pid}")))
    }

    /// [`FsCore::bind_view`], also answering whether the root was shared
    /// (some binding through it existed) just before this binding, decided
    /// atomically with it: when it was not, the kernel may hold the default
    /// branch's root entries and the caller must make it forget them.
    pub fn bind_view_sharing(
        &self,
        pid: u32,
        b: BranchId,
        shares_root: bool,
    ) -> FsResult<(ProcessInfo, bool)> {
        if !self.branch_exists(b) {
            return Err(FsError::UnknownView(b.to_string()));
        }
        self.bindings
            .bind_sharing(pid, b, shares_root)
            .ok_or_else(|| FsError::UnknownView(format!("no process {pid}")))
    }

    /// Whether the shared mount root's entries depend on who asks: true while
    /// any process bound through the shared root exists (dead ones count until
    /// pruned). While false, every caller sees the default branch there.
    pub fn root_is_shared(&self) -> bool {
        self.bindings.root_is_shared()
    }

    /// Names in the root directory of branch `b`.
    pub fn root_names(&self, b: BranchId) -> FsResult<Vec<Vec<u8>>> {
        self.ensure_loaded(&self.branch(b)?, &[NodeId::ROOT])?;
        self.read_tree(b, |t| {
            let root = super::node(t, NodeId::ROOT)?;
            Ok(root
                .entries()
                .map(|e| e.keys().map(|k| k.to_vec()).collect())
                .unwrap_or_default())
        })
    }

    pub fn unbind(&self, pid: u32) -> FsResult<bool> {
        Ok(self.bindings.unbind(pid))
    }

    /// The branch process `pid` sees: its own, its nearest bound ancestor's, or the default.
    pub fn branch_of(&self, pid: u32) -> BranchId {
        match self.bindings.resolve(pid) {
            Some(b) if self.branch_exists(b) => b,
            _ => self.default_branch,
        }
    }

    pub fn bindings(&self) -> Vec<BindingInfo> {
        self.bindings.list()
    }

    pub fn process(&self, pid: u32) -> Option<ProcessInfo> {
        self.bindings.process(pid)
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        Ok(self.backstore.statfs()?)
    }

    pub fn sync_all(&self) -> FsResult<()> {
        self.make_durable(true)
    }

    /// What the backstore holds, once objects already freed are removed.
    pub fn usage(&self) -> BackstoreUsage {
        self.reap_now();
        self.backstore.usage()
    }

    pub fn stats(&self) -> CoreStats {
        let usage = self.usage();
        let reg = self.registry.read();
        CoreStats {
            branches: reg.branches.len(),
            snapshots: reg.snapshots.len(),
            open_handles: self.handles.read().len(),
            bindings: self.bindings.list().len(),
            content_objects: usage.objects,
            content_bytes: usage.bytes,
            cow_clones: self.cow_clones.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_view_name;

    #[test]
    fn names_never_look_like_ids() {
        for bad in [
            "",
            "3",
            "b3",
            "s12",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(check_view_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["main", "feature-1", "b", "s", "bx3", "v1.2", "agent@7"] {
            assert!(check_view_name(good).is_ok(), "{good:?} refused");
        }
    }
}
