//! Identifier newtypes. Ids never cross a crate boundary as bare integers.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A node (file, directory, symlink, special file) of the tree. A node keeps its
    /// id in every branch and snapshot that shares it; new nodes get fresh ids.
    NodeId,
    "n"
);
id_type!(
    /// A writable branch. Never reused within one FsCore.
    BranchId,
    "b"
);
id_type!(
    /// A frozen, read-only snapshot. Never reused within one FsCore.
    SnapshotId,
    "s"
);
id_type!(
    /// A content object in the backstore (the data of one regular file version).
    ContentId,
    "c"
);
id_type!(
    /// An open file or directory handle.
    HandleId,
    "h"
);

impl NodeId {
    /// The root directory of every tree.
    pub const ROOT: NodeId = NodeId(1);
    /// Every node id is below this (the FUSE adapter puts the branch into
    /// the bits above).
    pub const LIMIT: u64 = 1 << 44;
    /// Ids from here up to [`NodeId::LIMIT`] are lower entries' (overlay
    /// mounts): the id of a lower file or directory keeps the low 32 bits of
    /// its lower inode number, so its `st_ino` through the mount does too.
    /// Tools that remember `st_ino` find the file unchanged: git's index
    /// keeps exactly those 32 bits, and a checkout's first `git status`
    /// through the mount would otherwise read every file again. Ordinary ids
    /// count up from 2 and never reach this range.
    pub const LOWER_BASE: u64 = 1 << 43;
    /// How many lower entries may share the low 32 bits of an inode number
    /// (hard links, several filesystems under the lower directory) before
    /// one gets an ordinary id.
    pub const LOWER_ALIASES: u64 = (Self::LIMIT - Self::LOWER_BASE) >> 32;

    /// The `alias`-th id for a lower entry with inode number `ino`.
    pub fn lower(ino: u64, alias: u64) -> Option<NodeId> {
        (alias < Self::LOWER_ALIASES)
            .then_some(NodeId(Self::LOWER_BASE | alias << 32 | (ino & 0xffff_ffff)))
    }

    /// Whether this id is in the lower entries' range.
    pub fn is_lower(self) -> bool {
        (Self::LOWER_BASE..Self::LIMIT).contains(&self.0)
    }
}
