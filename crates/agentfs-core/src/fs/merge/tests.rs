//! `branch_commit` on an in-memory core: the fast path, merges of disjoint
//! changes, conflicts refused and resolved, renames, three levels of
//! branches, a commit surviving a crash, and content never shared writable
//! after a commit.

use super::{Change, CommitOptions, Conflict, Resolve};
use crate::backstore::mem::MemBackstore;
use crate::backstore::Backstore;
use crate::test_support::{config, core, n, RW};
use crate::{BranchId, Ctx, FsCore, MemStore, MetaStore, NodeId, OpenFlags, RenameFlags};
use std::sync::Arc;

/// The node at `path` (`/`-separated) of branch `b`, if any.
fn find(core: &FsCore, b: BranchId, path: &str) -> Option<NodeId> {
    let ctx = Ctx::root();
    let mut id = NodeId::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        id = core.lookup(&ctx, b, id, n(part)).ok()?.node;
    }
    Some(id)
}

fn parent_and_name(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

/// Write `data` as the whole content of `path`, creating the file if needed.
fn put(core: &FsCore, b: BranchId, path: &str, data: &[u8]) {
    let ctx = Ctx::root();
    let fh = match find(core, b, path) {
        Some(id) => {
            let fh = core.open(&ctx, b, id, RW).unwrap();
            let trunc = crate::SetAttr {
                size: Some(0),
                ..crate::SetAttr::default()
            };
            core.setattr(&ctx, b, id, &trunc).unwrap();
            fh
        }
        None => {
            let (dir, name) = parent_and_name(path);
            let parent = find(core, b, dir).expect("parent directory");
            core.create(&ctx, b, parent, n(name), 0o644, 0, RW, false)
                .unwrap()
                .1
        }
    };
    core.write(&ctx, fh, 0, data).unwrap();
    core.release(fh).unwrap();
}

/// Open `path` for writing and close it without writing: a copy of a shared
/// object that holds the same bytes.
fn open_and_close(core: &FsCore, b: BranchId, path: &str) {
    let id = find(core, b, path).expect("path");
    let fh = core.open(&Ctx::root(), b, id, RW).unwrap();
    core.release(fh).unwrap();
}

fn mkdir(core: &FsCore, b: BranchId, path: &str) {
    let (dir, name) = parent_and_name(path);
    let parent = find(core, b, dir).expect("parent directory");
    core.mkdir(&Ctx::root(), b, parent, n(name), 0o755, 0)
        .unwrap();
}

fn rm(core: &FsCore, b: BranchId, path: &str) {
    let (dir, name) = parent_and_name(path);
    let parent = find(core, b, dir).expect("parent directory");
    core.unlink(&Ctx::root(), b, parent, n(name)).unwrap();
}

fn mv(core: &FsCore, b: BranchId, from: &str, to: &str) {
    let (fd, fname) = parent_and_name(from);
    let (td, tname) = parent_and_name(to);
    let (fd, td) = (find(core, b, fd).unwrap(), find(core, b, td).unwrap());
    core.rename(
        &Ctx::root(),
        b,
        fd,
        n(fname),
        td,
        n(tname),
        RenameFlags::default(),
    )
    .unwrap();
}

fn read(core: &FsCore, b: BranchId, path: &str) -> Option<Vec<u8>> {
    let id = find(core, b, path)?;
    let fh = core
        .open(&Ctx::root(), b, id, OpenFlags::from_raw(libc::O_RDONLY))
        .unwrap();
    let data = core.read(fh, 0, 1 << 20).unwrap();
    core.release(fh).unwrap();
    Some(data)
}

fn text(core: &FsCore, b: BranchId, path: &str) -> Option<String> {
    read(core, b, path).map(|d| String::from_utf8(d).unwrap())
}

/// main with `dir/a`, `dir/b`, `top`, a snapshot "base" of it, and a branch
/// "child" of that snapshot.
fn forked(core: &FsCore) -> (BranchId, BranchId) {
    let main = core.default_branch();
    mkdir(core, main, "dir");
    put(core, main, "dir/a", b"a0");
    put(core, main, "dir/b", b"b0");
    put(core, main, "top", b"t0");
    let s = core.snapshot_create(main, Some("base".into())).unwrap();
    let child = core.branch_create(s.id, Some("child".into())).unwrap().id;
    (main, child)
}

fn commit(core: &FsCore, child: BranchId) -> super::CommitReport {
    core.branch_commit(child, CommitOptions::default()).unwrap()
}

#[test]
fn fast_path_when_the_parent_did_not_change() {
    let core = core();
    let (main, child) = forked(&core);
    put(&core, child, "dir/a", b"a1");
    put(&core, child, "new", b"n1");
    rm(&core, child, "top");
    let r = commit(&core, child);
    assert!(r.committed && r.fast_path, "{r:?}");
    assert!(r.conflicts.is_empty());
    assert_eq!(text(&core, main, "dir/a").unwrap(), "a1");
    assert_eq!(text(&core, main, "new").unwrap(), "n1");
    assert_eq!(text(&core, main, "dir/b").unwrap(), "b0");
    assert!(find(&core, main, "top").is_none());
    // The names whose cached entries must go: `new` and `top` in the root.
    assert!(r.changed_entries.contains(&(NodeId::ROOT, b"new".to_vec())));
    assert!(r.changed_entries.contains(&(NodeId::ROOT, b"top".to_vec())));
    let a = find(&core, main, "dir/a").unwrap();
    assert!(r.changed_nodes.contains(&a));
    // The child is kept by default.
    assert!(core.branch_exists(child));
}

#[test]
fn disjoint_changes_on_both_sides_merge() {
    let core = core();
    let (main, child) = forked(&core);
    put(&core, child, "dir/a", b"a-child");
    put(&core, child, "child-new", b"c");
    put(&core, main, "dir/b", b"b-parent");
    put(&core, main, "parent-new", b"p");
    let r = commit(&core, child);
    assert!(r.committed && !r.fast_path, "{r:?}");
    assert_eq!(text(&core, main, "dir/a").unwrap(), "a-child");
    assert_eq!(text(&core, main, "dir/b").unwrap(), "b-parent");
    assert_eq!(text(&core, main, "child-new").unwrap(), "c");
    assert_eq!(text(&core, main, "parent-new").unwrap(), "p");
    assert_eq!(text(&core, main, "top").unwrap(), "t0");
}

#[test]
fn conflict_is_refused_with_the_list_and_changes_nothing() {
    let core = core();
    let (main, child) = forked(&core);
    put(&core, child, "dir/a", b"child");
    put(&core, main, "dir/a", b"parent");
    put(&core, child, "both", b"child");
    put(&core, main, "both", b"parent");
    put(&core, child, "only-child", b"c");
    let r = commit(&core, child);
    assert!(!r.committed, "{r:?}");
    assert_eq!(
        r.conflicts,
        vec![
            Conflict {
                path: "both".into(),
                child: Change::Added,
                parent: Change::Added
            },
            Conflict {
                path: "dir/a".into(),
                child: Change::Modified,
                parent: Change::Modified
            },
        ]
    );
    assert_eq!(text(&core, main, "dir/a").unwrap(), "parent");
    assert_eq!(text(&core, main, "both").unwrap(), "parent");
    assert!(find(&core, main, "only-child").is_none());
}

#[test]
fn theirs_and_ours_resolve_conflicts() {
    for (resolve, want) in [(Resolve::Theirs, "child"), (Resolve::Ours, "parent")] {
        let core = core();
        let (main, child) = forked(&core);
        put(&core, child, "dir/a", b"child");
        put(&core, main, "dir/a", b"parent");
        put(&core, child, "both", b"child");
        put(&core, main, "both", b"parent");
        put(&core, child, "only-child", b"c");
        let options = CommitOptions {
            resolve: Some(resolve),
            delete: false,
        };
        let r = core.branch_commit(child, options).unwrap();
        assert!(r.committed, "{r:?}");
        assert_eq!(r.conflicts.len(), 2, "{r:?}");
        assert_eq!(text(&core, main, "dir/a").unwrap(), want);
        assert_eq!(text(&core, main, "both").unwrap(), want);
        assert_eq!(text(&core, main, "only-child").unwrap(), "c");
    }
}

#[test]
fn directories_changed_at_different_names_merge_by_name() {
    let core = core();
    let (main, child) = forked(&core);
    put(&core, child, "dir/from-child", b"c");
    mkdir(&core, child, "dir/sub-child");
    put(&core, child, "dir/sub-child/f", b"cf");
    rm(&core, child, "dir/b");
    put(&core, main, "dir/from-parent", b"p");
    mkdir(&core, main, "dir/sub-parent");
    let r = commit(&core, child);
    assert!(r.committed && !r.fast_path, "{r:?}");
    let ctx = Ctx::root();
    let dir = find(&core, main, "dir").unwrap();
    let fh = core.opendir(&ctx, main, dir).unwrap();
    let mut names: Vec<String> = core
        .readdir(fh, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect();
    core.releasedir(fh).unwrap();
    names.sort();
    assert_eq!(
        names,
        ["a", "from-child", "from-parent", "sub-child", "sub-parent"]
    );
    assert_eq!(text(&core, main, "dir/sub-child/f").unwrap(), "cf");
    // Two subdirectories: the link count counts both sides' ones.
    assert_eq!(core.getattr(main, dir).unwrap().nlink, 4);
}

#[test]
fn delete_against_modify_is_a_conflict_both_ways() {
    let core = core();
    let (main, child) = forked(&core);
    rm(&core, child, "dir/a");
    put(&core, main, "dir/a", b"changed");
    put(&core, child, "top", b"changed");
    rm(&core, main, "top");
    let r = commit(&core, child);
    assert!(!r.committed);
    assert_eq!(
        r.conflicts,
        vec![
            Conflict {
                path: "dir/a".into(),
                child: Change::Deleted,
                parent: Change::Modified
            },
            Conflict {
                path: "top".into(),
                child: Change::Modified,
                parent: Change::Deleted
            },
        ]
    );
    // Child wins: `dir/a` goes, `top` comes back with the child's content.
    let theirs = CommitOptions {
        resolve: Some(Resolve::Theirs),
        delete: false,
    };
    let r = core.branch_commit(child, theirs).unwrap();
    assert!(r.committed, "{r:?}");
    assert!(find(&core, main, "dir/a").is_none());
    assert_eq!(text(&core, main, "top").unwrap(), "changed");
}

/// Found by the stress run's commit episodes (scripts/stress/fstress.py): with
/// `--ours`, a file the child deleted and the parent modified vanished from
/// the parent (the child's directory without the name was taken, then the
/// unreachable file dropped), though the parent's side had won.
#[test]
fn delete_against_modify_resolved_ours_keeps_the_parents_file() {
    for parent_dir_changed in [false, true] {
        let core = core();
        let (main, child) = forked(&core);
        rm(&core, child, "dir/a");
        put(&core, main, "dir/a", b"changed");
        put(&core, child, "top", b"changed");
        rm(&core, main, "top");
        if parent_dir_changed {
            put(&core, main, "dir/from-parent", b"p");
        }
        let ours = CommitOptions {
            resolve: Some(Resolve::Ours),
            delete: false,
        };
        let r = core.branch_commit(child, ours).unwrap();
        assert!(r.committed, "{r:?}");
        assert_eq!(r.conflicts.len(), 2, "{r:?}");
        assert_eq!(text(&core, main, "dir/a").as_deref(), Some("changed"));
        assert!(find(&core, main, "top").is_none());
        assert_eq!(text(&core, main, "dir/b").as_deref(), Some("b0"));
    }
}

#[test]
fn renames_in_the_child_are_committed() {
    let core = core();
    let (main, child) = forked(&core);
    mv(&core, child, "dir/a", "dir/renamed");
    mkdir(&core, child, "other");
    mv(&core, child, "dir/b", "other/b");
    put(&core, main, "parent-new", b"p");
    let r = commit(&core, child);
    assert!(r.committed, "{r:?}");
    assert!(find(&core, main, "dir/a").is_none());
    assert_eq!(text(&core, main, "dir/renamed").unwrap(), "a0");
    assert_eq!(text(&core, main, "other/b").unwrap(), "b0");
    assert!(find(&core, main, "dir/b").is_none());
    assert_eq!(text(&core, main, "parent-new").unwrap(), "p");
}

#[test]
fn moves_that_would_make_a_cycle_are_refused() {
    let core = core();
    let main = core.default_branch();
    mkdir(&core, main, "x");
    mkdir(&core, main, "x/deep");
    mkdir(&core, main, "y");
    mkdir(&core, main, "y/deep");
    let s = core.snapshot_create(main, None).unwrap();
    let child = core.branch_create(s.id, None).unwrap().id;
    mv(&core, child, "x", "y/deep/x");
    mv(&core, main, "y", "x/deep/y");
    for resolve in [None, Some(Resolve::Theirs)] {
        let options = CommitOptions {
            resolve,
            delete: false,
        };
        let r = core.branch_commit(child, options).unwrap();
        assert!(!r.committed, "{r:?}");
        assert!(!r.conflicts.is_empty());
    }
    assert!(find(&core, main, "x/deep/y/deep").is_some());
}

#[test]
fn three_levels_commit_up_one_at_a_time() {
    let core = core();
    let main = core.default_branch();
    put(&core, main, "f", b"0");
    let mut chain = vec![main];
    for level in 1..=3 {
        let parent = *chain.last().unwrap();
        let s = core
            .snapshot_create(parent, Some(format!("s{level}x")))
            .unwrap();
        let b = core
            .branch_create(s.id, Some(format!("level{level}")))
            .unwrap()
            .id;
        put(&core, b, &format!("at-level-{level}"), b"x");
        chain.push(b);
    }
    put(&core, chain[3], "f", b"3");
    put(&core, chain[2], "g", b"2");
    // Level 3 into level 2, then 2 into 1, then 1 into main.
    for i in (1..=3).rev() {
        let r = commit(&core, chain[i]);
        assert!(r.committed, "level {i}: {r:?}");
        assert_eq!(r.parent, Some(chain[i - 1]));
    }
    assert_eq!(text(&core, main, "f").unwrap(), "3");
    assert_eq!(text(&core, main, "g").unwrap(), "2");
    for level in 1..=3 {
        assert!(find(&core, main, &format!("at-level-{level}")).is_some());
    }
}

#[test]
fn after_a_commit_the_child_never_writes_the_parents_content() {
    let core = core();
    let (main, child) = forked(&core);
    let ctx = Ctx::root();
    // A file the child keeps open for writing across the commit.
    let a = find(&core, child, "dir/a").unwrap();
    let open = core.open(&ctx, child, a, RW).unwrap();
    core.write(&ctx, open, 0, b"A1").unwrap();
    put(&core, child, "dir/b", b"B1");
    let r = commit(&core, child);
    assert!(r.committed, "{r:?}");
    assert_eq!(text(&core, main, "dir/a").unwrap(), "A1");
    assert_eq!(text(&core, main, "dir/b").unwrap(), "B1");
    // Writes in the child after the commit stay in the child.
    core.write(&ctx, open, 0, b"A2").unwrap();
    core.release(open).unwrap();
    put(&core, child, "dir/b", b"B2");
    assert_eq!(text(&core, main, "dir/a").unwrap(), "A1");
    assert_eq!(text(&core, main, "dir/b").unwrap(), "B1");
    assert_eq!(text(&core, child, "dir/a").unwrap(), "A2");
    // And writes in the parent do not reach the child.
    put(&core, main, "dir/b", b"B3");
    assert_eq!(text(&core, child, "dir/b").unwrap(), "B2");
}

#[test]
fn a_kept_branch_commits_again_only_what_it_changed_since() {
    let core = core();
    let (main, child) = forked(&core);
    put(&core, child, "dir/a", b"first");
    let r = commit(&core, child);
    assert!(r.committed && r.fast_path, "{r:?}");
    let point = r.commit_point.expect("a commit point");
    // The child goes on; main changes elsewhere and where the child did before.
    put(&core, child, "dir/a", b"second");
    put(&core, child, "dir/b", b"child-b");
    put(&core, main, "top", b"main-top");
    let r = commit(&core, child);
    assert!(r.committed && !r.fast_path, "{r:?}");
    assert!(r.conflicts.is_empty(), "{r:?}");
    assert_eq!(
        r.base,
        Some(point),
        "the second commit compares with the first"
    );
    assert_eq!(r.child_changes, 2, "{r:?}");
    assert_eq!(text(&core, main, "dir/a").unwrap(), "second");
    assert_eq!(text(&core, main, "dir/b").unwrap(), "child-b");
    assert_eq!(text(&core, main, "top").unwrap(), "main-top");
    // One commit point per branch, the latest.
    let points: Vec<_> = core
        .snapshot_list()
        .into_iter()
        .filter(|s| s.name == "child@committed")
        .collect();
    assert_eq!(points.len(), 1);
    assert_eq!(Some(points[0].id), r.commit_point);
    assert_eq!(points[0].branch, child);
    // Main changing a path the child then changes is still a conflict.
    put(&core, main, "dir/b", b"main-b");
    put(&core, child, "dir/b", b"child-b2");
    let r = commit(&core, child);
    assert!(!r.committed, "{r:?}");
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(r.conflicts[0].path, "dir/b");
}

#[test]
fn delete_option_removes_the_child_and_refuses_when_busy() {
    let core = core();
    let (main, child) = forked(&core);
    put(&core, child, "x", b"x");
    let ctx = Ctx::root();
    let x = find(&core, child, "x").unwrap();
    let fh = core.open(&ctx, child, x, RW).unwrap();
    let delete = CommitOptions {
        resolve: None,
        delete: true,
    };
    assert!(core.branch_commit(child, delete).is_err());
    assert!(
        find(&core, main, "x").is_none(),
        "a refused commit commits nothing"
    );
    core.release(fh).unwrap();
    let r = core.branch_commit(child, delete).unwrap();
    assert!(r.committed && r.deleted_child);
    assert!(!core.branch_exists(child));
    assert_eq!(text(&core, main, "x").unwrap(), "x");
}

#[test]
fn a_commit_survives_a_crash_and_a_clean_reopen() {
    let objects = Arc::new(MemBackstore::new());
    let open = |store: MemStore| {
        let store = Arc::new(store);
        let (core, _) = FsCore::open_persisted(
            Arc::clone(&objects) as Arc<dyn Backstore>,
            Arc::clone(&store) as Arc<dyn MetaStore>,
            config(),
        )
        .unwrap();
        (core, store)
    };
    let (core, store) = open(MemStore::new());
    let (main, child) = forked(&core);
    put(&core, child, "dir/a", b"committed");
    mkdir(&core, child, "newdir");
    put(&core, child, "newdir/f", b"f");
    put(&core, main, "parent-side", b"p");
    let r = commit(&core, child);
    assert!(r.committed && !r.fast_path);
    // Crash right after the commit returned.
    let image = store.image(None);
    std::mem::forget(core);
    let (core, store) = open(image);
    assert_eq!(text(&core, main, "dir/a").unwrap(), "committed");
    assert_eq!(text(&core, main, "newdir/f").unwrap(), "f");
    assert_eq!(text(&core, main, "parent-side").unwrap(), "p");
    assert_eq!(text(&core, child, "dir/a").unwrap(), "committed");
    // Both branches name the objects now: a write in either copies first.
    put(&core, child, "dir/a", b"child-later");
    assert_eq!(text(&core, main, "dir/a").unwrap(), "committed");
    // A clean reopen after a checkpoint sees the same.
    core.checkpoint().unwrap();
    let image = store.image(None);
    drop(core);
    let (core, store) = open(image);
    assert_eq!(text(&core, main, "dir/a").unwrap(), "committed");
    assert_eq!(text(&core, main, "newdir/f").unwrap(), "f");
    assert_eq!(text(&core, child, "dir/a").unwrap(), "child-later");
    // The commit point survived too: committing again is no conflict.
    let r = commit(&core, child);
    assert!(r.committed && r.conflicts.is_empty(), "{r:?}");
    assert_eq!(text(&core, main, "dir/a").unwrap(), "child-later");
    // And that second commit survives a crash as well.
    let image = store.image(None);
    std::mem::forget(core);
    let (core, _) = open(image);
    assert_eq!(text(&core, main, "dir/a").unwrap(), "child-later");
    let names: Vec<String> = core.snapshot_list().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["base", "child@committed"]);
}

#[test]
fn a_branch_without_a_live_parent_or_base_is_refused() {
    let core = core();
    let main = core.default_branch();
    assert!(core.branch_commit(main, CommitOptions::default()).is_err());
    let s = core.snapshot_create(main, Some("gone".into())).unwrap();
    let child = core.branch_create(s.id, None).unwrap().id;
    core.snapshot_delete(s.id).unwrap();
    assert!(core.branch_commit(child, CommitOptions::default()).is_err());
}

/// Commit time on a tree of `AGENTFS_COMMIT_FILES` files (default 100,000,
/// in directories of 1,000) with 5 changes in the child: once with a parent
/// that did not change (the fast path), once with 5 changes in the parent
/// too (the three-way merge). Prints figures; asserts nothing about time.
/// Run: `cargo test --release -p agentfs-core commit_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn commit_speed() {
    use std::time::Instant;
    let files: usize = std::env::var("AGENTFS_COMMIT_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let core = core();
    let main = core.default_branch();
    let ctx = Ctx::root();
    let t0 = Instant::now();
    let mut dirs = Vec::new();
    for i in 0..files {
        if i % 1000 == 0 {
            let d = core
                .mkdir(
                    &ctx,
                    main,
                    NodeId::ROOT,
                    n(&format!("d{}", i / 1000)),
                    0o755,
                    0,
                )
                .unwrap()
                .node;
            dirs.push(d);
        }
        let (_, fh) = core
            .create(
                &ctx,
                main,
                *dirs.last().unwrap(),
                n(&format!("f{i}")),
                0o644,
                0,
                RW,
                false,
            )
            .unwrap();
        core.write(&ctx, fh, 0, b"x").unwrap();
        core.release(fh).unwrap();
    }
    let built = t0.elapsed();
    let mut figures = Vec::new();
    for (round, parent_changes) in [(0, false), (1, true)] {
        let s = core
            .snapshot_create(main, Some(format!("base{round}")))
            .unwrap();
        let child = core.branch_create(s.id, None).unwrap().id;
        for k in 0..5 {
            let i = k * (files / 5) + round;
            put(&core, child, &format!("d{}/f{i}", i / 1000), b"child");
            if parent_changes {
                let j = i + 1;
                put(&core, main, &format!("d{}/f{j}", j / 1000), b"parent");
            }
        }
        let t = Instant::now();
        let r = core.branch_commit(child, CommitOptions::default()).unwrap();
        let took = t.elapsed();
        assert!(r.committed && r.fast_path != parent_changes, "{r:?}");
        assert_eq!(r.child_changes, 5);
        figures.push(format!(
            "{} {:.3} ms ({} child, {} parent changes)",
            if r.fast_path {
                "fast path"
            } else {
                "three-way"
            },
            took.as_secs_f64() * 1000.0,
            r.child_changes,
            r.parent_changes
        ));
    }
    println!(
        "commit_speed: {files} files (built in {:.1} s): {}",
        built.as_secs_f64(),
        figures.join("; ")
    );
}

/// Review of issue 6: a directory both sides changed is merged name by
/// name, and its mode, owner and xattrs were taken from the child whenever
/// the child changed them, even when the parent had changed them too: the
/// parent's chmod or setxattr was dropped without a conflict.
#[test]
fn review_mode_or_xattrs_of_a_directory_changed_on_both_sides_conflict() {
    for what in ["mode", "xattr"] {
        let core = core();
        let (main, child) = forked(&core);
        let ctx = Ctx::root();
        for (b, mode, value) in [(child, 0o700, &b"child"[..]), (main, 0o750, &b"parent"[..])] {
            let dir = find(&core, b, "dir").unwrap();
            if what == "mode" {
                let set = crate::SetAttr {
                    mode: Some(mode),
                    ..crate::SetAttr::default()
                };
                core.setattr(&ctx, b, dir, &set).unwrap();
            } else {
                core.setxattr(&ctx, b, dir, n("user.k"), value, crate::XattrSet::Any)
                    .unwrap();
            }
        }
        // Disjoint names too, so the directory is merged name by name.
        put(&core, child, "dir/c", b"c");
        put(&core, main, "dir/p", b"p");
        let r = commit(&core, child);
        assert!(!r.committed, "{what}: {r:?}");
        assert_eq!(
            r.conflicts,
            vec![Conflict {
                path: "dir".into(),
                child: Change::Modified,
                parent: Change::Modified,
            }],
            "{what}"
        );
        // Resolved with --ours: the parent keeps its value, both names merge.
        let options = CommitOptions {
            resolve: Some(Resolve::Ours),
            delete: false,
        };
        let r = core.branch_commit(child, options).unwrap();
        assert!(r.committed, "{what}: {r:?}");
        let dir = find(&core, main, "dir").unwrap();
        if what == "mode" {
            let attr = core.getattr(main, dir).unwrap();
            assert_eq!(attr.perm & 0o7777, 0o750, "{what}");
        } else {
            let v = core.getxattr(&ctx, main, dir, n("user.k")).unwrap();
            assert_eq!(v, b"parent", "{what}");
        }
        assert_eq!(text(&core, main, "dir/c").unwrap(), "c");
        assert_eq!(text(&core, main, "dir/p").unwrap(), "p");
    }
}

/// Review of issue 6: a resolved merge takes each conflicting node from one
/// side but each directory's names as merged name by name, so a file's link
/// count and names could disagree: with `--ours`, the child's new link to a
/// file the parent deleted stayed as a name of no node; with either side,
/// links both sides added gave three names to a file counting two.
#[test]
fn review_resolved_merges_keep_names_and_link_counts_consistent() {
    let ctx = Ctx::root();
    let link = |core: &FsCore, b: BranchId, from: &str, to: &str| {
        let id = find(core, b, from).unwrap();
        core.link(&ctx, b, id, NodeId::ROOT, n(to)).unwrap();
    };
    let resolved = |resolve| CommitOptions {
        resolve: Some(resolve),
        delete: false,
    };
    // Linked in the child, deleted in the parent, the parent's side taken.
    let core = core();
    let (main, child) = forked(&core);
    link(&core, child, "top", "top-link");
    rm(&core, main, "top");
    let r = core.branch_commit(child, resolved(Resolve::Ours)).unwrap();
    assert!(r.committed, "{r:?}");
    assert!(find(&core, main, "top").is_none());
    if let Some(id) = find(&core, main, "top-link") {
        assert_eq!(core.getattr(main, id).unwrap().nlink, 1);
    }
    let dangling = core.lookup(&ctx, main, NodeId::ROOT, n("top-link"));
    let listed = core
        .opendir(&ctx, main, NodeId::ROOT)
        .and_then(|fh| {
            let all = core.readdir(fh, 0, 1000);
            core.releasedir(fh)?;
            all
        })
        .unwrap()
        .iter()
        .any(|e| e.name == b"top-link");
    assert_eq!(listed, dangling.is_ok(), "a listed name that names no node");

    // Linked on both sides, either side taken: one count for three names.
    for resolve in [Resolve::Theirs, Resolve::Ours] {
        let core = self::core();
        let (main, child) = forked(&core);
        link(&core, child, "top", "child-link");
        link(&core, main, "top", "parent-link");
        let r = core.branch_commit(child, resolved(resolve)).unwrap();
        assert!(r.committed, "{resolve:?}: {r:?}");
        let names = ["top", "child-link", "parent-link"]
            .iter()
            .filter(|p| find(&core, main, p).is_some())
            .count() as u32;
        let id = find(&core, main, "top").unwrap();
        assert_eq!(
            core.getattr(main, id).unwrap().nlink,
            names,
            "{resolve:?}: the link count is the number of names"
        );
    }
}

/// Review of issue 6: a directory moved to different places on both sides
/// is a conflict; resolved, the node came from one side but both new
/// parents kept a name for it: one directory with two names.
#[test]
fn review_a_directory_moved_on_both_sides_and_resolved_has_one_name() {
    for resolve in [Resolve::Theirs, Resolve::Ours] {
        let core = core();
        let main = core.default_branch();
        for d in ["p1", "p1/s", "p2", "p3"] {
            mkdir(&core, main, d);
        }
        put(&core, main, "p1/s/f", b"f");
        let s = core.snapshot_create(main, Some("base".into())).unwrap();
        let child = core.branch_create(s.id, Some("child".into())).unwrap().id;
        mv(&core, child, "p1/s", "p2/s");
        mv(&core, main, "p1/s", "p3/s");
        let options = CommitOptions {
            resolve: Some(resolve),
            delete: false,
        };
        let r = core.branch_commit(child, options).unwrap();
        assert!(r.committed, "{resolve:?}: {r:?}");
        let names: Vec<&str> = ["p2/s", "p3/s"]
            .into_iter()
            .filter(|p| find(&core, main, p).is_some())
            .collect();
        let want = if resolve == Resolve::Theirs {
            "p2/s"
        } else {
            "p3/s"
        };
        assert_eq!(names, vec![want], "{resolve:?}");
        assert_eq!(text(&core, main, &format!("{want}/f")).unwrap(), "f");
    }
}

/// Review of issue 6: what a resolved merge repairs after the fact (names of
/// deleted nodes, link counts) is in its journal record: a crash right after
/// the commit replays to the same names and counts.
#[test]
fn review_a_resolved_merge_replays_to_the_same_tree() {
    let objects = Arc::new(MemBackstore::new());
    let open = |store: MemStore| {
        let store = Arc::new(store);
        let (core, _) = FsCore::open_persisted(
            Arc::clone(&objects) as Arc<dyn Backstore>,
            Arc::clone(&store) as Arc<dyn MetaStore>,
            config(),
        )
        .unwrap();
        (core, store)
    };
    let ctx = Ctx::root();
    let (core, store) = open(MemStore::new());
    let (main, child) = forked(&core);
    let link = |core: &FsCore, b: BranchId, from: &str, to: &str| {
        let id = find(core, b, from).unwrap();
        core.link(&ctx, b, id, NodeId::ROOT, n(to)).unwrap();
    };
    link(&core, child, "top", "child-link");
    link(&core, main, "top", "parent-link");
    link(&core, child, "dir/a", "a-link");
    rm(&core, main, "dir/a");
    let options = CommitOptions {
        resolve: Some(Resolve::Ours),
        delete: false,
    };
    assert!(core.branch_commit(child, options).unwrap().committed);
    let state = |core: &FsCore| {
        let names: Vec<(String, Option<u32>)> =
            ["top", "child-link", "parent-link", "a-link", "dir/a"]
                .into_iter()
                .map(|p| {
                    let nlink = find(core, main, p).map(|id| core.getattr(main, id).unwrap().nlink);
                    (p.to_string(), nlink)
                })
                .collect();
        names
    };
    let before = state(&core);
    let image = store.image(None);
    std::mem::forget(core);
    let (core, _store) = open(image);
    assert_eq!(state(&core), before);
}

/// A file renamed on one side and written on the other is no conflict: the
/// rename changes only the file's ctime and the directories, the write only
/// its data. Likewise a mode change against a write. The same attribute
/// changed differently on both sides still is one.
#[test]
fn a_rename_or_chmod_against_a_write_merges_attribute_by_attribute() {
    let core = core();
    let (main, child) = forked(&core);
    let ctx = Ctx::root();
    mv(&core, child, "dir/a", "renamed");
    put(&core, main, "dir/a", b"a-parent");
    let (b, top) = (
        find(&core, child, "dir/b").unwrap(),
        find(&core, child, "top").unwrap(),
    );
    let chmod = |branch, node, mode| {
        let set = crate::SetAttr {
            mode: Some(mode),
            ..crate::SetAttr::default()
        };
        core.setattr(&ctx, branch, node, &set).unwrap();
    };
    chmod(child, b, 0o600);
    put(&core, main, "dir/b", b"b-parent");
    put(&core, child, "top", b"t-child");
    chmod(main, top, 0o640);
    let r = commit(&core, child);
    assert!(r.committed && r.conflicts.is_empty(), "{r:?}");
    assert!(find(&core, main, "dir/a").is_none());
    assert_eq!(text(&core, main, "renamed").unwrap(), "a-parent");
    assert_eq!(text(&core, main, "dir/b").unwrap(), "b-parent");
    assert_eq!(core.getattr(main, b).unwrap().perm & 0o7777, 0o600);
    assert_eq!(text(&core, main, "top").unwrap(), "t-child");
    assert_eq!(core.getattr(main, top).unwrap().perm & 0o7777, 0o640);

    // Both sides change the mode of one file differently: a conflict.
    let (main, child) = {
        let s = core.snapshot_create(main, None).unwrap();
        let c = core.branch_create(s.id, None).unwrap().id;
        (main, c)
    };
    let b = find(&core, child, "dir/b").unwrap();
    for (branch, mode) in [(child, 0o700), (main, 0o644)] {
        let set = crate::SetAttr {
            mode: Some(mode),
            ..crate::SetAttr::default()
        };
        core.setattr(&ctx, branch, b, &set).unwrap();
    }
    let r = core.branch_commit(child, CommitOptions::default()).unwrap();
    assert!(!r.committed, "{r:?}");
    assert_eq!(
        r.conflicts,
        vec![Conflict {
            path: "dir/b".into(),
            child: Change::Modified,
            parent: Change::Modified,
        }]
    );
}

/// An open for writing copies a shared object before the first byte is
/// written; an editor that opens a file read-write and writes nothing
/// leaves such a copy. The copy holds the base's bytes, so it is no change
/// of data: the other side's write of that file commits without a conflict,
/// whichever side holds the copy.
#[test]
fn a_copy_that_wrote_nothing_is_no_conflict() {
    let core = core();
    let (main, child) = forked(&core);
    open_and_close(&core, main, "dir/a");
    put(&core, child, "dir/a", b"a-child");
    open_and_close(&core, child, "top");
    put(&core, main, "top", b"t-parent");
    let r = commit(&core, child);
    assert!(r.committed && r.conflicts.is_empty(), "{r:?}");
    assert_eq!(text(&core, main, "dir/a").unwrap(), "a-child");
    assert_eq!(text(&core, main, "top").unwrap(), "t-parent");

    // A real write on both sides is still a conflict.
    let s = core.snapshot_create(main, None).unwrap();
    let child = core.branch_create(s.id, None).unwrap().id;
    put(&core, child, "dir/b", b"b-child");
    put(&core, main, "dir/b", b"b-main");
    let r = commit(&core, child);
    assert!(!r.committed && r.conflicts.len() == 1, "{r:?}");
}

/// A copy that holds the base's bytes is no change against a deletion on
/// the other side either, whichever side holds the copy. Both ways of making
/// one: an open for writing that wrote nothing, and a snapshot taken while
/// a writer held the file open (the writer had finished; the kernel sends
/// RELEASE a moment after `close(2)` returns, so a snapshot can land there).
#[test]
fn a_copy_that_wrote_nothing_against_a_delete_is_no_conflict() {
    let core = core();
    let (main, child) = forked(&core);
    let ctx = Ctx::root();
    open_and_close(&core, main, "dir/a");
    rm(&core, child, "dir/a");
    open_and_close(&core, child, "top");
    rm(&core, main, "top");
    let r = commit(&core, child);
    assert!(r.committed && r.conflicts.is_empty(), "{r:?}");
    assert!(find(&core, main, "dir/a").is_none());
    assert!(find(&core, main, "top").is_none());
    assert_eq!(text(&core, main, "dir/b").unwrap(), "b0");

    let id = find(&core, main, "dir/b").unwrap();
    let fh = core.open(&ctx, main, id, RW).unwrap();
    core.write(&ctx, fh, 0, b"b1").unwrap();
    let s = core.snapshot_create(main, None).unwrap();
    core.release(fh).unwrap();
    let child = core.branch_create(s.id, None).unwrap().id;
    rm(&core, child, "dir/b");
    let r = commit(&core, child);
    assert!(r.committed && r.conflicts.is_empty(), "{r:?}");
    assert!(find(&core, main, "dir/b").is_none());

    // A real write against a delete is still a conflict, even of the same
    // length.
    put(&core, main, "dir/c", b"c0");
    let s = core.snapshot_create(main, None).unwrap();
    let child = core.branch_create(s.id, None).unwrap().id;
    rm(&core, child, "dir/c");
    put(&core, main, "dir/c", b"c1");
    let r = commit(&core, child);
    assert!(!r.committed, "{r:?}");
    assert_eq!(
        r.conflicts,
        vec![Conflict {
            path: "dir/c".into(),
            child: Change::Deleted,
            parent: Change::Modified
        }]
    );
}
