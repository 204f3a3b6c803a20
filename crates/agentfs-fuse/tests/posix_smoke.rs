//! POSIX smoke tests on a real AgentFS mount: the system calls that git,
//! cargo and editors lean on, each checked by the values it leaves behind
//! (contents, sizes, link counts, inode numbers, modes, times, errnos), not by
//! exit codes alone. The conformance suites (pjdfstest, fsx) go deeper; these
//! catch a broken adapter in seconds.

mod common;

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::{cpath, errno, is_root};

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn write(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()))
}

/// The byte at offset `i` of the 3 MiB test pattern: not periodic at any
/// power of two, so a block read from the wrong offset cannot match.
fn pattern(i: usize) -> u8 {
    ((i * 7 + i / 4093) % 251) as u8
}

#[test]
fn write_and_read_back_small_and_large_files() {
    let m = mount_or_skip!();
    let small = m.join("hello.txt");
    write(&small, b"hello, agentfs\n");
    assert_eq!(read(&small), b"hello, agentfs\n");
    assert_eq!(fs::metadata(&small).unwrap().len(), 15);

    const LEN: usize = 3 << 20;
    let data: Vec<u8> = (0..LEN).map(pattern).collect();
    let big = m.join("big.bin");
    {
        let mut f = File::create(&big).unwrap();
        // Several writes of odd sizes, so requests straddle page boundaries.
        for chunk in data.chunks(100_003) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(fs::metadata(&big).unwrap().len(), LEN as u64);
    let back = read(&big);
    assert_eq!(back.len(), LEN);
    assert!(back == data, "3 MiB file read back differs");

    let f = File::open(&big).unwrap();
    for &(off, len) in &[
        (0usize, 10usize),
        (4095, 2),
        (4096, 4096),
        (131_071, 300_000),
        (1 << 20, 1 << 20),
        (LEN - 17, 17),
    ] {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(buf == data[off..off + len], "read at {off}+{len} differs");
    }
    // Reads past the end are short.
    let mut buf = [0u8; 64];
    assert_eq!(f.read_at(&mut buf, LEN as u64 - 10).unwrap(), 10);
    assert_eq!(f.read_at(&mut buf, LEN as u64 + 10).unwrap(), 0);

    // Overwrite in the middle and read around it.
    let fw = OpenOptions::new().write(true).open(&big).unwrap();
    fw.write_all_at(b"XYZ", 2_000_000).unwrap();
    drop(fw);
    let mut around = [0u8; 5];
    File::open(&big)
        .unwrap()
        .read_exact_at(&mut around, 1_999_999)
        .unwrap();
    assert_eq!(
        around,
        [pattern(1_999_999), b'X', b'Y', b'Z', pattern(2_000_003)]
    );
    assert_eq!(fs::metadata(&big).unwrap().len(), LEN as u64);
}

#[test]
fn append_trunc_and_excl_open_flags() {
    let m = mount_or_skip!();
    let p = m.join("flags.txt");
    write(&p, b"one\n");

    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"two\n").unwrap();
    // O_APPEND writes at the end even after a seek to the start.
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"three\n").unwrap();
    drop(f);
    assert_eq!(read(&p), b"one\ntwo\nthree\n");

    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 0, "O_TRUNC left data");
    f.write_all(b"fresh").unwrap();
    drop(f);
    assert_eq!(read(&p), b"fresh");

    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
    assert_eq!(read(&p), b"fresh", "failed O_EXCL must not touch the file");

    let q = m.join("excl-new.txt");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&q)
        .unwrap();
    f.write_all(b"new").unwrap();
    drop(f);
    assert_eq!(read(&q), b"new");
    assert_eq!(
        fs::metadata(&q).unwrap().permissions().mode() & 0o7777,
        0o600
    );
}

#[test]
fn directories_and_renames() {
    let m = mount_or_skip!();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    assert!(fs::metadata(&d).unwrap().is_dir());
    let err = fs::create_dir(&d).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    fs::create_dir_all(d.join("sub/deeper")).unwrap();
    write(&d.join("sub/deeper/f"), b"x");

    let err = fs::remove_dir(d.join("sub")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{err}");
    fs::remove_file(d.join("sub/deeper/f")).unwrap();
    fs::remove_dir(d.join("sub/deeper")).unwrap();
    fs::remove_dir(d.join("sub")).unwrap();
    assert!(!d.join("sub").exists());
    // A directory's link count: 2 + number of subdirectories.
    fs::create_dir(d.join("s1")).unwrap();
    fs::create_dir(d.join("s2")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 4);

    // rename over an existing file replaces it.
    let a = m.join("a");
    let b = m.join("b");
    write(&a, b"content of a");
    write(&b, b"content of b");
    let ino_a = fs::metadata(&a).unwrap().ino();
    fs::rename(&a, &b).unwrap();
    assert!(!a.exists());
    assert_eq!(read(&b), b"content of a");
    assert_eq!(fs::metadata(&b).unwrap().ino(), ino_a);
    // rename into another directory.
    fs::rename(&b, d.join("moved")).unwrap();
    assert_eq!(read(&d.join("moved")), b"content of a");
    assert!(!b.exists());
    // rename a directory with content.
    fs::rename(&d, m.join("d2")).unwrap();
    assert_eq!(read(&m.join("d2/moved")), b"content of a");
    assert!(!d.exists());
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> Result<(), i32> {
    let (from, to) = (cpath(from), cpath(to));
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call;
    // renameat2 takes them and plain integers only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

#[test]
fn rename_noreplace_and_exchange() {
    let m = mount_or_skip!();
    let x = m.join("x");
    let y = m.join("y");
    write(&x, b"xx");
    write(&y, b"yyy");

    assert_eq!(
        renameat2(&x, &y, libc::RENAME_NOREPLACE),
        Err(libc::EEXIST),
        "RENAME_NOREPLACE over an existing file"
    );
    assert_eq!(read(&x), b"xx");
    assert_eq!(read(&y), b"yyy");

    let z = m.join("z");
    renameat2(&x, &z, libc::RENAME_NOREPLACE).expect("RENAME_NOREPLACE to a new name");
    assert!(!x.exists());
    assert_eq!(read(&z), b"xx");

    let ino_y = fs::metadata(&y).unwrap().ino();
    let ino_z = fs::metadata(&z).unwrap().ino();
    renameat2(&y, &z, libc::RENAME_EXCHANGE).expect("RENAME_EXCHANGE");
    assert_eq!(read(&y), b"xx");
    assert_eq!(read(&z), b"yyy");
    assert_eq!(fs::metadata(&y).unwrap().ino(), ino_z);
    assert_eq!(fs::metadata(&z).unwrap().ino(), ino_y);

    // Exchange a file with a directory.
    let dir = m.join("dir");
    fs::create_dir(&dir).unwrap();
    write(&dir.join("inside"), b"i");
    renameat2(&y, &dir, libc::RENAME_EXCHANGE).expect("RENAME_EXCHANGE file<->dir");
    assert!(fs::metadata(&y).unwrap().is_dir());
    assert_eq!(read(&y.join("inside")), b"i");
    assert_eq!(read(&dir), b"xx");

    assert_eq!(
        renameat2(&m.join("missing"), &z, libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );
}

#[test]
fn hard_links_and_symlinks() {
    let m = mount_or_skip!();
    let orig = m.join("orig");
    write(&orig, b"linked");
    let link = m.join("link");
    fs::hard_link(&orig, &link).unwrap();
    let (mo, ml) = (fs::metadata(&orig).unwrap(), fs::metadata(&link).unwrap());
    assert_eq!(mo.ino(), ml.ino(), "hard link has a different inode");
    assert_eq!(mo.nlink(), 2);
    assert_eq!(ml.nlink(), 2);
    // A write through one name shows through the other.
    OpenOptions::new()
        .append(true)
        .open(&link)
        .unwrap()
        .write_all(b"+more")
        .unwrap();
    assert_eq!(read(&orig), b"linked+more");
    fs::remove_file(&orig).unwrap();
    assert_eq!(fs::metadata(&link).unwrap().nlink(), 1);
    assert_eq!(read(&link), b"linked+more");

    let sl = m.join("sl");
    std::os::unix::fs::symlink("link", &sl).unwrap();
    assert_eq!(fs::read_link(&sl).unwrap(), Path::new("link"));
    let lmeta = fs::symlink_metadata(&sl).unwrap();
    assert!(lmeta.file_type().is_symlink());
    assert_eq!(lmeta.len(), 4, "symlink size is its target's length");
    assert_eq!(read(&sl), b"linked+more", "following the symlink");

    let dangling = m.join("dangling");
    std::os::unix::fs::symlink("/nonexistent/target/of/a/link", &dangling).unwrap();
    assert_eq!(
        fs::read_link(&dangling).unwrap(),
        Path::new("/nonexistent/target/of/a/link")
    );
    assert_eq!(
        fs::metadata(&dangling).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn chmod_chown_utimensat_and_truncate() {
    let m = mount_or_skip!();
    let p = m.join("attrs");
    write(&p, b"0123456789");

    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4755);

    if is_root() {
        let c = cpath(&p);
        // SAFETY: `c` is a valid path string; chown takes plain ids.
        let rc = unsafe { libc::chown(c.as_ptr(), 1234, 5678) };
        assert_eq!(rc, 0, "chown: errno {}", errno());
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
    } else {
        println!("note: not root, chown part skipped");
    }

    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    let c = cpath(&p);
    // SAFETY: `c` is a valid path and `times` an array of two timespecs, as
    // utimensat(2) requires; both outlive the call.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat: errno {}", errno());
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 987_654_321));

    // truncate down, then up: the extension reads as zeros.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(4).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 4);
    assert_eq!(read(&p), b"0123");
    f.set_len(8192).unwrap();
    drop(f);
    let data = read(&p);
    assert_eq!(data.len(), 8192);
    assert_eq!(&data[..4], b"0123");
    assert!(data[4..].iter().all(|&b| b == 0), "extension is not zeros");
    // truncate(2) by path.
    // SAFETY: `c` is a valid path; truncate takes a plain length.
    let rc = unsafe { libc::truncate(c.as_ptr(), 2) };
    assert_eq!(rc, 0, "truncate: errno {}", errno());
    assert_eq!(read(&p), b"01");
}

#[test]
fn fallocate_punch_hole_reads_zeros() {
    let m = mount_or_skip!();
    let p = m.join("holes");
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 253) as u8 + 1).collect();
    write(&p, &data);
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: `fd` is an open descriptor owned by `f`, which outlives the call.
    let rc = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            65_536,
            65_536,
        )
    };
    assert_eq!(rc, 0, "fallocate(PUNCH_HOLE): errno {}", errno());
    assert_eq!(
        f.metadata().unwrap().len(),
        data.len() as u64,
        "size changed"
    );
    let back = read(&p);
    assert_eq!(back.len(), data.len());
    assert!(
        back[..65_536] == data[..65_536],
        "data before the hole changed"
    );
    assert!(
        back[65_536..131_072].iter().all(|&b| b == 0),
        "hole does not read as zeros"
    );
    assert!(
        back[131_072..] == data[131_072..],
        "data after the hole changed"
    );

    // Plain fallocate extends the file.
    // SAFETY: as above.
    let rc = unsafe { libc::fallocate(fd, 0, 0, 1 << 20) };
    assert_eq!(rc, 0, "fallocate(0): errno {}", errno());
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> Result<(), i32> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: path and name are valid C strings, `value` a valid buffer of
    // the given length; all outlive the call.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 65_536];
    // SAFETY: valid C strings and a writable buffer of `buf.len()` bytes.
    let rc = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(errno());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn listxattr(p: &Path) -> BTreeSet<String> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65_536];
    // SAFETY: a valid C string and a writable buffer of `buf.len()` bytes.
    let rc = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(rc >= 0, "listxattr: errno {}", errno());
    buf.truncate(rc as usize);
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn removexattr(p: &Path, name: &str) -> Result<(), i32> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid C strings that outlive the call.
    let rc = unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

#[test]
fn user_xattrs() {
    let m = mount_or_skip!();
    let p = m.join("xattrs");
    write(&p, b"x");

    setxattr(&p, "user.one", b"1", 0).expect("setxattr user.one");
    setxattr(&p, "user.two", b"second value", 0).expect("setxattr user.two");
    let big: Vec<u8> = (0..4000).map(|i| (i % 256) as u8).collect();
    setxattr(&p, "user.binary", &big, 0).expect("setxattr user.binary");
    assert_eq!(getxattr(&p, "user.one").unwrap(), b"1");
    assert_eq!(getxattr(&p, "user.two").unwrap(), b"second value");
    assert_eq!(getxattr(&p, "user.binary").unwrap(), big);
    let names = listxattr(&p);
    for n in ["user.one", "user.two", "user.binary"] {
        assert!(names.contains(n), "{n} missing from listxattr {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("user.")
            && !["user.one", "user.two", "user.binary"].contains(&n.as_str())),
        "unexpected user xattrs: {names:?}"
    );

    assert_eq!(
        setxattr(&p, "user.one", b"again", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(getxattr(&p, "user.one").unwrap(), b"1");
    assert_eq!(
        setxattr(&p, "user.absent", b"v", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    assert_eq!(getxattr(&p, "user.absent"), Err(libc::ENODATA));
    setxattr(&p, "user.one", b"replaced", libc::XATTR_REPLACE).expect("XATTR_REPLACE existing");
    assert_eq!(getxattr(&p, "user.one").unwrap(), b"replaced");

    removexattr(&p, "user.one").expect("removexattr");
    assert_eq!(getxattr(&p, "user.one"), Err(libc::ENODATA));
    assert_eq!(removexattr(&p, "user.one"), Err(libc::ENODATA));
    let names = listxattr(&p);
    assert!(!names.contains("user.one"), "{names:?}");
    assert!(names.contains("user.two"), "{names:?}");

    // Directories carry xattrs too.
    let d = m.join("xd");
    fs::create_dir(&d).unwrap();
    setxattr(&d, "user.dir", b"on a dir", 0).expect("setxattr on a directory");
    assert_eq!(getxattr(&d, "user.dir").unwrap(), b"on a dir");
}

/// A `system.posix_acl_access` value: version 2, then (tag, perm, id).
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn an_acl_the_mode_can_express_sets_the_mode() {
    const UNDEFINED: u32 = u32::MAX;
    let m = mount_or_skip!();
    let p = m.join("acl");
    write(&p, b"x");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    // What `cp -a` sets for a 0754 file before it falls back to fchmod.
    let owner_group_other = acl(&[
        (0x01, 7, UNDEFINED),
        (0x04, 5, UNDEFINED),
        (0x20, 4, UNDEFINED),
    ]);
    setxattr(&p, "system.posix_acl_access", &owner_group_other, 0).expect("a trivial ACL");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o754);
    // No ACL is stored: the mode is all there is.
    assert!(!listxattr(&p).iter().any(|n| n.starts_with("system.")));
    let named_user = acl(&[
        (0x01, 7, UNDEFINED),
        (0x02, 7, 4242),
        (0x04, 5, UNDEFINED),
        (0x10, 7, UNDEFINED),
        (0x20, 4, UNDEFINED),
    ]);
    assert_eq!(
        setxattr(&p, "system.posix_acl_access", &named_user, 0),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o754);

    // cp -a carries the mode over without a complaint, through the ACL.
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("tool");
    fs::write(&file, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o751)).unwrap();
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&file)
        .arg(m.join("tool"))
        .output()
        .expect("cp");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "cp -a: {out:?}"
    );
    assert_eq!(fs::metadata(m.join("tool")).unwrap().mode() & 0o7777, 0o751);
}

#[test]
fn special_files_and_unlinked_open_file() {
    let m = mount_or_skip!();
    let fifo = m.join("fifo");
    let c = cpath(&fifo);
    // SAFETY: `c` is a valid path string.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo: errno {}", errno());
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    if is_root() {
        let dev = m.join("null-like");
        let c = cpath(&dev);
        let rdev = libc::makedev(1, 3);
        // SAFETY: `c` is a valid path string; mode and device are integers.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, rdev) };
        assert_eq!(rc, 0, "mknod(S_IFCHR): errno {}", errno());
        let md = fs::symlink_metadata(&dev).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), rdev);
        assert_eq!(md.mode() & 0o7777, 0o600);
    } else {
        println!("note: not root, mknod of a char device skipped");
    }

    // Unlink of an open file: the fd keeps working until closed.
    let p = m.join("doomed");
    write(&p, b"still here");
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(fs::metadata(&p).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(!fs::read_dir(m.path())
        .unwrap()
        .any(|e| e.unwrap().file_name() == "doomed"));
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"still here");
    f.write_all_at(b"STILL", 0).unwrap();
    let mut buf = [0u8; 10];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"STILL here");
    drop(f);
    // The name can be reused for a new, unrelated file.
    write(&p, b"new");
    assert_eq!(read(&p), b"new");
}

/// Every name readdir(3) returns for `dir`, including `.` and `..`.
fn raw_readdir(dir: &Path) -> Vec<String> {
    let c = cpath(dir);
    // SAFETY: `c` is a valid path string.
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!d.is_null(), "opendir: errno {}", errno());
    let mut names = Vec::new();
    loop {
        // SAFETY: `d` is a valid, open DIR stream, used from this thread only.
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated
        // and stays valid until the next readdir/closedir on `d`.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: `d` is open and not used afterwards.
    unsafe { libc::closedir(d) };
    names
}

#[test]
fn readdir_statfs_and_control_dir() {
    let m = mount_or_skip!();
    let d = m.join("listing");
    fs::create_dir(&d).unwrap();
    let mut created = BTreeSet::new();
    for i in 0..150 {
        let name = format!("entry-{i:03}-{}", "n".repeat(i % 40));
        write(&d.join(&name), b"");
        created.insert(name);
    }
    fs::create_dir(d.join("subdir")).unwrap();
    created.insert("subdir".to_string());

    let names = raw_readdir(&d);
    let set: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(names.len(), set.len(), "readdir returned duplicates");
    let mut want = created.clone();
    want.insert(".".into());
    want.insert("..".into());
    assert_eq!(set, want);

    // The root: created names only, no `.agentfs`.
    write(&m.join("top-file"), b"t");
    fs::create_dir(m.join("top-dir")).unwrap();
    let root: BTreeSet<String> = raw_readdir(m.path()).into_iter().collect();
    let want: BTreeSet<String> = [".", "..", "listing", "top-file", "top-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(root, want, "root listing (must not show .agentfs)");

    let control = m.join(".agentfs/control");
    let text = fs::read_to_string(&control).expect(".agentfs/control is readable");
    assert!(!text.trim().is_empty(), ".agentfs/control is empty");

    let c = cpath(m.path());
    // SAFETY: an all-zero statvfs is a valid value for the out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs: errno {}", errno());
    assert!(st.f_blocks > 0, "statfs reports zero blocks");
    assert!(st.f_bsize > 0, "statfs reports zero block size");
    assert!(st.f_bfree <= st.f_blocks);
}

#[test]
fn read_only_truncating_open_of_a_running_program_is_etxtbsy() {
    // pjdfstest open::etxtbsy: with FUSE_ATOMIC_O_TRUNC an O_RDONLY|O_TRUNC
    // open truncates in the daemon before the kernel checks for a running
    // program, so the program was cut to nothing (and died of SIGBUS) although
    // the open failed. The file must stay whole and the program alive.
    let m = mount_or_skip!();
    let prog = m.join("prog");
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a sleep binary");
    fs::copy(sleep, &prog).unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    let len = fs::metadata(&prog).unwrap().len();
    assert!(len > 0);

    // Under `cargo test` another test's fork may hold a copy of the write
    // descriptor fs::copy just closed, until its exec: ETXTBSY for a moment.
    let mut child = (0..100)
        .find_map(
            |_| match std::process::Command::new(&prog).arg("30").spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
                other => Some(other.unwrap()),
            },
        )
        .expect("the program stayed busy");
    let err = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(&prog)
        .expect_err("O_RDONLY|O_TRUNC open of a running program succeeded");
    let still_running = child.try_wait().unwrap().is_none();
    let len_after = fs::metadata(&prog).unwrap().len();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
    assert_eq!(len_after, len, "the running program was truncated");
    assert!(still_running, "the running program died");

    // Once it has exited, the same open truncates: at once on a local
    // filesystem; here once the exec open's RELEASE has reached the daemon,
    // which the kernel sends a moment after the exit (adapter/exec_opens.rs).
    let mut last = None;
    let truncated = common::wait_until(
        std::time::Duration::from_secs(5),
        || match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(&prog)
        {
            Ok(_) => true,
            Err(e) => {
                last = Some(e);
                false
            }
        },
    );
    assert!(
        truncated,
        "still refused 5 s after the program exited: {last:?}"
    );
    assert_eq!(fs::metadata(&prog).unwrap().len(), 0);
}
