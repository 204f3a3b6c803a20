//! FsCore persisted on a real HostFs: a tree survives a clean reopen of the
//! same backstore root, and a reopen after the core was abandoned without a
//! checkpoint (a crash) recovers what was synced.

use agentfs_core::{Backstore, CoreConfig, Ctx, FsCore, MetaStore, NodeId, OpenFlags, ProcFs};
use agentfs_hostfs::{HostFs, HostFsOptions};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

fn open(root: &Path) -> (FsCore, agentfs_core::RecoveryReport) {
    let store = Arc::new(HostFs::open(root, HostFsOptions::default()).expect("backstore"));
    FsCore::open_persisted(
        Arc::clone(&store) as Arc<dyn Backstore>,
        store as Arc<dyn MetaStore>,
        CoreConfig {
            process_table: Box::new(ProcFs),
            default_branch_name: "main".into(),
        },
    )
    .expect("open persisted core")
}

const RW: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
};

fn read(core: &FsCore, b: agentfs_core::BranchId, name: &str) -> Vec<u8> {
    let ctx = Ctx::root();
    let id = core
        .lookup(&ctx, b, NodeId::ROOT, OsStr::new(name))
        .unwrap()
        .node;
    let fh = core
        .open(&ctx, b, id, OpenFlags::from_raw(libc::O_RDONLY))
        .unwrap();
    let data = core.read(fh, 0, 1 << 20).unwrap();
    core.release(fh).unwrap();
    data
}

#[test]
fn trees_snapshots_and_branches_survive_reopen_and_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let ctx = Ctx::root();
    let feature = {
        let (core, report) = open(&root);
        assert_eq!(report.generation, 0);
        let main = core.default_branch();
        let (_, fh) = core
            .create(
                &ctx,
                main,
                NodeId::ROOT,
                OsStr::new("f"),
                0o644,
                0,
                RW,
                false,
            )
            .unwrap();
        core.write(&ctx, fh, 0, b"version one").unwrap();
        core.release(fh).unwrap();
        let snap = core.snapshot_create(main, Some("first".into())).unwrap();
        let feature = core
            .branch_create(snap.id, Some("feature".into()))
            .unwrap()
            .id;
        let id = core
            .lookup(&ctx, feature, NodeId::ROOT, OsStr::new("f"))
            .unwrap()
            .node;
        let fh = core.open(&ctx, feature, id, RW).unwrap();
        core.write(&ctx, fh, 0, b"VERSION").unwrap();
        core.fsync(fh, false).unwrap();
        core.release(fh).unwrap();
        core.checkpoint().unwrap();
        feature
    };
    {
        let (core, report) = open(&root);
        assert_eq!(report.replayed, 0, "a clean close replays nothing");
        let main = core.default_branch();
        assert_eq!(read(&core, main, "f"), b"version one");
        assert_eq!(read(&core, feature, "f"), b"VERSION one");
        // Changes after this open, synced, then a "crash": no checkpoint.
        let (_, fh) = core
            .create(
                &ctx,
                main,
                NodeId::ROOT,
                OsStr::new("g"),
                0o644,
                0,
                RW,
                false,
            )
            .unwrap();
        core.write(&ctx, fh, 0, b"synced").unwrap();
        core.fsync(fh, false).unwrap();
        core.release(fh).unwrap();
        // Dropped without a checkpoint: what the journal holds is all there is.
        drop(core);
    }
    let (core, report) = open(&root);
    assert!(
        report.replayed > 0,
        "the synced changes came from the journal"
    );
    let main = core.default_branch();
    assert_eq!(read(&core, main, "g"), b"synced");
    assert_eq!(read(&core, feature, "f"), b"VERSION one");
    let names: Vec<String> = core.snapshot_list().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["first"]);
}
