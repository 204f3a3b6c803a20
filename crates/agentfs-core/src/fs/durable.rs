//! FsCore's side of persistence: opening a core from a [`MetaStore`]
//! (recovery), checkpointing, and the durability points.
//!
//! Recovery, after `persist::load` rebuilt the state: nodes with no link left
//! (kept only for handles that died with the daemon) are dropped; each branch
//! gets a fresh epoch and each content object is stamped with the epoch of
//! the one branch that alone names it, or frozen if a snapshot or a second
//! branch names it too, so copy-on-write works as before the restart; after a
//! crash the size and mtime of each file a branch could have written directly
//! (passthrough, behind FsCore's back) are taken from its object; objects no
//! tree names (created before a crash by a change that never reached the
//! journal, or freed by one that did) are removed. Then the state is written
//! as the next checkpoint and an empty journal of its generation starts.

use super::tree::Tree;
use super::{BranchState, CoreConfig, FsCore, Registry, SnapshotState};
use crate::attr::StatFs;
use crate::backstore::{Backstore, BackstoreUsage};
use crate::error::FsResult;
use crate::ids::{BranchId, ContentId, NodeId};
use crate::persist::journal::{self, Journal};
use crate::persist::{checkpoint, BranchRec, MetaStore, PersistError, SnapshotRec, State};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// What one [`FsCore::open_persisted`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Generation of the checkpoint loaded (0: a new store).
    pub generation: u64,
    /// Journal records replayed on top of it (0 after a clean unmount).
    pub replayed: usize,
    /// Files whose size or mtime was taken from their object (after a crash).
    pub reconciled: usize,
    /// Objects removed because no tree names them.
    pub swept: usize,
    /// Files whose object was missing (now read as zeros).
    pub lost: usize,
    pub branches: usize,
    pub snapshots: usize,
}

impl FsCore {
    /// A core whose branches, snapshots and trees persist in `store` (and
    /// content in `backstore`): loads what the store holds, recovering after
    /// a crash, or starts with one empty default branch on a new store.
    pub fn open_persisted(
        backstore: Arc<dyn Backstore>,
        store: Arc<dyn MetaStore>,
        config: CoreConfig,
    ) -> Result<(FsCore, RecoveryReport), PersistError> {
        let deferred = Arc::new(Deferred {
            inner: Arc::clone(&backstore),
            journal: OnceLock::new(),
        });
        let core = FsCore::new(Arc::clone(&deferred) as Arc<dyn Backstore>, config);
        let loaded = crate::persist::load(&*store, &core.reaper)?;
        let mut report = RecoveryReport {
            generation: loaded.generation,
            replayed: loaded.replayed,
            ..RecoveryReport::default()
        };
        let loaded_clean = loaded.state.is_some();
        let mut state = match loaded.state {
            Some(state) => state,
            None => core.capture(),
        };
        let mut orphans = 0;
        for b in state.branches.values_mut() {
            orphans += drop_orphans(&mut b.tree);
        }
        for s in state.snapshots.values_mut() {
            orphans += drop_orphans(&mut s.tree);
        }
        let loaded_clean = loaded_clean && orphans == 0;
        if !state.branches.contains_key(&core.default_branch) {
            return Err(PersistError::Corrupt(
                "the default branch is missing".into(),
            ));
        }

        // Which branch alone names each object (None: shared or a snapshot's).
        // Lower files (overlay) are no backstore object: never anyone's to
        // write in place, never missing, never swept.
        let mut owner: HashMap<ContentId, Option<BranchId>> = HashMap::new();
        for s in state.snapshots.values() {
            for (_, n) in s.tree.iter() {
                if let Some(c) = n.content().filter(|c| c.lower.is_none()) {
                    owner.insert(c.id, None);
                }
            }
        }
        for (&b, r) in &state.branches {
            for (_, n) in r.tree.iter() {
                if let Some(c) = n.content().filter(|c| c.lower.is_none()) {
                    owner
                        .entry(c.id)
                        .and_modify(|o| {
                            if *o != Some(b) {
                                *o = None;
                            }
                        })
                        .or_insert(Some(b));
                }
            }
        }
        // Objects a tree names that the backstore lost (a power cut before
        // they reached the disk): those files read as holes from now on.
        let existing = match deferred.inner.list_objects() {
            Ok(all) => Some(all.into_iter().collect::<HashSet<ContentId>>()),
            Err(e) => {
                if e.kind() != io::ErrorKind::Unsupported {
                    tracing::warn!(error = %e, "cannot list backstore objects; unreferenced ones stay");
                }
                None
            }
        };
        if let Some(existing) = &existing {
            let lost: HashSet<ContentId> = owner
                .keys()
                .filter(|id| !existing.contains(id))
                .copied()
                .collect();
            if !lost.is_empty() {
                tracing::error!(
                    objects = lost.len(),
                    "content objects named by the metadata are missing; their files read as zeros"
                );
                let trees = state
                    .branches
                    .values_mut()
                    .map(|b| &mut b.tree)
                    .chain(state.snapshots.values_mut().map(|s| &mut s.tree));
                for tree in trees {
                    report.lost += forget_contents(tree, &lost);
                }
                for id in &lost {
                    owner.remove(id);
                }
            }
        }
        let epochs: HashMap<BranchId, u64> = state
            .branches
            .keys()
            .map(|&b| (b, core.new_epoch()))
            .collect();
        for (b, r) in state.branches.iter_mut() {
            let epoch = epochs[b];
            let mut fixes = Vec::new();
            for (id, n) in r.tree.iter() {
                let Some(c) = n.content().filter(|c| c.lower.is_none()) else {
                    continue;
                };
                if owner.get(&c.id) != Some(&Some(*b)) {
                    continue;
                }
                c.epoch.store(epoch, Ordering::Release);
                if !loaded.clean_close {
                    // After a crash (even one right after a checkpoint, with
                    // nothing to replay): the kernel may have written it directly.
                    if let Ok((len, mtime)) = deferred.inner.len_and_mtime(c.id) {
                        if len != n.meta.size || mtime > n.meta.mtime {
                            fixes.push((id, len, mtime));
                        }
                    }
                }
            }
            for (id, len, mtime) in fixes {
                if let Some(mut n) = r.tree.edit(id) {
                    n.meta.size = len;
                    n.meta.mtime = n.meta.mtime.max(mtime);
                    n.meta.ctime = n.meta.ctime.max(mtime);
                    r.tree.insert(id, n);
                    report.reconciled += 1;
                }
            }
        }
        let named: HashSet<ContentId> = owner.keys().copied().collect();
        drop(loaded.contents);

        // The recovered state is the next generation's checkpoint; after a
        // clean unmount (nothing replayed, nothing reconciled, no orphan) it
        // is the checkpoint already there, and its generation goes on.
        let clean =
            loaded_clean && report.replayed == 0 && report.reconciled == 0 && report.lost == 0;
        let generation = if clean {
            report.generation
        } else {
            let generation = report.generation + 1;
            store.write_checkpoint(&checkpoint::encode(&state, generation))?;
            generation
        };
        store.truncate_journal(0)?;
        store.write_journal(0, &journal::header(generation))?;
        store.sync_journal()?;
        let journal = Journal::start(
            Arc::clone(&store),
            Arc::clone(&backstore),
            journal::HEADER_LEN,
            generation,
        );

        // Objects of no tree: leftovers of a crash (or of a build before persistence).
        core.reap();
        for id in existing.into_iter().flatten() {
            if named.contains(&id) {
                continue;
            }
            match deferred.inner.remove(id) {
                Ok(()) => report.swept += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(content = %id, error = %e, "cannot remove an unreferenced object")
                }
            }
        }

        let _ = deferred.journal.set(Arc::clone(&journal));
        let _ = core.journal.set(Arc::clone(&journal));
        core.install(state, &epochs, &journal);
        report.branches = core.registry.read().branches.len();
        report.snapshots = core.registry.read().snapshots.len();
        Ok((core, report))
    }

    /// Replace the registry by the recovered `state`.
    fn install(&self, state: State, epochs: &HashMap<BranchId, u64>, journal: &Arc<Journal>) {
        let mut reg = Registry {
            next_branch: state.next_branch,
            next_snapshot: state.next_snapshot,
            ..Registry::default()
        };
        for (id, r) in state.branches {
            reg.branches.insert(
                id,
                Arc::new(BranchState {
                    id,
                    name: r.name,
                    from: r.from,
                    created: r.created,
                    snapshot_lock: Mutex::new(()),
                    tree: RwLock::new(r.tree),
                    epoch: AtomicU64::new(epochs[&id]),
                    open: Mutex::new(HashMap::new()),
                    direct_ends: Mutex::default(),
                    kernel_refs: Mutex::new(HashMap::new()),
                    orphans: Mutex::default(),
                    open_handles: AtomicUsize::new(0),
                    journal: Some(Arc::clone(journal)),
                }),
            );
        }
        for (id, s) in state.snapshots {
            reg.snapshots.insert(
                id,
                Arc::new(SnapshotState {
                    id,
                    name: s.name,
                    branch: s.branch,
                    created: s.created,
                    tree: RwLock::new(s.tree),
                }),
            );
        }
        self.next_node
            .fetch_max(state.nodes.next.max(NodeId::ROOT.0 + 1), Ordering::AcqRel);
        self.lower_nodes.lock().extend(state.nodes.lower);
        let old = std::mem::replace(&mut *self.registry.write(), reg);
        drop(old);
    }

    /// The state as it is now (trees cloned in O(1) each).
    pub(crate) fn capture(&self) -> State {
        let reg = self.registry.read();
        let mut state = State {
            nodes: crate::persist::NodeIds {
                next: self.next_node.load(Ordering::Acquire),
                ..Default::default()
            },
            next_branch: reg.next_branch,
            next_snapshot: reg.next_snapshot,
            ..State::default()
        };
        for (&id, b) in &reg.branches {
            state.branches.insert(
                id,
                BranchRec {
                    name: b.name.clone(),
                    from: b.from,
                    created: b.created,
                    tree: b.tree.read().clone(),
                },
            );
        }
        for (&id, s) in &reg.snapshots {
            state.snapshots.insert(
                id,
                SnapshotRec {
                    name: s.name.clone(),
                    branch: s.branch,
                    created: s.created,
                    tree: s.tree.read().clone(),
                },
            );
        }
        state
    }

    /// Write the whole state as a new checkpoint and start an empty journal,
    /// so the next open replays nothing. At clean unmount, and while mounted
    /// when the journal passes its threshold: changes wait while it runs
    /// (it holds the registry and every tree; nothing takes the registry
    /// under a tree lock, so this cannot deadlock). A core that is not
    /// persisted has nothing to do.
    pub fn checkpoint(&self) -> FsResult<()> {
        let Some(journal) = self.journal.get() else {
            return Ok(());
        };
        // Files the kernel writes directly: their size and mtime into the tree.
        let branches: Vec<Arc<BranchState>> =
            self.registry.read().branches.values().cloned().collect();
        for b in &branches {
            let direct: Vec<NodeId> = b
                .open
                .lock()
                .iter()
                .filter(|(_, c)| c.passthrough_writers > 0)
                .map(|(n, _)| *n)
                .collect();
            for n in direct {
                self.fold_if_direct(b, n);
            }
        }
        drop(branches);
        let _gate = journal.gate.write();
        // No change can commit (and append) while every tree and the
        // registry are held: the state taken is exactly the journal's.
        let reg = self.registry.write();
        let mut branches: Vec<&Arc<BranchState>> = reg.branches.values().collect();
        branches.sort_by_key(|b| b.id);
        let guards: Vec<_> = branches.iter().map(|b| b.tree.write()).collect();
        let mut state = State {
            nodes: crate::persist::NodeIds {
                next: self.next_node.load(Ordering::Acquire),
                ..Default::default()
            },
            next_branch: reg.next_branch,
            next_snapshot: reg.next_snapshot,
            ..State::default()
        };
        for (b, t) in branches.iter().zip(&guards) {
            state.branches.insert(
                b.id,
                BranchRec {
                    name: b.name.clone(),
                    from: b.from,
                    created: b.created,
                    tree: Tree::clone(t),
                },
            );
        }
        for (&id, s) in &reg.snapshots {
            state.snapshots.insert(
                id,
                SnapshotRec {
                    name: s.name.clone(),
                    branch: s.branch,
                    created: s.created,
                    tree: s.tree.read().clone(),
                },
            );
        }
        // Unlinked files still open are not part of a checkpoint.
        for b in state.branches.values_mut() {
            drop_orphans(&mut b.tree);
        }
        // Data first: the checkpoint names objects whose bytes must be there.
        self.backstore.sync_all()?;
        journal.restart(|generation| {
            let data = checkpoint::encode(&state, generation);
            journal.store().write_checkpoint(&data)
        })?;
        drop(guards);
        drop(reg);
        drop(state);
        self.reap();
        Ok(())
    }

    /// Close the store cleanly (unmount, after the kernel released every
    /// file): a checkpoint, then the mark that tells the next load nothing
    /// happened after it (`persist::record::clean`). Without the
    /// mark the next load takes every file's size and mtime from its object
    /// where the kernel may have written it directly, as after a crash.
    pub fn close_clean(&self) -> FsResult<()> {
        self.checkpoint()?;
        if let Some(journal) = self.journal.get() {
            let _gate = journal.gate.write();
            journal.append(&super::record::clean());
            journal.sync()?;
        }
        Ok(())
    }

    /// Set the journal size that triggers a checkpoint while mounted
    /// (default 64 MiB). A core that is not persisted ignores it.
    pub fn set_checkpoint_threshold(&self, bytes: u64) {
        if let Some(j) = self.journal.get() {
            j.threshold.store(bytes, Ordering::Relaxed);
        }
    }

    /// Checkpoint if the journal has grown past its threshold (called after
    /// a change, with no lock held). One thread does it; others go on.
    pub(super) fn maybe_checkpoint(&self) {
        let Some(journal) = self.journal.get() else {
            return;
        };
        if !journal.wants_checkpoint() || journal.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        let started = std::time::Instant::now();
        match self.checkpoint() {
            Ok(()) => tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "checkpoint written (journal past its threshold)"
            ),
            Err(e) => tracing::warn!(error = %e, "checkpoint failed; the journal keeps growing"),
        }
        journal.checkpointing.store(false, Ordering::Release);
    }

    /// Make every change so far durable: with `data`, the backstore's objects
    /// too (syncfs; see [`Journal::sync_with_backstore`] for the order).
    pub(super) fn make_durable(&self, data: bool) -> FsResult<()> {
        let Some(journal) = self.journal.get() else {
            if data {
                self.backstore.sync_all()?;
            }
            return Ok(());
        };
        if data {
            journal.sync_with_backstore()?;
        } else {
            journal.sync()?;
        }
        Ok(())
    }
}

/// Files of `tree` whose content is in `lost` lose it (keeping their size:
/// they read as a hole). Answers how many.
fn forget_contents(tree: &mut Tree, lost: &HashSet<ContentId>) -> usize {
    let hit: Vec<NodeId> = tree
        .iter()
        .filter(|(_, n)| n.content().is_some_and(|c| lost.contains(&c.id)))
        .map(|(id, _)| id)
        .collect();
    for &id in &hit {
        if let Some(mut n) = tree.edit(id) {
            n.body = super::tree::Body::File { content: None };
            tree.insert(id, n);
        }
    }
    hit.len()
}

/// Remove nodes with no link left: they lived only for open handles.
/// Answers how many went.
fn drop_orphans(tree: &mut Tree) -> usize {
    let orphans: Vec<NodeId> = tree
        .iter()
        .filter(|(id, n)| n.meta.nlink == 0 && *id != NodeId::ROOT)
        .map(|(id, _)| id)
        .collect();
    for &id in &orphans {
        tree.remove(id);
    }
    orphans.len()
}

/// The backstore FsCore sees when persisted: every call goes to the real
/// one, except `remove`, which waits until the journal records that freed
/// the object are durable (a crash before that must still find it).
struct Deferred {
    inner: Arc<dyn Backstore>,
    journal: OnceLock<Arc<Journal>>,
}

impl Drop for Deferred {
    fn drop(&mut self) {
        // The core is going away: stop the journal thread with it.
        if let Some(j) = self.journal.get() {
            j.shutdown();
        }
    }
}

impl Backstore for Deferred {
    fn create(&self) -> io::Result<ContentId> {
        self.inner.create()
    }
    fn clone_object(&self, src: ContentId) -> io::Result<ContentId> {
        self.inner.clone_object(src)
    }
    fn read_at(&self, id: ContentId, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(id, buf, offset)
    }
    fn write_at(&self, id: ContentId, data: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(id, data, offset)
    }
    fn set_len(&self, id: ContentId, len: u64) -> io::Result<()> {
        self.inner.set_len(id, len)
    }
    fn fallocate(&self, id: ContentId, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        self.inner.fallocate(id, mode, offset, len)
    }
    fn sync(&self, id: ContentId, data_only: bool) -> io::Result<()> {
        self.inner.sync(id, data_only)
    }
    fn remove(&self, id: ContentId) -> io::Result<()> {
        match self.journal.get() {
            Some(j) => {
                j.remove_when_durable(vec![id]);
                Ok(())
            }
            None => self.inner.remove(id),
        }
    }
    fn allocated_bytes(&self, id: ContentId) -> io::Result<u64> {
        self.inner.allocated_bytes(id)
    }
    fn len_and_mtime(&self, id: ContentId) -> io::Result<(u64, SystemTime)> {
        self.inner.len_and_mtime(id)
    }
    fn set_mtime(&self, id: ContentId, mtime: SystemTime) -> io::Result<()> {
        self.inner.set_mtime(id, mtime)
    }
    fn seek(&self, id: ContentId, offset: u64, whence: i32) -> io::Result<u64> {
        self.inner.seek(id, offset, whence)
    }
    fn statfs(&self) -> io::Result<StatFs> {
        self.inner.statfs()
    }
    fn usage(&self) -> BackstoreUsage {
        if let Some(j) = self.journal.get() {
            // Objects freed by changes not yet durable still count.
            let _ = j.sync();
        }
        self.inner.usage()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn host_file(&self, id: ContentId) -> io::Result<Arc<File>> {
        self.inner.host_file(id)
    }
    fn create_is_quick(&self) -> bool {
        self.inner.create_is_quick()
    }
    fn makes_objects_ahead(&self) -> bool {
        self.inner.makes_objects_ahead()
    }
    fn host_file_is_quick(&self, id: ContentId) -> bool {
        self.inner.host_file_is_quick(id)
    }
    fn list_objects(&self) -> io::Result<Vec<ContentId>> {
        self.inner.list_objects()
    }
}
