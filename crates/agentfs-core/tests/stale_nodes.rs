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

/// While the kernel still holds a node it looked up (FUSE nlookup), its file
/// outlives its last name as an orphan, as on a local filesystem: an open or
/// stat racing a rename over the name gets the file it resolved, not ESTALE.
/// The kernel's FORGET lets it go, with its content.
#[test]
fn a_node_the_kernel_holds_outlives_its_last_name_until_forgotten() {
    let e = env();
    let main = e.main();
    e.write_file(main, "target", b"old");
    e.write_file(main, "tmp", b"new");
    let held = e
        .core
        .lookup_for_kernel(&e.root, main, NodeId::ROOT, name("target"))
        .unwrap();
    let objects_before = e.core.usage().objects;
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
    // The old file is still there for the kernel, with no name.
    let attr = e.core.getattr(main, held.node).unwrap();
    assert_eq!(attr.nlink, 0);
    let fh = e.core.open(&e.root, main, held.node, RO).unwrap();
    assert_eq!(e.core.read(fh, 0, 16).unwrap(), b"old");
    e.core.release(fh).unwrap();
    assert_eq!(e.read_file(main, "target").unwrap(), b"new");
    assert_eq!(e.core.usage().objects, objects_before);
    // A snapshot taken now leaves the nameless file out.
    let snap = e
        .core
        .snapshot_create(main, Some("while-held".into()))
        .unwrap();
    let br = e
        .core
        .branch_create(snap.id, Some("from-held".into()))
        .unwrap();
    assert!(matches!(
        e.core.getattr(br.id, held.node),
        Err(FsError::Stale)
    ));
    assert_eq!(e.read_file(br.id, "target").unwrap(), b"new");
    e.core.branch_delete(br.id, false).unwrap();
    e.core.snapshot_delete(snap.id).unwrap();
    // The kernel forgets the old one.
    e.core.forget(main, held.node, 1);
    assert!(matches!(
        e.core.getattr(main, held.node),
        Err(FsError::Stale)
    ));
    assert_eq!(e.core.usage().objects, objects_before - 1);
}

#[test]
fn an_unlinked_file_stays_until_every_kernel_lookup_is_forgotten() {
    let e = env();
    let main = e.main();
    e.write_file(main, "f", b"data");
    let lookup = || {
        e.core
            .lookup_for_kernel(&e.root, main, NodeId::ROOT, name("f"))
            .unwrap()
    };
    let id = lookup().node;
    lookup();
    e.core
        .unlink(&e.root, main, NodeId::ROOT, name("f"))
        .unwrap();
    assert!(matches!(e.resolve(main, "f"), Err(FsError::NotFound)));
    e.core.forget(main, id, 1);
    assert_eq!(e.core.getattr(main, id).unwrap().nlink, 0);
    e.core.forget(main, id, 1);
    assert!(matches!(e.core.getattr(main, id), Err(FsError::Stale)));
    // Forgetting more than was looked up is harmless.
    e.core.forget(main, id, 5);
}

/// The entries of a readdirplus reply are lookups the kernel holds
/// (`remember_all`): an entry unlinked afterwards stays, nameless, until
/// the kernel forgets it.
#[test]
fn readdirplus_entries_are_held_like_lookups() {
    let e = env();
    let main = e.main();
    let id = e.write_file(main, "f", b"data");
    e.write_file(main, "g", b"other");
    let fh = e.core.opendir(&e.root, main, NodeId::ROOT).unwrap();
    let plus = e.core.readdir_plus(fh, 0, 100).unwrap();
    e.core.releasedir(fh).unwrap();
    let handed: Vec<NodeId> = plus
        .iter()
        .filter(|p| p.entry.name != b"." && p.entry.name != b"..")
        .map(|p| p.entry.node)
        .collect();
    assert!(handed.contains(&id));
    e.core.remember_all(main, &handed);
    e.core.remember_all(main, &[id]);
    e.core
        .unlink(&e.root, main, NodeId::ROOT, name("f"))
        .unwrap();
    e.core.forget(main, id, 1);
    assert_eq!(e.core.getattr(main, id).unwrap().nlink, 0);
    e.core.forget(main, id, 1);
    assert!(matches!(e.core.getattr(main, id), Err(FsError::Stale)));
}

/// A lookup answered in one pass (`lookup_for_kernel_quick`) answers what
/// `lookup_for_kernel` does and holds the node for the kernel the same way.
#[test]
fn a_quick_lookup_answers_and_holds_like_a_lookup() {
    let e = env();
    let main = e.main();
    e.write_file(main, "f", b"data");
    let slow = e
        .core
        .lookup_for_kernel(&e.root, main, NodeId::ROOT, name("f"))
        .unwrap();
    let (attr, in_memory) = e
        .core
        .lookup_for_kernel_quick(&e.root, main, NodeId::ROOT, name("f"))
        .expect("answered from memory")
        .unwrap();
    assert_eq!(attr, slow);
    assert_eq!(in_memory, e.core.attr_in_memory(main, attr.node));
    assert!(matches!(
        e.core
            .lookup_for_kernel_quick(&e.root, main, NodeId::ROOT, name("missing")),
        Some(Err(FsError::NotFound))
    ));
    // Two lookups held: the file outlives its name until both are forgotten.
    e.core
        .unlink(&e.root, main, NodeId::ROOT, name("f"))
        .unwrap();
    e.core.forget(main, attr.node, 1);
    assert_eq!(e.core.getattr(main, attr.node).unwrap().nlink, 0);
    e.core.forget(main, attr.node, 1);
    assert!(matches!(
        e.core.getattr(main, attr.node),
        Err(FsError::Stale)
    ));
}
