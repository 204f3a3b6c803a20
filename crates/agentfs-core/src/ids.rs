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
}
