//! Unit tests of HostFs on fresh temporary directories.

use super::*;
use objects::Fanout;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Barrier;

fn open_in(dir: &Path) -> HostFs {
    HostFs::open(dir, HostFsOptions::default()).expect("open backstore")
}

fn fresh() -> (tempfile::TempDir, HostFs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = open_in(&dir.path().join("root"));
    (dir, fs)
}

/// A fresh backstore whose descriptor cache holds at most `max_open_files`.
fn fresh_with_cache(max_open_files: usize) -> (tempfile::TempDir, HostFs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = HostFs::open(&dir.path().join("root"), HostFsOptions { max_open_files })
        .expect("open backstore");
    (dir, fs)
}

fn read_all(fs: &HostFs, id: ContentId, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = fs.read_at(id, &mut buf, 0).expect("read");
    buf.truncate(n);
    buf
}

fn errno(err: &io::Error) -> i32 {
    err.raw_os_error()
        .unwrap_or_else(|| panic!("no raw errno in {err:?}"))
}

/// Descriptors of this process that point into `root`.
fn fds_under(root: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|target| target.starts_with(root)))
        .count()
}

#[test]
fn open_creates_a_missing_root_with_mode_0700() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("a").join("b");
    let fs = open_in(&root);
    assert_eq!(fs.root(), fs::canonicalize(&root).expect("canonicalize"));
    let mode = fs::metadata(&root).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(root.join("lock").is_file());
    assert!(root.join("objects").is_dir());
}

#[test]
fn a_regular_file_as_root_is_not_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("file");
    fs::write(&root, b"x").expect("write");
    match HostFs::open(&root, HostFsOptions::default()) {
        Err(err @ HostFsError::NotADirectory { .. }) => {
            let msg = err.to_string();
            assert!(msg.contains(&root.display().to_string()), "{msg}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a file was accepted as root"),
    }
}

#[test]
fn an_unwritable_root_is_reported_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = if sys::getuid() != 0 {
        let root = dir.path().join("ro");
        fs::create_dir(&root).expect("mkdir");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o500)).expect("chmod");
        root
    } else {
        // Root ignores permission bits; sysfs refuses file creation even to root.
        assert!(
            Path::new("/sys/kernel").is_dir(),
            "this test needs sysfs mounted at /sys when run as root"
        );
        PathBuf::from("/sys")
    };
    match HostFs::open(&root, HostFsOptions::default()) {
        Err(err @ HostFsError::NotWritable { .. }) => {
            assert!(
                err.to_string().contains(&root.display().to_string()),
                "{err}"
            );
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("an unwritable root was accepted"),
    }
}

#[test]
fn a_second_open_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let first = open_in(&root);
    match HostFs::open(&root, HostFsOptions::default()) {
        Err(err @ HostFsError::InUse { .. }) => {
            assert!(
                err.to_string().contains(&root.display().to_string()),
                "{err}"
            );
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("two HostFs opened one root"),
    }
    drop(first);
    let _second = open_in(&root);
}

#[test]
fn objects_of_a_previous_open_survive_reopen_and_ids_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    // Ids need not come in order: the object pool makes some ahead.
    let (other, old) = {
        let fs = open_in(&root);
        let a = fs.create().expect("create");
        let b = fs.create().expect("create");
        fs.write_at(b, b"kept", 0).expect("write");
        assert_ne!(a, b);
        (a, b)
    };
    // A trash directory a build from before persistence left behind.
    fs::create_dir_all(root.join("trash-1").join("00")).expect("mkdir");
    fs::write(root.join("trash-1").join("00").join("x"), b"x").expect("write");

    let fs = open_in(&root);
    assert_eq!(read_all(&fs, old, 16), b"kept");
    let mut listed = fs.list_objects().expect("list");
    listed.sort();
    let mut both = vec![other, old];
    both.sort();
    assert_eq!(listed, both);
    let fresh = fs.create().expect("create");
    assert!(
        fresh > other.max(old),
        "id {fresh} reused after {other} and {old}"
    );
    fs.wait_for_trash();
    let left: Vec<_> = fs::read_dir(&root)
        .expect("list root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("trash-"))
        .collect();
    assert!(left.is_empty(), "trash left behind: {left:?}");
}

#[test]
fn the_meta_store_replaces_checkpoints_and_keeps_the_journal() {
    use agentfs_core::MetaStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    {
        let fs = open_in(&root);
        assert_eq!(fs.read_checkpoint().expect("read"), None);
        fs.write_checkpoint(b"first").expect("write");
        fs.write_checkpoint(b"second").expect("write");
        fs.write_journal(0, b"abcdef").expect("append");
        fs.write_journal(6, b"gh").expect("append");
        fs.truncate_journal(7).expect("truncate");
        fs.sync_journal().expect("sync");
    }
    let fs = open_in(&root);
    assert_eq!(
        fs.read_checkpoint().expect("read").as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(fs.read_journal().expect("read"), b"abcdefg");
    assert!(!root.join("meta").join("checkpoint.tmp").exists());
    // meta/ is beside objects/ on one filesystem: the root's syncfs covers
    // the journal, and snapshot-create relies on it to flush the disk once.
    assert!(fs.journal_on_backstore_fs());
}

#[test]
fn consecutive_objects_share_a_fanout_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let fs = open_in(&root);
    assert_eq!(fs.objects.fanout(), Fanout::Runs);
    let ids: Vec<_> = (0..0x1a3).map(|_| fs.create().expect("create")).collect();
    for id in &ids {
        let path = format!("objects/{:03x}/{:016x}", (id.0 >> 8) & 0xfff, id.0);
        assert!(fs.root().join(&path).is_file(), "{path} missing");
    }
    // Ids are one range from 1 (with the pool's, under 0x5d more), so they
    // fill the first directory and part of the second.
    let mut fanouts: Vec<_> = fs::read_dir(fs.root().join("objects"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    fanouts.sort();
    assert_eq!(fanouts, ["000", "001"]);
    drop(fs);
    // Reopened, it keeps its layout and finds its objects.
    let fs = open_in(&root);
    assert_eq!(fs.objects.fanout(), Fanout::Runs);
    let listed: HashSet<_> = fs.list_objects().expect("list").into_iter().collect();
    assert!(ids.iter().all(|id| listed.contains(id)));
}

#[test]
fn a_backstore_with_low_byte_fanout_keeps_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    drop(open_in(&root));
    // An object where builds before the Runs layout put it.
    let old = ContentId(0x12a);
    fs::create_dir(root.join("objects/2a")).expect("mkdir");
    fs::write(root.join("objects/2a/000000000000012a"), b"old").expect("write");
    let fs = open_in(&root);
    assert_eq!(fs.objects.fanout(), Fanout::LowByte);
    assert_eq!(read_all(&fs, old, 10), b"old");
    let new = fs.create().expect("create");
    assert!(new.0 > old.0, "ids must continue above the old ones");
    let path = format!("objects/{:02x}/{:016x}", new.0 & 0xff, new.0);
    assert!(root.join(&path).is_file(), "{path} missing");
    let listed = fs.list_objects().expect("list");
    assert!(listed.contains(&old) && listed.contains(&new), "{listed:?}");
}

#[test]
fn write_then_read_round_trips_and_reads_stop_at_eof() {
    let (_dir, fs) = fresh();
    let id = fs.create().expect("create");
    assert_eq!(read_all(&fs, id, 10), Vec::<u8>::new());
    fs.write_at(id, b"hello world", 0).expect("write");
    fs.write_at(id, b"W", 6).expect("write");
    assert_eq!(read_all(&fs, id, 100), b"hello World");
    let mut buf = [0u8; 5];
    assert_eq!(fs.read_at(id, &mut buf, 8).expect("read"), 3);
    assert_eq!(&buf[..3], b"rld");
    assert_eq!(fs.read_at(id, &mut buf, 100).expect("read"), 0);
    assert_eq!(fs.read_at(id, &mut buf, u64::MAX).expect("read"), 0);
    // A large read is filled completely.
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    fs.write_at(id, &big, 0).expect("write");
    assert_eq!(read_all(&fs, id, 4 << 20), big);
}

#[test]
fn set_len_truncates_and_extends_with_zeros() {
    let (_dir, fs) = fresh();
    let id = fs.create().expect("create");
    fs.write_at(id, b"abcdef", 0).expect("write");
    fs.set_len(id, 3).expect("truncate");
    assert_eq!(read_all(&fs, id, 10), b"abc");
    fs.set_len(id, 6).expect("extend");
    assert_eq!(read_all(&fs, id, 10), b"abc\0\0\0");
    fs.set_len(id, 1 << 30).expect("extend");
    assert!(fs.allocated_bytes(id).expect("blocks") < 1 << 20);
}

#[test]
fn fallocate_passes_the_mode_through() {
    let (_dir, fs) = fresh();
    let id = fs.create().expect("create");
    fs.fallocate(id, 0, 0, 1 << 20).expect("fallocate");
    assert_eq!(read_all(&fs, id, 2 << 20).len(), 1 << 20);
    assert!(fs.allocated_bytes(id).expect("blocks") >= 1 << 20);

    fs.fallocate(id, libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20)
        .expect("keep size");
    assert_eq!(read_all(&fs, id, 4 << 20).len(), 1 << 20);
    assert!(fs.allocated_bytes(id).expect("blocks") >= 2 << 20);

    fs.write_at(id, &[9u8; 8192], 0).expect("write");
    fs.fallocate(
        id,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        4096,
    )
    .expect("punch");
    let data = read_all(&fs, id, 8192);
    assert!(data[..4096].iter().all(|&b| b == 0));
    assert!(data[4096..].iter().all(|&b| b == 9));

    // PUNCH_HOLE without KEEP_SIZE is refused by the kernel; its errno must survive.
    let err = fs
        .fallocate(id, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096)
        .expect_err("invalid mode");
    assert_eq!(errno(&err), libc::EOPNOTSUPP);
}

#[test]
fn sync_and_sync_all_succeed_on_live_objects() {
    let (_dir, fs) = fresh();
    let id = fs.create().expect("create");
    fs.write_at(id, b"durable", 0).expect("write");
    fs.sync(id, true).expect("fdatasync");
    fs.sync(id, false).expect("fsync");
    fs.sync_all().expect("syncfs");
    fs.remove(id).expect("remove");
    assert_eq!(
        errno(&fs.sync(id, false).expect_err("removed")),
        libc::ENOENT
    );
}

#[test]
fn remove_deletes_the_file_and_keeps_enoent() {
    let (_dir, fs) = fresh();
    let id = fs.create().expect("create");
    fs.write_at(id, b"x", 0).expect("write");
    let path = fs.object_path(id);
    fs.remove(id).expect("remove");
    assert!(!path.exists());
    assert_eq!(
        errno(&fs.read_at(id, &mut [0u8; 1], 0).expect_err("read")),
        libc::ENOENT
    );
    assert_eq!(
        errno(&fs.write_at(id, b"y", 0).expect_err("write")),
        libc::ENOENT
    );
    assert_eq!(
        errno(&fs.remove(id).expect_err("second remove")),
        libc::ENOENT
    );
    // The id is not handed out again.
    assert_ne!(fs.create().expect("create"), id);
}

#[test]
fn seek_finds_data_and_holes_and_reports_enxio() {
    let (_dir, fs) = fresh();
    let id = fs.create().expect("create");
    fs.set_len(id, 16 << 20).expect("set_len");
    fs.write_at(id, &[1u8; 4096], 8 << 20).expect("write");
    let data = fs.seek(id, 0, libc::SEEK_DATA).expect("seek data");
    assert!(data <= 8 << 20 && data > 0, "data at {data}");
    let hole = fs.seek(id, 8 << 20, libc::SEEK_HOLE).expect("seek hole");
    assert!(
        ((8 << 20) + 4096..=16 << 20).contains(&hole),
        "hole at {hole}"
    );
    assert_eq!(fs.seek(id, 0, libc::SEEK_HOLE).expect("seek hole"), 0);
    let err = fs
        .seek(id, (8 << 20) + 4096 * 256, libc::SEEK_DATA)
        .expect_err("no data after");
    assert_eq!(errno(&err), libc::ENXIO);
    assert_eq!(
        errno(
            &fs.seek(id, 32 << 20, libc::SEEK_HOLE)
                .expect_err("past eof")
        ),
        libc::ENXIO
    );
    assert_eq!(
        errno(&fs.seek(id, u64::MAX, libc::SEEK_DATA).expect_err("huge")),
        libc::ENXIO
    );
}

#[test]
fn allocated_bytes_follows_written_blocks() {
    let (_dir, fs) = fresh();
    let id = fs.create().expect("create");
    assert_eq!(fs.allocated_bytes(id).expect("blocks"), 0);
    fs.write_at(id, &[5u8; 1 << 20], 0).expect("write");
    fs.sync(id, true).expect("sync");
    let bytes = fs.allocated_bytes(id).expect("blocks");
    assert!((1 << 20..2 << 20).contains(&bytes), "{bytes}");
}

#[test]
fn statfs_describes_the_host_filesystem() {
    let (_dir, fs) = fresh();
    let st = fs.statfs().expect("statfs");
    assert!(st.blocks > 0 && st.bsize > 0 && st.frsize > 0 && st.namelen >= 255);
    assert!(st.bavail <= st.bfree && st.bfree <= st.blocks, "{st:?}");
    assert!(st.ffree <= st.files);
}

#[test]
fn usage_counts_objects_and_drops_after_remove() {
    let (_dir, fs) = fresh();
    let a = fs.create().expect("create");
    let b = fs.create().expect("create");
    fs.write_at(a, &[1u8; 4 << 20], 0).expect("write");
    fs.write_at(b, &[2u8; 4096], 0).expect("write");
    fs.sync_all().expect("sync");
    let before = fs.usage();
    assert_eq!(before.objects, 2);
    assert!(before.bytes >= (4 << 20) + 4096, "{before:?}");
    // Remove while a user still holds the file: the path is gone at once.
    let held = fs.host_file(a).expect("host file");
    fs.remove(a).expect("remove");
    let after = fs.usage();
    assert_eq!(after.objects, 1);
    assert!(after.bytes < 1 << 20, "{after:?}");
    drop(held);
}

#[test]
fn host_file_is_the_object() {
    let (_dir, fs) = fresh();
    let id = fs.create().expect("create");
    let file = fs.host_file(id).expect("host file");
    file.write_all_at(b"through the fd", 0).expect("write");
    assert_eq!(read_all(&fs, id, 64), b"through the fd");
    let again = fs.host_file(id).expect("host file");
    assert!(
        Arc::ptr_eq(&file, &again),
        "a cached object must not be reopened"
    );
    assert_eq!(
        errno(&fs.host_file(ContentId(999)).expect_err("missing")),
        libc::ENOENT
    );
}

fn check_clone_independence(fs: &HostFs, try_reflink: bool) {
    let src = fs.create().expect("create");
    fs.write_at(src, b"original content", 0).expect("write");
    let copy = fs.clone_with(src, try_reflink).expect("clone");
    assert_ne!(copy, src);
    assert_eq!(read_all(fs, copy, 64), b"original content");

    fs.write_at(copy, b"CHANGED", 0).expect("write clone");
    fs.set_len(copy, 30).expect("extend clone");
    assert_eq!(read_all(fs, src, 64), b"original content");

    fs.write_at(src, b"SOURCE!", 9).expect("write source");
    assert_eq!(read_all(fs, src, 64), b"original SOURCE!");
    let mut expected = b"CHANGEDl content".to_vec();
    expected.resize(30, 0);
    assert_eq!(read_all(fs, copy, 64), expected);

    fs.remove(src).expect("remove source");
    assert_eq!(read_all(fs, copy, 64), expected);
    assert_eq!(
        errno(&fs.clone_object(src).expect_err("clone of removed")),
        libc::ENOENT
    );
}

#[test]
fn clone_object_is_independent_and_counted() {
    let (_dir, fs) = fresh();
    check_clone_independence(&fs, true);
    let (reflinks, copies) = fs.clone_stats();
    assert_eq!(reflinks + copies, 1);
}

#[test]
fn the_copy_path_is_independent_and_counted() {
    let (_dir, fs) = fresh();
    check_clone_independence(&fs, false);
    assert_eq!(fs.clone_stats(), (0, 1));
}

fn check_sparse_clone(try_reflink: bool) {
    let (_dir, fs) = fresh();
    let src = fs.create().expect("create");
    fs.set_len(src, 64 << 20).expect("set_len");
    fs.write_at(src, &[3u8; 4096], 20 << 20).expect("write");
    let copy = fs.clone_with(src, try_reflink).expect("clone");
    let allocated = fs.allocated_bytes(copy).expect("blocks");
    assert!(
        allocated <= 256 << 10,
        "clone of a sparse file allocated {allocated} bytes"
    );
    let mut buf = vec![0u8; 8192];
    assert_eq!(
        fs.read_at(copy, &mut buf, (20 << 20) - 4096).expect("read"),
        8192
    );
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert!(buf[4096..].iter().all(|&b| b == 3));
    assert_eq!(fs.seek(copy, 0, libc::SEEK_HOLE).expect("hole"), 0);
    let mut tail = [1u8; 16];
    assert_eq!(
        fs.read_at(copy, &mut tail, (64 << 20) - 16).expect("read"),
        16
    );
    assert_eq!(tail, [0u8; 16]);
    assert_eq!(fs.read_at(copy, &mut tail, 64 << 20).expect("read"), 0);
}

#[test]
fn sparse_clone_keeps_holes() {
    check_sparse_clone(true);
}

#[test]
fn sparse_copy_keeps_holes() {
    check_sparse_clone(false);
}

#[test]
fn the_descriptor_cache_stays_bounded() {
    let (_dir, fs) = fresh_with_cache(64);
    let root = fs.root().to_path_buf();
    let before = fds_under(&root);
    assert_eq!(
        before, 3,
        "the lock file, the root directory and the journal"
    );
    let ids: Vec<_> = (0..2000).map(|_| fs.create().expect("create")).collect();
    for (i, &id) in ids.iter().enumerate() {
        fs.write_at(id, &(i as u64).to_le_bytes(), 0)
            .expect("write");
        assert!(fs.cache.len() <= 64);
    }
    for (i, &id) in ids.iter().enumerate().rev() {
        assert_eq!(read_all(&fs, id, 8), (i as u64).to_le_bytes());
    }
    let after = fds_under(&root);
    // Plus one while the pool's filler makes an object.
    assert!(
        after <= before + 64 + 1,
        "{before} fds before, {after} after"
    );
    assert_eq!(fs.cache.len(), 64);
}

#[test]
fn concurrent_use_with_a_tiny_cache_keeps_data_and_the_bound() {
    const THREADS: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = Arc::new(
        HostFs::open(
            &dir.path().join("root"),
            HostFsOptions { max_open_files: 4 },
        )
        .expect("open"),
    );
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let fs = Arc::clone(&fs);
            let barrier = Arc::clone(&barrier);
            std::thread::Builder::new()
                .name(format!("hostfs-test-{t}"))
                .spawn(move || {
                    let ids: Vec<_> = (0..20).map(|_| fs.create().expect("create")).collect();
                    barrier.wait();
                    for round in 0..20u8 {
                        for (k, &id) in ids.iter().enumerate() {
                            let tag = [t as u8, k as u8, round];
                            fs.write_at(id, &tag, 0).expect("write");
                            assert_eq!(read_all(&fs, id, 3), tag);
                        }
                        let copy = fs.clone_object(ids[round as usize]).expect("clone");
                        assert_eq!(read_all(&fs, copy, 3), [t as u8, round, round]);
                        fs.remove(copy).expect("remove");
                    }
                })
                .expect("spawn")
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked");
    }
    assert!(fs.cache.len() <= 4);
    // The lock, the root, the cache, and one while the pool's filler makes an object.
    assert!(fds_under(fs.root()) <= 2 + 4 + 1);
    assert_eq!(fs.usage().objects, (THREADS * 20) as u64);
}

#[test]
fn default_root_follows_xdg_then_home() {
    assert_eq!(
        root_from(Some("/data".into()), Some("/home/u".into())),
        PathBuf::from("/data/agentfs/default")
    );
    assert_eq!(
        root_from(None, Some("/home/u".into())),
        PathBuf::from("/home/u/.local/share/agentfs/default")
    );
    // Empty and relative XDG_DATA_HOME are ignored, as the XDG spec says.
    assert_eq!(
        root_from(Some("".into()), Some("/home/u".into())),
        PathBuf::from("/home/u/.local/share/agentfs/default")
    );
    assert_eq!(
        root_from(Some("rel".into()), Some("/home/u".into())),
        PathBuf::from("/home/u/.local/share/agentfs/default")
    );
    assert!(root_from(None, None).ends_with(".local/share/agentfs/default"));
}

#[test]
fn an_object_from_the_pool_is_as_new_as_its_create() {
    let (_dir, fs) = fresh();
    // The first create starts the pool's filler; give it time to make some.
    fs.create().expect("create");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before = std::time::SystemTime::now();
    let id = fs.create().expect("create");
    let (len, mtime) = fs.len_and_mtime(id).expect("stat");
    assert_eq!(len, 0);
    assert!(
        mtime >= before,
        "object mtime {mtime:?} predates its create at {before:?}"
    );
}

/// An object whose file left the descriptor cache but whose path the kernel
/// still has cached is opened by `host_file_is_quick` itself (openat2 with
/// RESOLVE_CACHED), so an open of it can be answered without a hand-off; an
/// object that does not exist is not quick, and nothing is opened for it.
#[test]
fn an_evicted_object_with_a_cached_path_is_reopened_quickly() {
    let (_dir, fs) = fresh_with_cache(4);
    let first = fs.create().expect("create");
    fs.write_at(first, b"kept", 0).expect("write");
    for _ in 0..16 {
        fs.create().expect("create");
    }
    assert!(!fs.cache.contains(first), "evicted by the later objects");
    assert!(fs.host_file_is_quick(first));
    assert!(fs.cache.contains(first), "opened into the cache");
    assert_eq!(read_all(&fs, first, 4), b"kept");
    let missing = ContentId(first.0 + 1_000_000);
    assert!(!fs.host_file_is_quick(missing));
    assert!(!fs.cache.contains(missing));
}
