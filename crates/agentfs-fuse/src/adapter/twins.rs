//! Keeping the two kernel views of one branch coherent, so that names and
//! attributes can be cached for long.
//!
//! A node of branch `b` has two kernel inodes: one reached from the mount root
//! (by processes whose branch is `b`) and one reached through
//! `.agentfs/branches/<b>/` (by `branch-exec`, or tools comparing branches);
//! see [`crate::inode`]. The kernel caches each one's names and attributes on
//! its own, and a change made through one never touches the other's cache. So
//! once a branch has been reached through `.agentfs/branches`, each change made
//! in it through either view is followed by a notification to the kernel that
//! drops what it cached about the other view: the entry (a new, removed or
//! renamed name, including a cached "no such name") and the inode (attributes,
//! and page cache where data changed). Branches never reached that way cost
//! nothing here.
//!
//! Notifications are written to `/dev/fuse` by a thread of their own, never by
//! the thread answering the request: the kernel may hold a directory's lock
//! while it waits for that answer, and an invalidation needs the same lock.
//! They may reach the kernel a moment after the change's own reply; what is
//! guaranteed is that no cached name or attribute of the twin outlives the
//! change by more than that moment, whatever the TTL.
//!
//! The kernel learns of writes through FUSE passthrough only from the writer's
//! release: until then the other view may see the old size (the data itself is
//! shared: both views pass through to one backing object).

use crate::inode::{self, Ino, ROOT_INO, VIEW_FLAG};
use agentfs_core::{BranchId, FsCore, HandleId, NodeId};
use fuser::{INodeNo, Notifier};
use parking_lot::{Mutex, RwLock};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;

/// One invalidation for the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inval {
    /// Forget the name `name` in directory `parent` (and the directory's attributes).
    Entry(u64, OsString),
    /// The name `name` of inode `child` in directory `parent` is gone: forget
    /// it and drop the child's link count.
    Delete {
        parent: u64,
        child: u64,
        name: OsString,
    },
    /// Forget the attributes of an inode; with `data`, its cached pages too.
    Inode { ino: u64, data: bool },
}

/// Sends invalidations for the twin inodes of changed nodes.
#[derive(Default)]
pub struct Twins {
    /// Real branch ids reached through `.agentfs/branches` since the mount.
    viewed: RwLock<HashSet<u64>>,
    /// Whether `viewed` holds any: the one check on the common path.
    any_viewed: AtomicBool,
    /// The queue of the notifying thread, once the session exists.
    queue: OnceLock<Mutex<mpsc::Sender<Inval>>>,
}

impl std::fmt::Debug for Twins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Twins")
            .field("viewed", &*self.viewed.read())
            .field("started", &self.queue.get().is_some())
            .finish()
    }
}

impl Twins {
    /// Start notifying through `notifier` (the session's), on a thread of its
    /// own that ends when the adapter is dropped.
    pub fn start(&self, notifier: Notifier) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel::<Inval>();
        std::thread::Builder::new()
            .name("agentfs-inval".into())
            .spawn(move || {
                for inval in rx {
                    // ENOENT: the kernel holds nothing of it, which is fine.
                    let _ = match &inval {
                        Inval::Entry(parent, name) => notifier.inval_entry(INodeNo(*parent), name),
                        Inval::Delete {
                            parent,
                            child,
                            name,
                        } => notifier.delete(INodeNo(*parent), INodeNo(*child), name),
                        Inval::Inode { ino, data: true } => {
                            notifier.inval_inode(INodeNo(*ino), 0, 0)
                        }
                        Inval::Inode { ino, data: false } => {
                            notifier.inval_inode(INodeNo(*ino), -1, 0)
                        }
                    };
                }
            })?;
        let _ = self.queue.set(Mutex::new(tx));
        Ok(())
    }

    /// Branch `b` was reached through `.agentfs/branches`.
    pub(crate) fn mark_viewed(&self, b: BranchId) {
        let b = inode::real_branch(b).0;
        if !self.viewed.read().contains(&b) {
            self.viewed.write().insert(b);
            self.any_viewed.store(true, Ordering::Release);
        }
    }

    /// Whether any change may need a notification (some branch was reached
    /// through `.agentfs/branches` and the session is running).
    pub(crate) fn active(&self) -> bool {
        self.any_viewed.load(Ordering::Acquire) && self.queue.get().is_some()
    }

    /// The name `name` in directory `parent` of branch `b` changed (created,
    /// removed, renamed); `via` is the inode the change came through.
    pub(crate) fn entry_changed(
        &self,
        core: &FsCore,
        via: Ino,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
    ) {
        if let Some(twin) = self.twin(core, via, b, parent) {
            self.send(Inval::Entry(twin, name.to_os_string()));
        }
    }

    /// The name `name` of `child` in directory `parent` of branch `b` was
    /// unlinked; `via` is the inode the change came through.
    pub(crate) fn entry_deleted(
        &self,
        core: &FsCore,
        via: Ino,
        b: BranchId,
        parent: NodeId,
        child: NodeId,
        name: &OsStr,
    ) {
        let twins = (
            self.twin(core, via, b, parent),
            self.twin(core, via, b, child),
        );
        match twins {
            (Some(parent), Some(child)) => self.send(Inval::Delete {
                parent,
                child,
                name: name.to_os_string(),
            }),
            (Some(parent), None) => self.send(Inval::Entry(parent, name.to_os_string())),
            _ => {}
        }
    }

    /// The attributes (and with `data`, the contents) of `node` of branch `b`
    /// changed; `via` is the inode the change came through.
    pub(crate) fn inode_changed(
        &self,
        core: &FsCore,
        via: Ino,
        b: BranchId,
        node: NodeId,
        data: bool,
    ) {
        if let Some(ino) = self.twin(core, via, b, node) {
            self.send(Inval::Inode { ino, data });
        }
    }

    /// The file open as `fh` on kernel inode `ino` changed (with `data`, its
    /// contents).
    pub(crate) fn handle_changed(&self, core: &FsCore, ino: u64, fh: HandleId, data: bool) {
        if !self.active() {
            return;
        }
        if let (Ok(via), Ok((b, node))) = (Ino::decode(ino), core.handle_target(fh)) {
            self.inode_changed(core, via, b, node, data);
        }
    }

    /// The other kernel inode of `node` of branch `b`, if the kernel may hold
    /// a cached copy of it.
    fn twin(&self, core: &FsCore, via: Ino, b: BranchId, node: NodeId) -> Option<u64> {
        let b = inode::real_branch(b);
        if !self.active() || !self.viewed.read().contains(&b.0) {
            return None;
        }
        twin_of(
            via.is_view(),
            b,
            node,
            core.root_is_shared(),
            core.default_branch(),
        )
    }

    fn send(&self, inval: Inval) {
        if let Some(queue) = self.queue.get() {
            let _ = queue.lock().send(inval);
        }
    }
}

/// The twin of `node` of (real) branch `b`, changed through a view inode
/// (`via_view`) or a root-reached one. The root node reached from the mount is
/// ino 1, whose names are cached only while every process sees the default
/// branch there (`!root_shared`); the twin of a branch's view root is ino 1
/// only in that case and only for the default branch.
fn twin_of(
    via_view: bool,
    b: BranchId,
    node: NodeId,
    root_shared: bool,
    default_branch: BranchId,
) -> Option<u64> {
    if !via_view {
        return inode::encode_in(Ino::Node(BranchId(b.0 | VIEW_FLAG), node), b, node).ok();
    }
    if node == NodeId::ROOT {
        return (!root_shared && b == default_branch).then_some(ROOT_INO);
    }
    inode::encode(b, node).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twin_of_a_node_is_the_same_node_in_the_other_view() {
        let (b, n, main) = (BranchId(3), NodeId(7), BranchId(1));
        let plain = inode::encode(b, n).unwrap();
        let view = plain | (VIEW_FLAG << inode::NODE_BITS);
        assert_eq!(twin_of(false, b, n, false, main), Some(view));
        assert_eq!(twin_of(true, b, n, false, main), Some(plain));
        // A branch's root: its view root, or ino 1 while ino 1 shows it to all.
        assert_eq!(
            twin_of(false, b, NodeId::ROOT, false, main),
            Some(inode::view_root(b).unwrap())
        );
        assert_eq!(
            twin_of(true, main, NodeId::ROOT, false, main),
            Some(ROOT_INO)
        );
        assert_eq!(twin_of(true, main, NodeId::ROOT, true, main), None);
        assert_eq!(twin_of(true, b, NodeId::ROOT, false, main), None);
    }
}
