//! Fixtures the core's unit tests share: an in-memory core, the open flags
//! they open files with, and names from `&str`.

use crate::backstore::mem::MemBackstore;
use crate::{CoreConfig, FsCore, OpenFlags, ProcFs};
use std::ffi::OsStr;
use std::sync::Arc;

/// Read and write, nothing else.
pub(crate) const RW: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
};

/// A core with the real process table and a default branch named `main`.
pub(crate) fn config() -> CoreConfig {
    CoreConfig {
        process_table: Box::new(ProcFs),
        default_branch_name: "main".into(),
    }
}

/// A core on an in-memory backstore, not persisted.
pub(crate) fn core() -> FsCore {
    FsCore::new(Arc::new(MemBackstore::new()), config())
}

pub(crate) fn n(s: &str) -> &OsStr {
    OsStr::new(s)
}
