//! FsCore: the state shared by every operation, and the helpers the operation
//! modules (`namespace`, `file`, `dir`, `xattr`, `views`) are built from.
//!
//! Locks, in the order they may be taken (never the other way round):
//! `FsCore::registry` (only to look up or change the set of branches and
//! snapshots; released before anything else is taken) → `BranchState::snapshot_lock`
//! → `Content::io` → `BranchState::tree` → `BranchState::open` → `FsCore::handles`.
//! Before all of them: `Lower::loading` (overlay: serialises reading lower
//! directories, and is held by snapshot-create, branch-create and commit so
//! no read lands between their steps), then the journal's `gate` (shared by
//! changes whose records a checkpoint must not split, exclusive for a
//! checkpoint). `FsCore::lower_nodes` is a leaf.
//!
//! No lock is held across backstore I/O except `Content::io`, whose purpose is
//! to keep one object still while it is written or copied, with one bounded
//! exception: snapshot-create and branch-commit copy the objects of files
//! open for writing while the branch's tree lock is held, because a write
//! through passthrough is not held still by `Content::io` and the copy must
//! not miss one that came before a change the frozen tree has. That branch's
//! other operations wait for those copies (reflinks where the backstore can
//! make them); other branches do not.

mod diff;
mod dir;
mod durable;
mod file;
mod merge;
mod namespace;
pub(crate) mod overlay;
mod perm;
mod snapshot_views;
pub(crate) mod tree;
mod views;
mod xattr;

pub use diff::{DiffAspect, DiffChange, DiffKind, DiffStats, EntryType, ViewRef};
pub use durable::RecoveryReport;
pub use merge::{Change, CommitOptions, CommitReport, Conflict, Resolve};
pub use overlay::ImportReport;
pub use views::{BranchInfo, CoreStats, SnapshotInfo};

use crate::attr::{Attr, DirEntry, FileKind};
use crate::backstore::Backstore;
use crate::binding::{Bindings, ProcessTable};
use crate::error::{FsError, FsResult};
use crate::ids::{BranchId, HandleId, NodeId, SnapshotId};
use crate::persist::journal::Journal;
use crate::persist::record;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tree::{Body, Content, Meta, Node, Reaper, Tree};

/// Longest name of a directory entry, in bytes.
pub const NAME_MAX: usize = 255;

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

/// Open handles on one node of one branch.
#[derive(Clone, Copy, Debug, Default)]
struct OpenCount {
    handles: u32,
    writers: u32,
    /// Handles whose data the kernel reads and writes directly in the content
    /// object (passthrough), and how many of those write.
    passthrough: u32,
    passthrough_writers: u32,
}

impl OpenCount {
    /// Whether snapshot-create must give the snapshot its own copy of the
    /// node's content: someone may change it in place without asking FsCore.
    fn pins_content(&self) -> bool {
        self.writers > 0 || self.passthrough > 0
    }
}

/// What [`FsCore::attr_parts`] reads under the tree lock: the node's
/// attributes as stored (`blocks` not yet known), copied without the
/// node's name hint, which a stat never shows and which would cost an
/// allocation per answer.
struct AttrParts {
    attr: Attr,
    content: Option<Arc<Content>>,
    direct_writers: u32,
}

/// A writable branch.
pub(crate) struct BranchState {
    id: BranchId,
    name: String,
    from: Option<SnapshotId>,
    created: SystemTime,
    /// Serialises snapshot-create of this branch.
    snapshot_lock: Mutex<()>,
    tree: RwLock<Tree>,
    /// Content objects stamped with this epoch are this branch's alone. Changes
    /// (under the tree lock) each time a snapshot shares the tree.
    epoch: AtomicU64,
    /// Nodes with open handles, and how many of those write.
    open: Mutex<HashMap<NodeId, OpenCount>>,
    /// A lock for each node whose direct writer is ending (or whose object's
    /// size is being taken into it) right now: see
    /// [`FsCore::drop_direct_writer`]. Per node, so a fold that waits on a
    /// slow backstore holds up nobody else's. Leaf lock for the map.
    direct_ends: Mutex<HashMap<NodeId, Arc<Mutex<()>>>>,
    /// How many lookups of each node the kernel holds (FUSE `nlookup`: counted
    /// up by every reply that hands it the node, down by FORGET). A file whose
    /// last name goes while the kernel still holds it stays as an orphan, as
    /// it would on a local filesystem, so an open or stat racing the unlink or
    /// a rename over it finds the file it resolved instead of ESTALE. Leaf lock.
    kernel_refs: Mutex<HashMap<NodeId, u64>>,
    /// Nodes kept with no name because the kernel still held them when their
    /// last name went (may name nodes already gone): what snapshot-create
    /// leaves out, without walking every node the kernel holds. Leaf lock.
    orphans: Mutex<std::collections::HashSet<NodeId>>,
    open_handles: AtomicUsize,
    /// Where committed changes of this tree are recorded (`None`: not persisted).
    journal: Option<Arc<Journal>>,
}

impl BranchState {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn open_count(&self, node: NodeId) -> OpenCount {
        self.open.lock().get(&node).copied().unwrap_or_default()
    }

    /// Run `f` holding node `id`'s direct-end lock (see `direct_ends`).
    fn with_direct_end<R>(&self, id: NodeId, f: impl FnOnce() -> R) -> R {
        let lock = Arc::clone(self.direct_ends.lock().entry(id).or_default());
        let answer = {
            let _held = lock.lock();
            f()
        };
        let mut ends = self.direct_ends.lock();
        // Nobody else has it (the map's and this one): it goes.
        if Arc::strong_count(&lock) == 2 {
            ends.remove(&id);
        }
        answer
    }

    /// Whether an unlinked node must stay (as an orphan): handles are open on
    /// it, or the kernel still holds it.
    fn pinned(&self, node: NodeId) -> bool {
        self.open_count(node).handles > 0 || self.kernel_refs.lock().contains_key(&node)
    }
}

/// A frozen tree.
pub(crate) struct SnapshotState {
    id: SnapshotId,
    name: String,
    branch: BranchId,
    created: SystemTime,
    /// Never changed, except that an overlay's lower directory read in any
    /// tree is read in this one too (`overlay`): that changes what is known
    /// of it, not what it holds. Taken after every branch tree lock.
    tree: RwLock<Tree>,
}

#[derive(Default)]
struct Registry {
    branches: HashMap<BranchId, Arc<BranchState>>,
    snapshots: HashMap<SnapshotId, Arc<SnapshotState>>,
    /// Read-only views of snapshots, made on first browse (`snapshot_views`):
    /// in no list, never persisted, dropped with their snapshot.
    snapshot_views: HashMap<SnapshotId, Arc<BranchState>>,
    next_branch: u64,
    next_snapshot: u64,
}

/// What an open handle refers to.
pub(crate) struct Handle {
    branch: Arc<BranchState>,
    node: NodeId,
    kind: HandleKind,
    /// Set once the kernel has the content object for direct I/O.
    passthrough: std::sync::atomic::AtomicBool,
}

enum HandleKind {
    File(OpenFlags),
    /// The listing, taken at the first readdir and kept until release, so that
    /// offsets stay valid while the directory changes.
    Dir(Mutex<Option<Arc<Vec<DirEntry>>>>),
}

/// The filesystem core. All methods take `&self` and may run on many threads at once.
pub struct FsCore {
    backstore: Arc<dyn Backstore>,
    reaper: Arc<Reaper>,
    /// The thread that removes freed objects; `None` if it could not start
    /// (then they are removed on the thread that freed them).
    reaper_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    bindings: Bindings,
    registry: RwLock<Registry>,
    handles: RwLock<HashMap<HandleId, Arc<Handle>>>,
    default_branch: BranchId,
    next_node: AtomicU64,
    /// The lower entries' node ids handed out ([`NodeId::lower`]).
    lower_nodes: Mutex<std::collections::HashSet<u64>>,
    next_handle: AtomicU64,
    next_epoch: AtomicU64,
    cow_clones: AtomicU64,
    /// Set once by `FsCore::open_persisted`: the metadata journal.
    journal: std::sync::OnceLock<Arc<Journal>>,
    /// Set once by `FsCore::attach_lower` on an overlay mount: the lower
    /// directory lower nodes are read from (`overlay`).
    lower: std::sync::OnceLock<Arc<crate::lower::Lower>>,
}

/// Epoch stamped on objects that belong to a snapshot alone: no branch has it.
pub(crate) const FROZEN_EPOCH: u64 = 0;

impl FsCore {
    /// A core with one empty default branch, its root owned by this process's user.
    pub fn new(backstore: Arc<dyn Backstore>, config: CoreConfig) -> FsCore {
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut root = Meta::new(FileKind::Directory, 0o755, uid, gid);
        root.nlink = 2;
        root.size = 4096;
        let mut tree = Tree::default();
        tree.insert(
            NodeId::ROOT,
            Node {
                meta: root,
                body: Body::Dir {
                    entries: imbl::OrdMap::new(),
                    parent: NodeId::ROOT,
                    lower: None,
                },
                xattrs: None,
            },
        );
        let reaper = Arc::new(Reaper::default());
        let remover = Arc::clone(&backstore);
        let reaper_thread = reaper
            .spawn(move |id| remove_object(&*remover, id))
            .map_err(|e| tracing::warn!(error = %e, "no reaper thread; objects are removed inline"))
            .ok();
        let core = FsCore {
            backstore,
            reaper,
            reaper_thread: Mutex::new(reaper_thread),
            bindings: Bindings::new(config.process_table),
            registry: RwLock::new(Registry::default()),
            handles: RwLock::new(HashMap::new()),
            default_branch: BranchId(1),
            next_node: AtomicU64::new(NodeId::ROOT.0 + 1),
            lower_nodes: Mutex::new(std::collections::HashSet::new()),
            next_handle: AtomicU64::new(1),
            next_epoch: AtomicU64::new(FROZEN_EPOCH + 1),
            cow_clones: AtomicU64::new(0),
            journal: std::sync::OnceLock::new(),
            lower: std::sync::OnceLock::new(),
        };
        let main = core.new_branch_state(&config.default_branch_name, None, tree);
        debug_assert_eq!(main.id, core.default_branch);
        core
    }

    pub fn default_branch(&self) -> BranchId {
        self.default_branch
    }

    fn new_epoch(&self) -> u64 {
        self.next_epoch.fetch_add(1, Ordering::AcqRel)
    }

    fn new_node_id(&self) -> NodeId {
        NodeId(self.next_node.fetch_add(1, Ordering::AcqRel))
    }

    /// A node id for the lower entry with inode number `ino`: the first of
    /// its [`NodeId::lower`] ids not taken, or an ordinary one if all are.
    fn new_lower_node_id(&self, ino: u64) -> NodeId {
        let mut taken = self.lower_nodes.lock();
        (0..NodeId::LOWER_ALIASES)
            .filter_map(|alias| NodeId::lower(ino, alias))
            .find(|id| taken.insert(id.0))
            .unwrap_or_else(|| self.new_node_id())
    }

    fn new_branch_state(
        &self,
        name: &str,
        from: Option<SnapshotId>,
        tree: Tree,
    ) -> Arc<BranchState> {
        let mut reg = self.registry.write();
        reg.next_branch += 1;
        let journal = self.journal.get().cloned();
        let state = Arc::new(BranchState {
            id: BranchId(reg.next_branch),
            name: name.to_string(),
            from,
            created: SystemTime::now(),
            snapshot_lock: Mutex::new(()),
            tree: RwLock::new(tree),
            epoch: AtomicU64::new(self.new_epoch()),
            open: Mutex::new(HashMap::new()),
            direct_ends: Mutex::default(),
            kernel_refs: Mutex::new(HashMap::new()),
            orphans: Mutex::default(),
            open_handles: AtomicUsize::new(0),
            journal,
        });
        if let Some(j) = &state.journal {
            j.append(&record::branch_create(
                state.id,
                &state.name,
                from,
                state.created,
            ));
        }
        reg.branches.insert(state.id, Arc::clone(&state));
        state
    }

    /// The live state of branch `b` (or of a snapshot's read-only view);
    /// `Stale` once it is deleted.
    fn branch(&self, b: BranchId) -> FsResult<Arc<BranchState>> {
        let reg = self.registry.read();
        let found = match b.viewed_snapshot() {
            Some(s) => reg.snapshot_views.get(&s),
            None => reg.branches.get(&b),
        };
        found.cloned().ok_or(FsError::Stale)
    }

    /// Run `f` on a consistent view of branch `b`'s tree.
    fn read_tree<R>(&self, b: BranchId, f: impl FnOnce(&Tree) -> FsResult<R>) -> FsResult<R> {
        let branch = self.branch(b)?;
        let tree = branch.tree.read();
        f(&tree)
    }

    /// Change branch `b`'s tree atomically: `f` works on an O(1) copy that
    /// replaces the tree only if `f` succeeds, so a failed operation leaves no
    /// trace. Objects the change freed are removed from the backstore after the
    /// lock is released.
    fn write_tree<R>(&self, b: BranchId, f: impl FnOnce(&mut Tree) -> FsResult<R>) -> FsResult<R> {
        let branch = self.branch(b)?;
        let result = Self::write_branch_tree(&branch, f);
        self.reap();
        self.maybe_checkpoint();
        result
    }

    fn write_branch_tree<R>(
        branch: &BranchState,
        f: impl FnOnce(&mut Tree) -> FsResult<R>,
    ) -> FsResult<R> {
        branch.check_writable()?;
        let mut guard = branch.tree.write();
        // Made in place, undone if `f` fails or panics (see `Tree::begin_change`).
        let mut change = tree::Change::begin(&mut guard, branch.journal.is_some());
        let result = f(change.tree())?;
        let mut before = change.commit();
        if let (Some(j), Some(mut touched)) = (&branch.journal, before.touched.take()) {
            // Recorded under the tree lock: the journal's order is the commit order.
            if let Some(rec) = record::tree(branch.id, &before, &guard, &mut touched) {
                j.append(&rec);
            }
        }
        drop(guard);
        // The nodes replaced go outside the lock.
        drop(before);
        Ok(result)
    }

    /// Have every object whose last reference is gone removed from the
    /// backstore: by the reaper thread, without waiting; on this thread if
    /// there is no reaper thread.
    fn reap(&self) {
        if self.reaper_thread.lock().is_some() {
            self.reaper.kick();
        } else {
            self.reap_now();
        }
    }

    /// Remove every object whose last reference is gone before returning (for
    /// the control plane, whose callers expect the space back when it answers).
    fn reap_now(&self) {
        for id in self.reaper.take() {
            remove_object(&*self.backstore, id);
        }
        self.reaper.settle();
    }

    /// Content object `c` was written, truncated or allocated (or may have
    /// been, by the kernel directly): ask the backstore for its allocated bytes
    /// now, on the data path that changed it, so that getattr and lookup answer
    /// from memory.
    fn note_object_changed(&self, c: &Content) {
        c.forget_allocated();
        let _ = c.allocated(|| self.backstore.allocated_bytes(c.id).ok());
    }

    /// `attr.blocks`, asked of the backstore outside any lock.
    fn fill_blocks(&self, attr: &mut Attr, content: Option<&Arc<Content>>) {
        attr.blocks = match (attr.kind, content) {
            (FileKind::Directory, _) => 8,
            (_, Some(c)) => c
                .allocated(|| self.backstore.allocated_bytes(c.id).ok())
                .unwrap_or(attr.size)
                .div_ceil(512),
            _ => 0,
        };
    }

    /// Attributes of node `id` in branch `b`.
    fn attr(&self, b: BranchId, id: NodeId) -> FsResult<Attr> {
        let branch = self.branch(b)?;
        let parts = {
            let t = branch.tree.read();
            Self::attr_parts(&branch, &t, id)?
        };
        Ok(self.finish_parts(parts))
    }

    /// What the attributes of node `id` need from the tree, read under the
    /// caller's tree lock (so a lookup resolves a name and reads its node in
    /// one consistent view: read apart, a rename over the name in between
    /// made the lookup answer ESTALE).
    ///
    /// The writer count is read under the same tree lock as the node: the
    /// last direct writer's release folds the object's size into the node
    /// (under the write lock) before its count drops, so this sees either the
    /// folded size or a count that sends it to the object. Read apart, a
    /// release in between left the node's stale size and no writer.
    fn attr_parts(branch: &BranchState, t: &Tree, id: NodeId) -> FsResult<AttrParts> {
        let n = node(t, id)?;
        Ok(AttrParts {
            attr: n.meta.attr(id, 0),
            content: n.content().cloned(),
            direct_writers: branch.open_count(id).passthrough_writers,
        })
    }

    /// Attributes from [`FsCore::attr_parts`], asking the backstore (outside
    /// any lock) what only it knows.
    fn finish_parts(&self, parts: AttrParts) -> Attr {
        let AttrParts {
            mut attr,
            content,
            direct_writers,
        } = parts;
        if let Some(c) = &content {
            if direct_writers > 0 {
                // Nor does FsCore see the blocks it allocates.
                c.forget_allocated();
                // The kernel writes this object directly: it knows the size.
                if let Ok((len, mtime)) = self.backstore.len_and_mtime(c.id) {
                    attr.size = len;
                    attr.mtime = mtime;
                    attr.ctime = attr.ctime.max(mtime);
                }
            }
        }
        self.fill_blocks(&mut attr, content.as_ref());
        attr
    }

    /// [`FsCore::finish_parts`], with whether the attributes came from memory
    /// alone (see [`FsCore::attr_in_memory`]): read after finishing, which
    /// may have just asked the allocated bytes.
    fn finish_parts_in_memory(&self, parts: AttrParts) -> (Attr, bool) {
        let (direct, content) = (parts.direct_writers > 0, parts.content.clone());
        let attr = self.finish_parts(parts);
        let in_memory = !direct && content.is_none_or(|c| c.cached_allocated().is_some());
        (attr, in_memory)
    }

    /// Whether directory `parent` of branch `b` has an entry `name` (a hint:
    /// a create of an existing file may truncate or copy it in the backstore).
    pub fn has_entry(&self, b: BranchId, parent: NodeId, name: &[u8]) -> bool {
        let Ok(branch) = self.branch(b) else {
            return false;
        };
        let t = branch.tree.read();
        t.get(parent)
            .and_then(|p| p.entries())
            .is_some_and(|e| e.contains_key(name))
    }

    /// Whether a create that needs a content object at once (passthrough)
    /// would get it without waiting on the backstore (see
    /// [`Backstore::create_is_quick`]). A hint, like [`FsCore::attr_in_memory`].
    pub fn create_is_quick(&self) -> bool {
        self.backstore.create_is_quick()
    }

    /// Whether the backstore makes content objects ahead of time (see
    /// [`Backstore::makes_objects_ahead`]).
    pub fn makes_objects_ahead(&self) -> bool {
        self.backstore.makes_objects_ahead()
    }

    /// Whether the attributes of node `id` in branch `b` can be answered from
    /// memory alone, without asking the backstore (which may be slow): false
    /// while the kernel writes the node's object directly, or if its allocated
    /// bytes are not known. A hint for where to run a request: it may change
    /// as soon as it is answered.
    pub fn attr_in_memory(&self, b: BranchId, id: NodeId) -> bool {
        let Ok(branch) = self.branch(b) else {
            return true;
        };
        let t = branch.tree.read();
        Self::node_attr_in_memory(&branch, &t, id)
    }

    /// Whether the attributes of node `id` in branch `b` can be answered
    /// without waiting on the storage: from memory, or from the object's host
    /// file while it is open in the backstore already (an `fstat` of an open
    /// file; see [`Backstore::host_file_is_quick`]). Setting the mtime of such
    /// a file (a `futimens` of the object) is not covered: it can wait on the
    /// object's inode lock and the host's journal. A hint for where to run a request,
    /// like [`FsCore::attr_in_memory`]; unlike it, not a statement that the
    /// attributes cannot change behind FsCore's back (for that, and the TTL,
    /// ask [`FsCore::attr_in_memory`]).
    pub fn attr_is_quick(&self, b: BranchId, id: NodeId) -> bool {
        let Ok(branch) = self.branch(b) else {
            return true;
        };
        let t = branch.tree.read();
        self.node_attr_is_quick(&branch, &t, id)
    }

    /// [`FsCore::node_attr_is_quick`] for attributes read already.
    fn parts_are_quick(&self, parts: &AttrParts) -> bool {
        parts.content.as_ref().is_none_or(|c| {
            (parts.direct_writers == 0 && c.cached_allocated().is_some())
                || (c.lower.is_none() && self.backstore.host_file_is_quick(c.id))
        })
    }

    fn node_attr_is_quick(&self, branch: &BranchState, t: &Tree, id: NodeId) -> bool {
        if Self::node_attr_in_memory(branch, t, id) {
            return true;
        }
        t.get(id)
            .and_then(|n| n.content())
            .is_none_or(|c| c.lower.is_none() && self.backstore.host_file_is_quick(c.id))
    }

    fn node_attr_in_memory(branch: &BranchState, t: &Tree, id: NodeId) -> bool {
        match t.get(id).and_then(|n| n.content()) {
            Some(c) => {
                c.cached_allocated().is_some() && branch.open_count(id).passthrough_writers == 0
            }
            None => true,
        }
    }

    fn handle(&self, fh: HandleId) -> FsResult<Arc<Handle>> {
        self.handles
            .read()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    fn add_handle(&self, branch: Arc<BranchState>, node: NodeId, kind: HandleKind) -> HandleId {
        let writes = matches!(kind, HandleKind::File(f) if f.write);
        {
            let mut open = branch.open.lock();
            let count = open.entry(node).or_default();
            count.handles += 1;
            count.writers += u32::from(writes);
        }
        branch.open_handles.fetch_add(1, Ordering::AcqRel);
        let fh = HandleId(self.next_handle.fetch_add(1, Ordering::AcqRel));
        self.handles.write().insert(
            fh,
            Arc::new(Handle {
                branch,
                node,
                kind,
                passthrough: std::sync::atomic::AtomicBool::new(false),
            }),
        );
        fh
    }

    /// Close a handle. The last close of an unlinked file frees it.
    fn remove_handle(&self, fh: HandleId) -> FsResult<()> {
        let handle = self.handles.write().remove(&fh).ok_or(FsError::BadHandle)?;
        let branch = &handle.branch;
        let writes = matches!(handle.kind, HandleKind::File(f) if f.write);
        let direct = handle.passthrough.load(Ordering::Acquire);
        let last = self.drop_direct_writer(branch, handle.node, direct && writes, |count| {
            count.handles = count.handles.saturating_sub(1);
            count.writers = count.writers.saturating_sub(u32::from(writes));
            count.passthrough = count.passthrough.saturating_sub(u32::from(direct));
            count.handles == 0
        });
        branch.open_handles.fetch_sub(1, Ordering::AcqRel);
        if last {
            // An orphan (nlink 0, kept alive for open handles) goes with its last handle.
            let node = handle.node;
            let _ = Self::write_branch_tree(branch, |t| {
                let orphan = t.get(node).is_some_and(|n| n.meta.nlink == 0);
                if orphan && !branch.pinned(node) {
                    t.remove(node);
                    branch.orphans.lock().remove(&node);
                }
                Ok(())
            });
        }
        drop(handle);
        self.reap();
        Ok(())
    }
}

impl Drop for FsCore {
    fn drop(&mut self) {
        self.reaper.stop();
        if let Some(thread) = self.reaper_thread.get_mut().take() {
            let _ = thread.join();
        }
    }
}

fn remove_object(backstore: &dyn Backstore, id: crate::ids::ContentId) {
    if let Err(e) = backstore.remove(id) {
        tracing::warn!(content = %id, error = %e, "could not remove a freed content object");
    }
}

/// Node `id` of tree `t`. A node the kernel still names but that is gone
/// (unlinked or renamed over, with no handle left) is `Stale`, not `NotFound`:
/// on ESTALE the kernel walks the path again, so an open racing a rename over
/// the name gets the new file instead of a spurious ENOENT.
fn node(t: &Tree, id: NodeId) -> FsResult<&Arc<Node>> {
    t.get(id).ok_or(FsError::Stale)
}

/// Validate a name for a new directory entry.
fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid);
    }
    Ok(())
}
