//! The persistent tree of one branch or snapshot, and the content objects its
//! files point to.
//!
//! A [`Tree`] is an `imbl::OrdMap` (a persistent B-tree) from node id to
//! `Arc<Node>`: cloning it is O(1) and shares every node, which is what makes
//! snapshots and branches free. A change copies one node (and the map's path
//! to it, where another tree shares that path), never the tree. An ordered map rather than a hash map because two
//! trees can then be compared skipping every subtree they share
//! ([`Tree::changed_nodes`]): a diff or a merge costs what changed, not what
//! the tree holds.
//!
//! A [`Content`] is one backstore object. Nodes and open handles hold it by
//! `Arc`; when the last holder in any tree goes away, its `Drop` queues the
//! object for deletion on the [`Reaper`]. Whether a branch may write a content
//! object in place is decided by its epoch (see `FsCore::make_private`), not by
//! counting references, because one `Arc<Node>` can be shared by many trees.

use crate::attr::{Attr, FileKind};
use crate::ids::{ContentId, NodeId};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

/// Directory entry names are raw bytes: Linux names need not be UTF-8.
pub(crate) type Name = Arc<[u8]>;

/// Extended attributes of a node, shared between tree versions until changed.
pub(crate) type Xattrs = Arc<BTreeMap<Vec<u8>, Vec<u8>>>;

/// Content objects whose last reference is gone, waiting to be removed from the
/// backstore. Drop must not do I/O (it runs wherever the last `Arc` falls,
/// often under a tree lock), so it only queues here; the reaper thread
/// ([`Reaper::spawn`]) removes them off the request path, so an unlink or a
/// truncate-by-rename answers without waiting for the host filesystem to
/// delete a file.
#[derive(Default)]
pub(crate) struct Reaper {
    // Leaf lock.
    state: Mutex<ReaperState>,
    /// Signalled when objects are queued, and when the queue drains.
    wake: Condvar,
}

#[derive(Default)]
struct ReaperState {
    pending: Vec<ContentId>,
    /// Objects taken off `pending` and not yet removed.
    in_flight: usize,
    stop: bool,
}

impl Reaper {
    /// Take every queued object, to remove now on this thread.
    pub(crate) fn take(&self) -> Vec<ContentId> {
        std::mem::take(&mut self.state.lock().pending)
    }

    /// Whether anything waits to be removed.
    pub(crate) fn has_pending(&self) -> bool {
        !self.state.lock().pending.is_empty()
    }

    /// Wake the reaper thread if objects are queued.
    pub(crate) fn kick(&self) {
        if self.has_pending() {
            self.wake.notify_all();
        }
    }

    /// Start the thread that removes queued objects with `remove`. It runs
    /// until [`Reaper::stop`]; what is queued then is removed before it ends.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        remove: impl Fn(ContentId) + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        let reaper = Arc::clone(self);
        std::thread::Builder::new()
            .name("agentfs-reaper".into())
            .spawn(move || loop {
                let batch = {
                    let mut st = reaper.state.lock();
                    while st.pending.is_empty() && !st.stop {
                        reaper.wake.wait(&mut st);
                    }
                    if st.pending.is_empty() {
                        return;
                    }
                    let batch = std::mem::take(&mut st.pending);
                    st.in_flight = batch.len();
                    batch
                };
                for id in batch {
                    remove(id);
                }
                reaper.state.lock().in_flight = 0;
                reaper.wake.notify_all();
            })
    }

    /// Wait until every object queued before this call has been removed by the
    /// thread (or taken by `take`).
    pub(crate) fn settle(&self) {
        let mut st = self.state.lock();
        while (!st.pending.is_empty() && !st.stop) || st.in_flight > 0 {
            self.wake.notify_all();
            self.wake.wait(&mut st);
        }
    }

    /// Ask the thread to finish what is queued and end.
    pub(crate) fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_all();
    }
}

/// One backstore object.
pub(crate) struct Content {
    pub(crate) id: ContentId,
    /// The epoch of the branch that may write this object in place. Equal to the
    /// branch's current epoch only while no snapshot or other branch shares it.
    pub(crate) epoch: AtomicU64,
    /// Writers hold it shared for the span of a write; snapshot-create holds it
    /// exclusively while it copies the object for the snapshot. Ordered before
    /// every tree lock.
    pub(crate) io: Arc<RwLock<()>>,
    /// Bytes the object occupies on the host (for `st_blocks`), as last asked
    /// of the backstore, so getattr need not ask each time. `None` after a
    /// change; the version counts changes, so an answer asked for before a
    /// change is not kept after it. Leaf lock.
    allocated: Mutex<(u64, Option<u64>)>,
    /// For a file of an overlay's lower directory, read in place: its path
    /// there. Such an object is never written (its epoch stays frozen, so
    /// the first write copies it up) and never removed.
    pub(crate) lower: Option<Arc<[u8]>>,
    reaper: Arc<Reaper>,
}

impl Content {
    pub(crate) fn new(id: ContentId, epoch: u64, reaper: &Arc<Reaper>) -> Arc<Content> {
        Arc::new(Content {
            id,
            epoch: AtomicU64::new(epoch),
            io: Arc::new(RwLock::new(())),
            allocated: Mutex::new((0, None)),
            lower: None,
            reaper: Arc::clone(reaper),
        })
    }

    /// The lower file at `path` (relative to the lower root), allocating
    /// `allocated` bytes there. Its id is [`LOWER_CONTENT`]: it has no
    /// backstore object.
    pub(crate) fn lower(path: Arc<[u8]>, allocated: u64, reaper: &Arc<Reaper>) -> Arc<Content> {
        Arc::new(Content {
            id: LOWER_CONTENT,
            epoch: AtomicU64::new(crate::fs::FROZEN_EPOCH),
            io: Arc::new(RwLock::new(())),
            allocated: Mutex::new((0, Some(allocated))),
            lower: Some(path),
            reaper: Arc::clone(reaper),
        })
    }

    /// The object's allocated bytes if known without asking the backstore.
    pub(crate) fn cached_allocated(&self) -> Option<u64> {
        self.allocated.lock().1
    }

    /// The object's allocated bytes, asking `query` (the backstore) only if
    /// they changed since it was last asked.
    pub(crate) fn allocated(&self, query: impl FnOnce() -> Option<u64>) -> Option<u64> {
        let version = match *self.allocated.lock() {
            (_, Some(bytes)) => return Some(bytes),
            (version, None) => version,
        };
        let bytes = query()?;
        let mut cached = self.allocated.lock();
        if cached.0 == version {
            cached.1 = Some(bytes);
        }
        Some(bytes)
    }

    /// The object changed (or may have): its allocated bytes must be asked again.
    pub(crate) fn forget_allocated(&self) {
        let mut cached = self.allocated.lock();
        cached.0 += 1;
        cached.1 = None;
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        if self.lower.is_none() {
            self.reaper.state.lock().pending.push(self.id);
        }
    }
}

/// The id every lower-file content carries; no backstore object has it.
pub(crate) const LOWER_CONTENT: ContentId = ContentId(u64::MAX);

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Content({}, epoch {})", self.id, self.epoch())
    }
}

/// The attributes a node stores (its id is the map key).
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub(crate) kind: FileKind,
    pub(crate) perm: u16,
    pub(crate) nlink: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) rdev: u32,
    pub(crate) atime: SystemTime,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
    pub(crate) crtime: SystemTime,
    /// One name of the node: where it was last given a name. Kept by every
    /// change of a directory's entries (`edit_dir`), persisted, and read by
    /// diff to name a node whose directory did not change. A hint only: for
    /// a file with several links it may name a link removed since, so check
    /// it against the directory before use. Not an attribute: nothing else
    /// reads it, and two nodes differing only here are equal for diff.
    pub(crate) hint: Option<NameHint>,
}

/// A (directory, name) entry that named a node; see [`Meta::hint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NameHint {
    pub(crate) parent: NodeId,
    pub(crate) name: Name,
}

impl Meta {
    pub(crate) fn new(kind: FileKind, perm: u16, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta {
            kind,
            perm,
            nlink: 1,
            uid,
            gid,
            size: 0,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            hint: None,
        }
    }

    pub(crate) fn touch_mc(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }

    pub(crate) fn attr(&self, node: NodeId, blocks: u64) -> Attr {
        Attr {
            node,
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            blocks,
            rdev: self.rdev,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Body {
    /// `None` until the first byte is stored: empty files cost no backstore object.
    File {
        content: Option<Arc<Content>>,
    },
    Dir {
        entries: imbl::OrdMap<Name, NodeId>,
        parent: NodeId,
        /// A directory of an overlay's lower directory whose entries are not
        /// read yet: its path there. `entries` is empty until FsCore reads
        /// them (`FsCore::load_dir`); then this is `None` for good.
        lower: Option<Arc<[u8]>>,
    },
    Symlink(Arc<[u8]>),
    /// FIFOs, sockets and device nodes: attributes only.
    Special,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) meta: Meta,
    pub(crate) body: Body,
    pub(crate) xattrs: Option<Xattrs>,
}

impl Node {
    pub(crate) fn entries(&self) -> Option<&imbl::OrdMap<Name, NodeId>> {
        match &self.body {
            Body::Dir { entries, .. } => Some(entries),
            _ => None,
        }
    }

    pub(crate) fn content(&self) -> Option<&Arc<Content>> {
        match &self.body {
            Body::File { content } => content.as_ref(),
            _ => None,
        }
    }

    /// For a lower directory whose entries are not read yet: its lower path.
    pub(crate) fn unloaded(&self) -> Option<&Arc<[u8]>> {
        match &self.body {
            Body::Dir { lower, .. } => lower.as_ref(),
            _ => None,
        }
    }
}

/// A node as the tree map holds it. Equal only to the same `Arc`: a node
/// copied for a change is a different node even if no field changed, which is
/// what lets [`Tree::changed_nodes`] compare without reading nodes.
#[derive(Clone)]
struct Slot(Arc<Node>);

impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The nodes of one branch or snapshot.
#[derive(Clone, Default)]
pub(crate) struct Tree {
    nodes: imbl::OrdMap<NodeId, Slot>,
    /// While a change is being made, on a draft or in place: the ids it
    /// inserted or removed, for the journal (`persist`). `None` otherwise.
    log: Option<Vec<NodeId>>,
    /// While a change is made in place ([`Tree::begin_change`]): the node
    /// each id it inserted or removed had before (`None`: absent).
    before: Option<BTreeMap<NodeId, Option<Arc<Node>>>>,
}

/// The nodes a change made in place replaced ([`Tree::end_change`]): what
/// undoes it, and what the journal compares the changed tree with.
#[derive(Default)]
pub(crate) struct Before {
    nodes: BTreeMap<NodeId, Option<Arc<Node>>>,
    /// The ids touched, in order, if the change was logged.
    pub(crate) touched: Option<Vec<NodeId>>,
}

/// A change made in place on a tree ([`Tree::begin_change`]): undone when
/// dropped uncommitted (the change failed, or panicked), so the tree is
/// never left half changed.
pub(crate) struct Change<'a> {
    tree: &'a mut Tree,
    committed: bool,
}

impl<'a> Change<'a> {
    pub(crate) fn begin(tree: &'a mut Tree, log: bool) -> Change<'a> {
        tree.begin_change(log);
        Change {
            tree,
            committed: false,
        }
    }

    pub(crate) fn tree(&mut self) -> &mut Tree {
        self.tree
    }

    /// Keep the change: what it replaced.
    pub(crate) fn commit(mut self) -> Before {
        self.committed = true;
        self.tree.end_change()
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let before = self.tree.end_change();
            self.tree.undo(before);
        }
    }
}

/// Nodes by id: a tree, or what a change replaced in one.
pub(crate) trait Nodes {
    /// Node `id`. For [`Before`], only the ids the change touched are known.
    fn node(&self, id: NodeId) -> Option<&Arc<Node>>;
}

impl Nodes for Tree {
    fn node(&self, id: NodeId) -> Option<&Arc<Node>> {
        self.get(id)
    }
}

impl Nodes for Before {
    fn node(&self, id: NodeId) -> Option<&Arc<Node>> {
        self.nodes.get(&id).and_then(Option::as_ref)
    }
}

/// What [`Tree::walk_names`] does after visiting an entry.
pub(crate) enum Walk {
    /// Visit the entry's entries too (if it is a directory).
    Enter,
    /// Go on with its siblings.
    Skip,
    /// End the walk.
    Stop,
}

impl Tree {
    pub(crate) fn get(&self, id: NodeId) -> Option<&Arc<Node>> {
        self.nodes.get(&id).map(|s| &s.0)
    }

    /// Every name reachable from the root, depth first: `visit(id, node,
    /// path)` for each entry whose node is in the tree, `path` being
    /// `/`-separated from the root. Answers how many directories and entries
    /// were read. The one whole-tree walk of diff and merge (both use it only
    /// when a path cannot be found from what changed).
    pub(crate) fn walk_names(
        &self,
        mut visit: impl FnMut(NodeId, &Node, &[u8]) -> Walk,
    ) -> (usize, usize) {
        let (mut dirs, mut names) = (0, 0);
        let mut stack = vec![(NodeId::ROOT, Vec::new())];
        while let Some((dir, path)) = stack.pop() {
            dirs += 1;
            let Some(entries) = self.get(dir).and_then(|n| n.entries()) else {
                continue;
            };
            for (name, &child) in entries.iter() {
                names += 1;
                let Some(node) = self.get(child) else {
                    continue;
                };
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                match visit(child, node, &p) {
                    Walk::Enter if node.entries().is_some() => stack.push((child, p)),
                    Walk::Stop => return (dirs, names),
                    Walk::Enter | Walk::Skip => {}
                }
            }
        }
        (dirs, names)
    }

    pub(crate) fn insert(&mut self, id: NodeId, node: Node) {
        self.insert_arc(id, Arc::new(node));
    }

    pub(crate) fn insert_arc(&mut self, id: NodeId, node: Arc<Node>) {
        self.touch(id);
        self.nodes.insert(id, Slot(node));
    }

    pub(crate) fn remove(&mut self, id: NodeId) -> Option<Arc<Node>> {
        self.touch(id);
        self.nodes.remove(&id).map(|s| s.0)
    }

    /// Note that `id` is about to change: in the log, and its node as it was
    /// before the change if this is the change's first touch of it.
    fn touch(&mut self, id: NodeId) {
        if let Some(log) = &mut self.log {
            log.push(id);
        }
        if let Some(before) = &mut self.before {
            if let std::collections::btree_map::Entry::Vacant(e) = before.entry(id) {
                e.insert(self.nodes.get(&id).map(|s| Arc::clone(&s.0)));
            }
        }
    }

    /// Start a change made in place: every node it replaces is kept until
    /// [`Tree::end_change`], so that it can be undone, and with `log` the
    /// ids it touches are recorded for the journal.
    ///
    /// In place rather than on a clone: a clone shares every node of the
    /// persistent map, so each insert would copy the whole path to its node
    /// (every child pointer of each node on it counted up, and down again
    /// when the old tree goes); in place, nodes the tree alone holds are
    /// changed where they are.
    pub(crate) fn begin_change(&mut self, log: bool) {
        self.before = Some(BTreeMap::new());
        if log {
            self.log = Some(Vec::new());
        }
    }

    /// End the change begun by [`Tree::begin_change`]: what it replaced.
    pub(crate) fn end_change(&mut self) -> Before {
        Before {
            nodes: self.before.take().unwrap_or_default(),
            touched: self.log.take(),
        }
    }

    /// Put back every node `before` holds: the tree as it was when the
    /// change began.
    pub(crate) fn undo(&mut self, before: Before) {
        for (id, node) in before.nodes {
            match node {
                Some(n) => {
                    self.nodes.insert(id, Slot(n));
                }
                None => {
                    self.nodes.remove(&id);
                }
            }
        }
    }

    /// Start recording the ids that `insert` and `remove` touch.
    pub(crate) fn start_log(&mut self) {
        self.log = Some(Vec::new());
    }

    /// Stop recording; the ids touched since `start_log`.
    pub(crate) fn take_log(&mut self) -> Vec<NodeId> {
        self.log.take().unwrap_or_default()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (NodeId, &Arc<Node>)> + '_ {
        self.nodes.iter().map(|(id, n)| (*id, &n.0))
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A private copy of node `id` to change; write it back with `insert`.
    pub(crate) fn edit(&self, id: NodeId) -> Option<Node> {
        self.nodes.get(&id).map(|n| Node::clone(&n.0))
    }

    /// The ids whose node differs between `self` and `other` (by `Arc`
    /// identity, not by value), with the node in each: `None` where the id is
    /// absent. In id order. Subtrees of the map the two trees share are
    /// skipped without being visited, so comparing a snapshot with the branch
    /// it was taken of costs about the changes times the map's depth.
    #[allow(dead_code)] // First callers: fs/diff.rs and merge, landing next.
    pub(crate) fn changed_nodes<'a>(
        &'a self,
        other: &'a Tree,
    ) -> impl Iterator<Item = (NodeId, Option<&'a Arc<Node>>, Option<&'a Arc<Node>>)> + 'a {
        use imbl::ordmap::DiffItem;
        self.nodes.diff(&other.nodes).map(|d| match d {
            DiffItem::Add(id, n) => (*id, None, Some(&n.0)),
            DiffItem::Update {
                old: (id, o),
                new: (_, n),
            } => (*id, Some(&o.0), Some(&n.0)),
            DiffItem::Remove(id, o) => (*id, Some(&o.0), None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change made in place and dropped uncommitted leaves the tree as it
    /// was, nodes by identity; committed, it tells what it replaced.
    #[test]
    fn a_change_in_place_is_undone_unless_committed() {
        let mut t = Tree::default();
        t.insert(NodeId(1), file());
        t.insert(NodeId(2), file());
        let (one, two) = (
            Arc::clone(t.get(NodeId(1)).unwrap()),
            Arc::clone(t.get(NodeId(2)).unwrap()),
        );
        {
            let mut change = Change::begin(&mut t, true);
            let c = change.tree();
            c.insert(NodeId(1), file());
            c.insert(NodeId(1), file());
            c.remove(NodeId(2));
            c.insert(NodeId(3), file());
            assert!(c.get(NodeId(2)).is_none());
        }
        assert!(Arc::ptr_eq(t.get(NodeId(1)).unwrap(), &one));
        assert!(Arc::ptr_eq(t.get(NodeId(2)).unwrap(), &two));
        assert!(t.get(NodeId(3)).is_none());
        assert_eq!(t.len(), 2);

        let mut change = Change::begin(&mut t, true);
        change.tree().remove(NodeId(2));
        change.tree().insert(NodeId(3), file());
        let before = change.commit();
        assert_eq!(before.touched.as_deref(), Some(&[NodeId(2), NodeId(3)][..]));
        assert!(Arc::ptr_eq(before.node(NodeId(2)).unwrap(), &two));
        assert!(before.node(NodeId(3)).is_none());
        assert!(t.get(NodeId(2)).is_none() && t.get(NodeId(3)).is_some());
        // Nothing is recorded once the change is over.
        t.insert(NodeId(4), file());
        assert!(t.end_change().nodes.is_empty());
    }

    fn file() -> Node {
        Node {
            meta: Meta::new(FileKind::RegularFile, 0o644, 0, 0),
            body: Body::File { content: None },
            xattrs: None,
        }
    }

    #[test]
    fn changed_nodes_yields_only_what_differs() {
        let shared = Arc::new(file());
        let mut a = Tree::default();
        for i in 0..100_000u64 {
            a.insert_arc(NodeId(i), Arc::clone(&shared));
        }
        assert_eq!(a.changed_nodes(&a.clone()).count(), 0);
        let mut b = a.clone();
        // A copy with no field changed still counts: identity, not value.
        b.insert(NodeId(5), file());
        b.remove(NodeId(50_000));
        b.insert(NodeId(200_000), file());
        let got: Vec<_> = a
            .changed_nodes(&b)
            .map(|(id, o, n)| (id.0, o.is_some(), n.is_some()))
            .collect();
        assert_eq!(
            got,
            vec![
                (5, true, true),
                (50_000, true, false),
                (200_000, false, true)
            ]
        );
    }

    /// Map speed at a million nodes: inserts, lookups in a scattered order, and
    /// copy-on-write edits of a shared clone. Prints figures; asserts nothing
    /// about time. Run: `cargo test --release -p agentfs-core tree_map_speed
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn tree_map_speed() {
        const N: u64 = 1_000_000;
        let shared = Arc::new(file());
        let t0 = std::time::Instant::now();
        let mut tree = Tree::default();
        for i in 0..N {
            tree.insert_arc(NodeId(i), Arc::clone(&shared));
        }
        let insert = t0.elapsed();
        let t1 = std::time::Instant::now();
        let mut found = 0u64;
        for i in 0..N {
            let id = NodeId(i.wrapping_mul(2_654_435_761) % N);
            found += u64::from(tree.get(id).is_some());
        }
        let lookup = t1.elapsed();
        assert_eq!(found, N);
        let t2 = std::time::Instant::now();
        let mut copy = tree.clone();
        for i in 0..100_000u64 {
            let id = NodeId(i.wrapping_mul(2_654_435_761) % N);
            let node = copy.edit(id).expect("present");
            copy.insert(id, node);
        }
        let edit = t2.elapsed();
        println!(
            "tree_map_speed: {N} inserts {:.1} ns/op, {N} lookups {:.1} ns/op, 100000 CoW edits {:.1} ns/op",
            insert.as_nanos() as f64 / N as f64,
            lookup.as_nanos() as f64 / N as f64,
            edit.as_nanos() as f64 / 100_000.0
        );
    }
}
