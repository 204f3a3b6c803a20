//! The persistent tree of one branch or snapshot, and the content objects its
//! files point to.
//!
//! A [`Tree`] is an `imbl::HashMap` from node id to `Arc<Node>`: cloning it is
//! O(1) and shares every node, which is what makes snapshots and branches free.
//! A change copies one node (and the map's path to it), never the tree.
//!
//! A [`Content`] is one backstore object. Nodes and open handles hold it by
//! `Arc`; when the last holder in any tree goes away, its `Drop` queues the
//! object for deletion on the [`Reaper`]. Whether a branch may write a content
//! object in place is decided by its epoch (see `FsCore::make_private`), not by
//! counting references, because one `Arc<Node>` can be shared by many trees.

use crate::attr::{Attr, FileKind};
use crate::ids::{ContentId, NodeId};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Directory entry names are raw bytes: Linux names need not be UTF-8.
pub(crate) type Name = Vec<u8>;

/// Extended attributes of a node, shared between tree versions until changed.
pub(crate) type Xattrs = Arc<BTreeMap<Vec<u8>, Vec<u8>>>;

/// Content objects whose last reference is gone, waiting to be removed from the
/// backstore. Drop must not do I/O (it runs wherever the last `Arc` falls,
/// often under a tree lock), so it only queues here.
#[derive(Default)]
pub(crate) struct Reaper {
    // Leaf lock.
    pending: Mutex<Vec<ContentId>>,
}

impl Reaper {
    pub(crate) fn take(&self) -> Vec<ContentId> {
        std::mem::take(&mut *self.pending.lock())
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
    reaper: Arc<Reaper>,
}

impl Content {
    pub(crate) fn new(id: ContentId, epoch: u64, reaper: &Arc<Reaper>) -> Arc<Content> {
        Arc::new(Content {
            id,
            epoch: AtomicU64::new(epoch),
            io: Arc::new(RwLock::new(())),
            reaper: Arc::clone(reaper),
        })
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        self.reaper.pending.lock().push(self.id);
    }
}

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
}

/// The nodes of one branch or snapshot.
#[derive(Clone, Default)]
pub(crate) struct Tree {
    nodes: imbl::HashMap<NodeId, Arc<Node>>,
    /// While a change is being made on a draft: the ids it inserted or
    /// removed, for the journal (`persist`). `None` otherwise.
    log: Option<Vec<NodeId>>,
}

impl Tree {
    pub(crate) fn get(&self, id: NodeId) -> Option<&Arc<Node>> {
        self.nodes.get(&id)
    }

    pub(crate) fn insert(&mut self, id: NodeId, node: Node) {
        self.insert_arc(id, Arc::new(node));
    }

    pub(crate) fn insert_arc(&mut self, id: NodeId, node: Arc<Node>) {
        if let Some(log) = &mut self.log {
            log.push(id);
        }
        self.nodes.insert(id, node);
    }

    pub(crate) fn remove(&mut self, id: NodeId) -> Option<Arc<Node>> {
        if let Some(log) = &mut self.log {
            log.push(id);
        }
        self.nodes.remove(&id)
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
        self.nodes.iter().map(|(id, n)| (*id, n))
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A private copy of node `id` to change; write it back with `insert`.
    pub(crate) fn edit(&self, id: NodeId) -> Option<Node> {
        self.nodes.get(&id).map(|n| Node::clone(n))
    }
}
