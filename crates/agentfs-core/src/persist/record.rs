//! Journal records: what one committed change did, physically.
//!
//! A tree record lists, per node the change touched, its new value, its
//! removal, or (for a directory whose old version existed) only the entries
//! that changed, so adding a name to a directory of a million entries costs a
//! record of one name, not of the directory. Replaying a record onto the tree
//! it was taken against gives the tree the change produced; replay never
//! re-runs POSIX logic.

use super::codec::{Contents, Dec, Enc};
use super::{NodeIds, PersistError, State};
use crate::fs::tree::{Body, Node, Nodes, Tree};
use crate::ids::{BranchId, NodeId, SnapshotId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

const TREE: u8 = 1;
const FREEZE: u8 = 2;
const SNAPSHOT_CREATE: u8 = 3;
const SNAPSHOT_DELETE: u8 = 4;
const BRANCH_CREATE: u8 = 5;
const BRANCH_DELETE: u8 = 6;
/// A lower directory read into every tree where it was unread (format 2).
const LOAD: u8 = 7;
/// The store was closed cleanly right after the checkpoint before it: no
/// change, only a mark (see [`is_clean_close`]).
const CLEAN: u8 = 8;

const CHANGE_REMOVE: u8 = 0;
const CHANGE_PUT: u8 = 1;
const CHANGE_DIR: u8 = 2;

/// Encode the changes from `old` to `new` at the nodes `ids` (the ones the
/// change inserted or removed). Returns how many were encoded.
fn changes(enc: &mut Enc, old: &impl Nodes, new: &Tree, ids: &mut Vec<NodeId>) -> u32 {
    ids.sort_unstable();
    ids.dedup();
    let at = enc.buf.len();
    enc.u32(0);
    let mut count = 0u32;
    for &id in ids.iter() {
        match (old.node(id), new.get(id)) {
            (None, None) => continue,
            (Some(_), None) => {
                enc.u8(CHANGE_REMOVE);
                enc.u64(id.0);
            }
            (Some(o), Some(n)) if Arc::ptr_eq(o, n) => continue,
            (Some(o), Some(n)) => match (&o.body, &n.body) {
                // A delta of entries only between two directories whose
                // entries are read (a lower directory being read is a put).
                (
                    Body::Dir {
                        entries: oe,
                        lower: None,
                        ..
                    },
                    Body::Dir {
                        entries: ne,
                        parent,
                        lower: None,
                    },
                ) => {
                    enc.u8(CHANGE_DIR);
                    enc.u64(id.0);
                    enc.meta(&n.meta);
                    enc.u64(parent.0);
                    enc.xattrs(&n.xattrs);
                    let at = enc.buf.len();
                    enc.u32(0);
                    let mut k = 0u32;
                    for d in oe.diff(ne) {
                        match d {
                            imbl::ordmap::DiffItem::Add(name, nid)
                            | imbl::ordmap::DiffItem::Update {
                                new: (name, nid), ..
                            } => {
                                enc.bytes(name);
                                enc.opt_u64(Some(nid.0));
                            }
                            imbl::ordmap::DiffItem::Remove(name, _) => {
                                enc.bytes(name);
                                enc.opt_u64(None);
                            }
                        }
                        k += 1;
                    }
                    enc.buf[at..at + 4].copy_from_slice(&k.to_le_bytes());
                }
                _ => {
                    enc.u8(CHANGE_PUT);
                    enc.u64(id.0);
                    enc.node(n);
                }
            },
            (None, Some(n)) => {
                enc.u8(CHANGE_PUT);
                enc.u64(id.0);
                enc.node(n);
            }
        }
        count += 1;
    }
    enc.buf[at..at + 4].copy_from_slice(&count.to_le_bytes());
    count
}

/// A tree record for branch `b`, or `None` when the change changed nothing.
pub(crate) fn tree(
    b: BranchId,
    old: &impl Nodes,
    new: &Tree,
    ids: &mut Vec<NodeId>,
) -> Option<Vec<u8>> {
    let mut enc = Enc::default();
    enc.u8(TREE);
    enc.u64(b.0);
    (changes(&mut enc, old, new, ids) > 0).then_some(enc.buf)
}

/// The tree of a snapshot about to be registered: branch `b`'s tree as of
/// this record, with the snapshot's own changes. Kept under `tag` until the
/// `snapshot_create` record names it.
pub(crate) fn freeze(
    b: BranchId,
    tag: u64,
    old: &Tree,
    new: &Tree,
    ids: &mut Vec<NodeId>,
) -> Vec<u8> {
    let mut enc = Enc::default();
    enc.u8(FREEZE);
    enc.u64(b.0);
    enc.u64(tag);
    changes(&mut enc, old, new, ids);
    enc.buf
}

pub(crate) fn snapshot_create(
    id: SnapshotId,
    name: &str,
    branch: BranchId,
    created: SystemTime,
    tag: u64,
) -> Vec<u8> {
    let mut enc = Enc::default();
    enc.u8(SNAPSHOT_CREATE);
    enc.u64(id.0);
    enc.str(name);
    enc.u64(branch.0);
    enc.time(created);
    enc.u64(tag);
    enc.buf
}

pub(crate) fn snapshot_delete(id: SnapshotId) -> Vec<u8> {
    let mut enc = Enc::default();
    enc.u8(SNAPSHOT_DELETE);
    enc.u64(id.0);
    enc.buf
}

pub(crate) fn branch_create(
    id: BranchId,
    name: &str,
    from: Option<SnapshotId>,
    created: SystemTime,
) -> Vec<u8> {
    let mut enc = Enc::default();
    enc.u8(BRANCH_CREATE);
    enc.u64(id.0);
    enc.str(name);
    enc.opt_u64(from.map(|s| s.0));
    enc.time(created);
    enc.buf
}

/// The entries of a lower directory read into every tree where it was
/// unread (`FsCore::load_dir`): replayed onto every branch and snapshot
/// tree where it is unread at that point, which is where it was applied.
pub(crate) fn load(l: &crate::fs::overlay::Loaded) -> Vec<u8> {
    let mut enc = Enc::default();
    enc.u8(LOAD);
    enc.u64(l.dir.0);
    enc.bytes(&l.path);
    enc.u32(l.subdirs);
    enc.u32(l.children.len() as u32);
    for (name, id, node) in &l.children {
        enc.bytes(name);
        enc.u64(id.0);
        enc.node(node);
    }
    enc.buf
}

/// The mark a clean close leaves in the journal after its checkpoint. Its
/// absence tells the next load that the store was not closed cleanly even
/// when the journal is empty (a crash right after a checkpoint taken while
/// mounted): files the kernel wrote directly meanwhile may be longer or
/// newer than their nodes, which recovery then takes from their objects.
pub(crate) fn clean() -> Vec<u8> {
    vec![CLEAN]
}

/// Whether a journal record is the clean-close mark.
pub(crate) fn is_clean_close(payload: &[u8]) -> bool {
    payload == [CLEAN]
}

pub(crate) fn branch_delete(id: BranchId) -> Vec<u8> {
    let mut enc = Enc::default();
    enc.u8(BRANCH_DELETE);
    enc.u64(id.0);
    enc.buf
}

/// Replay state that lives only between records.
#[derive(Default)]
pub(crate) struct Replay {
    /// Snapshot trees frozen but not yet registered, by tag.
    frozen: HashMap<u64, Tree>,
}

fn apply_changes(
    dec: &mut Dec,
    tree: &mut Tree,
    contents: &mut Contents,
    ids: &mut NodeIds,
) -> Result<(), PersistError> {
    let n = dec.count(9)?;
    for _ in 0..n {
        let tag = dec.u8()?;
        let id = NodeId(dec.u64()?);
        ids.saw(id);
        match tag {
            CHANGE_REMOVE => {
                tree.remove(id);
            }
            CHANGE_PUT => {
                let node = dec.node(contents)?;
                tree.insert(id, node);
            }
            CHANGE_DIR => {
                let meta = dec.meta()?;
                let parent = NodeId(dec.u64()?);
                let xattrs = dec.xattrs()?;
                let mut entries = tree
                    .get(id)
                    .filter(|n| n.unloaded().is_none())
                    .and_then(|n| n.entries().cloned())
                    .ok_or_else(|| {
                        PersistError::Corrupt(format!("directory delta for {id}, not a directory"))
                    })?;
                let k = dec.count(5)?;
                for _ in 0..k {
                    let name = dec.name()?;
                    match dec.opt_u64()? {
                        Some(nid) => {
                            entries.insert(name, NodeId(nid));
                        }
                        None => {
                            entries.remove(&name);
                        }
                    }
                }
                tree.insert(
                    id,
                    Node {
                        meta,
                        body: Body::Dir {
                            entries,
                            parent,
                            lower: None,
                        },
                        xattrs,
                    },
                );
            }
            _ => return Err(PersistError::Corrupt("bad change tag".into())),
        }
    }
    Ok(())
}

/// The tree of branch `b`; a scratch tree for a branch deleted already (a
/// handle kept open on a force-deleted branch still writes through it).
/// `apply_changes`, except that on a scratch tree (a deleted branch) a
/// directory delta has no directory to apply to: skip the record then.
fn apply_lenient(
    dec: &mut Dec,
    tree: &mut Tree,
    contents: &mut Contents,
    ids: &mut NodeIds,
) -> Result<(), PersistError> {
    if tree.len() == 0 {
        // Skip the changes without applying them: decode into a throwaway.
        let mut throwaway = Tree::default();
        let _ = apply_changes(dec, &mut throwaway, contents, ids);
        dec.skip_rest();
        return Ok(());
    }
    apply_changes(dec, tree, contents, ids)
}

fn branch_mut<'a>(state: &'a mut State, b: BranchId, scratch: &'a mut Tree) -> &'a mut Tree {
    match state.branches.get_mut(&b) {
        Some(r) => &mut r.tree,
        None => scratch,
    }
}

/// Apply one record to `state`.
pub(crate) fn apply(
    payload: &[u8],
    state: &mut State,
    replay: &mut Replay,
    contents: &mut Contents,
) -> Result<(), PersistError> {
    let mut dec = Dec::new(payload);
    match dec.u8()? {
        TREE => {
            let b = BranchId(dec.u64()?);
            let mut ids = std::mem::take(&mut state.nodes);
            let mut scratch = Tree::default();
            let tree = branch_mut(state, b, &mut scratch);
            let applied = apply_lenient(&mut dec, tree, contents, &mut ids);
            state.nodes = ids;
            applied?;
        }
        FREEZE => {
            let b = BranchId(dec.u64()?);
            let tag = dec.u64()?;
            let mut ids = std::mem::take(&mut state.nodes);
            let mut scratch = Tree::default();
            let mut tree = branch_mut(state, b, &mut scratch).clone();
            let applied = apply_lenient(&mut dec, &mut tree, contents, &mut ids);
            state.nodes = ids;
            applied?;
            replay.frozen.insert(tag, tree);
        }
        SNAPSHOT_CREATE => {
            let id = SnapshotId(dec.u64()?);
            let name = dec.str()?;
            let branch = BranchId(dec.u64()?);
            let created = dec.time()?;
            let tag = dec.u64()?;
            let tree = replay
                .frozen
                .remove(&tag)
                .ok_or_else(|| PersistError::Corrupt(format!("snapshot {id} of no frozen tree")))?;
            state.next_snapshot = state.next_snapshot.max(id.0);
            state.snapshots.insert(
                id,
                super::SnapshotRec {
                    name,
                    branch,
                    created,
                    tree,
                },
            );
        }
        SNAPSHOT_DELETE => {
            state.snapshots.remove(&SnapshotId(dec.u64()?));
        }
        BRANCH_CREATE => {
            let id = BranchId(dec.u64()?);
            let name = dec.str()?;
            let from = dec.opt_u64()?.map(SnapshotId);
            let created = dec.time()?;
            let tree = match from {
                Some(s) => state
                    .snapshots
                    .get(&s)
                    .map(|r| r.tree.clone())
                    .ok_or_else(|| PersistError::Corrupt(format!("branch {id} of unknown {s}")))?,
                None => Tree::default(),
            };
            state.next_branch = state.next_branch.max(id.0);
            state.branches.insert(
                id,
                super::BranchRec {
                    name,
                    from,
                    created,
                    tree,
                },
            );
        }
        BRANCH_DELETE => {
            state.branches.remove(&BranchId(dec.u64()?));
        }
        LOAD => {
            let dir = NodeId(dec.u64()?);
            let path: Arc<[u8]> = dec.bytes()?.into();
            let subdirs = dec.u32()?;
            let n = dec.count(13)?;
            let mut loaded = crate::fs::overlay::Loaded {
                dir,
                path,
                entries: imbl::OrdMap::new(),
                children: Vec::with_capacity(n),
                subdirs,
            };
            for _ in 0..n {
                let name = dec.name()?;
                let id = NodeId(dec.u64()?);
                state.nodes.saw(id);
                let node = Arc::new(dec.node(contents)?);
                loaded.entries.insert(name.clone(), id);
                loaded.children.push((name, id, node));
            }
            let mut shared = crate::fs::overlay::Shared::default();
            for r in state.branches.values_mut() {
                loaded.apply(&mut r.tree, &mut shared);
            }
            for r in state.snapshots.values_mut() {
                loaded.apply(&mut r.tree, &mut shared);
            }
        }
        CLEAN => {}
        _ => return Err(PersistError::Corrupt("unknown record type".into())),
    }
    if !dec.done() {
        return Err(PersistError::Corrupt("trailing bytes in a record".into()));
    }
    Ok(())
}
