//! Persistence on a real mount: files (data, sizes, sparse holes), a
//! directory tree, a symlink, a hard link, an xattr, a snapshot, a branch and
//! the branch's own changes survive a clean unmount and remount of the same
//! backstore, and a `kill -9` of the daemon after they were synced.

mod common;

use common::Mount;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

fn big() -> Vec<u8> {
    (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn write_synced(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::File::open(path).unwrap().sync_all().unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn get_xattr(path: &Path, name: &str) -> Vec<u8> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(rc >= 0, "getxattr: {}", std::io::Error::last_os_error());
    buf.truncate(rc as usize);
    buf
}

fn populate(m: &Mount) {
    fs::create_dir(m.join("d")).unwrap();
    write_synced(&m.join("d/a.txt"), b"alpha");
    write_synced(&m.join("big"), &big());
    std::os::unix::fs::symlink("d/a.txt", m.join("ln")).unwrap();
    fs::hard_link(m.join("d/a.txt"), m.join("hard")).unwrap();
    set_xattr(&m.join("d/a.txt"), "user.color", b"blue");
    let sparse = fs::File::create(m.join("sparse")).unwrap();
    sparse.set_len(10 << 20).unwrap();
    sparse.write_all_at(b"mid", 5 << 20).unwrap();
    sparse.sync_all().unwrap();
    drop(sparse);
    m.snapshot("base");
    m.branch("base", "feature");
    let feature = m.join(".agentfs/branches/feature");
    write_synced(&feature.join("d/a.txt"), b"feature-alpha");
    write_synced(&feature.join("only-in-feature"), b"f");
    write_synced(&m.join("main-after"), b"after the snapshot");
    // fsync of a directory makes every metadata change durable (links, xattrs).
    fs::File::open(m.path()).unwrap().sync_all().unwrap();
}

fn verify(m: &Mount) {
    assert_eq!(fs::read(m.join("d/a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::read(m.join("big")).unwrap(), big());
    assert_eq!(fs::read_link(m.join("ln")).unwrap(), Path::new("d/a.txt"));
    assert_eq!(fs::read(m.join("ln")).unwrap(), b"alpha");
    assert_eq!(fs::metadata(m.join("hard")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(m.join("hard")).unwrap().ino(),
        fs::metadata(m.join("d/a.txt")).unwrap().ino()
    );
    assert_eq!(get_xattr(&m.join("d/a.txt"), "user.color"), b"blue");
    let sparse = fs::read(m.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 10 << 20);
    assert_eq!(&sparse[5 << 20..(5 << 20) + 3], b"mid");
    assert!(sparse[..5 << 20].iter().all(|&b| b == 0));
    assert_eq!(
        fs::read(m.join("main-after")).unwrap(),
        b"after the snapshot"
    );
    let feature = m.join(".agentfs/branches/feature");
    assert_eq!(fs::read(feature.join("d/a.txt")).unwrap(), b"feature-alpha");
    assert_eq!(fs::read(feature.join("hard")).unwrap(), b"feature-alpha");
    assert_eq!(fs::read(feature.join("only-in-feature")).unwrap(), b"f");
    assert!(!feature.join("main-after").exists());
    assert!(!m.join("only-in-feature").exists());
    let snapshots = m.cli_json(&["snapshot-list"]);
    assert!(snapshots.to_string().contains("\"base\""), "{snapshots}");
    // The snapshot kept its point in time: a new branch of it shows it.
    m.branch("base", "check");
    let check = m.join(".agentfs/branches/check");
    assert_eq!(fs::read(check.join("d/a.txt")).unwrap(), b"alpha");
    assert!(!check.join("main-after").exists());
    assert!(!check.join("only-in-feature").exists());
    // New changes keep working after the restart.
    write_synced(&m.join("new"), b"new");
    assert_eq!(fs::read(m.join("new")).unwrap(), b"new");
}

#[test]
fn everything_survives_unmount_and_remount() {
    let mut m = mount_or_skip!();
    populate(&m);
    m.remount();
    verify(&m);
    // And once more, with the changes verify made.
    m.cli_ok(&["branch-delete", "check"]);
    m.remount();
    assert_eq!(fs::read(m.join("new")).unwrap(), b"new");
    assert_eq!(
        fs::read(m.join(".agentfs/branches/feature/d/a.txt")).unwrap(),
        b"feature-alpha"
    );
    assert!(!m.join(".agentfs/branches/check").exists());
}

#[test]
fn synced_state_survives_kill_9_of_the_daemon() {
    let mut m = mount_or_skip!();
    populate(&m);
    m.crash_and_remount();
    verify(&m);
}
