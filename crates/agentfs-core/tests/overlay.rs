//! Overlay mounts in FsCore: a temporary lower directory under a persisted
//! core (in-memory journal and objects). Reads come from the lower directory,
//! the first write copies up, metadata changes copy nothing, unlinks hide,
//! rmdir + mkdir makes an opaque directory, snapshots and branches isolate,
//! a remount (clean or after a crash) goes on, and the lower directory is
//! never changed.

use agentfs_core::backstore::mem::MemBackstore;
use agentfs_core::{
    Backstore, BranchId, CoreConfig, Ctx, FileKind, FsCore, FsError, Lower, MemStore, MetaStore,
    NodeId, OpenFlags, ProcFs, SetAttr,
};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

const RO: OpenFlags = OpenFlags {
    read: true,
    write: false,
    append: false,
    truncate: false,
};
const RW: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
};

fn n(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The lower directory every test starts from.
fn make_lower(dir: &Path) {
    std::fs::create_dir_all(dir.join("src/deep/er")).unwrap();
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("README"), b"read me\n").unwrap();
    std::fs::write(dir.join("src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(dir.join("src/lib.rs"), vec![7u8; 300_000]).unwrap();
    std::fs::write(dir.join("src/deep/er/leaf.txt"), b"leaf").unwrap();
    std::fs::write(dir.join("docs/a.md"), b"a").unwrap();
    std::fs::write(dir.join("docs/b.md"), b"b").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::set_permissions(dir.join("README"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("src/main.rs", dir.join("link")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("docs/pipe").into_os_string().into_encoded_bytes())
        .unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
}

/// Every path of `dir` with its type, mode, size, mtime and bytes.
fn fingerprint(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let body = if m.is_dir() {
                stack.push(p.clone());
                String::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else if m.is_file() {
                format!("{:?}", std::fs::read(&p).unwrap())
            } else {
                String::new() // A FIFO: attributes only.
            };
            let line = format!(
                "{:o} {} {} {}.{} {body}",
                m.mode(),
                m.uid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            );
            out.insert(rel, line);
        }
    }
    out
}

struct Overlay {
    core: FsCore,
    objects: Arc<MemBackstore>,
    store: Arc<MemStore>,
    ctx: Ctx,
    _lower: Arc<Lower>,
}

fn mount(objects: &Arc<MemBackstore>, store: MemStore, lower: &Path) -> (Overlay, bool) {
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
    let l = Arc::new(Lower::open(lower).unwrap());
    let fresh = core.attach_lower(Arc::clone(&l)).unwrap();
    (
        Overlay {
            core,
            objects: Arc::clone(objects),
            store,
            ctx: Ctx::root(),
            _lower: l,
        },
        fresh,
    )
}

impl Overlay {
    fn main(&self) -> BranchId {
        self.core.default_branch()
    }

    fn resolve(&self, b: BranchId, path: &str) -> agentfs_core::FsResult<agentfs_core::Attr> {
        let mut attr = self.core.getattr(b, NodeId::ROOT)?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            attr = self.core.lookup(&self.ctx, b, attr.node, n(part))?;
        }
        Ok(attr)
    }

    fn parent(&self, b: BranchId, path: &str) -> (NodeId, String) {
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
        (self.resolve(b, dir).unwrap().node, base.to_string())
    }

    fn read(&self, b: BranchId, path: &str) -> agentfs_core::FsResult<Vec<u8>> {
        let attr = self.resolve(b, path)?;
        let fh = self.core.open(&self.ctx, b, attr.node, RO)?;
        let data = self.core.read(fh, 0, u32::MAX);
        self.core.release(fh)?;
        data
    }

    fn write_at(&self, b: BranchId, path: &str, offset: u64, data: &[u8]) {
        let attr = self.resolve(b, path).unwrap();
        let fh = self.core.open(&self.ctx, b, attr.node, RW).unwrap();
        self.core.write(&self.ctx, fh, offset, data).unwrap();
        self.core.release(fh).unwrap();
    }

    fn names(&self, b: BranchId, path: &str) -> Vec<String> {
        let dir = self.resolve(b, path).unwrap();
        let fh = self.core.opendir(&self.ctx, b, dir.node).unwrap();
        let entries = self.core.readdir(fh, 0, usize::MAX).unwrap();
        self.core.releasedir(fh).unwrap();
        let mut names: Vec<String> = entries
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .filter(|s| s != "." && s != "..")
            .collect();
        names.sort();
        names
    }

    fn unlink(&self, b: BranchId, path: &str) -> agentfs_core::FsResult<()> {
        let (p, name) = self.parent(b, path);
        self.core.unlink(&self.ctx, b, p, n(&name))
    }

    fn rmdir(&self, b: BranchId, path: &str) -> agentfs_core::FsResult<()> {
        let (p, name) = self.parent(b, path);
        self.core.rmdir(&self.ctx, b, p, n(&name))
    }

    fn mkdir(&self, b: BranchId, path: &str) {
        let (p, name) = self.parent(b, path);
        self.core
            .mkdir(&self.ctx, b, p, n(&name), 0o755, 0)
            .unwrap();
    }

    fn objects(&self) -> u64 {
        self.core.usage().objects
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn reads_come_from_the_lower_directory_with_its_attributes() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let (o, fresh) = mount(
        &Arc::new(MemBackstore::new()),
        MemStore::new(),
        lower.path(),
    );
    assert!(fresh);
    let b = o.main();
    assert_eq!(
        o.names(b, ""),
        strs(&["README", "docs", "empty", "link", "src"])
    );
    assert_eq!(o.read(b, "README").unwrap(), b"read me\n");
    assert_eq!(o.read(b, "src/lib.rs").unwrap(), vec![7u8; 300_000]);
    assert_eq!(o.read(b, "src/deep/er/leaf.txt").unwrap(), b"leaf");
    assert_eq!(o.read(b, "empty").unwrap(), b"");
    let readme = o.resolve(b, "README").unwrap();
    let host = std::fs::metadata(lower.path().join("README")).unwrap();
    assert_eq!(readme.perm, 0o640);
    assert_eq!(readme.uid, host.uid());
    assert_eq!(readme.size, 8);
    assert_eq!(
        readme.mtime,
        std::time::UNIX_EPOCH
            + std::time::Duration::new(host.mtime() as u64, host.mtime_nsec() as u32)
    );
    let link = o.resolve(b, "link").unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(o.core.readlink(b, link.node).unwrap(), b"src/main.rs");
    let pipe = o.resolve(b, "docs/pipe").unwrap();
    assert_eq!((pipe.kind, pipe.perm), (FileKind::NamedPipe, 0o640));
    let src = o.resolve(b, "src").unwrap();
    assert_eq!(src.kind, FileKind::Directory);
    assert_eq!(src.nlink, 3, "src holds one subdirectory");
    // Nothing was copied into the backstore by reading.
    assert_eq!(o.objects(), 0);
}

#[test]
fn first_write_copies_up_and_metadata_changes_copy_nothing() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let before = fingerprint(lower.path());
    let (o, _) = mount(
        &Arc::new(MemBackstore::new()),
        MemStore::new(),
        lower.path(),
    );
    let b = o.main();

    // chmod, chown, utimens and an xattr: no data copied.
    let readme = o.resolve(b, "README").unwrap().node;
    let set = SetAttr {
        mode: Some(0o600),
        uid: Some(4242),
        mtime: Some(agentfs_core::SetTime::At(std::time::UNIX_EPOCH)),
        ..SetAttr::default()
    };
    o.core.setattr(&o.ctx, b, readme, &set).unwrap();
    o.core
        .setxattr(
            &o.ctx,
            b,
            readme,
            n("user.k"),
            b"v",
            agentfs_core::XattrSet::Any,
        )
        .unwrap();
    assert_eq!(o.objects(), 0, "metadata changes copy no data");
    let a = o.resolve(b, "README").unwrap();
    assert_eq!((a.perm, a.uid), (0o600, 4242));
    assert_eq!(o.read(b, "README").unwrap(), b"read me\n");

    // The first write copies up; the rest of the file is the lower's.
    o.write_at(b, "src/lib.rs", 10, b"XY");
    assert_eq!(o.objects(), 1);
    let mut want = vec![7u8; 300_000];
    want[10..12].copy_from_slice(b"XY");
    assert_eq!(o.read(b, "src/lib.rs").unwrap(), want);
    o.write_at(b, "src/lib.rs", 0, b"Z");
    assert_eq!(o.objects(), 1, "a second write copies nothing more");

    // Truncate to a shorter length copies up; to zero copies nothing.
    let main_rs = o.resolve(b, "src/main.rs").unwrap().node;
    let shorter = SetAttr {
        size: Some(2),
        ..SetAttr::default()
    };
    o.core.setattr(&o.ctx, b, main_rs, &shorter).unwrap();
    assert_eq!(o.read(b, "src/main.rs").unwrap(), b"fn");
    assert_eq!(o.objects(), 2);
    let leaf = o.resolve(b, "src/deep/er/leaf.txt").unwrap().node;
    let zero = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    o.core.setattr(&o.ctx, b, leaf, &zero).unwrap();
    assert_eq!(o.read(b, "src/deep/er/leaf.txt").unwrap(), b"");
    assert_eq!(o.objects(), 2);

    assert_eq!(
        fingerprint(lower.path()),
        before,
        "the lower directory changed"
    );
}

#[test]
fn unlink_hides_and_rmdir_mkdir_makes_an_opaque_directory() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let before = fingerprint(lower.path());
    let (o, _) = mount(
        &Arc::new(MemBackstore::new()),
        MemStore::new(),
        lower.path(),
    );
    let b = o.main();

    o.unlink(b, "README").unwrap();
    assert!(matches!(o.resolve(b, "README"), Err(FsError::NotFound)));
    assert!(!o.names(b, "").contains(&"README".to_string()));

    // A lower directory with entries is not empty, even unread.
    assert!(matches!(o.rmdir(b, "docs"), Err(FsError::NotEmpty)));
    assert!(matches!(o.rmdir(b, "src/deep"), Err(FsError::NotEmpty)));
    o.unlink(b, "docs/a.md").unwrap();
    o.unlink(b, "docs/b.md").unwrap();
    o.unlink(b, "docs/pipe").unwrap();
    o.rmdir(b, "docs").unwrap();
    o.mkdir(b, "docs");
    assert!(o.names(b, "docs").is_empty(), "old lower entries came back");
    assert!(matches!(o.resolve(b, "docs/a.md"), Err(FsError::NotFound)));

    // A rename over a lower directory needs it empty too; a rename of one moves it whole.
    let root = NodeId::ROOT;
    let renamed = o.core.rename(
        &o.ctx,
        b,
        root,
        n("docs"),
        root,
        n("src"),
        agentfs_core::RenameFlags::default(),
    );
    assert!(matches!(renamed, Err(FsError::NotEmpty)));
    o.core
        .rename(
            &o.ctx,
            b,
            root,
            n("src"),
            root,
            n("moved"),
            agentfs_core::RenameFlags::default(),
        )
        .unwrap();
    assert_eq!(o.read(b, "moved/deep/er/leaf.txt").unwrap(), b"leaf");
    assert_eq!(
        fingerprint(lower.path()),
        before,
        "the lower directory changed"
    );
}

#[test]
fn snapshots_and_branches_isolate_on_an_overlay() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let before = fingerprint(lower.path());
    let (o, _) = mount(
        &Arc::new(MemBackstore::new()),
        MemStore::new(),
        lower.path(),
    );
    let main = o.main();
    // Read part of the tree before the snapshot, leave `docs` unread.
    assert_eq!(o.read(main, "src/main.rs").unwrap(), b"fn main() {}\n");
    let snap = o.core.snapshot_create(main, Some("base".into())).unwrap();
    let feature = o
        .core
        .branch_create(snap.id, Some("feature".into()))
        .unwrap()
        .id;

    o.write_at(main, "src/main.rs", 0, b"MAIN");
    o.unlink(main, "docs/a.md").unwrap();
    o.write_at(feature, "docs/b.md", 0, b"B");

    assert_eq!(o.read(feature, "src/main.rs").unwrap(), b"fn main() {}\n");
    assert_eq!(o.read(feature, "docs/a.md").unwrap(), b"a");
    assert_eq!(o.read(feature, "docs/b.md").unwrap(), b"B");
    assert_eq!(o.read(main, "src/main.rs").unwrap(), b"MAINain() {}\n");
    assert!(matches!(
        o.resolve(main, "docs/a.md"),
        Err(FsError::NotFound)
    ));
    assert_eq!(o.read(main, "docs/b.md").unwrap(), b"b");

    // Deleting the branch frees its copy and no lower file.
    o.core.branch_delete(feature, true).unwrap();
    o.core.snapshot_delete(snap.id).unwrap();
    assert_eq!(o.objects(), 1);
    assert_eq!(
        fingerprint(lower.path()),
        before,
        "the lower directory changed"
    );
}

#[test]
fn a_remount_goes_on_after_a_clean_unmount_and_after_a_crash() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let before = fingerprint(lower.path());
    let objects = Arc::new(MemBackstore::new());
    let (o, _) = mount(&objects, MemStore::new(), lower.path());
    let b = o.main();
    o.write_at(b, "src/main.rs", 0, b"EDIT");
    o.unlink(b, "docs/a.md").unwrap();
    let readme = o.resolve(b, "README").unwrap().node;
    let chmod = SetAttr {
        mode: Some(0o604),
        ..SetAttr::default()
    };
    o.core.setattr(&o.ctx, b, readme, &chmod).unwrap();
    let node_of_leaf = o.resolve(b, "src/deep/er/leaf.txt").unwrap().node;
    o.core.sync_all().unwrap();

    let check = |o: &Overlay| {
        let b = o.main();
        assert_eq!(o.read(b, "src/main.rs").unwrap(), b"EDITain() {}\n");
        assert!(matches!(o.resolve(b, "docs/a.md"), Err(FsError::NotFound)));
        assert_eq!(o.read(b, "docs/b.md").unwrap(), b"b");
        assert_eq!(o.resolve(b, "README").unwrap().perm, 0o604);
        assert_eq!(o.read(b, "README").unwrap(), b"read me\n");
        assert_eq!(
            o.resolve(b, "src/deep/er/leaf.txt").unwrap().node,
            node_of_leaf
        );
        assert_eq!(o.read(b, "src/lib.rs").unwrap(), vec![7u8; 300_000]);
    };

    // Crash: the store as it stands, the old core never closed.
    let image = o.store.image(None);
    let _keep = Arc::clone(&o.objects);
    std::mem::forget(o);
    let (o, fresh) = mount(&objects, image, lower.path());
    assert!(
        !fresh,
        "a used store must not start over from the lower directory"
    );
    check(&o);

    // Clean unmount: a checkpoint holds lower files and unread directories.
    o.core.checkpoint().unwrap();
    let image = o.store.image(None);
    drop(o);
    let (o, _) = mount(&objects, image, lower.path());
    check(&o);
    assert_eq!(
        fingerprint(lower.path()),
        before,
        "the lower directory changed"
    );
}

/// The low 32 bits of the lower inode number of `path`.
fn low_ino(lower: &Path, path: &str) -> u64 {
    std::fs::symlink_metadata(lower.join(path)).unwrap().ino() & 0xffff_ffff
}

#[test]
fn lower_entries_keep_the_low_bits_of_their_inode_numbers() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    std::fs::create_dir(lower.path().join("later")).unwrap();
    std::fs::hard_link(lower.path().join("README"), lower.path().join("docs/hard")).unwrap();
    let objects = Arc::new(MemBackstore::new());
    let (o, _) = mount(&objects, MemStore::new(), lower.path());
    let b = o.main();
    let id = |o: &Overlay, path: &str| o.resolve(b, path).unwrap().node;
    for path in [
        "README",
        "src",
        "src/lib.rs",
        "docs/pipe",
        "link",
        "docs/hard",
    ] {
        let node = id(&o, path);
        assert!(node.is_lower(), "{path}: {node}");
        assert_eq!(node.0 & 0xffff_ffff, low_ino(lower.path(), path), "{path}");
    }
    // Two names of one lower inode are two files, with two ids.
    assert_ne!(id(&o, "README"), id(&o, "docs/hard"));
    // Only loading happened: recovery must still see a used store, and the
    // ids taken.
    o.core.sync_all().unwrap();
    let image = o.store.image(None);
    let _keep = Arc::clone(&o.objects);
    std::mem::forget(o);
    let (o, fresh) = mount(&objects, image, lower.path());
    assert!(
        !fresh,
        "a store that only read lower directories is not new"
    );
    // A third name of the same inode, in a directory read only now.
    std::fs::hard_link(lower.path().join("README"), lower.path().join("later/hard")).unwrap();
    let third = id(&o, "later/hard");
    assert_eq!(third.0 & 0xffff_ffff, low_ino(lower.path(), "README"));
    assert_ne!(third, id(&o, "README"));
    assert_ne!(third, id(&o, "docs/hard"));
    // New files get ordinary ids; a copy-up keeps the lower id.
    let root = id(&o, "");
    let (created, fh) = o
        .core
        .create(&o.ctx, b, root, n("new"), 0o644, 0, RW, true)
        .unwrap();
    o.core.release(fh).unwrap();
    assert!(!created.node.is_lower());
    let main_rs = id(&o, "src/main.rs");
    o.write_at(b, "src/main.rs", 0, b"EDIT");
    assert_eq!(id(&o, "src/main.rs"), main_rs);
    o.core.checkpoint().unwrap();
    let image = o.store.image(None);
    drop(o);
    let (o, _) = mount(&objects, image, lower.path());
    assert_eq!(id(&o, "later/hard"), third);
    assert_eq!(o.read(b, "src/main.rs").unwrap(), b"EDITain() {}\n");
}

#[test]
fn a_heavy_workload_leaves_the_lower_directory_as_it_was() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    for i in 0..50 {
        std::fs::write(lower.path().join(format!("docs/f{i}")), vec![i as u8; 5000]).unwrap();
    }
    let before = fingerprint(lower.path());
    let (o, _) = mount(
        &Arc::new(MemBackstore::new()),
        MemStore::new(),
        lower.path(),
    );
    let b = o.main();
    for i in 0..50 {
        let path = format!("docs/f{i}");
        match i % 5 {
            0 => o.write_at(b, &path, 100, b"overwrite"),
            1 => o.unlink(b, &path).unwrap(),
            2 => {
                let node = o.resolve(b, &path).unwrap().node;
                let set = SetAttr {
                    mode: Some(0o777),
                    size: Some(7),
                    ..SetAttr::default()
                };
                o.core.setattr(&o.ctx, b, node, &set).unwrap();
            }
            3 => {
                let root = NodeId::ROOT;
                let docs = o.resolve(b, "docs").unwrap().node;
                o.core
                    .rename(
                        &o.ctx,
                        b,
                        docs,
                        n(&format!("f{i}")),
                        root,
                        n(&format!("top{i}")),
                        agentfs_core::RenameFlags::default(),
                    )
                    .unwrap();
                o.write_at(b, &format!("top{i}"), 4990, b"tail-extends");
            }
            _ => {
                let snap = o.core.snapshot_create(b, None).unwrap();
                o.write_at(b, &path, 0, b"after snapshot");
                let br = o.core.branch_create(snap.id, None).unwrap().id;
                o.write_at(br, &path, 0, b"in branch");
            }
        }
    }
    o.core.sync_all().unwrap();
    assert_eq!(
        fingerprint(lower.path()),
        before,
        "the lower directory changed"
    );
}

/// Reading a lower directory in one branch reads it in every tree where it
/// was unread, with the same nodes: a diff against a snapshot taken before
/// shows only real changes, node ids agree across branches, and a replay of
/// the journal (after a crash) gives the same trees.
#[test]
fn reading_a_lower_directory_is_no_change_in_any_tree() {
    use agentfs_core::{DiffKind, ViewRef};
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let objects = Arc::new(MemBackstore::new());
    let (o, _) = mount(&objects, MemStore::new(), lower.path());
    let main = o.main();
    let base = o
        .core
        .snapshot_create(main, Some("base".into()))
        .unwrap()
        .id;
    let feature = o
        .core
        .branch_create(base, Some("feature".into()))
        .unwrap()
        .id;

    // Only reads in feature, which reads the root and src: no change anywhere.
    assert_eq!(o.read(feature, "src/deep/er/leaf.txt").unwrap(), b"leaf");
    assert!(o
        .core
        .diff(ViewRef::Snapshot(base), ViewRef::Branch(feature))
        .unwrap()
        .is_empty());
    assert!(o
        .core
        .diff(ViewRef::Snapshot(base), ViewRef::Branch(main))
        .unwrap()
        .is_empty());
    let leaf = |o: &Overlay, b| o.resolve(b, "src/deep/er/leaf.txt").unwrap().node;
    assert_eq!(leaf(&o, main), leaf(&o, feature));

    // One edit in main: the diff names exactly it.
    o.write_at(main, "docs/b.md", 0, b"B");
    let changes = o
        .core
        .diff(ViewRef::Snapshot(base), ViewRef::Branch(main))
        .unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].path, "docs/b.md");
    assert_eq!(changes[0].change, DiffKind::Modified);
    assert!(o
        .core
        .diff(ViewRef::Snapshot(base), ViewRef::Branch(feature))
        .unwrap()
        .is_empty());

    // A branch made from the snapshot later shares what was read.
    let later = o.core.branch_create(base, Some("later".into())).unwrap().id;
    assert_eq!(leaf(&o, later), leaf(&o, main));

    // After a crash, the journal gives the same nodes in every tree.
    o.core.sync_all().unwrap();
    let ids = (
        leaf(&o, main),
        o.resolve(feature, "docs/b.md").unwrap().node,
    );
    let image = o.store.image(None);
    let _keep = Arc::clone(&o.objects);
    std::mem::forget(o);
    let (o, _) = mount(&objects, image, lower.path());
    let feature = o.core.find_branch("feature").unwrap();
    let later = o.core.find_branch("later").unwrap();
    assert_eq!(leaf(&o, o.main()), ids.0);
    assert_eq!(leaf(&o, feature), ids.0);
    assert_eq!(leaf(&o, later), ids.0);
    assert_eq!(o.resolve(feature, "docs/b.md").unwrap().node, ids.1);
    assert_eq!(o.read(feature, "docs/b.md").unwrap(), b"b");
    assert_eq!(o.read(o.main(), "docs/b.md").unwrap(), b"B");
    let base = o.core.find_snapshot("base").unwrap();
    let changes = o
        .core
        .diff(ViewRef::Snapshot(base), ViewRef::Branch(o.main()))
        .unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
}

/// `--lower-isolation copy`: after the import nothing comes from the lower
/// directory, so changing it changes nothing in AgentFS.
#[test]
fn import_makes_the_overlay_point_in_time() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let objects = Arc::new(MemBackstore::new());
    let (o, fresh) = mount(&objects, MemStore::new(), lower.path());
    assert!(fresh);
    let report = o.core.import_lower().unwrap();
    // Every non-empty file: README, main.rs, lib.rs, leaf.txt, a.md, b.md.
    assert_eq!((report.files, report.dirs), (6, 5), "{report:?}");
    assert_eq!(o.objects(), 6);
    let snap = o.core.snapshot_create(o.main(), None).unwrap().id;
    let feature = o.core.branch_create(snap, None).unwrap().id;

    std::fs::write(lower.path().join("src/main.rs"), b"changed underneath\n").unwrap();
    std::fs::write(lower.path().join("docs/new.md"), b"new").unwrap();
    std::fs::remove_file(lower.path().join("src/deep/er/leaf.txt")).unwrap();
    for b in [o.main(), feature] {
        assert_eq!(o.read(b, "src/main.rs").unwrap(), b"fn main() {}\n");
        assert_eq!(o.read(b, "src/deep/er/leaf.txt").unwrap(), b"leaf");
        assert_eq!(o.names(b, "docs"), strs(&["a.md", "b.md", "pipe"]));
    }
    // A second import is refused: branches share the tree now.
    assert!(matches!(o.core.import_lower(), Err(FsError::Busy(_))));
    // And it survives a crash.
    o.core.sync_all().unwrap();
    let image = o.store.image(None);
    let _keep = Arc::clone(&o.objects);
    std::mem::forget(o);
    let (o, _) = mount(&objects, image, lower.path());
    assert_eq!(o.read(o.main(), "src/main.rs").unwrap(), b"fn main() {}\n");
    assert_eq!(o.read(o.main(), "src/lib.rs").unwrap(), vec![7u8; 300_000]);
}

/// Every path of branch `b` below `path` with its node id, kind, mode and
/// bytes (reading them reads every lower directory).
fn walk(o: &Overlay, b: BranchId, path: &str, out: &mut Vec<String>) {
    let a = o.resolve(b, path).unwrap();
    let body = match a.kind {
        FileKind::RegularFile => format!("{:?}", o.read(b, path).unwrap()),
        FileKind::Symlink => format!("{:?}", o.core.readlink(b, a.node).unwrap()),
        _ => String::new(),
    };
    out.push(format!(
        "{b} /{path} {} {:?} {:o} {body}",
        a.node, a.kind, a.perm
    ));
    if a.kind == FileKind::Directory {
        for name in o.names(b, path) {
            let child = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            walk(o, b, &child, out);
        }
    }
}

/// A seeded mix of reads (which read lower directories into every tree),
/// writes, unlinks, renames, mkdirs, snapshots and branches over several
/// branches, then a crash: the journal replays to the same trees, node ids
/// included, in every branch.
#[test]
fn a_mixed_overlay_workload_replays_exactly() {
    for seed in [0x2545_f491_4f6c_dd1d_u64, 7, 1_000_003, 0xdead_beef] {
        mixed_workload_replays(seed);
    }
}

fn mixed_workload_replays(mut seed: u64) {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    for d in 0..6 {
        for f in 0..6 {
            let dir = lower.path().join(format!("t{d}/u{}", f % 2));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("f{f}")), format!("{d}-{f}")).unwrap();
        }
    }
    let before = fingerprint(lower.path());
    let objects = Arc::new(MemBackstore::new());
    let (o, _) = mount(&objects, MemStore::new(), lower.path());
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut branches = vec![o.main()];
    let mut snaps = Vec::new();
    for step in 0..300 {
        let b = branches[next(branches.len() as u64) as usize];
        let d = next(6);
        let f = next(6);
        let path = format!("t{d}/u{}/f{f}", f % 2);
        match next(8) {
            0 | 1 => {
                let _ = o.read(b, &path);
            }
            2 => {
                if o.resolve(b, &path).is_ok() {
                    o.write_at(b, &path, next(4), format!("w{step}").as_bytes());
                }
            }
            3 => {
                let _ = o.unlink(b, &path);
            }
            4 => {
                let (p, name) = o.parent(b, &format!("t{d}/u0/x"));
                let _ = o.core.rename(
                    &o.ctx,
                    b,
                    p,
                    n(&format!("f{f}")),
                    NodeId::ROOT,
                    n(&format!("moved{step}")),
                    agentfs_core::RenameFlags::default(),
                );
                let _ = name;
            }
            5 => {
                if let Ok(dir) = o.resolve(b, &format!("t{d}")) {
                    let _ = o
                        .core
                        .mkdir(&o.ctx, b, dir.node, n(&format!("m{step}")), 0o755, 0);
                }
            }
            6 => snaps.push(o.core.snapshot_create(b, None).unwrap().id),
            _ => {
                if let Some(&s) = snaps.last() {
                    if branches.len() < 5 {
                        branches.push(o.core.branch_create(s, None).unwrap().id);
                    }
                }
            }
        }
    }
    // The walk reads every lower directory left: journaled like the rest.
    let mut live = Vec::new();
    for &b in &branches {
        walk(&o, b, "", &mut live);
    }
    o.core.sync_all().unwrap();
    let image = o.store.image(None);
    let _keep = Arc::clone(&o.objects);
    std::mem::forget(o);
    let (o, _) = mount(&objects, image, lower.path());
    let mut replayed = Vec::new();
    for &b in &branches {
        walk(&o, b, "", &mut replayed);
    }
    assert!(live.len() > 100, "only {} paths", live.len());
    assert_eq!(live, replayed, "trees differ after replay (seed {seed})");
    assert_eq!(
        fingerprint(lower.path()),
        before,
        "the lower directory changed"
    );
}

/// Threads reading lower directories in several branches while another makes
/// snapshots and branches: no deadlock, and since nothing was written, every
/// branch names every path with the same node and no diff shows anything.
#[test]
fn concurrent_reads_snapshots_and_branches_agree() {
    use agentfs_core::ViewRef;
    let lower = tempfile::tempdir().unwrap();
    for d in 0..8 {
        for e in 0..4 {
            let dir = lower.path().join(format!("d{d}/e{e}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..5 {
                std::fs::write(dir.join(format!("f{f}")), format!("{d}{e}{f}")).unwrap();
            }
        }
    }
    let (o, _) = mount(
        &Arc::new(MemBackstore::new()),
        MemStore::new(),
        lower.path(),
    );
    let base = o
        .core
        .snapshot_create(o.main(), Some("base".into()))
        .unwrap()
        .id;
    let branches = std::sync::Mutex::new(vec![o.main()]);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (o, branches) = (&o, &branches);
            s.spawn(move || {
                for i in 0..200u64 {
                    let list = branches.lock().unwrap().clone();
                    let b = list[((i * 7 + t) % list.len() as u64) as usize];
                    let path = format!("d{}/e{}/f{}", (i + t) % 8, (i / 3) % 4, i % 5);
                    let want = format!("{}{}{}", (i + t) % 8, (i / 3) % 4, i % 5);
                    assert_eq!(o.read(b, &path).unwrap(), want.as_bytes());
                }
            });
        }
        s.spawn(|| {
            for _ in 0..10 {
                let snap = o.core.snapshot_create(o.main(), None).unwrap().id;
                let b = o.core.branch_create(snap, None).unwrap().id;
                branches.lock().unwrap().push(b);
                let b2 = o.core.branch_create(base, None).unwrap().id;
                branches.lock().unwrap().push(b2);
            }
        });
    });
    let branches = branches.into_inner().unwrap();
    let mut first: Option<Vec<String>> = None;
    for &b in &branches {
        let mut w = Vec::new();
        walk(&o, b, "", &mut w);
        let w: Vec<String> = w
            .into_iter()
            .map(|l| l.split_once(' ').unwrap().1.to_string())
            .collect();
        match &first {
            None => first = Some(w),
            Some(f) => assert_eq!(f, &w, "branch {b} differs"),
        }
        let changes = o
            .core
            .diff(ViewRef::Snapshot(base), ViewRef::Branch(b))
            .unwrap();
        assert!(changes.is_empty(), "{b}: {changes:?}");
    }
}

/// A lookup in a lower directory not read yet cannot be answered in one
/// pass from memory (`lookup_for_kernel_quick` says so, and does nothing):
/// reading the directory waits on the disk. Once it is read, it can.
#[test]
fn a_quick_lookup_leaves_an_unread_lower_directory_to_a_worker() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let (o, _) = mount(
        &Arc::new(MemBackstore::new()),
        MemStore::new(),
        lower.path(),
    );
    let b = o.main();
    let src = o.resolve(b, "src").unwrap().node;
    assert!(o
        .core
        .lookup_for_kernel_quick(&o.ctx, b, src, n("main.rs"))
        .is_none());
    let main_rs = o.core.lookup(&o.ctx, b, src, n("main.rs")).unwrap();
    let (quick, _) = o
        .core
        .lookup_for_kernel_quick(&o.ctx, b, src, n("main.rs"))
        .expect("read now")
        .unwrap();
    assert_eq!(quick, main_rs);
}

/// A readdirplus answered in one pass from memory (`readdir_plus_quick`,
/// which the FUSE adapter runs on the thread that took the request) answers
/// what `readdir_plus` answers. While an entry's allocated bytes are known
/// only to the backstore (an object of the store's, after a restart) it
/// does nothing and says so; the handle then still lists from the start.
#[test]
fn a_quick_readdir_plus_waits_for_nothing_and_answers_the_same() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let objects = Arc::new(MemBackstore::new());
    let (o, _) = mount(&objects, MemStore::new(), lower.path());
    let b = o.main();
    o.write_at(b, "docs/a.md", 0, b"upper now");
    o.core.checkpoint().unwrap();
    let image = o.store.image(None);
    drop(o);
    let (o, _) = mount(&objects, image, lower.path());
    let docs = o.resolve(b, "docs").unwrap().node;
    let fh = o.core.opendir(&o.ctx, b, docs).unwrap();
    assert!(
        o.core.readdir_plus_quick(fh, 0, 100).is_none(),
        "a.md's object's allocated bytes are the backstore's to say"
    );
    let full = o.core.readdir_plus(fh, 0, 100).unwrap();
    let quick = o
        .core
        .readdir_plus_quick(fh, 0, 100)
        .expect("known now")
        .unwrap();
    let summary = |plus: &[agentfs_core::DirEntryPlus]| {
        let seen = plus
            .iter()
            .map(|p| (p.entry.clone(), p.attr, p.attr_in_memory));
        format!("{:?}", seen.collect::<Vec<_>>())
    };
    assert_eq!(summary(&quick), summary(&full));
    let a = full.iter().find(|p| p.entry.name == b"a.md").unwrap();
    assert_eq!(a.attr.size, 9);
    let rest = o
        .core
        .readdir_plus_quick(fh, full[2].entry.offset, 100)
        .expect("in memory")
        .unwrap();
    assert_eq!(rest.len(), full.len() - 3);
    o.core.releasedir(fh).unwrap();
    assert!(matches!(
        o.core.readdir_plus_quick(fh, 0, 100),
        Some(Err(agentfs_core::FsError::BadHandle))
    ));
}
