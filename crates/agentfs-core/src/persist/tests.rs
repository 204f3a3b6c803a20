//! Persistence round trips on an in-memory store: a complex state survives a
//! clean reopen and a crash (the journal as it stands), and a journal cut at
//! any byte of its last record recovers exactly the records before it.

use super::codec::Enc;
use super::{journal, load, MemStore, MetaStore, State};
use crate::backstore::mem::MemBackstore;
use crate::backstore::Backstore;
use crate::fs::tree::Reaper;
use crate::test_support::{config, n, RW};
use crate::{BranchId, Ctx, FsCore, NodeId, OpenFlags, RenameFlags, SetAttr, XattrSet};
use std::sync::Arc;

fn open(objects: &Arc<MemBackstore>, store: MemStore) -> (FsCore, Arc<MemStore>) {
    let store = Arc::new(store);
    let (core, _) = FsCore::open_persisted(
        Arc::clone(objects) as Arc<dyn Backstore>,
        Arc::clone(&store) as Arc<dyn MetaStore>,
        config(),
    )
    .expect("open persisted core");
    (core, store)
}

/// A text dump of a state: every view, every node in id order, as encoded.
fn dump(state: &State) -> Vec<String> {
    let mut out = vec![format!(
        "counters b{} s{}",
        state.next_branch, state.next_snapshot
    )];
    let mut tree = |label: String, t: &crate::fs::tree::Tree| {
        let mut nodes: Vec<_> = t.iter().collect();
        nodes.sort_by_key(|(id, _)| *id);
        for (id, node) in nodes {
            let mut enc = Enc::default();
            enc.node(node);
            out.push(format!("{label} {id} {:?}", enc.buf));
        }
    };
    for (id, s) in &state.snapshots {
        tree(format!("snapshot {id} {} of {}", s.name, s.branch), &s.tree);
    }
    for (id, b) in &state.branches {
        tree(format!("branch {id} {} from {:?}", b.name, b.from), &b.tree);
    }
    out
}

fn dump_store(store: &MemStore) -> Vec<String> {
    let reaper = Arc::new(Reaper::default());
    let loaded = load(store, &reaper).expect("load");
    dump(&loaded.state.expect("a checkpoint"))
}

/// Files, directories, a symlink, a hard link, xattrs, a FIFO, a sparse
/// file, a snapshot, a branch of it with its own changes, a deleted
/// snapshot, and an unlinked file still open.
fn build(core: &FsCore) -> BranchId {
    let ctx = Ctx::root();
    let main = core.default_branch();
    let root = NodeId::ROOT;
    let dir = core
        .mkdir(&ctx, main, root, n("dir"), 0o755, 0)
        .unwrap()
        .node;
    let (a, fh) = core
        .create(&ctx, main, dir, n("a.txt"), 0o644, 0, RW, false)
        .unwrap();
    core.write(&ctx, fh, 0, b"hello persistence").unwrap();
    core.release(fh).unwrap();
    let (sparse, fh) = core
        .create(&ctx, main, root, n("sparse"), 0o600, 0, RW, false)
        .unwrap();
    core.write(&ctx, fh, 1 << 20, b"tail").unwrap();
    core.release(fh).unwrap();
    let grow = SetAttr {
        size: Some(8 << 20),
        ..SetAttr::default()
    };
    core.setattr(&ctx, main, sparse.node, &grow).unwrap();
    core.symlink(&ctx, main, root, n("link"), b"dir/a.txt")
        .unwrap();
    core.link(&ctx, main, a.node, root, n("hard")).unwrap();
    core.setxattr(&ctx, main, a.node, n("user.k"), b"v1", XattrSet::Any)
        .unwrap();
    core.mknod(&ctx, main, root, n("fifo"), libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    let snap = core.snapshot_create(main, Some("base".into())).unwrap();
    let branch = core.branch_create(snap.id, Some("feature".into())).unwrap();
    let fh = core.open(&ctx, branch.id, a.node, RW).unwrap();
    core.write(&ctx, fh, 0, b"HELLO").unwrap();
    core.release(fh).unwrap();
    core.rename(
        &ctx,
        branch.id,
        root,
        n("link"),
        dir,
        n("moved-link"),
        RenameFlags::default(),
    )
    .unwrap();
    core.mkdir(&ctx, main, root, n("after-snapshot"), 0o700, 0)
        .unwrap();
    let gone = core.snapshot_create(main, Some("gone".into())).unwrap();
    core.snapshot_delete(gone.id).unwrap();
    let (orphan, fh) = core
        .create(&ctx, main, root, n("orphan"), 0o600, 0, RW, false)
        .unwrap();
    core.write(&ctx, fh, 0, b"open but unlinked").unwrap();
    core.unlink(&ctx, main, root, n("orphan")).unwrap();
    let _ = orphan;
    // `fh` is never released: the crash (or unmount) comes with it open.
    let _ = fh;
    branch.id
}

fn read_all(core: &FsCore, b: BranchId, path: &[&str]) -> Vec<u8> {
    let ctx = Ctx::root();
    let mut id = NodeId::ROOT;
    for part in path {
        id = core.lookup(&ctx, b, id, n(part)).unwrap().node;
    }
    let fh = core
        .open(&ctx, b, id, OpenFlags::from_raw(libc::O_RDONLY))
        .unwrap();
    let data = core.read(fh, 0, 16 << 20).unwrap();
    core.release(fh).unwrap();
    data
}

fn check_contents(core: &FsCore, feature: BranchId) {
    let main = core.default_branch();
    assert_eq!(
        read_all(core, main, &["dir", "a.txt"]),
        b"hello persistence"
    );
    assert_eq!(read_all(core, main, &["hard"]), b"hello persistence");
    assert_eq!(read_all(core, feature, &["hard"]), b"HELLO persistence");
    let sparse = read_all(core, main, &["sparse"]);
    assert_eq!(sparse.len(), 8 << 20);
    assert_eq!(&sparse[1 << 20..(1 << 20) + 4], b"tail");
    assert!(sparse[..1 << 20].iter().all(|&b| b == 0));
    let ctx = Ctx::root();
    let a = core.lookup(&ctx, main, NodeId::ROOT, n("hard")).unwrap();
    assert_eq!(a.nlink, 2);
    assert_eq!(
        core.getxattr(&ctx, main, a.node, n("user.k")).unwrap(),
        b"v1"
    );
    let link = core.lookup(&ctx, main, NodeId::ROOT, n("link")).unwrap();
    assert_eq!(core.readlink(main, link.node).unwrap(), b"dir/a.txt");
    let dir = core.lookup(&ctx, feature, NodeId::ROOT, n("dir")).unwrap();
    assert!(core
        .lookup(&ctx, feature, dir.node, n("moved-link"))
        .is_ok());
    assert!(core.lookup(&ctx, main, NodeId::ROOT, n("orphan")).is_err());
    let names: Vec<String> = core.snapshot_list().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["base".to_string()]);
    let names: Vec<String> = core.branch_list().into_iter().map(|b| b.name).collect();
    assert_eq!(names, vec!["main".to_string(), "feature".to_string()]);
}

#[test]
fn crash_recovers_the_journal_and_clean_unmount_replays_nothing() {
    let objects = Arc::new(MemBackstore::new());
    let (core, store) = open(&objects, MemStore::new());
    let feature = build(&core);
    core.sync_all().unwrap();
    let live = dump(&core.capture());
    // Crash: the store as it is, the old core never closed.
    let image = store.image(None);
    std::mem::forget(core);
    let (core, store) = open(&objects, image);
    check_contents(&core, feature);
    // The orphan is gone from the recovered tree; nothing else changed.
    let recovered = dump(&core.capture());
    let expected: Vec<String> = live
        .into_iter()
        .filter(|l| !recovered.contains(l))
        .collect();
    assert_eq!(expected.len(), 1, "only the orphan differs: {expected:?}");
    assert!(expected[0].starts_with("branch b1"));

    // A clean unmount checkpoints; the next open replays nothing and sees the same.
    core.checkpoint().unwrap();
    let image = store.image(None);
    assert_eq!(image.journal_len() as u64, journal::HEADER_LEN);
    drop(core);
    let store = Arc::new(image);
    let (core, report) = FsCore::open_persisted(
        Arc::clone(&objects) as Arc<dyn Backstore>,
        store as Arc<dyn MetaStore>,
        config(),
    )
    .unwrap();
    assert_eq!(report.replayed, 0);
    assert_eq!(dump(&core.capture()), recovered);
    check_contents(&core, feature);
    // Ids continue above the recovered ones.
    let ctx = Ctx::root();
    let fresh = core
        .mkdir(
            &ctx,
            core.default_branch(),
            NodeId::ROOT,
            n("fresh"),
            0o755,
            0,
        )
        .unwrap();
    assert!(recovered
        .iter()
        .all(|l| !l.contains(&format!(" {} ", fresh.node))));
}

#[test]
fn torn_tail_at_every_byte_recovers_the_prefix() {
    let objects = Arc::new(MemBackstore::new());
    let (core, store) = open(&objects, MemStore::new());
    let _ = build(&core);
    core.sync_all().unwrap();
    let full = store.image(None);
    let bytes = full.read_journal().unwrap();
    let generation = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let (frames, end) = journal::frames(&bytes, generation).unwrap();
    assert_eq!(end, bytes.len(), "the journal as written is all valid");
    assert!(frames.len() > 20, "{} records", frames.len());
    // Every record boundary is a state recovery accepts.
    for (at, _) in &frames {
        dump_store(&store.image(Some(*at)));
    }
    let (last, _) = *frames.last().unwrap();
    let before = dump_store(&store.image(Some(last)));
    let after = dump_store(&full);
    assert_ne!(before, after, "the last record changes the state");
    for cut in last..bytes.len() {
        assert_eq!(dump_store(&store.image(Some(cut))), before, "cut at {cut}");
    }
    // Zeros after the last record (a file extended but never written) are a
    // torn tail too, not an empty record.
    let mut zeros = bytes.clone();
    zeros.extend_from_slice(&[0u8; 64]);
    let padded = MemStore::new();
    padded
        .write_checkpoint(&full.read_checkpoint().unwrap().unwrap())
        .unwrap();
    padded.write_journal(0, &zeros).unwrap();
    assert_eq!(dump_store(&padded), after);
    // A flipped byte in the last record drops it, and only it.
    let mut bad = bytes.clone();
    *bad.last_mut().unwrap() ^= 0x40;
    let corrupt = MemStore::new();
    corrupt
        .write_checkpoint(&full.read_checkpoint().unwrap().unwrap())
        .unwrap();
    corrupt.write_journal(0, &bad).unwrap();
    assert_eq!(dump_store(&corrupt), before);
}

#[test]
fn unknown_format_version_is_refused() {
    let objects = Arc::new(MemBackstore::new());
    let (core, store) = open(&objects, MemStore::new());
    drop(core);
    let mut ckpt = store.read_checkpoint().unwrap().unwrap();
    ckpt[8] = 99;
    let bad = MemStore::new();
    bad.write_checkpoint(&ckpt).unwrap();
    let reaper = Arc::new(Reaper::default());
    match load(&bad, &reaper) {
        Err(super::PersistError::Version { found: 99, .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an unknown version was accepted"),
    }
}

#[test]
fn objects_no_tree_names_are_removed_at_open_and_freed_ones_after_the_journal() {
    let objects = Arc::new(MemBackstore::new());
    let (core, store) = open(&objects, MemStore::new());
    let ctx = Ctx::root();
    let main = core.default_branch();
    let (f, fh) = core
        .create(&ctx, main, NodeId::ROOT, n("f"), 0o644, 0, RW, false)
        .unwrap();
    core.write(&ctx, fh, 0, b"data").unwrap();
    core.release(fh).unwrap();
    core.sync_all().unwrap();
    let stray = objects.create().unwrap();
    let kept = core.getattr(main, f.node).unwrap();
    std::mem::forget(core);
    let (core, _store) = open(&objects, store.image(None));
    assert!(
        !objects.contains(stray),
        "the stray object survived recovery"
    );
    assert_eq!(core.getattr(main, f.node).unwrap().size, kept.size);
    assert_eq!(read_all(&core, main, &["f"]), b"data");
}

#[test]
fn a_growing_journal_is_checkpointed_while_mounted_and_recovery_still_matches() {
    let objects = Arc::new(MemBackstore::new());
    let (core, store) = open(&objects, MemStore::new());
    core.set_checkpoint_threshold(4096);
    let generation = |s: &MemStore| {
        let c = s.read_checkpoint().unwrap().unwrap();
        u64::from_le_bytes(c[12..20].try_into().unwrap())
    };
    let first = generation(&store);
    let feature = build(&core);
    let ctx = Ctx::root();
    let main = core.default_branch();
    for i in 0..300 {
        core.mkdir(&ctx, main, NodeId::ROOT, n(&format!("d{i}")), 0o755, 0)
            .unwrap();
    }
    assert!(
        generation(&store) > first + 2,
        "no checkpoint while mounted: generation {} after {first}",
        generation(&store)
    );
    assert!(
        store.journal_len() < 16384,
        "journal {} bytes",
        store.journal_len()
    );
    core.sync_all().unwrap();
    let live = dump(&core.capture());
    let image = store.image(None);
    std::mem::forget(core);
    let (core, _store) = open(&objects, image);
    check_contents(&core, feature);
    let recovered = dump(&core.capture());
    let lost: Vec<&String> = live.iter().filter(|l| !recovered.contains(l)).collect();
    assert_eq!(lost.len(), 1, "only the orphan differs: {lost:?}");
}

#[test]
fn a_file_whose_object_is_lost_reads_as_a_hole_instead_of_failing() {
    let objects = Arc::new(MemBackstore::new());
    let (core, store) = open(&objects, MemStore::new());
    let ctx = Ctx::root();
    let main = core.default_branch();
    let (f, fh) = core
        .create(&ctx, main, NodeId::ROOT, n("f"), 0o644, 0, RW, false)
        .unwrap();
    core.write(&ctx, fh, 0, b"gone").unwrap();
    core.release(fh).unwrap();
    core.sync_all().unwrap();
    // A power cut took the object but not the metadata.
    for id in objects.list_objects().unwrap() {
        objects.remove(id).unwrap();
    }
    std::mem::forget(core);
    let store = Arc::new(store.image(None));
    let (core, report) = FsCore::open_persisted(
        Arc::clone(&objects) as Arc<dyn Backstore>,
        store as Arc<dyn MetaStore>,
        config(),
    )
    .unwrap();
    assert_eq!(report.lost, 1);
    assert_eq!(core.getattr(main, f.node).unwrap().size, 4);
    assert_eq!(read_all(&core, main, &["f"]), vec![0u8; 4]);
}

/// An object freed after the record that freed it was made durable (a
/// branch-delete syncs its record, then the reaper hands the object over) is
/// removed by the next `sync`, not only by the background flush 5 ms later:
/// `status` right after a branch-delete must count the space as free.
#[test]
fn sync_removes_objects_freed_by_records_already_durable() {
    let objects = Arc::new(MemBackstore::new());
    let store = Arc::new(MemStore::new());
    store.write_journal(0, &journal::header(1)).unwrap();
    let j = journal::Journal::start(
        Arc::clone(&store) as Arc<dyn MetaStore>,
        Arc::clone(&objects) as Arc<dyn Backstore>,
        journal::HEADER_LEN,
        1,
    );
    j.append(b"a record");
    j.sync().unwrap();
    let freed = objects.create().unwrap();
    j.remove_when_durable(vec![freed]);
    j.sync().unwrap();
    assert!(
        !objects.contains(freed),
        "sync left a freed object in place"
    );
    j.shutdown();
}

/// A store on the backstore's filesystem (or not), noting each journal
/// write and fdatasync with how many backstore syncs had run before it.
struct NotingStore {
    inner: MemStore,
    objects: Arc<MemBackstore>,
    on_backstore_fs: bool,
    events: parking_lot::Mutex<Vec<String>>,
}

impl NotingStore {
    fn note(&self, what: &str) {
        let syncs = self.objects.sync_all_count();
        self.events
            .lock()
            .push(format!("{what} after {syncs} syncfs"));
    }
}

impl MetaStore for NotingStore {
    fn read_checkpoint(&self) -> std::io::Result<Option<Vec<u8>>> {
        self.inner.read_checkpoint()
    }
    fn write_checkpoint(&self, data: &[u8]) -> std::io::Result<()> {
        self.inner.write_checkpoint(data)
    }
    fn read_journal(&self) -> std::io::Result<Vec<u8>> {
        self.inner.read_journal()
    }
    fn write_journal(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.note("write");
        self.inner.write_journal(offset, data)
    }
    fn truncate_journal(&self, len: u64) -> std::io::Result<()> {
        self.inner.truncate_journal(len)
    }
    fn sync_journal(&self) -> std::io::Result<()> {
        self.note("fdatasync");
        self.inner.sync_journal()
    }
    fn journal_on_backstore_fs(&self) -> bool {
        self.on_backstore_fs
    }
}

/// `sync_with_backstore` (snapshot-create's durability point): where the
/// journal is on the backstore's filesystem its records are written before
/// the one syncfs and never fdatasynced; elsewhere the syncfs comes first and
/// the journal is fdatasynced after it. Either way the records count as
/// durable after (no second flush for them) and objects they freed go.
#[test]
fn sync_with_backstore_writes_the_journal_before_one_syncfs_when_it_covers_it() {
    for (on_backstore_fs, expected) in [
        (true, vec!["write after 0 syncfs"]),
        (
            false,
            vec!["write after 1 syncfs", "fdatasync after 1 syncfs"],
        ),
    ] {
        let objects = Arc::new(MemBackstore::new());
        let store = Arc::new(NotingStore {
            inner: MemStore::new(),
            objects: Arc::clone(&objects),
            on_backstore_fs,
            events: parking_lot::Mutex::new(Vec::new()),
        });
        store.inner.write_journal(0, &journal::header(1)).unwrap();
        let j = journal::Journal::start(
            Arc::clone(&store) as Arc<dyn MetaStore>,
            Arc::clone(&objects) as Arc<dyn Backstore>,
            journal::HEADER_LEN,
            1,
        );
        let freed = objects.create().unwrap();
        j.append(b"the record that frees it");
        j.remove_when_durable(vec![freed]);
        j.sync_with_backstore().unwrap();
        assert_eq!(
            objects.sync_all_count(),
            1,
            "on_backstore_fs {on_backstore_fs}"
        );
        assert_eq!(
            *store.events.lock(),
            expected,
            "on_backstore_fs {on_backstore_fs}"
        );
        assert!(
            !objects.contains(freed),
            "a freed object outlived its durable record"
        );
        assert_eq!(
            store.inner.journal_len() as u64,
            journal::HEADER_LEN + 8 + 24,
            "the record is not in the journal"
        );
        // Nothing new: a plain sync has nothing left to make durable.
        j.sync().unwrap();
        assert_eq!(
            *store.events.lock(),
            expected,
            "on_backstore_fs {on_backstore_fs}"
        );
        j.shutdown();
    }
}
