//! FsCore over HostFs with a writer that bypasses FsCore, as the kernel does
//! with FUSE passthrough: sizes, snapshots and truncation must still be right.

mod common;

use agentfs_core::{CoreConfig, Ctx, FsCore, NodeId, OpenFlags, ProcFs, SetAttr};
use agentfs_hostfs::{HostFs, HostFsOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::{create_rw, RW};

const RO: OpenFlags = OpenFlags {
    read: true,
    write: false,
    append: false,
    truncate: false,
};

fn core(dir: &std::path::Path) -> FsCore {
    let store = HostFs::open(dir, HostFsOptions::default()).expect("backstore");
    let config = CoreConfig {
        process_table: Box::new(ProcFs),
        default_branch_name: "main".into(),
    };
    FsCore::new(Arc::new(store), config)
}

fn read_all(core: &FsCore, b: agentfs_core::BranchId, node: NodeId) -> Vec<u8> {
    let fh = core.open(&Ctx::root(), b, node, RO).unwrap();
    let data = core.read(fh, 0, u32::MAX).unwrap();
    core.release(fh).unwrap();
    data
}

#[test]
fn direct_writes_show_in_sizes_snapshots_and_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    let root = Ctx::root();
    let main = core.default_branch();
    let (attr, fh) = create_rw(&core, main, "f", true);
    let file = core
        .open_passthrough(fh)
        .unwrap()
        .expect("a writer gets the object");
    file.write_all_at(b"hello", 0).unwrap();
    assert_eq!(
        core.getattr(main, attr.node).unwrap().size,
        5,
        "size from the object while written directly"
    );

    // A snapshot now holds exactly these bytes, whatever is written next.
    let snap = core.snapshot_create(main, None).unwrap();
    file.write_all_at(b" world", 5).unwrap();
    let br = core.branch_create(snap.id, None).unwrap().id;
    assert_eq!(read_all(&core, br, attr.node), b"hello");
    assert_eq!(core.getattr(br, attr.node).unwrap().size, 5);

    // Truncating to zero keeps the object the kernel writes (no copy, no swap).
    core.setattr(
        &root,
        main,
        attr.node,
        &SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    file.write_all_at(b"again", 0).unwrap();
    assert_eq!(core.getattr(main, attr.node).unwrap().size, 5);
    core.release(fh).unwrap();
    assert_eq!(
        core.getattr(main, attr.node).unwrap().size,
        5,
        "folded into the node at close"
    );
    assert_eq!(read_all(&core, main, attr.node), b"again");
    assert_eq!(read_all(&core, br, attr.node), b"hello");
}

#[test]
fn readers_of_shared_content_are_served_by_fscore() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    let root = Ctx::root();
    let main = core.default_branch();
    let (attr, fh) = create_rw(&core, main, "f", true);
    core.write(&root, fh, 0, b"data").unwrap();
    core.release(fh).unwrap();
    let snap = core.snapshot_create(main, None).unwrap();
    let br = core.branch_create(snap.id, None).unwrap().id;
    // Shared with the snapshot: a later copy-on-write would swap the object, so
    // no direct access for readers.
    let fh = core.open(&root, br, attr.node, RO).unwrap();
    assert!(core.open_passthrough(fh).unwrap().is_none());
    core.release(fh).unwrap();
    // A writer makes it private first and then may have it.
    let fh = core.open(&root, br, attr.node, RW).unwrap();
    let file = core
        .open_passthrough(fh)
        .unwrap()
        .expect("private after copy-on-write");
    file.write_all_at(b"D", 0).unwrap();
    core.release(fh).unwrap();
    assert_eq!(read_all(&core, br, attr.node), b"Data");
    assert_eq!(read_all(&core, main, attr.node), b"data");
    // A private object may be read directly.
    let fh = core.open(&root, br, attr.node, RO).unwrap();
    assert!(core.open_passthrough(fh).unwrap().is_some());
    core.release(fh).unwrap();
}

/// Two direct writers closed at the same moment (the kernel sends RELEASE
/// after close(2) returns, so a file created, closed, reopened, written and
/// closed again has both releases in flight): the file's size after both is
/// the object's length. Found by the stress run: each release saw the other
/// still counted, so neither took the object's size into the node, and the
/// file read as empty (the size at create) once both were gone.
#[test]
fn concurrent_releases_of_direct_writers_keep_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    let root = Ctx::root();
    let main = core.default_branch();
    const WRITERS: usize = 8;
    for i in 0..1000 {
        let (attr, first) = create_rw(&core, main, &format!("f{i}"), true);
        let _ = core.open_passthrough(first).unwrap().expect("object");
        let mut handles = vec![first];
        for _ in 1..WRITERS {
            let fh = core.open(&root, main, attr.node, RW).unwrap();
            let file = core.open_passthrough(fh).unwrap().expect("object");
            file.write_all_at(&[7u8; 100], 0).unwrap();
            handles.push(fh);
        }
        let barrier = std::sync::Barrier::new(WRITERS);
        std::thread::scope(|s| {
            for &fh in &handles {
                let (core, barrier) = (&core, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    core.release(fh).unwrap();
                });
            }
        });
        assert_eq!(
            core.getattr(main, attr.node).unwrap().size,
            100,
            "file f{i}: size after both releases"
        );
    }
}
