//! FsCore persisted on a real HostFs: a tree survives a clean reopen of the
//! same backstore root, and a reopen after the core was abandoned without a
//! checkpoint (a crash) recovers what was synced.

mod common;

use agentfs_core::{Backstore, CoreConfig, Ctx, FsCore, MetaStore, NodeId, OpenFlags, ProcFs};
use agentfs_hostfs::{HostFs, HostFsOptions};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use common::{create_rw, RW};

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
        let (_, fh) = create_rw(&core, main, "f", false);
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
        core.close_clean().unwrap();
        feature
    };
    {
        let (core, report) = open(&root);
        assert_eq!(report.replayed, 0, "a clean close replays nothing");
        let main = core.default_branch();
        assert_eq!(read(&core, main, "f"), b"version one");
        assert_eq!(read(&core, feature, "f"), b"VERSION one");
        // Changes after this open, synced, then a "crash": no checkpoint.
        let (_, fh) = create_rw(&core, main, "g", false);
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

/// A file the kernel writes directly (passthrough) when the journal was just
/// restarted by a checkpoint while mounted, then a crash: the journal holds
/// nothing, yet the object is longer than the size the checkpoint took. The
/// recovered size must be the object's, or a passthrough reader would see
/// bytes a reader through FsCore (and `stat`) does not. The crash loop found
/// this: a file read 4,445 bytes after recovery (passthrough) and 0 after a
/// commit moved its reads to FsCore.
#[test]
fn a_crash_right_after_a_checkpoint_keeps_sizes_of_direct_writes() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let ctx = Ctx::root();
    {
        let (core, _) = open(&root);
        let main = core.default_branch();
        let (_, fh) = create_rw(&core, main, "f", false);
        let file = core.open_passthrough(fh).unwrap().expect("object");
        file.write_all_at(&[1u8; 100], 0).unwrap();
        // A checkpoint while mounted (the journal past its threshold).
        core.checkpoint().unwrap();
        file.write_all_at(&[2u8; 100], 100).unwrap();
        file.sync_all().unwrap();
        // Crash with the handle open: no release, no checkpoint.
        drop(core);
    }
    let (core, report) = open(&root);
    let main = core.default_branch();
    let id = core
        .lookup(&ctx, main, NodeId::ROOT, OsStr::new("f"))
        .unwrap()
        .node;
    assert_eq!(report.reconciled, 1, "{report:?}");
    assert_eq!(core.getattr(main, id).unwrap().size, 200);
    let mut want = vec![1u8; 100];
    want.extend([2u8; 100]);
    assert_eq!(read(&core, main, "f"), want);
    // A clean close leaves its mark: the next load has nothing to take
    // from the objects and keeps the checkpoint's generation.
    core.close_clean().unwrap();
    drop(core);
    let (core, again) = open(&root);
    assert_eq!((again.replayed, again.reconciled), (0, 0), "{again:?}");
    assert_eq!(read(&core, main, "f"), want);
    core.close_clean().unwrap();
    drop(core);
    let (_core, third) = open(&root);
    assert_eq!(third.generation, again.generation + 1, "{third:?}");
    assert_eq!((third.replayed, third.reconciled), (0, 0), "{third:?}");
}
