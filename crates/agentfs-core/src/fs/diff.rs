//! Diff of two views (branches or snapshots): which paths were added,
//! deleted, modified, renamed or changed type between them.
//!
//! Built so the cost follows what changed, not the tree size:
//! - [`Tree::changed_nodes`] lists the node ids whose node differs between
//!   the two trees, skipping every part of the node map they share (a branch
//!   and the snapshot it came from share all of it but the changed paths).
//! - A directory among them gives its added and removed names by a diff of
//!   its entry maps (`imbl::OrdMap::diff`, which skips shared parts too).
//! - A node id keeps its identity across a rename, so a node that lost a name
//!   in one tree and gained one in the other was renamed (or moved).
//! - A file whose data or mode changed leaves its directory untouched: its
//!   path comes from its name hint (`Meta::hint`, the last (directory, name)
//!   that named it), checked against that directory. Only when no hint holds
//!   (a hard link whose hinted name was removed, data written before hints
//!   existed) is the tree walked once to find the path; [`DiffStats`] says so.
//!   A changed file with several links is reported at each of its names,
//!   found by one walk (a host copy of each name must change too).
//!
//! Paths are relative to the root, as text: valid UTF-8 stays as it is,
//! every other byte is written `\xNN` and a backslash `\\`, so a path is
//! JSON-friendly and the original bytes can be recovered.

use super::tree::{Body, Content, Name, Node, Tree, Walk};
use super::FsCore;
use crate::attr::FileKind;
use crate::error::{FsError, FsResult};
use crate::ids::{BranchId, NodeId, SnapshotId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One side of a diff: a branch (its tree as of the diff) or a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewRef {
    Branch(BranchId),
    Snapshot(SnapshotId),
}

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    Added,
    Deleted,
    Modified,
    /// The node moved from `from` to `path` (node ids persist across rename).
    Renamed,
    /// The path holds a node of another type than before (`old_type`).
    TypeChanged,
}

/// What changed in a modified (or renamed) node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffAspect {
    /// File content or size (or a device number).
    Data,
    /// Permission bits.
    Mode,
    /// Owner or group.
    Owner,
    /// A symlink's target.
    Target,
    Xattrs,
    /// Only the modification time.
    Times,
    /// The path names another node of the same type (e.g. saved by writing a
    /// new file and renaming it over the old one).
    Replaced,
}

/// The type of a node, as a diff names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl From<FileKind> for EntryType {
    fn from(k: FileKind) -> EntryType {
        match k {
            FileKind::RegularFile => EntryType::File,
            FileKind::Directory => EntryType::Dir,
            FileKind::Symlink => EntryType::Symlink,
            FileKind::NamedPipe => EntryType::Fifo,
            FileKind::CharDevice => EntryType::CharDevice,
            FileKind::BlockDevice => EntryType::BlockDevice,
            FileKind::Socket => EntryType::Socket,
        }
    }
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffChange {
    pub change: DiffKind,
    /// The path in the second view (in the first for `Deleted`).
    pub path: String,
    /// `Renamed`: the path in the first view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The node's type (in the first view for `Deleted`).
    #[serde(rename = "type")]
    pub entry_type: EntryType,
    /// `TypeChanged`: the type in the first view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_type: Option<EntryType>,
    /// `Modified`, `Renamed`: what changed in the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<DiffAspect>,
}

/// How much work a diff did: what it read, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffStats {
    /// Node ids whose node differs between the trees.
    pub changed_nodes: usize,
    /// Nodes read to classify changes and build paths (whole-tree walks
    /// included).
    pub nodes_read: usize,
    /// Directory entries compared or scanned.
    pub entries_read: usize,
    /// Whole-tree walks made because no name hint held for some node.
    pub tree_walks: usize,
    /// File bytes read to tell whether two content objects of one size
    /// differ.
    pub bytes_compared: u64,
}

/// Largest file whose two content objects a diff compares byte by byte;
/// a larger one whose object was copied is reported as `data` changed even
/// if no byte differs (reading two huge files would make the diff cost the
/// file size).
pub(super) const COMPARE_MAX: u64 = 64 << 20;

/// Reads part of a content object at an offset.
type ReadAt<'f> = &'f dyn Fn(&Content, &mut [u8], u64) -> std::io::Result<usize>;

/// Read until `buf` is full or the object ends.
fn read_full(read: ReadAt, c: &Content, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = read(c, &mut buf[done..], at + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Path text: UTF-8 as is, other bytes as `\xNN`, backslash as `\\`.
pub(crate) fn path_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Builds paths in one tree, remembering directory paths.
struct Paths<'t> {
    tree: &'t Tree,
    dirs: HashMap<NodeId, Option<Vec<u8>>>,
    /// Every node's first path, once a walk was needed.
    index: Option<HashMap<NodeId, Vec<u8>>>,
    /// Every path of each file with several links, once one was needed.
    links: Option<HashMap<NodeId, Vec<Vec<u8>>>>,
}

impl<'t> Paths<'t> {
    fn new(tree: &'t Tree) -> Paths<'t> {
        Paths {
            tree,
            dirs: HashMap::new(),
            index: None,
            links: None,
        }
    }

    /// Every path of `id`, a file with several links (a change to it is a
    /// change at each of its names), by one walk of the whole tree; empty
    /// if it has one link or none.
    fn all(&mut self, id: NodeId, st: &mut DiffStats) -> Vec<Vec<u8>> {
        if !self
            .tree
            .get(id)
            .is_some_and(|n| n.entries().is_none() && n.meta.nlink > 1)
        {
            return Vec::new();
        }
        if self.links.is_none() {
            st.tree_walks += 1;
            let mut links: HashMap<NodeId, Vec<Vec<u8>>> = HashMap::new();
            let (dirs, names) = self.tree.walk_names(|id, node, path| {
                if node.entries().is_none() && node.meta.nlink > 1 {
                    links.entry(id).or_default().push(path.to_vec());
                }
                Walk::Enter
            });
            st.nodes_read += dirs;
            st.entries_read += names;
            self.links = Some(links);
        }
        self.links
            .as_ref()
            .and_then(|l| l.get(&id))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `parent` holds `name` → `id`.
    fn holds(&self, parent: NodeId, name: &[u8], id: NodeId, st: &mut DiffStats) -> bool {
        st.nodes_read += 1;
        self.tree
            .get(parent)
            .and_then(|p| p.entries())
            .is_some_and(|e| e.get(name) == Some(&id))
    }

    /// The path of directory `id` (empty for the root).
    fn dir(&mut self, id: NodeId, st: &mut DiffStats) -> Option<Vec<u8>> {
        if id == NodeId::ROOT {
            return Some(Vec::new());
        }
        if let Some(p) = self.dirs.get(&id) {
            return p.clone();
        }
        // Walk up to the root (or a known directory), then build downwards.
        let mut chain: Vec<(NodeId, Name)> = Vec::new();
        let mut cur = id;
        let mut base = None;
        for _ in 0..=4096 {
            if cur == NodeId::ROOT {
                base = Some(Vec::new());
                break;
            }
            if let Some(p) = self.dirs.get(&cur) {
                base = p.clone();
                break;
            }
            st.nodes_read += 1;
            let Some(n) = self.tree.get(cur) else { break };
            let Body::Dir { parent, .. } = &n.body else {
                break;
            };
            let name = match &n.meta.hint {
                Some(h) if h.parent == *parent && self.holds(*parent, &h.name, cur, st) => {
                    Some(h.name.clone())
                }
                _ => self.scan(*parent, cur, st),
            };
            let Some(name) = name else { break };
            chain.push((cur, name));
            cur = *parent;
        }
        let mut path = base;
        while let Some((d, name)) = chain.pop() {
            path = path.map(|mut p| {
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&name);
                p
            });
            self.dirs.insert(d, path.clone());
        }
        self.dirs.entry(id).or_insert(None);
        path
    }

    /// A name of `id` in directory `parent`, by reading its entries.
    fn scan(&self, parent: NodeId, id: NodeId, st: &mut DiffStats) -> Option<Name> {
        let entries = self.tree.get(parent)?.entries()?;
        for (name, child) in entries.iter() {
            st.entries_read += 1;
            if *child == id {
                return Some(name.clone());
            }
        }
        None
    }

    /// The path of the entry `name` of directory `parent`.
    fn entry(&mut self, parent: NodeId, name: &[u8], st: &mut DiffStats) -> Vec<u8> {
        let mut p = self.dir(parent, st).unwrap_or_else(|| b"?".to_vec());
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    /// A path of node `id`: by its hint, else by one walk of the whole tree.
    fn node(&mut self, id: NodeId, st: &mut DiffStats) -> Option<Vec<u8>> {
        if id == NodeId::ROOT {
            return Some(Vec::new());
        }
        st.nodes_read += 1;
        let n = self.tree.get(id)?;
        if let Some(h) = &n.meta.hint {
            if self.holds(h.parent, &h.name, id, st) {
                let name = h.name.clone();
                return Some(self.entry(h.parent, &name, st));
            }
        }
        self.walk(st).get(&id).cloned()
    }

    fn walk(&mut self, st: &mut DiffStats) -> &HashMap<NodeId, Vec<u8>> {
        if self.index.is_none() {
            st.tree_walks += 1;
            let mut index = HashMap::new();
            let (dirs, names) = self.tree.walk_names(|id, _, path| {
                if index.contains_key(&id) {
                    return Walk::Skip;
                }
                index.insert(id, path.to_vec());
                Walk::Enter
            });
            st.nodes_read += dirs;
            st.entries_read += names;
            self.index = Some(index);
        }
        self.index.as_ref().expect("just built")
    }
}

/// Whether two content objects hold the same first `len` bytes.
pub(crate) type SameBytes<'f> = &'f dyn Fn(&Arc<Content>, &Arc<Content>, u64) -> bool;

/// What differs between two versions of one node (or two nodes at one path).
/// Two files of one size whose content objects differ are compared byte by
/// byte (`same`): opening a file for writing copies its object without
/// changing a byte.
fn aspects(a: &Node, b: &Node, same: SameBytes) -> Vec<DiffAspect> {
    let mut what = Vec::new();
    let (ma, mb) = (&a.meta, &b.meta);
    let dir = ma.kind == FileKind::Directory && mb.kind == FileKind::Directory;
    let data = match (&a.body, &b.body) {
        (Body::File { content: ca }, Body::File { content: cb }) => {
            let equal = ma.size == mb.size
                && match (ca, cb) {
                    (None, None) => true,
                    (Some(x), Some(y)) => Arc::ptr_eq(x, y) || same(x, y, ma.size),
                    _ => ma.size == 0,
                };
            !equal
        }
        (Body::Special, Body::Special) => ma.rdev != mb.rdev,
        _ => false,
    };
    if data {
        what.push(DiffAspect::Data);
    }
    if ma.perm != mb.perm {
        what.push(DiffAspect::Mode);
    }
    if ma.uid != mb.uid || ma.gid != mb.gid {
        what.push(DiffAspect::Owner);
    }
    if let (Body::Symlink(x), Body::Symlink(y)) = (&a.body, &b.body) {
        if x != y {
            what.push(DiffAspect::Target);
        }
    }
    let xattrs_same = match (&a.xattrs, &b.xattrs) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
        (Some(x), None) | (None, Some(x)) => x.is_empty(),
    };
    if !xattrs_same {
        what.push(DiffAspect::Xattrs);
    }
    // A directory's times change with its entries, which are reported as
    // the entries' own changes.
    if what.is_empty() && !dir && ma.mtime != mb.mtime {
        what.push(DiffAspect::Times);
    }
    what
}

fn kind_of(n: &Node) -> EntryType {
    n.meta.kind.into()
}

/// The name hint of a node, if it has one.
fn hint_of(n: Option<&Arc<Node>>) -> Option<super::tree::NameHint> {
    n.and_then(|n| n.meta.hint.clone())
}

/// The changes from tree `a` to tree `b`, sorted by path.
pub(crate) fn diff_trees(a: &Tree, b: &Tree, same: SameBytes) -> (Vec<DiffChange>, DiffStats) {
    let mut st = DiffStats::default();
    // Names each node lost (in `a`) and gained (in `b`), by node id.
    let mut lost: BTreeMap<NodeId, Vec<(NodeId, Name)>> = BTreeMap::new();
    let mut gained: BTreeMap<NodeId, Vec<(NodeId, Name)>> = BTreeMap::new();
    // Nodes present in both whose node differs.
    let mut both: Vec<NodeId> = Vec::new();
    for (id, na, nb) in a.changed_nodes(b) {
        st.changed_nodes += 1;
        st.nodes_read += 1;
        if na.is_some() && nb.is_some() {
            both.push(id);
        }
        let ea = na.and_then(|n| n.entries());
        let eb = nb.and_then(|n| n.entries());
        match (ea, eb) {
            (Some(ea), Some(eb)) => {
                for d in ea.diff(eb) {
                    st.entries_read += 1;
                    match d {
                        imbl::ordmap::DiffItem::Add(name, c) => {
                            gained.entry(*c).or_default().push((id, name.clone()))
                        }
                        imbl::ordmap::DiffItem::Remove(name, c) => {
                            lost.entry(*c).or_default().push((id, name.clone()))
                        }
                        imbl::ordmap::DiffItem::Update {
                            old: (name, c0),
                            new: (_, c1),
                        } => {
                            lost.entry(*c0).or_default().push((id, name.clone()));
                            gained.entry(*c1).or_default().push((id, name.clone()));
                        }
                    }
                }
            }
            (Some(ea), None) => {
                for (name, c) in ea.iter() {
                    st.entries_read += 1;
                    lost.entry(*c).or_default().push((id, name.clone()));
                }
            }
            (None, Some(eb)) => {
                for (name, c) in eb.iter() {
                    st.entries_read += 1;
                    gained.entry(*c).or_default().push((id, name.clone()));
                }
            }
            (None, None) => {}
        }
    }

    let mut pa = Paths::new(a);
    let mut pb = Paths::new(b);
    // Raw changes keyed by path bytes.
    let mut out: Vec<(Vec<u8>, DiffChange)> = Vec::new();
    let change = |kind: DiffKind, path: &[u8], t: EntryType| DiffChange {
        change: kind,
        path: path_text(path),
        from: None,
        entry_type: t,
        old_type: None,
        what: Vec::new(),
    };
    let mut named: std::collections::HashSet<NodeId> = std::collections::HashSet::new();
    let ids: std::collections::BTreeSet<NodeId> =
        lost.keys().chain(gained.keys()).copied().collect();
    for id in ids {
        named.insert(id);
        let (na, nb) = (a.get(id), b.get(id));
        st.nodes_read += 2;
        let mut l = lost.remove(&id).unwrap_or_default();
        let mut g = gained.remove(&id).unwrap_or_default();
        // Names in both lists are the same entry seen twice (a directory
        // replaced by itself cannot happen, but a name can go and come back).
        l.retain(|x| {
            if let Some(i) = g.iter().position(|y| y == x) {
                g.remove(i);
                false
            } else {
                true
            }
        });
        let what = match (na, nb) {
            (Some(x), Some(y)) if !Arc::ptr_eq(x, y) => aspects(x, y, same),
            _ => Vec::new(),
        };
        let mut renamed = false;
        // Ids are never reused, so a node with a name on both sides exists
        // on both sides.
        while let (Some(y), false, false) =
            (nb.filter(|_| na.is_some()), l.is_empty(), g.is_empty())
        {
            let (from, to) = (l.remove(0), g.remove(0));
            let from_path = pa.entry(from.0, &from.1, &mut st);
            let to_path = pb.entry(to.0, &to.1, &mut st);
            let mut c = change(DiffKind::Renamed, &to_path, kind_of(y));
            c.from = Some(path_text(&from_path));
            c.what = what.clone();
            out.push((to_path, c));
            renamed = true;
        }
        for (p, name) in l {
            let Some(x) = na else { continue };
            let path = pa.entry(p, &name, &mut st);
            out.push((path.clone(), change(DiffKind::Deleted, &path, kind_of(x))));
        }
        let mut added = Vec::new();
        for (p, name) in g {
            let Some(y) = nb else { continue };
            let path = pb.entry(p, &name, &mut st);
            out.push((path.clone(), change(DiffKind::Added, &path, kind_of(y))));
            added.push(path);
        }
        if let (false, Some(_), Some(y)) = (renamed, na, nb) {
            // Gained or lost a link only, and changed too: reported at a name
            // it had before and still has (a gained name is reported added).
            if !what.is_empty() {
                let kept = hint_of(na).filter(|h| {
                    pa.holds(h.parent, &h.name, id, &mut st)
                        && pb.holds(h.parent, &h.name, id, &mut st)
                });
                let mut paths: Vec<Vec<u8>> = pb.all(id, &mut st);
                paths.retain(|p| !added.contains(p));
                if paths.is_empty() {
                    let path = match kept {
                        Some(h) => Some(pb.entry(h.parent, &h.name, &mut st)),
                        None => pb.node(id, &mut st),
                    };
                    paths.extend(path);
                }
                for path in paths {
                    let mut c = change(DiffKind::Modified, &path, kind_of(y));
                    c.what = what.clone();
                    out.push((path, c));
                }
            }
        }
    }
    for id in both {
        if named.contains(&id) {
            continue;
        }
        let (Some(x), Some(y)) = (a.get(id), b.get(id)) else {
            continue;
        };
        let what = aspects(x, y, same);
        if what.is_empty() {
            continue;
        }
        let mut paths = pb.all(id, &mut st);
        if paths.is_empty() {
            let Some(path) = pb.node(id, &mut st) else {
                // Not reachable by any name (an unlinked file kept open).
                continue;
            };
            paths.push(path);
        }
        for path in paths {
            let mut c = change(DiffKind::Modified, &path, kind_of(y));
            c.what = what.clone();
            out.push((path, c));
        }
    }

    // One path deleted and added again (another node now): a replacement
    // (same type) or a type change. A deletion at a path a rename now
    // occupies is the rename's replacement.
    out.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.change.cmp(&y.1.change)));
    let mut merged: Vec<DiffChange> = Vec::with_capacity(out.len());
    let mut i = 0;
    while i < out.len() {
        let mut j = i + 1;
        while j < out.len() && out[j].0 == out[i].0 {
            j += 1;
        }
        let group = &out[i..j];
        let del = group.iter().find(|c| c.1.change == DiffKind::Deleted);
        let add = group.iter().find(|c| c.1.change == DiffKind::Added);
        let ren = group.iter().find(|c| c.1.change == DiffKind::Renamed);
        match (del, add, ren) {
            (Some(d), Some(a), None) => {
                let mut c = a.1.clone();
                if d.1.entry_type == a.1.entry_type {
                    c.change = DiffKind::Modified;
                    c.what = vec![DiffAspect::Replaced];
                } else {
                    c.change = DiffKind::TypeChanged;
                    c.old_type = Some(d.1.entry_type);
                }
                merged.push(c);
                merged.extend(
                    group
                        .iter()
                        .filter(|x| !matches!(x.1.change, DiffKind::Deleted | DiffKind::Added))
                        .map(|x| x.1.clone()),
                );
            }
            (Some(d), None, Some(r)) => {
                let mut c = r.1.clone();
                if d.1.entry_type == r.1.entry_type {
                    c.what.push(DiffAspect::Replaced);
                } else {
                    c.old_type = Some(d.1.entry_type);
                }
                merged.push(c);
                merged.extend(
                    group
                        .iter()
                        .filter(|x| !matches!(x.1.change, DiffKind::Deleted | DiffKind::Renamed))
                        .map(|x| x.1.clone()),
                );
            }
            _ => merged.extend(group.iter().map(|x| x.1.clone())),
        }
        i = j;
    }
    (merged, st)
}

impl FsCore {
    /// The branch or snapshot named or numbered `name_or_id`: a branch name,
    /// a snapshot name, `b<N>` or `s<N>`. A bare number or a name both a
    /// branch and a snapshot carry is refused as ambiguous.
    pub fn find_view(&self, name_or_id: &str) -> FsResult<ViewRef> {
        let branch = self.find_branch(name_or_id).ok();
        let snapshot = self.find_snapshot(name_or_id).ok();
        match (branch, snapshot) {
            (Some(b), None) => Ok(ViewRef::Branch(b)),
            (None, Some(s)) => Ok(ViewRef::Snapshot(s)),
            (Some(b), Some(s)) => Err(FsError::UnknownView(format!(
                "{name_or_id:?} names both branch {b} and snapshot {s}; say {b} or {s}"
            ))),
            (None, None) => Err(FsError::UnknownView(format!(
                "no branch or snapshot named or numbered {name_or_id:?}"
            ))),
        }
    }

    /// The tree of a view as of now (an O(1) clone taken under its lock).
    fn view_tree(&self, v: ViewRef) -> FsResult<Tree> {
        let reg = self.registry.read();
        match v {
            ViewRef::Branch(b) => {
                let branch = reg
                    .branches
                    .get(&b)
                    .cloned()
                    .ok_or_else(|| FsError::UnknownView(b.to_string()))?;
                drop(reg);
                let t = branch.tree.read().clone();
                Ok(t)
            }
            ViewRef::Snapshot(s) => reg
                .snapshots
                .get(&s)
                .map(|s| s.tree.read().clone())
                .ok_or_else(|| FsError::UnknownView(s.to_string())),
        }
    }

    /// What changed from view `a` to view `b`, sorted by path.
    pub fn diff(&self, a: ViewRef, b: ViewRef) -> FsResult<Vec<DiffChange>> {
        Ok(self.diff_with_stats(a, b)?.0)
    }

    /// [`FsCore::diff`] and the work it took.
    pub fn diff_with_stats(
        &self,
        a: ViewRef,
        b: ViewRef,
    ) -> FsResult<(Vec<DiffChange>, DiffStats)> {
        let (ta, tb) = (self.view_tree(a)?, self.view_tree(b)?);
        let compared = std::cell::Cell::new(0u64);
        let same = |x: &Arc<Content>, y: &Arc<Content>, len: u64| {
            len <= COMPARE_MAX && self.same_bytes(x, y, len, &compared).unwrap_or(false)
        };
        let (changes, mut st) = diff_trees(&ta, &tb, &same);
        st.bytes_compared = compared.get();
        Ok((changes, st))
    }

    /// Whether `x` and `y` hold the same first `len` bytes, read in chunks;
    /// counts the bytes read into `count`.
    pub(super) fn same_bytes(
        &self,
        x: &Content,
        y: &Content,
        len: u64,
        count: &std::cell::Cell<u64>,
    ) -> std::io::Result<bool> {
        const CHUNK: usize = 1 << 16;
        let read = |c: &Content, buf: &mut [u8], at: u64| -> std::io::Result<usize> {
            if c.lower.is_some() {
                use std::os::unix::fs::FileExt;
                self.content_file(c)?.read_at(buf, at)
            } else {
                self.backstore.read_at(c.id, buf, at)
            }
        };
        let (mut bx, mut by) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        let mut at = 0u64;
        while at < len {
            let want = usize::try_from(len - at).unwrap_or(CHUNK).min(CHUNK);
            let (nx, ny) = (
                read_full(&read, x, &mut bx[..want], at)?,
                read_full(&read, y, &mut by[..want], at)?,
            );
            count.set(count.get() + (nx + ny) as u64);
            // Bytes past an object's end read as zeros (a sparse tail).
            bx[nx..want].fill(0);
            by[ny..want].fill(0);
            if bx[..want] != by[..want] {
                return Ok(false);
            }
            if nx == 0 && ny == 0 {
                // Both objects end here: the rest of the file is a hole in both.
                return Ok(true);
            }
            at += want as u64;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
