//! Shared setup for the HostFs integration tests.
#![allow(dead_code)]

use agentfs_core::{Attr, BranchId, Ctx, FsCore, HandleId, NodeId, OpenFlags};
use std::ffi::OsStr;

pub const RW: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
};

/// Create `name` (mode 0644) in the root of branch `b` and open it
/// read-write, as root; `exclusive` as `O_EXCL`.
pub fn create_rw(core: &FsCore, b: BranchId, name: &str, exclusive: bool) -> (Attr, HandleId) {
    core.create(
        &Ctx::root(),
        b,
        NodeId::ROOT,
        OsStr::new(name),
        0o644,
        0,
        RW,
        exclusive,
    )
    .unwrap()
}
