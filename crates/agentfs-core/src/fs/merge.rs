//! `branch_commit`: a branch's changes since its branch point, applied onto
//! its parent branch in one atomic step.
//!
//! A branch is made from a snapshot (its *base*), and the snapshot was taken
//! of the *parent* branch. Node ids come from one allocator for the whole
//! core, so an id names the same file in the base, the child and the parent:
//! the merge is a three-way merge of trees keyed by node id, and costs what
//! changed (both sides' changes are found with [`Tree::changed_nodes`], which
//! skips every part of the map the trees still share), not the tree size.
//!
//! - A node only the child changed takes the child's version; a node only the
//!   parent changed keeps the parent's.
//! - A directory both changed (neither side moved it) is merged name by name:
//!   names only one side changed are taken from it; the same name changed to
//!   different targets on both sides is a conflict.
//! - A file, symlink or special file both changed is merged attribute by
//!   attribute ([`merge_fields`]): a rename on one side and a write on the
//!   other commit together; the same attribute changed differently on both
//!   sides (a write on both) is a conflict.
//! - Any other node both changed (modified on one side and deleted on the
//!   other, a directory moved on one side and changed on the other) is a
//!   conflict, unless both sides hold the very same node.
//!
//! Conflicts are refused with their paths; [`Resolve`] picks a side for each
//! instead. After a resolved merge, nodes no name reaches any more are
//! dropped (one walk of the merged tree, on that path only). A merge that
//! would move a directory under itself is refused whatever the resolution.
//!
//! The child's side is taken by the snapshot path ([`FsCore::freeze`]): the
//! child moves to a new epoch, so it copies every object it now shares with
//! the parent before writing it, and files open for writing in the child get
//! their own copy for the parent, taken while their writers are held still.
//! The parent's tree is replaced once, under its tree lock, and journaled as
//! one tree record, so a crash leaves all of the commit or none of it. When
//! the parent did not change since the branch point, its tree becomes the
//! child's frozen tree as is.

use super::diff::COMPARE_MAX;
use super::tree::{Body, Name, Node, Tree, Walk};
use super::{BranchState, FsCore};
use crate::error::{FsError, FsResult};
use crate::ids::{BranchId, ContentId, NodeId, SnapshotId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

#[cfg(test)]
mod tests;

/// Which side wins a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolve {
    /// The child's change wins (`--theirs`).
    Theirs,
    /// The parent's state wins (`--ours`).
    Ours,
}

/// What one side did to a conflicting path since the branch point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Added,
    Modified,
    Deleted,
    /// The directory was moved to another place.
    Moved,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Added => "added",
            Change::Modified => "modified",
            Change::Deleted => "deleted",
            Change::Moved => "moved",
        })
    }
}

/// One path both sides changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// Path from the branch root, `/`-separated, no leading `/` (`.` for the
    /// root); UTF-8 as is, other bytes as `\xNN`, a backslash as `\\` (as `diff` writes it).
    pub path: String,
    pub child: Change,
    pub parent: Change,
}

/// How to commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitOptions {
    /// Resolve conflicts instead of refusing the commit.
    pub resolve: Option<Resolve>,
    /// Delete the child branch once committed.
    pub delete: bool,
}

/// What a commit did (or, refused, why not).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitReport {
    pub child: Option<BranchId>,
    pub parent: Option<BranchId>,
    pub base: Option<SnapshotId>,
    /// Whether the parent now holds the child's changes.
    pub committed: bool,
    /// The parent had not changed since the branch point: its tree became the child's.
    pub fast_path: bool,
    /// Nodes the child changed since the branch point.
    pub child_changes: usize,
    /// Nodes the parent changed since the branch point.
    pub parent_changes: usize,
    /// Paths both sides changed: the reason for a refusal, or what the
    /// resolution decided.
    pub conflicts: Vec<Conflict>,
    /// Names of the parent that now lead elsewhere (directory, name), for
    /// caches to forget.
    pub changed_entries: Vec<(NodeId, Vec<u8>)>,
    /// Nodes of the parent whose attributes or contents changed.
    pub changed_nodes: Vec<NodeId>,
    /// Whether the child was deleted after the commit.
    pub deleted_child: bool,
    /// The snapshot of the child as committed (`<child>@committed`), the
    /// base of its next commit; `None` with `delete`.
    pub commit_point: Option<SnapshotId>,
}

/// A node's versions in the base and one side: `(base, side)`.
type Pair = (Option<Arc<Node>>, Option<Arc<Node>>);

/// The nodes `side` changed since `base`: those whose node is another one,
/// unless it holds the same values (a tree replayed from the journal after a
/// crash holds its own copies of nodes it shared before).
fn changes(base: &Tree, side: &Tree) -> BTreeMap<NodeId, Pair> {
    base.changed_nodes(side)
        .filter(|(_, b, s)| !matches!((b, s), (Some(b), Some(s)) if same_node(b, s)))
        .map(|(id, b, s)| (id, (b.cloned(), s.cloned())))
        .collect()
}

fn same(a: &Option<Arc<Node>>, b: &Option<Arc<Node>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => same_node(a, b),
        _ => false,
    }
}

/// Whether two nodes are the same node, or equal in every value a change
/// can set (the name hint aside, which is no attribute).
fn same_node(a: &Arc<Node>, b: &Arc<Node>) -> bool {
    if Arc::ptr_eq(a, b) {
        return true;
    }
    let (m, n) = (&a.meta, &b.meta);
    let meta = m.kind == n.kind
        && m.perm == n.perm
        && m.nlink == n.nlink
        && m.uid == n.uid
        && m.gid == n.gid
        && m.size == n.size
        && m.rdev == n.rdev
        && m.atime == n.atime
        && m.mtime == n.mtime
        && m.ctime == n.ctime
        && m.crtime == n.crtime;
    let body = match (&a.body, &b.body) {
        (Body::File { content: x }, Body::File { content: y }) => match (x, y) {
            (None, None) => true,
            (Some(x), Some(y)) => x.id == y.id,
            _ => false,
        },
        (
            Body::Dir {
                entries: xe,
                parent: xp,
                lower: xl,
            },
            Body::Dir {
                entries: ye,
                parent: yp,
                lower: yl,
            },
        ) => xp == yp && xl == yl && xe == ye,
        (Body::Symlink(x), Body::Symlink(y)) => x == y,
        (Body::Special, Body::Special) => true,
        _ => false,
    };
    meta && body && same_xattrs(&a.xattrs, &b.xattrs)
}

/// Two distinct content objects known to hold the same bytes, smaller id first.
type Alike = HashSet<(ContentId, ContentId)>;

fn alike_key(x: ContentId, y: ContentId) -> (ContentId, ContentId) {
    (x.min(y), x.max(y))
}

/// Whether two nodes hold the same data: body (content object, or another
/// object `alike` says has the same bytes; symlink target), size and mtime,
/// which a write changes together.
fn same_data(a: &Node, b: &Node, alike: &Alike) -> bool {
    let body = match (&a.body, &b.body) {
        (Body::File { content: x }, Body::File { content: y }) => match (x, y) {
            (None, None) => true,
            (Some(x), Some(y)) => x.id == y.id || alike.contains(&alike_key(x.id, y.id)),
            _ => false,
        },
        (Body::Symlink(x), Body::Symlink(y)) => x == y,
        (Body::Special, Body::Special) => true,
        _ => false,
    };
    body && a.meta.size == b.meta.size && a.meta.mtime == b.meta.mtime
}

/// Whether `side` is `base` with nothing changed but its object: a copy
/// holding the same bytes (`alike`), made by an open for writing that wrote
/// nothing or by a snapshot of a file open for writing. Every other value
/// but the access time must be the base's, the name hint too (a rename
/// changes only that and the ctime). Such a side made no change, so the
/// other side's change of the node, a deletion too, is taken whole.
fn only_copied(base: &Node, side: &Node, alike: &Alike) -> bool {
    let (b, s) = (&base.meta, &side.meta);
    base.entries().is_none()
        && b.kind == s.kind
        && same_data(base, side, alike)
        && b.perm == s.perm
        && b.nlink == s.nlink
        && s.nlink > 0
        && (b.uid, b.gid, b.rdev) == (s.uid, s.gid, s.rdev)
        && (b.ctime, b.crtime) == (s.ctime, s.crtime)
        && b.hint == s.hint
        && same_xattrs(&base.xattrs, &side.xattrs)
}

/// The value of one attribute after a three-way merge: the side that changed
/// it wins, both changing it alike is no conflict, both changing it
/// differently is (`None`).
fn pick<T: Clone>(base: &T, child: &T, parent: &T, same: impl Fn(&T, &T) -> bool) -> Option<T> {
    if same(child, base) {
        Some(parent.clone())
    } else if same(parent, base) || same(parent, child) {
        Some(child.clone())
    } else {
        None
    }
}

/// A file, symlink or special file both sides changed, merged attribute by
/// attribute: its data (body, size, mtime), mode, owner, device number and
/// xattrs each come from the side that changed them; the link count takes
/// both sides' links and unlinks; ctime and atime the later. `None` when
/// both sides changed one of them differently (a real conflict), for
/// directories (merged by name instead), and for a node either side has
/// only as an open orphan. A rename changes only the node's ctime and name
/// hint, so a rename on one side and an edit on the other merge cleanly.
fn merge_fields(base: &Node, child: &Node, parent: &Node, alike: &Alike) -> Option<Node> {
    let kind = base.meta.kind;
    if base.entries().is_some() || child.meta.kind != kind || parent.meta.kind != kind {
        return None;
    }
    if child.meta.nlink == 0 || parent.meta.nlink == 0 {
        return None;
    }
    let data = pick(&base, &child, &parent, |a, b| same_data(a, b, alike))?;
    let mut out = Node::clone(data);
    let (b, c, p) = (&base.meta, &child.meta, &parent.meta);
    out.meta.perm = pick(&b.perm, &c.perm, &p.perm, PartialEq::eq)?;
    (out.meta.uid, out.meta.gid) = pick(
        &(b.uid, b.gid),
        &(c.uid, c.gid),
        &(p.uid, p.gid),
        PartialEq::eq,
    )?;
    out.meta.rdev = pick(&b.rdev, &c.rdev, &p.rdev, PartialEq::eq)?;
    out.xattrs = pick(&base.xattrs, &child.xattrs, &parent.xattrs, same_xattrs)?;
    out.meta.nlink = (c.nlink + p.nlink)
        .checked_sub(b.nlink)
        .filter(|&n| n > 0)?;
    out.meta.ctime = c.ctime.max(p.ctime);
    out.meta.atime = c.atime.max(p.atime);
    out.meta.hint = if c.hint != b.hint {
        c.hint.clone()
    } else {
        p.hint.clone()
    };
    Some(out)
}

fn is_dir(n: &Option<Arc<Node>>) -> bool {
    n.as_ref().is_some_and(|n| n.entries().is_some())
}

fn dir_parent(n: &Node) -> Option<NodeId> {
    match &n.body {
        Body::Dir { parent, .. } => Some(*parent),
        _ => None,
    }
}

/// What one side did to a node.
fn change_of(base: &Option<Arc<Node>>, side: &Option<Arc<Node>>) -> Change {
    match (base, side) {
        (None, _) => Change::Added,
        (Some(_), None) => Change::Deleted,
        (Some(b), Some(s)) if dir_parent(b) != dir_parent(s) => Change::Moved,
        _ => Change::Modified,
    }
}

/// What one side did to the name whose target went from `base` to `side`.
fn name_change(base: Option<NodeId>, side: Option<NodeId>) -> Change {
    match (base, side) {
        (None, _) => Change::Added,
        (Some(_), None) => Change::Deleted,
        _ => Change::Modified,
    }
}

/// A conflict found by the merge, before its path is known.
enum Found {
    Node(NodeId, Change, Change),
    Name(NodeId, Name, Change, Change),
    Cycle(NodeId),
}

/// The merge of one parent tree with the child's changes.
struct Merge<'a> {
    parent: &'a Tree,
    child: &'a Tree,
    draft: Tree,
    resolve: Option<Resolve>,
    found: Vec<Found>,
    /// Ids the merge changed in the draft.
    touched: Vec<NodeId>,
    /// Files the parent deleted that the child's side won back: they get
    /// their child's name again.
    restore: HashSet<NodeId>,
    /// Files the child deleted that the parent's side won back (`--ours`):
    /// they get their parent's name again.
    keep: HashSet<NodeId>,
}

impl Merge<'_> {
    fn put(&mut self, id: NodeId, node: &Option<Arc<Node>>, branch: &BranchState) {
        self.touched.push(id);
        match node {
            Some(n) => self.draft.insert_arc(id, Arc::clone(n)),
            None => self.remove(id, branch),
        }
    }

    /// Remove node `id` from the parent, as an unlink would: a file the
    /// parent still has open (or the kernel still holds) stays as an orphan.
    fn remove(&mut self, id: NodeId, branch: &BranchState) {
        let keep = self
            .draft
            .get(id)
            .is_some_and(|n| n.entries().is_none() && branch.pinned(id));
        if keep {
            if let Some(mut n) = self.draft.edit(id) {
                n.meta.nlink = 0;
                n.meta.ctime = SystemTime::now();
                self.draft.insert(id, n);
                if branch.kernel_refs.lock().contains_key(&id) {
                    branch.orphans.lock().insert(id);
                }
            }
        } else {
            self.draft.remove(id);
        }
    }

    fn conflict(&mut self, found: Found) -> Option<Resolve> {
        self.found.push(found);
        self.resolve
    }

    /// Merge directory `id`, which both sides changed and neither moved.
    fn merge_dir(&mut self, id: NodeId, b: &Node, c: &Node, p: &Node) {
        let (Some(be), Some(ce), Some(pe)) = (b.entries(), c.entries(), p.entries()) else {
            return;
        };
        let mut merged = pe.clone();
        let mut links: i64 = 0;
        let dir_in = |t: &Tree, n: Option<NodeId>| {
            i64::from(
                n.and_then(|n| t.get(n))
                    .is_some_and(|n| n.entries().is_some()),
            )
        };
        for d in be.diff(ce) {
            let (name, c_val) = match d {
                imbl::ordmap::DiffItem::Add(name, n) => (name, Some(*n)),
                imbl::ordmap::DiffItem::Update { new: (name, n), .. } => (name, Some(*n)),
                imbl::ordmap::DiffItem::Remove(name, _) => (name, None),
            };
            let b_val = be.get(name).copied();
            let p_val = pe.get(name).copied();
            let take = if p_val == b_val {
                true
            } else if p_val == c_val {
                false
            } else {
                let found = Found::Name(id, name.clone(), name_change(b_val, c_val), {
                    name_change(b_val, p_val)
                });
                self.conflict(found) == Some(Resolve::Theirs)
            };
            if take && p_val != c_val {
                match c_val {
                    Some(n) => {
                        merged.insert(name.clone(), n);
                    }
                    None => {
                        merged.remove(name);
                    }
                }
                links += dir_in(self.child, c_val) - dir_in(self.parent, p_val);
            }
        }
        let mut node = Node::clone(p);
        if let Body::Dir { entries, .. } = &mut node.body {
            *entries = merged;
        }
        node.meta.nlink = u32::try_from(i64::from(p.meta.nlink) + links).unwrap_or(2);
        // Mode and owner, and xattrs: the child's change is taken unless the
        // parent changed them to something else too (a conflict).
        let owner = |n: &Node| (n.meta.perm, n.meta.uid, n.meta.gid);
        let both_owner = owner(p) != owner(b) && owner(p) != owner(c);
        let both_xattrs = !same_xattrs(&b.xattrs, &p.xattrs) && !same_xattrs(&p.xattrs, &c.xattrs);
        let child_wins = if (owner(c) != owner(b) && both_owner)
            || (!same_xattrs(&b.xattrs, &c.xattrs) && both_xattrs)
        {
            let found = Found::Node(id, Change::Modified, Change::Modified);
            self.conflict(found) == Some(Resolve::Theirs)
        } else {
            true
        };
        if child_wins && owner(c) != owner(b) {
            node.meta.perm = c.meta.perm;
            node.meta.uid = c.meta.uid;
            node.meta.gid = c.meta.gid;
        }
        if child_wins && !same_xattrs(&b.xattrs, &c.xattrs) {
            node.xattrs = c.xattrs.clone();
        }
        node.meta.mtime = node.meta.mtime.max(c.meta.mtime);
        node.meta.ctime = node.meta.ctime.max(c.meta.ctime);
        node.meta.atime = node.meta.atime.max(c.meta.atime);
        self.touched.push(id);
        self.draft.insert(id, node);
    }

    /// Give each file in `restore` its name in the child, where the merged
    /// tree still has that directory and the name is free.
    fn restore_names(&mut self) {
        if self.restore.is_empty() && self.keep.is_empty() {
            return;
        }
        let mut paths: Vec<_> = paths_in(self.child, &self.restore).into_iter().collect();
        if !self.keep.is_empty() {
            paths.extend(paths_in(self.parent, &self.keep));
        }
        for (id, path) in paths {
            let (dir_path, name) = match path.iter().rposition(|&c| c == b'/') {
                Some(i) => (&path[..i], &path[i + 1..]),
                None => (&path[..0], &path[..]),
            };
            let mut dir = Some(NodeId::ROOT);
            for part in dir_path.split(|&c| c == b'/').filter(|p| !p.is_empty()) {
                dir = dir
                    .and_then(|d| self.draft.get(d))
                    .and_then(|d| d.entries())
                    .and_then(|e| e.get(part).copied());
            }
            let Some(dir) = dir else { continue };
            let Some(mut node) = self.draft.edit(dir) else {
                continue;
            };
            if let Body::Dir { entries, .. } = &mut node.body {
                if entries.contains_key(name) {
                    continue;
                }
                entries.insert(Name::from(name), id);
                node.meta.touch_mc();
                self.touched.push(dir);
                self.draft.insert(dir, node);
            }
        }
    }

    /// Directories the merge moved must still hang under the root: a move on
    /// each side can otherwise put two directories under each other.
    fn check_cycles(&mut self) {
        let moved: Vec<NodeId> = self
            .touched
            .iter()
            .copied()
            .filter(|&id| {
                let new = self.draft.get(id).and_then(|n| dir_parent(n));
                let old = self.parent.get(id).and_then(|n| dir_parent(n));
                new.is_some() && new != old
            })
            .collect();
        for id in moved {
            let mut seen = HashSet::new();
            let mut at = id;
            while at != NodeId::ROOT {
                if !seen.insert(at) {
                    self.found.push(Found::Cycle(id));
                    break;
                }
                match self.draft.get(at).and_then(|n| dir_parent(n)) {
                    Some(up) => at = up,
                    None => break,
                }
            }
        }
    }

    /// Drop nodes no name reaches any more (after a resolved merge), except
    /// the parent's orphans (nlink 0, kept for open handles). Names and link
    /// counts are made to agree too: a resolution takes a node from one side
    /// and names from both, so a name may lead to a node the other side
    /// deleted, or be a second name of a directory both sides moved (both
    /// removed here), and a file's count may miss links (set to the names
    /// that lead to it).
    fn drop_unreachable(&mut self) {
        let mut reached = HashSet::new();
        let mut links: HashMap<NodeId, u32> = HashMap::new();
        let mut dangling: Vec<(NodeId, Name)> = Vec::new();
        let mut stray_dirs: Vec<NodeId> = Vec::new();
        let mut stack = vec![NodeId::ROOT];
        while let Some(id) = stack.pop() {
            if !reached.insert(id) {
                continue;
            }
            if let Some(e) = self.draft.get(id).and_then(|n| n.entries()) {
                for (name, &child) in e.iter() {
                    match self.draft.get(child) {
                        None => dangling.push((id, name.clone())),
                        // A directory has one name, in the directory its
                        // node says: a second name from the other side goes.
                        Some(c) if c.entries().is_some() && dir_parent(c) != Some(id) => {
                            dangling.push((id, name.clone()));
                            stray_dirs.push(id);
                        }
                        Some(c) => {
                            if c.entries().is_none() {
                                *links.entry(child).or_default() += 1;
                            }
                            stack.push(child);
                        }
                    }
                }
            }
        }
        for (dir, name) in dangling {
            if let Some(mut d) = self.draft.edit(dir) {
                if let Body::Dir { entries, .. } = &mut d.body {
                    entries.remove(&name);
                }
                d.meta.touch_mc();
                self.touched.push(dir);
                self.draft.insert(dir, d);
            }
        }
        for dir in stray_dirs {
            if let Some(mut d) = self.draft.edit(dir) {
                d.meta.nlink = d.meta.nlink.saturating_sub(1).max(2);
                self.draft.insert(dir, d);
            }
        }
        for (id, count) in links {
            if let Some(mut n) = self.draft.edit(id).filter(|n| n.meta.nlink != count) {
                n.meta.nlink = count;
                self.touched.push(id);
                self.draft.insert(id, n);
            }
        }
        let lost: Vec<NodeId> = self
            .draft
            .iter()
            .filter(|(id, n)| !reached.contains(id) && n.meta.nlink > 0)
            .map(|(id, _)| id)
            .collect();
        for id in lost {
            self.touched.push(id);
            self.draft.remove(id);
        }
    }
}

fn same_xattrs(a: &Option<super::tree::Xattrs>, b: &Option<super::tree::Xattrs>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

/// Paths of `wanted` nodes in `tree`, found by one walk from the root (only
/// run to report conflicts).
fn paths_in(tree: &Tree, wanted: &HashSet<NodeId>) -> HashMap<NodeId, Vec<u8>> {
    let mut out = HashMap::new();
    if wanted.contains(&NodeId::ROOT) {
        out.insert(NodeId::ROOT, Vec::new());
    }
    let mut seen = HashSet::new();
    tree.walk_names(|id, node, path| {
        if out.len() == wanted.len() {
            return Walk::Stop;
        }
        if wanted.contains(&id) {
            out.entry(id).or_insert_with(|| path.to_vec());
        }
        if node.entries().is_some() && !seen.insert(id) {
            return Walk::Skip;
        }
        Walk::Enter
    });
    out
}

fn text(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        super::diff::path_text(path)
    }
}

/// The conflicts with their paths (looked up in the parent, the child, then
/// the base), sorted by path.
fn name_conflicts(found: &[Found], trees: [&Tree; 3]) -> Vec<Conflict> {
    let wanted: HashSet<NodeId> = found
        .iter()
        .map(|f| match f {
            Found::Node(id, ..) | Found::Name(id, ..) | Found::Cycle(id) => *id,
        })
        .collect();
    let mut paths: HashMap<NodeId, Vec<u8>> = HashMap::new();
    for t in trees {
        let missing: HashSet<NodeId> = wanted
            .iter()
            .filter(|id| !paths.contains_key(id))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        paths.extend(paths_in(t, &missing));
    }
    let path_of = |id: &NodeId| {
        paths
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("<node {id}>").into_bytes())
    };
    let mut out: Vec<Conflict> = found
        .iter()
        .map(|f| match f {
            Found::Node(id, child, parent) => Conflict {
                path: text(&path_of(id)),
                child: *child,
                parent: *parent,
            },
            Found::Name(dir, name, child, parent) => {
                let mut p = path_of(dir);
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                Conflict {
                    path: text(&p),
                    child: *child,
                    parent: *parent,
                }
            }
            Found::Cycle(id) => Conflict {
                path: text(&path_of(id)),
                child: Change::Moved,
                parent: Change::Moved,
            },
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup();
    out
}

/// Names and nodes of `old` that `new` changed at the ids `touched`.
fn cache_changes(old: &Tree, new: &Tree, touched: &[NodeId], report: &mut CommitReport) {
    for &id in touched {
        let (o, n) = (old.get(id), new.get(id));
        if let (Some(o), Some(n)) = (o, n) {
            if Arc::ptr_eq(o, n) {
                continue;
            }
        }
        if o.is_some() {
            report.changed_nodes.push(id);
        }
        match (o.and_then(|o| o.entries()), n.and_then(|n| n.entries())) {
            (Some(oe), Some(ne)) => {
                for d in oe.diff(ne) {
                    let name = match d {
                        imbl::ordmap::DiffItem::Add(name, _)
                        | imbl::ordmap::DiffItem::Remove(name, _)
                        | imbl::ordmap::DiffItem::Update { new: (name, _), .. } => name,
                    };
                    report.changed_entries.push((id, name.to_vec()));
                }
            }
            (Some(oe), None) => {
                report
                    .changed_entries
                    .extend(oe.keys().map(|name| (id, name.to_vec())));
            }
            _ => {}
        }
    }
}

/// The name of the snapshot that records where branch `name` was last committed.
fn commit_point_name(name: &str) -> String {
    format!("{name}@committed")
}

impl FsCore {
    /// Register `frozen` (journaled under `tag` by `freeze`) as the commit
    /// point of branch `c`, in place of the previous one.
    fn set_commit_point(
        &self,
        c: &BranchState,
        name: String,
        frozen: Tree,
        tag: Option<u64>,
    ) -> SnapshotId {
        let journal = self.journal.get();
        let mut reg = self.registry.write();
        let old: Vec<SnapshotId> = reg
            .snapshots
            .values()
            .filter(|s| s.branch == c.id && s.name == name)
            .map(|s| s.id)
            .collect();
        let mut gone = Vec::new();
        for id in old {
            gone.push((reg.snapshots.remove(&id), reg.snapshot_views.remove(&id)));
            if let Some(j) = journal {
                j.append(&super::record::snapshot_delete(id));
            }
        }
        reg.next_snapshot += 1;
        let id = SnapshotId(reg.next_snapshot);
        let state = Arc::new(super::SnapshotState {
            id,
            name,
            branch: c.id,
            created: SystemTime::now(),
            tree: parking_lot::RwLock::new(frozen),
        });
        if let (Some(j), Some(tag)) = (journal, tag) {
            j.append(&super::record::snapshot_create(
                id,
                &state.name,
                c.id,
                state.created,
                tag,
            ));
        }
        reg.snapshots.insert(id, state);
        drop(reg);
        drop(gone);
        id
    }

    /// Objects that hold their base's bytes though they are other objects,
    /// among the files the child changed: the child's or the parent's copy
    /// made by an open for writing that wrote nothing, or by a snapshot of a
    /// file open for writing. Such a copy keeps the size and mtime, so only
    /// those pairs are read and compared (up to [`COMPARE_MAX`] bytes each),
    /// before the parent's tree is locked for the merge.
    fn alike_objects(&self, parent: &BranchState, dc: &BTreeMap<NodeId, Pair>) -> Alike {
        let mut pairs = Vec::new();
        {
            let pt = parent.tree.read();
            for (&id, (b, c)) in dc {
                let Some((b, bc)) = b.as_ref().and_then(|b| Some((b, b.content()?))) else {
                    continue;
                };
                for side in [c.as_ref(), pt.get(id)].into_iter().flatten() {
                    let Some(sc) = side.content() else { continue };
                    if sc.id != bc.id
                        && side.meta.size == b.meta.size
                        && side.meta.mtime == b.meta.mtime
                    {
                        pairs.push((Arc::clone(bc), Arc::clone(sc), b.meta.size));
                    }
                }
            }
        }
        let read = std::cell::Cell::new(0);
        pairs
            .into_iter()
            .filter(|(x, y, len)| {
                *len <= COMPARE_MAX && self.same_bytes(x, y, *len, &read).unwrap_or(false)
            })
            .map(|(x, y, _)| alike_key(x.id, y.id))
            .collect()
    }

    /// Apply branch `child`'s changes since its branch point onto the branch
    /// its base snapshot was taken of, atomically. Refused (`committed:
    /// false`, with the conflicts) when both changed the same paths and
    /// `options.resolve` is `None`.
    pub fn branch_commit(&self, child: BranchId, options: CommitOptions) -> FsResult<CommitReport> {
        // An overlay's lower directory read while the trees are compared
        // would be read in some of them only: none is read meanwhile.
        let _loading = self.lower.get().map(|l| l.loading.lock());
        let (c, base_id, base_tree, p) = {
            let reg = self.registry.read();
            let c = reg
                .branches
                .get(&child)
                .cloned()
                .ok_or_else(|| FsError::UnknownView(child.to_string()))?;
            let base_id = c.from.ok_or_else(|| {
                FsError::Busy(format!(
                    "branch {} \"{}\" has no parent: it was not made from a snapshot",
                    c.id, c.name
                ))
            })?;
            let base = reg.snapshots.get(&base_id).cloned().ok_or_else(|| {
                FsError::UnknownView(format!(
                    "{base_id}, the snapshot branch {} was made from, was deleted: its branch point is gone",
                    c.id
                ))
            })?;
            let p = reg.branches.get(&base.branch).cloned().ok_or_else(|| {
                FsError::UnknownView(format!(
                    "{}, the parent of branch {} (the branch {base_id} was taken of), was deleted",
                    base.branch, c.id
                ))
            })?;
            // Committed before and kept: its changes since then are what is new.
            let point_name = commit_point_name(&c.name);
            let (base_id, base_tree) = match reg
                .snapshots
                .values()
                .filter(|s| s.branch == c.id && s.name == point_name)
                .max_by_key(|s| s.id)
            {
                Some(point) => (point.id, point.tree.read().clone()),
                None => (base_id, base.tree.read().clone()),
            };
            (c, base_id, base_tree, p)
        };
        if p.id == c.id {
            return Err(FsError::Invalid);
        }
        if options.delete {
            let (bound, open) = self.users_after_closes(&c);
            if bound > 0 || open > 0 {
                return Err(FsError::Busy(format!(
                    "branch {} \"{}\" has {bound} bound process(es) and {open} open handle(s); commit without --delete, or close them first",
                    c.id, c.name
                )));
            }
        }
        let mut report = CommitReport {
            child: Some(c.id),
            parent: Some(p.id),
            base: Some(base_id),
            ..CommitReport::default()
        };

        // Where the child is committed is kept as a snapshot of it (its commit
        // point), so that a later commit of the kept child counts only what
        // it changed since; unless a snapshot of another branch has the name.
        let point_name = commit_point_name(&c.name);
        let keep_point = !options.delete
            && !self
                .registry
                .read()
                .snapshots
                .values()
                .any(|s| s.name == point_name && s.branch != c.id);
        // No checkpoint between the point's frozen tree and its record.
        let gate = if keep_point {
            self.journal.get().map(|j| j.gate.read())
        } else {
            None
        };
        // The child's side, safe to share: it copies before its next write.
        let (frozen, tag) = {
            let _serial = c.snapshot_lock.lock();
            self.freeze(&c, keep_point)?
        };
        let dc = changes(&base_tree, &frozen);
        report.child_changes = dc.len();
        let alike = self.alike_objects(&p, &dc);
        // Copies of files open for writing in the child are in `frozen`:
        // their bytes reach the disk before the record naming them.
        if self.journal.get().is_some() {
            self.backstore.sync_all()?;
        }

        // The parent as the merge saw it, to name conflicts after the lock
        // is released (naming may walk the tree).
        let mut seen_parent = Tree::default();
        let mut found = Vec::new();
        report.committed = {
            let mut guard = p.tree.write();
            let parent: &Tree = &guard;
            let dp = changes(&base_tree, parent);
            report.parent_changes = dp.len();
            let mut m = Merge {
                parent,
                child: &frozen,
                draft: if dp.is_empty() {
                    frozen.clone()
                } else {
                    parent.clone()
                },
                resolve: options.resolve,
                found: Vec::new(),
                touched: Vec::new(),
                restore: HashSet::new(),
                keep: HashSet::new(),
            };
            if dp.is_empty() {
                report.fast_path = true;
                m.touched.extend(dc.keys().copied());
                // Files the child deleted that the parent still holds open stay as orphans.
                for (&id, (b, c_n)) in &dc {
                    if b.is_some() && c_n.is_none() && p.pinned(id) {
                        if let Some(n) = parent.get(id) {
                            m.draft.insert_arc(id, Arc::clone(n));
                            m.remove(id, &p);
                        }
                    }
                }
            } else {
                for (&id, (b, c_n)) in &dc {
                    let Some((_, p_n)) = dp.get(&id) else {
                        m.put(id, c_n, &p);
                        continue;
                    };
                    if same(c_n, p_n) {
                        continue;
                    }
                    let unmoved = |n: &Option<Arc<Node>>| {
                        n.as_ref().and_then(|n| dir_parent(n))
                            == b.as_ref().and_then(|b| dir_parent(b))
                    };
                    if is_dir(b) && is_dir(c_n) && is_dir(p_n) && unmoved(c_n) && unmoved(p_n) {
                        let (Some(b), Some(c_n), Some(p_n)) = (b, c_n, p_n) else {
                            continue;
                        };
                        let (b, c_n, p_n) = (Arc::clone(b), Arc::clone(c_n), Arc::clone(p_n));
                        m.merge_dir(id, &b, &c_n, &p_n);
                        continue;
                    }
                    // A side that only holds a copy of the base's bytes
                    // changed nothing: the other side's change stands.
                    if let (Some(b), Some(p_n)) = (b, p_n) {
                        if only_copied(b, p_n, &alike) {
                            m.put(id, c_n, &p);
                            continue;
                        }
                    }
                    if let (Some(b), Some(c_n)) = (b, c_n) {
                        if only_copied(b, c_n, &alike) {
                            continue;
                        }
                    }
                    if let (Some(b), Some(c_n), Some(p_n)) = (b, c_n, p_n) {
                        if let Some(merged) = merge_fields(b, c_n, p_n, &alike) {
                            m.put(id, &Some(Arc::new(merged)), &p);
                            continue;
                        }
                    }
                    let found = Found::Node(id, change_of(b, c_n), change_of(b, p_n));
                    let resolve = m.conflict(found);
                    if resolve == Some(Resolve::Theirs) {
                        m.put(id, c_n, &p);
                        if p_n.is_none() && c_n.as_ref().is_some_and(|c| c.entries().is_none()) {
                            m.restore.insert(id);
                        }
                    } else if resolve == Some(Resolve::Ours)
                        && c_n.is_none()
                        && p_n.as_ref().is_some_and(|p| p.entries().is_none())
                    {
                        m.keep.insert(id);
                    }
                }
                m.restore_names();
            }
            m.check_cycles();
            let cycle = m.found.iter().any(|f| matches!(f, Found::Cycle(_)));
            if !m.found.is_empty() && m.resolve.is_some() && !cycle {
                m.drop_unreachable();
            }
            let refused = cycle || (!m.found.is_empty() && m.resolve.is_none());
            if !m.found.is_empty() {
                seen_parent = parent.clone();
                found = std::mem::take(&mut m.found);
            }
            if refused {
                false
            } else {
                let Merge {
                    draft, mut touched, ..
                } = m;
                touched.sort_unstable();
                touched.dedup();
                cache_changes(parent, &draft, &touched, &mut report);
                if let Some(j) = &p.journal {
                    // One record under the tree lock: all of the commit or none of it.
                    if let Some(rec) = super::record::tree(p.id, parent, &draft, &mut touched) {
                        j.append(&rec);
                    }
                }
                let old = std::mem::replace(&mut *guard, draft);
                drop(guard);
                drop(old);
                true
            }
        };
        report.conflicts = name_conflicts(&found, [&seen_parent, &frozen, &base_tree]);
        if !report.committed {
            return Ok(report);
        }
        if keep_point {
            report.commit_point = Some(self.set_commit_point(&c, point_name, frozen, tag));
        }
        drop(gate);
        self.reap();
        self.make_durable(false)?;
        self.maybe_checkpoint();
        if options.delete {
            // Checked before the commit; a process bound since keeps it.
            match self.branch_delete(c.id, false) {
                Ok(()) => report.deleted_child = true,
                Err(e) => tracing::warn!(branch = %c.id, error = %e, "committed, but not deleted"),
            }
        }
        Ok(report)
    }
}
