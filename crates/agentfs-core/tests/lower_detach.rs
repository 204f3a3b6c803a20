//! `FsCore::detach_lower`, what `export --to <the lower directory>` asks of
//! the daemon before it changes the lower directory: every tree (branches,
//! snapshots, snapshot views) stops naming the lower paths about to change,
//! without any tree showing other bytes, names or diffs, durably (a crash
//! right after it keeps it), and without writing the lower directory. Then
//! the host may rename, replace and delete those paths: nothing in AgentFS
//! changes.

use agentfs_core::backstore::mem::MemBackstore;
use agentfs_core::{
    Backstore, BranchId, CommitOptions, CoreConfig, Ctx, FsCore, FsError, Lower, MemStore,
    MetaStore, NodeId, OpenFlags, ProcFs, RenameFlags, ViewRef,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

const RO: OpenFlags = OpenFlags {
    read: true,
    write: false,
    append: false,
    truncate: false,
};

fn mount(objects: &Arc<MemBackstore>, store: MemStore, lower: &Path) -> (FsCore, Arc<MemStore>) {
    let store = Arc::new(store);
    let (core, _) = FsCore::open_persisted(
        Arc::clone(objects) as Arc<dyn Backstore>,
        Arc::clone(&store) as Arc<dyn MetaStore>,
        CoreConfig {
            process_table: Box::new(ProcFs),
            default_branch_name: "main".into(),
        },
    )
    .expect("open persisted core");
    core.attach_lower(Arc::new(Lower::open(lower).unwrap()))
        .unwrap();
    (core, store)
}

fn resolve(core: &FsCore, b: BranchId, path: &str) -> agentfs_core::FsResult<NodeId> {
    let mut node = NodeId::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        node = core.lookup(&Ctx::root(), b, node, OsStr::new(part))?.node;
    }
    Ok(node)
}

fn read(core: &FsCore, b: BranchId, path: &str) -> agentfs_core::FsResult<Vec<u8>> {
    let node = resolve(core, b, path)?;
    let fh = core.open(&Ctx::root(), b, node, RO)?;
    let data = core.read(fh, 0, u32::MAX);
    core.release(fh)?;
    data
}

fn rename(core: &FsCore, b: BranchId, from: &str, to: &str) {
    core.rename(
        &Ctx::root(),
        b,
        NodeId::ROOT,
        OsStr::new(from),
        NodeId::ROOT,
        OsStr::new(to),
        RenameFlags::default(),
    )
    .unwrap();
}

/// Every file under `dir` with its bytes (by path).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The cycle: a branch renames a lower file it never wrote, is
/// committed into main; another branch still has the old name; a snapshot
/// has it too. After `detach_lower` the host renames `a` to `b` and deletes
/// a directory no tree had read: every tree reads what it read before,
/// diffs show only the real changes, and a crash right after the detach
/// (then the host change) loses nothing.
#[test]
fn after_detach_the_lower_paths_can_change_under_every_tree() {
    let lower = tempfile::tempdir().unwrap();
    let l = lower.path();
    std::fs::write(l.join("a"), "A\n").unwrap();
    std::fs::write(l.join("keep"), "K\n").unwrap();
    std::fs::create_dir_all(l.join("d/e")).unwrap();
    std::fs::write(l.join("d/x"), "X\n").unwrap();
    std::fs::write(l.join("d/e/y"), "Y\n").unwrap();
    let objects = Arc::new(MemBackstore::new());
    let (core, store) = mount(&objects, MemStore::new(), l);
    let main = core.default_branch();
    // Only the root is read: `d` stays unread in every tree.
    resolve(&core, main, "a").unwrap();
    let base = core.snapshot_create(main, Some("base".into())).unwrap().id;
    let work = core.branch_create(base, Some("work".into())).unwrap().id;
    let other = core.branch_create(base, Some("other".into())).unwrap().id;
    rename(&core, work, "a", "b");
    let commit = core.branch_commit(work, CommitOptions::default()).unwrap();
    assert!(commit.committed);
    let before_detach = files(l);
    let objects_before = core.usage().objects;

    let report = core
        .detach_lower(&[b"a".to_vec(), b"b".to_vec(), b"d".to_vec()], &[])
        .unwrap();
    assert_eq!(report.files, 3, "a, d/x, d/e/y: {report:?}");
    assert_eq!(report.dirs, 2, "d and d/e read: {report:?}");
    assert_eq!(files(l), before_detach, "the lower directory was written");
    assert_eq!(core.usage().objects, objects_before + 3);
    // A second detach finds nothing left to do.
    let again = core
        .detach_lower(&[b"a".to_vec(), b"d".to_vec()], &[])
        .unwrap();
    assert_eq!((again.files, again.dirs), (0, 0), "{again:?}");

    // Crash right after the detach: the store as it stands.
    let image = store.image(None);
    let _keep = Arc::clone(&objects);
    std::mem::forget(core);

    // What export does to the lower directory.
    std::fs::rename(l.join("a"), l.join("b")).unwrap();
    std::fs::remove_dir_all(l.join("d")).unwrap();
    std::fs::write(l.join("keep2"), "new on the host\n").unwrap();

    let (core, _) = mount(&objects, image, l);
    let view = core.snapshot_browse(base).unwrap();
    assert_eq!(read(&core, main, "b").unwrap(), b"A\n");
    assert!(matches!(resolve(&core, main, "a"), Err(FsError::NotFound)));
    assert_eq!(read(&core, other, "a").unwrap(), b"A\n");
    assert_eq!(read(&core, view, "a").unwrap(), b"A\n");
    for b in [main, other, work, view] {
        assert_eq!(read(&core, b, "d/x").unwrap(), b"X\n");
        assert_eq!(read(&core, b, "d/e/y").unwrap(), b"Y\n");
        assert_eq!(read(&core, b, "keep").unwrap(), b"K\n");
        // The root was read before the host added `keep2`.
        assert!(matches!(resolve(&core, b, "keep2"), Err(FsError::NotFound)));
    }
    // Reading is no change, and neither is a detach.
    assert!(core
        .diff(ViewRef::Snapshot(base), ViewRef::Branch(other))
        .unwrap()
        .is_empty());
    let changes = core
        .diff(ViewRef::Snapshot(base), ViewRef::Branch(main))
        .unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].path, "b");
    assert_eq!(changes[0].from.as_deref(), Some("a"));
}

/// Paths no tree names as lower files cost nothing: no copy, no read of
/// directories below them; a path whose attributes only change (`touched`)
/// has its ancestors read, not itself; a core without a lower directory
/// does nothing.
#[test]
fn detach_copies_only_what_the_paths_name() {
    let lower = tempfile::tempdir().unwrap();
    let l = lower.path();
    std::fs::create_dir_all(l.join("s/t")).unwrap();
    std::fs::write(l.join("s/t/f"), "F\n").unwrap();
    std::fs::write(l.join("s/g"), "G\n").unwrap();
    std::fs::write(l.join("h"), "H\n").unwrap();
    let objects = Arc::new(MemBackstore::new());
    let (core, _store) = mount(&objects, MemStore::new(), l);
    let main = core.default_branch();
    let r = core.detach_lower(&[b"nothing/here".to_vec()], &[]).unwrap();
    assert_eq!((r.files, r.dirs), (0, 1), "only the root read: {r:?}");
    let r = core
        .detach_lower(&[], &[b"s/t/new".to_vec(), b"s".to_vec()])
        .unwrap();
    assert_eq!(
        (r.files, r.dirs),
        (0, 2),
        "s and s/t read, nothing copied: {r:?}"
    );
    assert_eq!(core.usage().objects, 0);
    // `s/t` was read before the host adds to it: no tree sees the addition.
    std::fs::write(l.join("s/t/new"), "N\n").unwrap();
    assert!(matches!(
        resolve(&core, main, "s/t/new"),
        Err(FsError::NotFound)
    ));
    // Still read from the lower directory.
    std::fs::write(l.join("h"), "h\n").unwrap();
    assert_eq!(read(&core, main, "h").unwrap(), b"h\n");

    let plain = FsCore::new(
        Arc::new(MemBackstore::new()),
        CoreConfig {
            process_table: Box::new(ProcFs),
            default_branch_name: "main".into(),
        },
    );
    assert_eq!(plain.lower_path(), None);
    let r = plain.detach_lower(&[b"x".to_vec()], &[]).unwrap();
    assert_eq!((r.files, r.dirs), (0, 0));
}

/// Every file name at the root of view `b`.
fn root_names(core: &FsCore, b: BranchId) -> Vec<String> {
    let fh = core.opendir(&Ctx::root(), b, NodeId::ROOT).unwrap();
    let entries = core.readdir(fh, 0, usize::MAX).unwrap();
    core.releasedir(fh).unwrap();
    entries
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .filter(|s| s != "." && s != "..")
        .collect()
}

/// Snapshots, branches, renames and commits made while a detach runs: once
/// it returns, no tree (old or new) names a detached lower file, so each
/// file of each reads its bytes after the host deleted them all.
#[test]
fn trees_made_during_a_detach_are_detached_too() {
    let lower = tempfile::tempdir().unwrap();
    let l = lower.path();
    for i in 0..20 {
        std::fs::write(l.join(format!("f{i}")), format!("F{i}\n")).unwrap();
    }
    let objects = Arc::new(MemBackstore::new());
    let (core, _store) = mount(&objects, MemStore::new(), l);
    let core = Arc::new(core);
    let main = core.default_branch();
    resolve(&core, main, "f0").unwrap();
    let worker = {
        let core = Arc::clone(&core);
        std::thread::spawn(move || {
            for i in 0..30 {
                let s = core.snapshot_create(main, None).unwrap().id;
                let b = core.branch_create(s, None).unwrap().id;
                let from = format!("f{}", i % 20);
                if resolve(&core, b, &from).is_ok() {
                    rename(&core, b, &from, &format!("g{i}"));
                }
                if i % 3 == 0 {
                    core.branch_commit(b, CommitOptions::default()).unwrap();
                }
            }
        })
    };
    let paths: Vec<Vec<u8>> = (0..20).map(|i| format!("f{i}").into_bytes()).collect();
    let report = core.detach_lower(&paths, &[]).unwrap();
    assert!(report.files <= 20, "{report:?}");
    worker.join().unwrap();
    for i in 0..20 {
        std::fs::remove_file(l.join(format!("f{i}"))).unwrap();
    }
    let mut views: Vec<BranchId> = core.branch_list().iter().map(|b| b.id).collect();
    for s in core.snapshot_list() {
        views.push(core.snapshot_browse(s.id).unwrap());
    }
    assert!(views.len() > 60, "{}", views.len());
    for b in views {
        let names = root_names(&core, b);
        assert_eq!(names.len(), 20, "{b}: {names:?}");
        for name in names {
            let body = read(&core, b, &name).map_err(|e| format!("{b} {name}: {e}"));
            let body = String::from_utf8(body.unwrap()).unwrap();
            assert!(body.starts_with('F'), "{b} {name}: {body:?}");
        }
    }
}
