//! Diff on an in-memory core: each kind of change, nested directories, hard
//! links, unchanged views, paths that are not UTF-8, hints surviving a
//! remount, and the work a diff does on a large tree with few changes.

use super::{path_text, DiffChange, DiffKind, DiffStats, EntryType, ViewRef};
use crate::backstore::mem::MemBackstore;
use crate::backstore::Backstore;
use crate::test_support::{config, core, n, RW};
use crate::{BranchId, Ctx, FsCore, MemStore, MetaStore, NodeId, RenameFlags, SetAttr};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

fn find(core: &FsCore, b: BranchId, path: &str) -> NodeId {
    let mut id = NodeId::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        id = core.lookup(&Ctx::root(), b, id, n(part)).expect(path).node;
    }
    id
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn put(core: &FsCore, b: BranchId, path: &str, data: &[u8]) {
    let (dir, name) = split(path);
    let parent = find(core, b, dir);
    let ctx = Ctx::root();
    let fh = match core.lookup(&ctx, b, parent, n(name)) {
        Ok(a) => core.open(&ctx, b, a.node, RW).unwrap(),
        Err(_) => {
            core.create(&ctx, b, parent, n(name), 0o644, 0, RW, false)
                .unwrap()
                .1
        }
    };
    core.write(&ctx, fh, 0, data).unwrap();
    core.release(fh).unwrap();
}

fn mkdir(core: &FsCore, b: BranchId, path: &str) {
    let (dir, name) = split(path);
    let parent = find(core, b, dir);
    core.mkdir(&Ctx::root(), b, parent, n(name), 0o755, 0)
        .unwrap();
}

fn rm(core: &FsCore, b: BranchId, path: &str) {
    let (dir, name) = split(path);
    core.unlink(&Ctx::root(), b, find(core, b, dir), n(name))
        .unwrap();
}

fn rmdir(core: &FsCore, b: BranchId, path: &str) {
    let (dir, name) = split(path);
    core.rmdir(&Ctx::root(), b, find(core, b, dir), n(name))
        .unwrap();
}

fn mv(core: &FsCore, b: BranchId, from: &str, to: &str) {
    let (fd, fname) = split(from);
    let (td, tname) = split(to);
    let (fd, td) = (find(core, b, fd), find(core, b, td));
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

fn chmod(core: &FsCore, b: BranchId, path: &str, mode: u32) {
    let set = SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    };
    core.setattr(&Ctx::root(), b, find(core, b, path), &set)
        .unwrap();
}

/// Snapshot of `main` and a branch from it.
fn fork(core: &FsCore) -> (ViewRef, BranchId) {
    let main = core.default_branch();
    let s = core.snapshot_create(main, Some("base".into())).unwrap();
    let b = core.branch_create(s.id, Some("work".into())).unwrap();
    (ViewRef::Snapshot(s.id), b.id)
}

/// The diff as `KIND path` lines (`R from -> to`, `T path old->new`, `M path [what]`).
fn lines(core: &FsCore, a: ViewRef, b: ViewRef) -> Vec<String> {
    core.diff(a, b).unwrap().iter().map(line).collect()
}

fn line(c: &DiffChange) -> String {
    match c.change {
        DiffKind::Added => format!("A {}", c.path),
        DiffKind::Deleted => format!("D {}", c.path),
        DiffKind::Modified => format!("M {} {:?}", c.path, c.what),
        DiffKind::Renamed => format!(
            "R {} -> {} {:?}",
            c.from.as_deref().unwrap_or("?"),
            c.path,
            c.what
        ),
        DiffKind::TypeChanged => {
            format!("T {} {:?}->{:?}", c.path, c.old_type.unwrap(), c.entry_type)
        }
    }
}

/// A base tree: `a`, `dir/b`, `dir/sub/c`, `keep`.
fn base(core: &FsCore) {
    let main = core.default_branch();
    put(core, main, "a", b"a");
    mkdir(core, main, "dir");
    put(core, main, "dir/b", b"b");
    mkdir(core, main, "dir/sub");
    put(core, main, "dir/sub/c", b"c");
    put(core, main, "keep", b"k");
}

#[test]
fn unchanged_views_give_an_empty_diff() {
    let core = core();
    base(&core);
    let (snap, work) = fork(&core);
    let work = ViewRef::Branch(work);
    assert_eq!(core.diff(snap, work).unwrap(), vec![]);
    assert_eq!(core.diff(work, snap).unwrap(), vec![]);
    assert_eq!(core.diff(snap, snap).unwrap(), vec![]);
    // Reading a file changes nothing a diff reports.
    let id = find(&core, core.default_branch(), "a");
    let fh = core
        .open(&Ctx::root(), core.default_branch(), id, RW)
        .unwrap();
    core.read(fh, 0, 10).unwrap();
    core.release(fh).unwrap();
    let main = ViewRef::Branch(core.default_branch());
    // Opened for writing (its object copied), not a byte changed.
    assert_eq!(core.diff(snap, main).unwrap(), vec![]);
    // The same size, another byte: found by comparing the bytes.
    put(&core, core.default_branch(), "a", b"x");
    let (changes, st) = core.diff_with_stats(snap, main).unwrap();
    assert_eq!(
        changes.iter().map(line).collect::<Vec<_>>(),
        vec!["M a [Data]"]
    );
    assert_eq!(st.bytes_compared, 2);
}

#[test]
fn add_modify_delete_in_nested_directories() {
    let core = core();
    base(&core);
    let (snap, w) = fork(&core);
    put(&core, w, "dir/sub/c", b"changed");
    put(&core, w, "dir/sub/new", b"n");
    mkdir(&core, w, "dir/sub/deeper");
    put(&core, w, "dir/sub/deeper/f", b"f");
    rm(&core, w, "dir/b");
    rm(&core, w, "a");
    assert_eq!(
        lines(&core, snap, ViewRef::Branch(w)),
        vec![
            "D a",
            "D dir/b",
            "M dir/sub/c [Data]",
            "A dir/sub/deeper",
            "A dir/sub/deeper/f",
            "A dir/sub/new",
        ]
    );
    // The other way round, additions are deletions.
    assert_eq!(
        lines(&core, ViewRef::Branch(w), snap),
        vec![
            "A a",
            "A dir/b",
            "M dir/sub/c [Data]",
            "D dir/sub/deeper",
            "D dir/sub/deeper/f",
            "D dir/sub/new",
        ]
    );
}

#[test]
fn renames_of_files_and_directories() {
    let core = core();
    base(&core);
    let (snap, w) = fork(&core);
    mv(&core, w, "a", "dir/sub/a2");
    mv(&core, w, "dir/sub", "moved");
    put(&core, w, "moved/c", b"also changed");
    assert_eq!(
        lines(&core, snap, ViewRef::Branch(w)),
        vec![
            "R dir/sub -> moved []",
            "R a -> moved/a2 []",
            "M moved/c [Data]",
        ]
    );
}

#[test]
fn chmod_symlink_xattr_and_times() {
    let core = core();
    base(&core);
    let main = core.default_branch();
    core.symlink(&Ctx::root(), main, NodeId::ROOT, n("ln"), b"a")
        .unwrap();
    let (snap, w) = fork(&core);
    chmod(&core, w, "a", 0o600);
    chmod(&core, w, "dir", 0o700);
    core.setxattr(
        &Ctx::root(),
        w,
        find(&core, w, "keep"),
        n("user.k"),
        b"v",
        crate::XattrSet::Any,
    )
    .unwrap();
    rm(&core, w, "ln");
    core.symlink(&Ctx::root(), w, NodeId::ROOT, n("ln"), b"keep")
        .unwrap();
    let touch = SetAttr {
        mtime: Some(crate::SetTime::Now),
        ..SetAttr::default()
    };
    std::thread::sleep(std::time::Duration::from_millis(2));
    core.setattr(&Ctx::root(), w, find(&core, w, "dir/b"), &touch)
        .unwrap();
    assert_eq!(
        lines(&core, snap, ViewRef::Branch(w)),
        vec![
            "M a [Mode]",
            "M dir [Mode]",
            "M dir/b [Times]",
            "M keep [Xattrs]",
            "M ln [Replaced]",
        ]
    );
}

#[test]
fn type_changes_and_replacement_by_rename() {
    let core = core();
    base(&core);
    let (snap, w) = fork(&core);
    rm(&core, w, "a");
    mkdir(&core, w, "a");
    rm(&core, w, "dir/sub/c");
    rmdir(&core, w, "dir/sub");
    put(&core, w, "dir/sub", b"now a file");
    // An editor's save: write a new file, rename it over the old one.
    put(&core, w, "keep.tmp", b"saved");
    mv(&core, w, "keep.tmp", "keep");
    assert_eq!(
        lines(&core, snap, ViewRef::Branch(w)),
        vec![
            "T a File->Dir",
            "T dir/sub Dir->File",
            "D dir/sub/c",
            "M keep [Replaced]",
        ]
    );
}

#[test]
fn hard_links() {
    let core = core();
    base(&core);
    let (snap, w) = fork(&core);
    let ctx = Ctx::root();
    let a = find(&core, w, "a");
    core.link(&ctx, w, a, find(&core, w, "dir"), n("a-link"))
        .unwrap();
    assert_eq!(lines(&core, snap, ViewRef::Branch(w)), vec!["A dir/a-link"]);
    // Remove the name the hint points at, then change the data: the path
    // is still found (by one walk), under the remaining name.
    let s2 = core.snapshot_create(w, Some("linked".into())).unwrap();
    rm(&core, w, "dir/a-link");
    put(&core, w, "a", b"changed through the other name");
    let (changes, st) = core
        .diff_with_stats(ViewRef::Snapshot(s2.id), ViewRef::Branch(w))
        .unwrap();
    assert_eq!(
        changes.iter().map(line).collect::<Vec<_>>(),
        vec!["M a [Data]", "D dir/a-link"]
    );
    assert_eq!(st.tree_walks, 1);
}

#[test]
fn paths_that_are_not_utf8_are_escaped() {
    assert_eq!(path_text(b"plain/\xc3\xa9t\xc3\xa9"), "plain/été");
    assert_eq!(path_text(b"bad\xff\\x"), "bad\\xff\\\\x");
    let core = core();
    let (snap, w) = fork(&core);
    let ctx = Ctx::root();
    core.create(
        &ctx,
        w,
        NodeId::ROOT,
        OsStr::from_bytes(b"n\xfe"),
        0o644,
        0,
        RW,
        false,
    )
    .unwrap();
    let d = core.diff(snap, ViewRef::Branch(w)).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].path, "n\\xfe");
    assert_eq!(d[0].entry_type, EntryType::File);
    let json = serde_json_like(&d[0]);
    assert!(json.contains("added"), "{json}");
}

/// A stable text form without a JSON dependency in this crate.
fn serde_json_like(c: &DiffChange) -> String {
    format!("{c:?}").to_lowercase()
}

#[test]
fn views_resolve_by_name_or_id_and_refuse_ambiguity() {
    let core = core();
    let (snap, w) = fork(&core);
    assert_eq!(core.find_view("work").unwrap(), ViewRef::Branch(w));
    assert_eq!(core.find_view("base").unwrap(), snap);
    assert_eq!(
        core.find_view("main").unwrap(),
        ViewRef::Branch(core.default_branch())
    );
    assert_eq!(core.find_view(&w.to_string()).unwrap(), ViewRef::Branch(w));
    // `1` is both branch b1 and snapshot s1.
    assert!(core.find_view("1").is_err());
    assert!(core.find_view("nope").is_err());
}

#[test]
fn name_hints_survive_a_remount() {
    let objects = Arc::new(MemBackstore::new());
    let open = |store: &Arc<MemStore>| {
        FsCore::open_persisted(
            Arc::clone(&objects) as Arc<dyn Backstore>,
            Arc::clone(store) as Arc<dyn MetaStore>,
            config(),
        )
        .expect("open")
        .0
    };
    let store = Arc::new(MemStore::new());
    let core = open(&store);
    let main = core.default_branch();
    mkdir(&core, main, "d");
    put(&core, main, "d/f", b"1");
    core.snapshot_create(main, Some("s".into())).unwrap();
    put(&core, main, "d/f", b"2");
    core.sync_all().unwrap();
    // As after a crash: the journal is replayed onto the checkpoint.
    let image = Arc::new(store.image(None));
    drop(core);
    let core = open(&image);
    let snap = core.find_view("s").unwrap();
    let (changes, st) = core
        .diff_with_stats(snap, ViewRef::Branch(core.default_branch()))
        .unwrap();
    assert_eq!(
        changes.iter().map(line).collect::<Vec<_>>(),
        vec!["M d/f [Data]"]
    );
    assert_eq!(st.tree_walks, 0, "the hint was lost: {st:?}");
    // And through a checkpoint (a clean unmount writes one).
    drop(core);
    let core = open(&image);
    drop(core);
    let core = open(&image);
    let snap = core.find_view("s").unwrap();
    let (_, st) = core
        .diff_with_stats(snap, ViewRef::Branch(core.default_branch()))
        .unwrap();
    assert_eq!(st.tree_walks, 0, "the hint was lost: {st:?}");
}

/// 100,000 files in 100 directories, 3 changes: the diff reads a few dozen
/// nodes, not the tree. Fails if the diff walks the tree.
#[test]
fn work_follows_the_changes_not_the_tree() {
    let core = core();
    let main = core.default_branch();
    build_flat(&core, main, 100, 1000);
    let (snap, w) = fork(&core);
    put(&core, w, "d7/f7", b"x");
    chmod(&core, w, "d50/f3", 0o600);
    rm(&core, w, "d99/f999");
    let (changes, st) = core.diff_with_stats(snap, ViewRef::Branch(w)).unwrap();
    assert_eq!(
        changes.iter().map(line).collect::<Vec<_>>(),
        vec!["M d50/f3 [Mode]", "M d7/f7 [Data]", "D d99/f999"]
    );
    assert_eq!(st.tree_walks, 0, "{st:?}");
    assert!(st.changed_nodes <= 4, "{st:?}");
    assert!(st.nodes_read < 50, "{st:?}");
    assert!(st.entries_read < 10, "{st:?}");
    let all: DiffStats = st;
    assert!(all.nodes_read + all.entries_read < 100);
}

/// `dirs` directories `d<i>` of `files` empty files `f<j>` each, built
/// directly in the tree (the POSIX path would take a while at this size).
pub(crate) fn build_flat(core: &FsCore, b: BranchId, dirs: u64, files: u64) {
    use crate::fs::tree::{Body, Meta, Name, NameHint, Node};
    use crate::FileKind;
    let branch = core.branch(b).unwrap();
    let mut t = branch.tree.write();
    let mut root = t.edit(NodeId::ROOT).unwrap();
    for d in 0..dirs {
        let did = core.new_node_id();
        let mut entries = imbl::OrdMap::new();
        for f in 0..files {
            let fid = core.new_node_id();
            let name: Name = format!("f{f}").into_bytes().into();
            let mut meta = Meta::new(FileKind::RegularFile, 0o644, 0, 0);
            meta.hint = Some(NameHint {
                parent: did,
                name: name.clone(),
            });
            t.insert(
                fid,
                Node {
                    meta,
                    body: Body::File { content: None },
                    xattrs: None,
                },
            );
            entries.insert(name, fid);
        }
        let name: Name = format!("d{d}").into_bytes().into();
        let mut meta = Meta::new(FileKind::Directory, 0o755, 0, 0);
        meta.nlink = 2;
        meta.hint = Some(NameHint {
            parent: NodeId::ROOT,
            name: name.clone(),
        });
        t.insert(
            did,
            Node {
                meta,
                body: Body::Dir {
                    entries,
                    parent: NodeId::ROOT,
                    lower: None,
                },
                xattrs: None,
            },
        );
        if let Body::Dir { entries, .. } = &mut root.body {
            entries.insert(name, did);
        }
        root.meta.nlink += 1;
    }
    t.insert(NodeId::ROOT, root);
}

/// Diff at a million files with 10 changes, against a walk of the whole tree
/// (what a diff that does not skip shared parts would at least cost) in the
/// same run. Prints figures; asserts only what the diff found. Run:
/// `cargo test --release -p agentfs-core --lib diff_speed_at_a_million_files
/// -- --ignored --nocapture`.
#[test]
#[ignore]
fn diff_speed_at_a_million_files() {
    let core = core();
    let main = core.default_branch();
    let t0 = std::time::Instant::now();
    build_flat(&core, main, 1000, 1000);
    let built = t0.elapsed();
    let (snap, w) = fork(&core);
    for i in 0..4 {
        put(&core, w, &format!("d{}/f{}", i * 100, i), b"changed");
    }
    for i in 0..2 {
        chmod(&core, w, &format!("d{}/f{}", 500 + i, i), 0o600);
    }
    rm(&core, w, "d900/f900");
    mkdir(&core, w, "d1/new");
    mv(&core, w, "d2/f2", "d1/new/f2");
    put(&core, w, "d999/added", b"a");
    let view = ViewRef::Branch(w);
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..9 {
        let t = std::time::Instant::now();
        let r = core.diff_with_stats(snap, view).unwrap();
        times.push(t.elapsed());
        last = Some(r);
    }
    let (changes, st) = last.unwrap();
    assert_eq!(changes.len(), 10, "{changes:#?}");
    times.sort();
    let t = std::time::Instant::now();
    let walked = {
        let branch = core.branch(w).unwrap();
        let tree = branch.tree.read().clone();
        let mut p = super::Paths::new(&tree);
        let mut s = DiffStats::default();
        p.walk(&mut s).len()
    };
    let walk = t.elapsed();
    println!(
        "diff_speed: 1,000,000 files in 1,000 directories (built in {:.2?}), 10 changes: \
         diff median {:.1?} (min {:.1?}, max {:.1?}, 9 runs); changed_nodes {}, nodes_read {}, \
         entries_read {}, tree_walks {}, bytes_compared {}; one walk of the tree ({walked} \
         nodes) {:.1?}, {:.0}x the diff",
        built,
        times[4],
        times[0],
        times[8],
        st.changed_nodes,
        st.nodes_read,
        st.entries_read,
        st.tree_walks,
        st.bytes_compared,
        walk,
        walk.as_secs_f64() / times[4].as_secs_f64()
    );
    for c in &changes {
        println!("  {}", line(c));
    }
}

/// On an overlay, a lower file written in a branch (copied up) is named by
/// its hint, without a walk, and directories read on one side only are read
/// on both, so they are no change.
#[test]
fn overlay_copy_up_is_found_without_a_walk() {
    let lower_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(lower_dir.path().join("src/deep")).unwrap();
    std::fs::write(lower_dir.path().join("src/deep/a.rs"), b"fn a() {}\n").unwrap();
    std::fs::write(lower_dir.path().join("src/b.rs"), b"fn b() {}\n").unwrap();
    let core = FsCore::open_persisted(
        Arc::new(MemBackstore::new()) as Arc<dyn Backstore>,
        Arc::new(MemStore::new()) as Arc<dyn MetaStore>,
        config(),
    )
    .unwrap()
    .0;
    let lower = Arc::new(crate::Lower::open(lower_dir.path()).unwrap());
    core.attach_lower(Arc::clone(&lower)).unwrap();
    let (snap, w) = fork(&core);
    put(&core, w, "src/deep/a.rs", b"fn a() { changed }\n");
    chmod(&core, w, "src/b.rs", 0o600);
    let (changes, st) = core.diff_with_stats(snap, ViewRef::Branch(w)).unwrap();
    assert_eq!(
        changes.iter().map(line).collect::<Vec<_>>(),
        vec!["M src/b.rs [Mode]", "M src/deep/a.rs [Data]"]
    );
    assert_eq!(st.tree_walks, 0, "{st:?}");
}

/// Review of issue 6: a file given a second name and then written is
/// modified at the name it had before; the diff reported the change at the
/// new name only (the name hint follows the last link), so the old name
/// looked unchanged and `export` left its old bytes on the host.
#[test]
fn review_a_file_linked_then_written_is_modified_at_its_old_name() {
    let core = core();
    base(&core);
    let (snap, w) = fork(&core);
    let ctx = Ctx::root();
    let a = find(&core, w, "a");
    core.link(&ctx, w, a, find(&core, w, "dir"), n("a-link"))
        .unwrap();
    put(&core, w, "dir/a-link", b"written through the new name");
    assert_eq!(
        lines(&core, snap, ViewRef::Branch(w)),
        vec!["M a [Data]", "A dir/a-link"]
    );
}

/// Review of issue 6: a file with two names in both views, written, was
/// reported modified at one name only (its hint), so `export` rewrote one
/// host file and left the other name's old bytes.
#[test]
fn review_a_modified_file_with_two_names_is_reported_at_both() {
    let core = core();
    base(&core);
    let main = core.default_branch();
    let ctx = Ctx::root();
    let a = find(&core, main, "a");
    core.link(&ctx, main, a, find(&core, main, "dir"), n("a-link"))
        .unwrap();
    let (snap, w) = fork(&core);
    put(&core, w, "a", b"changed");
    assert_eq!(
        lines(&core, snap, ViewRef::Branch(w)),
        vec!["M a [Data]", "M dir/a-link [Data]"]
    );
}
