//! FUSE inode numbers: how a kernel inode names a (branch, node) pair.
//!
//! The kernel caches inodes and dentries for every process alike, so an inode
//! number must mean the same file whoever asks. AgentFS therefore puts the
//! branch into the number: `ino = (branch << 44) | node`. Node ids are below
//! 2^44 by FsCore's promise, which leaves 20 bits (about a million) for
//! branch ids; branch ids are never reused, so a number never changes meaning.
//!
//! Two exceptions:
//! - ino 1 is the root directory, shared by every branch because the kernel
//!   has only one root per mount. A request on ino 1 acts on the branch of the
//!   calling process, which is why entries looked up in it must not be cached.
//!   Encoding any branch's root node gives 1.
//! - Branch 0 is reserved for the adapter's virtual nodes: `.agentfs` (ino 2),
//!   `.agentfs/control` (ino 3), `.agentfs/branches` (ino 4) and
//!   `.agentfs/snapshots` (ino 5), which exist in every branch alike.
//!
//! A branch can also be reached by path, `.agentfs/branches/<name>`, which is
//! how `branch-exec` bind-mounts a branch over the mount path in a private mount
//! namespace. Nodes reached that way carry [`VIEW_FLAG`] in their branch field:
//! they are distinct kernel inodes from the same nodes reached through ino 1, so
//! the kernel never has to give one directory inode two dentries (it would move
//! the one a bound process stands in), and the branch's own root is a real
//! directory whose entries can be cached like any other.
//!
//! A snapshot is reached by path too, `.agentfs/snapshots/<name>`, read-only:
//! FsCore serves it as a hidden branch whose id is
//! [`BranchId::snapshot_view`]. Its nodes carry [`VIEW_FLAG`] and
//! [`SNAPSHOT_FLAG`] with the snapshot id in the rest of the branch field, so
//! they never collide with a branch's nodes, and they exist only in that view
//! (there is no path to a snapshot from ino 1). The branch field is thus:
//!
//! ```text
//! bit 63       62             61..44
//!     VIEW     SNAPSHOT       branch id (SNAPSHOT clear) or snapshot id (set)
//! ```
//!
//! A view's root holds `.agentfs` too, and it cannot be ino 2: a directory
//! inode has one dentry, and ino 2 is an ancestor of every view root
//! (`.agentfs/branches/<name>`), so the kernel would answer ELOOP (in a
//! `branch-exec` namespace, where a view root is the mount path, that made
//! all of `.agentfs` unreachable). Each view root's `.agentfs` is therefore a
//! directory of its own, in branch 0 above [`VIEW_AGENTFS_BASE`], holding
//! `control`; `branch-exec` bind-mounts the real `.agentfs` over it.

use agentfs_core::{BranchId, NodeId, SnapshotId};

/// Bits of the inode number that hold the node id.
pub const NODE_BITS: u32 = 44;
const NODE_MASK: u64 = (1 << NODE_BITS) - 1;
/// Set in the branch field of nodes reached through `.agentfs/branches/<name>`
/// or `.agentfs/snapshots/<name>`.
pub const VIEW_FLAG: u64 = 1 << (63 - NODE_BITS);
/// Set (with [`VIEW_FLAG`]) in the branch field of nodes reached through
/// `.agentfs/snapshots/<name>`; the rest of the field is the snapshot id.
pub const SNAPSHOT_FLAG: u64 = 1 << (62 - NODE_BITS);
/// The largest branch id that fits into an inode number.
pub const MAX_BRANCH: u64 = SNAPSHOT_FLAG - 1;
/// The largest snapshot id whose view fits into an inode number.
pub const MAX_SNAPSHOT: u64 = SNAPSHOT_FLAG - 1;

/// The shared root directory.
pub const ROOT_INO: u64 = 1;
/// The virtual directory `.agentfs` in the root.
pub const AGENTFS_DIR_INO: u64 = 2;
/// The virtual file `.agentfs/control`.
pub const CONTROL_FILE_INO: u64 = 3;
/// The virtual directory `.agentfs/branches`.
pub const BRANCHES_DIR_INO: u64 = 4;
/// The virtual directory `.agentfs/snapshots`.
pub const SNAPSHOTS_DIR_INO: u64 = 5;
/// Node ids of branch 0 from here on are the `.agentfs` directories of view
/// roots: `VIEW_AGENTFS_BASE | field`, `field` the view's branch field.
pub const VIEW_AGENTFS_BASE: u64 = 1 << 40;

/// Why an inode number could not be made or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InodeError {
    #[error("branch id {0} does not fit into an inode number (max {MAX_BRANCH})")]
    BranchTooLarge(u64),
    #[error("node id {0} does not fit into an inode number")]
    NodeTooLarge(u64),
    #[error("snapshot id {0} does not fit into an inode number (max {MAX_SNAPSHOT})")]
    SnapshotTooLarge(u64),
    #[error("inode number {0:#x} names no node")]
    Invalid(u64),
}

/// What an inode number names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ino {
    /// ino 1: the root of the calling process's branch.
    Root,
    /// A node of a branch (never the root reached through ino 1). The
    /// branch is the inode's raw branch field, flags included: see
    /// [`real_branch`] for the id FsCore knows.
    Node(BranchId, NodeId),
    /// The virtual directory `.agentfs`.
    AgentfsDir,
    /// The virtual file `.agentfs/control`.
    ControlFile,
    /// The virtual directory `.agentfs/branches`: one entry per branch.
    BranchesDir,
    /// The virtual directory `.agentfs/snapshots`: one entry per snapshot.
    SnapshotsDir,
    /// The `.agentfs` directory in the root of a view (`.agentfs/branches/<b>`
    /// or `.agentfs/snapshots/<s>`), by the view's branch field: holds
    /// `control` only.
    ViewAgentfsDir(u64),
}

impl Ino {
    /// Read an inode number the kernel sent.
    pub fn decode(ino: u64) -> Result<Ino, InodeError> {
        if ino == ROOT_INO {
            return Ok(Ino::Root);
        }
        let branch = ino >> NODE_BITS;
        let node = ino & NODE_MASK;
        match (branch, node) {
            (0, 2) => Ok(Ino::AgentfsDir),
            (0, 3) => Ok(Ino::ControlFile),
            (0, 4) => Ok(Ino::BranchesDir),
            (0, 5) => Ok(Ino::SnapshotsDir),
            (0, n) if n & VIEW_AGENTFS_BASE != 0 => {
                let field = n & !VIEW_AGENTFS_BASE;
                if field >> (64 - NODE_BITS) != 0 {
                    return Err(InodeError::Invalid(ino));
                }
                match Ino::decode(view_root_of_field(field)) {
                    Ok(root) if root.is_view() => Ok(Ino::ViewAgentfsDir(field)),
                    _ => Err(InodeError::Invalid(ino)),
                }
            }
            (0, _) | (_, 0) => Err(InodeError::Invalid(ino)),
            // A snapshot's nodes exist only in its view, and snapshot 0 is none.
            (b, _) if b & SNAPSHOT_FLAG != 0 && (b & VIEW_FLAG == 0 || b & MAX_SNAPSHOT == 0) => {
                Err(InodeError::Invalid(ino))
            }
            (b, n) => Ok(Ino::Node(BranchId(b), NodeId(n))),
        }
    }

    /// Whether this is one of the adapter's virtual nodes.
    pub fn is_virtual(self) -> bool {
        matches!(
            self,
            Ino::AgentfsDir
                | Ino::ControlFile
                | Ino::BranchesDir
                | Ino::SnapshotsDir
                | Ino::ViewAgentfsDir(_)
        )
    }

    /// The inode of `.agentfs` in this directory, if it is a tree's root:
    /// ino 2 in the shared root, a view's own in a view root.
    pub fn agentfs_dir(self) -> Option<u64> {
        match self {
            Ino::Root => Some(AGENTFS_DIR_INO),
            Ino::Node(b, n) if b.0 & VIEW_FLAG != 0 && n == NodeId::ROOT => {
                Some(VIEW_AGENTFS_BASE | b.0)
            }
            _ => None,
        }
    }

    /// Whether this is the root of a tree: ino 1, or a branch's root reached
    /// through `.agentfs/branches` (both hold `.agentfs`).
    pub fn is_root_dir(self) -> bool {
        match self {
            Ino::Root => true,
            Ino::Node(b, n) => b.0 & VIEW_FLAG != 0 && n == NodeId::ROOT,
            _ => false,
        }
    }

    /// Whether this node was reached through `.agentfs/branches` or
    /// `.agentfs/snapshots`.
    pub fn is_view(self) -> bool {
        matches!(self, Ino::Node(b, _) if b.0 & VIEW_FLAG != 0)
    }

    /// Whether this node was reached through `.agentfs/snapshots` (read-only).
    pub fn is_snapshot(self) -> bool {
        matches!(self, Ino::Node(b, _) if b.0 & SNAPSHOT_FLAG != 0)
    }
}

/// The root inode of the view whose branch field is `field`.
pub fn view_root_of_field(field: u64) -> u64 {
    (field << NODE_BITS) | NodeId::ROOT.0
}

/// The branch FsCore knows for an inode's branch field: without the view
/// flag, or the view id of the snapshot for a snapshot's node.
pub fn real_branch(b: BranchId) -> BranchId {
    if b.0 & SNAPSHOT_FLAG != 0 {
        return BranchId::snapshot_view(SnapshotId(b.0 & MAX_SNAPSHOT));
    }
    BranchId(b.0 & !VIEW_FLAG)
}

/// The branch field of the nodes of FsCore branch `b` reached through a
/// view: `.agentfs/branches` for a branch, `.agentfs/snapshots` for a
/// snapshot's view.
fn view_field(b: BranchId) -> Result<u64, InodeError> {
    if let Some(s) = b.viewed_snapshot() {
        if s.0 == 0 || s.0 > MAX_SNAPSHOT {
            return Err(InodeError::SnapshotTooLarge(s.0));
        }
        return Ok(VIEW_FLAG | SNAPSHOT_FLAG | s.0);
    }
    if b.0 == 0 || b.0 > MAX_BRANCH {
        return Err(InodeError::BranchTooLarge(b.0));
    }
    Ok(VIEW_FLAG | b.0)
}

/// The inode number of branch `b`'s root as reached through
/// `.agentfs/branches` (or, for a snapshot's view, `.agentfs/snapshots`).
pub fn view_root(b: BranchId) -> Result<u64, InodeError> {
    Ok((view_field(b)? << NODE_BITS) | NodeId::ROOT.0)
}

/// The inode number of `node` of branch `b` found under `parent`: in the same
/// view as the parent (see the module header).
pub fn encode_in(parent: Ino, b: BranchId, node: NodeId) -> Result<u64, InodeError> {
    if !parent.is_view() && b.viewed_snapshot().is_none() {
        return encode(b, node);
    }
    if node == NodeId::ROOT {
        return view_root(b);
    }
    if node.0 == 0 || node.0 > NODE_MASK {
        return Err(InodeError::NodeTooLarge(node.0));
    }
    Ok((view_field(b)? << NODE_BITS) | node.0)
}

/// The inode number of `node` in `branch`; the root node of any branch is
/// ino 1. A snapshot's view has no nodes outside its view: its nodes are
/// encoded as [`encode_in`] a view encodes them.
pub fn encode(branch: BranchId, node: NodeId) -> Result<u64, InodeError> {
    if branch.viewed_snapshot().is_some() {
        return encode_in(Ino::AgentfsDir, branch, node);
    }
    if node == NodeId::ROOT {
        return Ok(ROOT_INO);
    }
    if branch.0 == 0 || branch.0 > MAX_BRANCH {
        return Err(InodeError::BranchTooLarge(branch.0));
    }
    if node.0 == 0 || node.0 > NODE_MASK {
        return Err(InodeError::NodeTooLarge(node.0));
    }
    Ok((branch.0 << NODE_BITS) | node.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_of_every_branch_is_ino_1() {
        for b in [1, 2, 77, MAX_BRANCH] {
            assert_eq!(encode(BranchId(b), NodeId::ROOT), Ok(ROOT_INO));
        }
        assert_eq!(Ino::decode(1), Ok(Ino::Root));
    }

    #[test]
    fn nodes_round_trip_and_keep_branches_apart() {
        let cases = [
            (1, 2),
            (1, NODE_MASK),
            (2, 2),
            (MAX_BRANCH, 12345),
            (3, 1 << 40),
        ];
        for (b, n) in cases {
            let ino = encode(BranchId(b), NodeId(n)).unwrap();
            assert_eq!(ino >> NODE_BITS, b);
            assert_eq!(Ino::decode(ino), Ok(Ino::Node(BranchId(b), NodeId(n))));
        }
        let a = encode(BranchId(1), NodeId(5)).unwrap();
        let b = encode(BranchId(2), NodeId(5)).unwrap();
        assert_ne!(a, b, "the same node in two branches has two inode numbers");
    }

    #[test]
    fn views_are_distinct_inodes_that_keep_their_view() {
        let b = BranchId(3);
        let root = view_root(b).unwrap();
        let root_ino = Ino::decode(root).unwrap();
        assert!(root_ino.is_root_dir() && root_ino.is_view());
        assert_ne!(root, ROOT_INO);
        let child = encode_in(root_ino, b, NodeId(9)).unwrap();
        assert_ne!(
            child,
            encode(b, NodeId(9)).unwrap(),
            "not the inode seen through ino 1"
        );
        let Ino::Node(cb, cn) = Ino::decode(child).unwrap() else {
            panic!()
        };
        assert_eq!((real_branch(cb), cn), (b, NodeId(9)));
        assert!(Ino::decode(child).unwrap().is_view());
        // `..` of a view's top-level directory is the view's root, not ino 1.
        assert_eq!(
            encode_in(Ino::decode(child).unwrap(), b, NodeId::ROOT),
            Ok(root)
        );
        assert_eq!(encode_in(Ino::Root, b, NodeId(9)), encode(b, NodeId(9)));
        assert!(!Ino::Root.is_view() && Ino::Root.is_root_dir());
    }

    #[test]
    fn snapshot_views_have_inodes_of_their_own() {
        let s = BranchId::snapshot_view(SnapshotId(3));
        let root = view_root(s).unwrap();
        let root_ino = Ino::decode(root).unwrap();
        assert!(root_ino.is_root_dir() && root_ino.is_view() && root_ino.is_snapshot());
        // Not the root of branch 3's view, nor any node of branch 3.
        assert_ne!(root, view_root(BranchId(3)).unwrap());
        let child = encode_in(root_ino, s, NodeId(9)).unwrap();
        assert_ne!(child, encode(BranchId(3), NodeId(9)).unwrap());
        assert_ne!(
            child,
            encode_in(
                Ino::decode(view_root(BranchId(3)).unwrap()).unwrap(),
                BranchId(3),
                NodeId(9)
            )
            .unwrap()
        );
        let Ino::Node(cb, cn) = Ino::decode(child).unwrap() else {
            panic!()
        };
        assert_eq!((real_branch(cb), cn), (s, NodeId(9)));
        assert!(Ino::decode(child).unwrap().is_snapshot());
        // However it is asked for, a snapshot's node is its view's.
        assert_eq!(encode(s, NodeId(9)), Ok(child));
        assert_eq!(encode_in(Ino::Root, s, NodeId(9)), Ok(child));
        assert_eq!(encode(s, NodeId::ROOT), Ok(root));
        // A real branch's nodes never carry the snapshot flag.
        for b in [1, 2, MAX_BRANCH] {
            let ino = encode(BranchId(b), NodeId(5)).unwrap();
            assert!(!Ino::decode(ino).unwrap().is_snapshot());
            let v = view_root(BranchId(b)).unwrap();
            assert!(!Ino::decode(v).unwrap().is_snapshot());
        }
        // The snapshot flag without the view flag, or snapshot 0, names nothing.
        let bare = (SNAPSHOT_FLAG | 3) << NODE_BITS | 9;
        assert_eq!(Ino::decode(bare), Err(InodeError::Invalid(bare)));
        let zero = (VIEW_FLAG | SNAPSHOT_FLAG) << NODE_BITS | 9;
        assert_eq!(Ino::decode(zero), Err(InodeError::Invalid(zero)));
        assert_eq!(
            view_root(BranchId::snapshot_view(SnapshotId(MAX_SNAPSHOT + 1))),
            Err(InodeError::SnapshotTooLarge(MAX_SNAPSHOT + 1))
        );
        assert!(view_root(BranchId::snapshot_view(SnapshotId(MAX_SNAPSHOT))).is_ok());
    }

    #[test]
    fn every_view_root_has_an_agentfs_dir_of_its_own() {
        assert_eq!(Ino::Root.agentfs_dir(), Some(AGENTFS_DIR_INO));
        let views = [
            BranchId(3),
            BranchId(MAX_BRANCH),
            BranchId::snapshot_view(SnapshotId(3)),
        ];
        let mut seen = std::collections::HashSet::new();
        for b in views {
            let root = Ino::decode(view_root(b).unwrap()).unwrap();
            let dir = root.agentfs_dir().unwrap();
            assert!(dir != AGENTFS_DIR_INO && seen.insert(dir));
            assert!(dir >> NODE_BITS == 0, "in branch 0");
            let Ok(Ino::ViewAgentfsDir(field)) = Ino::decode(dir) else {
                panic!("{dir:#x} does not decode to a view's .agentfs");
            };
            assert_eq!(view_root_of_field(field), view_root(b).unwrap());
        }
        // Only roots of trees hold .agentfs.
        let child = encode_in(
            Ino::decode(view_root(BranchId(3)).unwrap()).unwrap(),
            BranchId(3),
            NodeId(9),
        )
        .unwrap();
        assert_eq!(Ino::decode(child).unwrap().agentfs_dir(), None);
        assert_eq!(
            Ino::decode(encode(BranchId(3), NodeId(9)).unwrap())
                .unwrap()
                .agentfs_dir(),
            None
        );
        // A field that is no view root is no inode.
        for field in [
            0,
            3,
            SNAPSHOT_FLAG | 3,
            VIEW_FLAG | SNAPSHOT_FLAG,
            1 << 20,
            1 << 39,
        ] {
            let ino = VIEW_AGENTFS_BASE | field;
            assert_eq!(Ino::decode(ino), Err(InodeError::Invalid(ino)));
        }
    }

    #[test]
    fn virtual_nodes_live_in_branch_0() {
        assert_eq!(Ino::decode(AGENTFS_DIR_INO), Ok(Ino::AgentfsDir));
        assert_eq!(Ino::decode(CONTROL_FILE_INO), Ok(Ino::ControlFile));
        assert!(Ino::decode(AGENTFS_DIR_INO).unwrap().is_virtual());
        assert!(!Ino::decode(1).unwrap().is_virtual());
        assert_eq!(Ino::decode(BRANCHES_DIR_INO), Ok(Ino::BranchesDir));
        assert_eq!(Ino::decode(SNAPSHOTS_DIR_INO), Ok(Ino::SnapshotsDir));
        assert!(Ino::SnapshotsDir.is_virtual());
        assert_eq!(Ino::decode(6), Err(InodeError::Invalid(6)));
        assert!(Ino::ViewAgentfsDir(VIEW_FLAG | 3).is_virtual());
        assert_eq!(Ino::decode(0), Err(InodeError::Invalid(0)));
        // Node 0 of a real branch is no node either.
        assert_eq!(
            Ino::decode(1 << NODE_BITS),
            Err(InodeError::Invalid(1 << NODE_BITS))
        );
    }

    #[test]
    fn ids_out_of_range_are_refused() {
        assert_eq!(
            encode(BranchId(MAX_BRANCH + 1), NodeId(2)),
            Err(InodeError::BranchTooLarge(MAX_BRANCH + 1))
        );
        assert_eq!(
            encode(BranchId(0), NodeId(2)),
            Err(InodeError::BranchTooLarge(0))
        );
        assert_eq!(
            encode(BranchId(1), NodeId(1 << NODE_BITS)),
            Err(InodeError::NodeTooLarge(1 << NODE_BITS))
        );
    }
}
