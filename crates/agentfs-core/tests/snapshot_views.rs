//! Read-only snapshot views (`FsCore::snapshot_browse`): a snapshot read like
//! a branch, every change refused with `ReadOnly` (EROFS), in no list, gone
//! with its snapshot, and never persisted.

mod common;

use agentfs_core::backstore::mem::MemBackstore;
use agentfs_core::{
    Backstore, BranchId, CoreConfig, FsCore, FsError, MemStore, MetaStore, NodeId, OpenFlags,
    ProcFs, RenameFlags, SetAttr, SetTime, XattrSet,
};
use common::*;
use std::sync::Arc;

fn read_only<T: std::fmt::Debug>(what: &str, r: agentfs_core::FsResult<T>) {
    match r {
        Err(FsError::ReadOnly) => assert_eq!(FsError::ReadOnly.errno(), libc::EROFS),
        other => panic!("{what}: expected ReadOnly, got {other:?}"),
    }
}

/// main with `d/f` ("old"), `d/link` -> f, an xattr on f; snapshot "base";
/// then main changes f. Answers the snapshot's view.
fn setup(e: &Env) -> BranchId {
    let main = e.main();
    e.mkdir(main, "d");
    let f = e.write_file(main, "d/f", b"old");
    let d = e.resolve(main, "d").unwrap().node;
    e.core
        .symlink(&e.root, main, d, name("link"), b"f")
        .unwrap();
    e.core
        .setxattr(&e.root, main, f, name("user.k"), b"v", XattrSet::Any)
        .unwrap();
    let snap = e.core.snapshot_create(main, Some("base".into())).unwrap();
    e.write_file(main, "d/f", b"new content");
    e.write_file(main, "d/added", b"x");
    e.core.snapshot_browse(snap.id).unwrap()
}

#[test]
fn a_view_reads_the_snapshot_as_it_was() {
    let e = env();
    let view = setup(&e);
    assert!(e.core.is_read_only(view) && !e.core.is_read_only(e.main()));
    assert_eq!(e.read_file(view, "d/f").unwrap(), b"old");
    assert_eq!(e.read_file(e.main(), "d/f").unwrap(), b"new content");
    assert_eq!(e.names(view, "d"), [".", "..", "f", "link"]);
    let link = e.resolve(view, "d/link").unwrap().node;
    assert_eq!(e.core.readlink(view, link).unwrap(), b"f");
    let f = e.resolve(view, "d/f").unwrap();
    assert_eq!(f.size, 3);
    assert_eq!(
        e.core
            .getxattr(&e.root, view, f.node, name("user.k"))
            .unwrap(),
        b"v"
    );
    assert!(e.core.listxattr(&e.root, view, f.node).is_ok());
    // Read and execute access are as the snapshot's modes say.
    e.core.access(&e.root, view, f.node, libc::R_OK).unwrap();
    // Browsing again gives the same view.
    let s = e.core.find_snapshot("base").unwrap();
    assert_eq!(e.core.snapshot_browse(s).unwrap(), view);
}

#[test]
fn every_change_through_a_view_is_read_only() {
    let e = env();
    let view = setup(&e);
    let (c, root) = (&e.root, NodeId::ROOT);
    let d = e.resolve(view, "d").unwrap().node;
    let f = e.resolve(view, "d/f").unwrap().node;
    let rw = OpenFlags {
        write: true,
        ..Default::default()
    };
    let trunc = OpenFlags {
        read: true,
        truncate: true,
        ..Default::default()
    };
    read_only("open for writing", e.core.open(c, view, f, rw));
    read_only("open O_RDWR", e.core.open(c, view, f, RW));
    read_only("open O_TRUNC", e.core.open(c, view, f, trunc));
    read_only(
        "create",
        e.core
            .create(c, view, d, name("new"), 0o100644, 0, RW, false),
    );
    read_only(
        "create of an existing name",
        e.core.create(c, view, d, name("f"), 0o100644, 0, RW, false),
    );
    read_only("mkdir", e.core.mkdir(c, view, root, name("x"), 0o755, 0));
    read_only(
        "mknod",
        e.core
            .mknod(c, view, root, name("p"), libc::S_IFIFO | 0o644, 0, 0),
    );
    read_only("symlink", e.core.symlink(c, view, root, name("s"), b"t"));
    read_only("link", e.core.link(c, view, f, root, name("l")));
    read_only("unlink", e.core.unlink(c, view, d, name("f")));
    read_only("rmdir", e.core.rmdir(c, view, root, name("d")));
    read_only(
        "rename",
        e.core
            .rename(c, view, d, name("f"), d, name("g"), RenameFlags::default()),
    );
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    read_only("chmod", e.core.setattr(c, view, f, &chmod));
    let truncate = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    read_only("truncate to 0", e.core.setattr(c, view, f, &truncate));
    let grow = SetAttr {
        size: Some(100),
        ..Default::default()
    };
    read_only("truncate up", e.core.setattr(c, view, f, &grow));
    let touch = SetAttr {
        mtime: Some(SetTime::Now),
        ..Default::default()
    };
    read_only("utimens", e.core.setattr(c, view, f, &touch));
    read_only(
        "setxattr",
        e.core
            .setxattr(c, view, f, name("user.k"), b"w", XattrSet::Any),
    );
    read_only(
        "removexattr",
        e.core.removexattr(c, view, f, name("user.k")),
    );
    read_only("access W_OK", e.core.access(c, view, f, libc::W_OK));
    read_only(
        "access W_OK of a dir",
        e.core.access(c, view, d, libc::W_OK),
    );

    // Nothing changed, in the view or the snapshot, and no object was copied.
    assert_eq!(e.read_file(view, "d/f").unwrap(), b"old");
    assert_eq!(e.names(view, "d"), [".", "..", "f", "link"]);
    let s = e.core.find_snapshot("base").unwrap();
    let br = e.core.branch_create(s, None).unwrap().id;
    assert_eq!(e.read_file(br, "d/f").unwrap(), b"old");
    assert_eq!(e.core.stats().cow_clones, 0);
}

#[test]
fn a_read_only_handle_of_a_view_cannot_write() {
    let e = env();
    let view = setup(&e);
    let f = e.resolve(view, "d/f").unwrap().node;
    let fh = e.core.open(&e.root, view, f, RO).unwrap();
    assert!(matches!(
        e.core.write(&e.root, fh, 0, b"x"),
        Err(FsError::BadHandle)
    ));
    assert!(matches!(
        e.core.fallocate(&e.root, fh, 0, 0, 10),
        Err(FsError::BadHandle)
    ));
    assert_eq!(e.core.read(fh, 0, 100).unwrap(), b"old");
    e.core.release(fh).unwrap();
}

#[test]
fn views_are_in_no_list_and_go_with_their_snapshot() {
    let e = env();
    let view = setup(&e);
    let before = e.core.stats();
    assert_eq!(before.branches, 1, "the view is not a branch");
    assert_eq!(e.core.branch_list().len(), 1);
    assert!(!e.core.branch_exists(view));
    assert!(e.core.tree_exists(view));
    assert!(e.core.find_branch("base").is_err());
    assert!(e.core.find_branch(&view.to_string()).is_err());
    // It can be neither bound, snapshotted nor deleted as a branch.
    assert!(matches!(
        e.core.bind(std::process::id(), view),
        Err(FsError::UnknownView(_))
    ));
    assert!(e.core.snapshot_create(view, None).is_err());
    assert!(e.core.branch_delete(view, true).is_err());
    assert_eq!(e.core.snapshot_list()[0].children, Vec::<BranchId>::new());
    let base = e.core.find_snapshot("base").unwrap();
    assert_eq!(e.core.snapshot_names(), [(base, "base".to_string())]);

    // A handle open across the delete keeps reading what it opened.
    let f = e.resolve(view, "d/f").unwrap().node;
    let fh = e.core.open(&e.root, view, f, RO).unwrap();
    let s = e.core.find_snapshot("base").unwrap();
    e.core.snapshot_delete(s).unwrap();
    assert!(!e.core.tree_exists(view));
    assert!(e.core.snapshot_names().is_empty());
    assert!(matches!(
        e.core.getattr(view, NodeId::ROOT),
        Err(FsError::Stale)
    ));
    assert!(matches!(e.core.getattr(view, f), Err(FsError::Stale)));
    assert!(matches!(
        e.core.snapshot_browse(s),
        Err(FsError::UnknownView(_))
    ));
    assert_eq!(e.core.read(fh, 0, 100).unwrap(), b"old");
    e.core.release(fh).unwrap();
    // Its objects are freed with it: main's two files only.
    assert_eq!(e.core.usage().objects, 2);
}

#[test]
fn views_are_never_persisted() {
    let objects = Arc::new(MemBackstore::new());
    let store = Arc::new(MemStore::new());
    let config = || CoreConfig {
        process_table: Box::new(ProcFs),
        default_branch_name: "main".into(),
    };
    let open = |store: Arc<MemStore>| {
        FsCore::open_persisted(
            Arc::clone(&objects) as Arc<dyn Backstore>,
            store as Arc<dyn MetaStore>,
            config(),
        )
        .expect("open persisted core")
    };
    let (core, _) = open(Arc::clone(&store));
    let c = agentfs_core::Ctx::root();
    let main = core.default_branch();
    core.mkdir(&c, main, NodeId::ROOT, name("d"), 0o755, 0)
        .unwrap();
    let snap = core.snapshot_create(main, Some("base".into())).unwrap();
    let view = core.snapshot_browse(snap.id).unwrap();
    let d = core.lookup(&c, view, NodeId::ROOT, name("d")).unwrap().node;
    assert!(core.getattr(view, d).is_ok());

    // A crash now (the journal as it stands): one branch, one snapshot.
    let (again, report) = open(Arc::new(store.image(None)));
    assert_eq!((report.branches, report.snapshots), (1, 1));
    assert_eq!(again.branch_list().len(), 1);
    assert!(!again.tree_exists(view), "made again only when browsed");
    assert_eq!(again.snapshot_browse(snap.id).unwrap(), view);
    drop(again);

    // A checkpoint writes no view either.
    core.checkpoint().unwrap();
    let (again, report) = open(Arc::new(store.image(None)));
    assert_eq!((report.branches, report.snapshots), (1, 1));
    assert!(!again.tree_exists(view));
    let names: Vec<String> = again.branch_list().into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["main"]);
}
