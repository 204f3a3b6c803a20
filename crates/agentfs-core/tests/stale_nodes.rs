//! A node id the kernel still holds after its file was renamed over (or
//! unlinked) with no handle open answers `Stale` (ESTALE), so the kernel
//! retries the path walk instead of failing an `open` with ENOENT. Found by
//! the editor-style atomic save test (`agentfs-fuse` tests/real_tools.rs):
//! a reader reopening a file by name while it is renamed over got ENOENT.

mod common;

use agentfs_core::{FsError, NodeId, RenameFlags};
use common::*;

#[test]
fn a_node_renamed_over_is_stale_not_missing() {
    let e = env();
    let main = e.main();
    let old = e.write_file(main, "target", b"old");
    e.write_file(main, "tmp", b"new");
    e.core
        .rename(
            &e.root,
            main,
            NodeId::ROOT,
            name("tmp"),
            NodeId::ROOT,
            name("target"),
            RenameFlags::default(),
        )
        .unwrap();
    assert!(matches!(
        e.core.open(&e.root, main, old, RO),
        Err(FsError::Stale)
    ));
    assert!(matches!(e.core.getattr(main, old), Err(FsError::Stale)));
    assert_eq!(e.read_file(main, "target").unwrap(), b"new");
    // A name that does not exist is still plain ENOENT.
    assert!(matches!(e.resolve(main, "tmp"), Err(FsError::NotFound)));
}
