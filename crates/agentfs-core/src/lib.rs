//! FsCore: the filesystem of AgentFS with no mount attached.
//!
//! FsCore owns the node tree of every branch and snapshot, POSIX semantics
//! (permissions, link counts, rename rules, times, xattrs), copy-on-write of
//! shared content, and the per-process binding table. It knows nothing about
//! FUSE or the control protocol's wire format: the adapter calls the methods of
//! [`FsCore`] with a branch, a node and the caller's [`Ctx`].
//!
//! Trees are persistent maps (`imbl`), so a snapshot or a branch is an O(1)
//! clone of a tree that shares every node with its origin. Content objects live
//! in a [`Backstore`]; a content object is referenced through an `Arc` from the
//! tree nodes (and open handles) that use it, so dropping the last tree that
//! holds it frees it, whatever mix of snapshots and branches shared it.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod attr;
pub mod backstore;
pub mod binding;
pub mod creds;
pub mod error;
pub mod ids;
pub mod lower;

mod fs;
pub mod persist;
#[cfg(test)]
mod test_support;

pub use attr::{Attr, DirEntry, DirEntryPlus, FileKind, SetAttr, SetTime, StatFs};
pub use backstore::{Backstore, BackstoreUsage};
pub use binding::{BindingInfo, ProcFs, ProcessInfo, ProcessTable};
pub use creds::Ctx;
pub use error::{FsError, FsResult};
pub use fs::ImportReport;
pub use fs::{
    BranchInfo, Change, CommitOptions, CommitReport, Conflict, CoreConfig, CoreStats, FsCore,
    OpenFlags, RecoveryReport, RenameFlags, Resolve, SnapshotInfo, XattrSet,
};
pub use fs::{DiffAspect, DiffChange, DiffKind, DiffStats, EntryType, ViewRef};
pub use ids::{BranchId, ContentId, HandleId, NodeId, SnapshotId};
pub use lower::Lower;
pub use persist::{MemStore, MetaStore, PersistError};
