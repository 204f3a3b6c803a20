//! Names, shapes and limits on a real mount: the answers Linux filesystems
//! give, or correct behaviour, and never a crash or a hang of the daemon.
//!
//! - Path components of 255 bytes work for every operation that makes or
//!   finds a name (create, mkdir, mknod, symlink, link, rename, lookup,
//!   unlink, rmdir) and 256 bytes get `ENAMETOOLONG` from each; xattr names
//!   of 255 bytes work and 256 get `ERANGE` (the kernel's answer for xattr
//!   names, as on ext4).
//! - Names that are not UTF-8 round-trip byte for byte through readdir,
//!   rename, symlink targets and branch views.
//! - Symlink targets are stored verbatim (`..`, `.`, trailing `/`) and
//!   resolved by the kernel; 4095-byte targets work, 4096 are `ENAMETOOLONG`.
//! - A tree 2,000 levels deep (walked with `openat`/`mkdirat`, far past
//!   `PATH_MAX` as an absolute path) is made, read in a branch, and removed
//!   with `rm -rf`; an absolute path of 4095 bytes resolves, 4096 is
//!   `ENAMETOOLONG`.
//! - One directory with many entries: create, readdir count, lookups, delete,
//!   twice, with the daemon's RSS per entry and after each round printed.
//! - Limits: 5,000 descriptors open at once in one process (a snapshot taken
//!   with all of them open is still point in time); 2,000 snapshots and 2,000
//!   branches through the control socket, twice; the daemon's RSS per
//!   snapshot and per branch, and after deleting them.
//!
//! Memory is asserted only against bounds a real fault would break: an
//! empty file under 8 KiB, a snapshot or branch under 64 KiB (a copy of the
//! 1,000-file tree per snapshot would be far more), and the second round's
//! peak RSS within half the first round's growth of the first (a leak of
//! what a round creates would add all of it again).
//!
//! Sizes come from environment variables, so that `just test-fuse-limits`
//! runs the long versions: `AGENTFS_NAMES_DIR_ENTRIES` (default 10,000),
//! `AGENTFS_NAMES_DEPTH` (2,000), `AGENTFS_LIMITS_OPEN_FILES` (5,000),
//! `AGENTFS_LIMITS_BRANCHES` (2,000), `AGENTFS_LIMITS_TREE_FILES` (1,000),
//! `AGENTFS_LIMITS_ROUNDS` (2); the transport pass of `just test-unit` runs
//! the entries and branches at a quarter of their defaults. The memory tests
//! run their daemon with `MALLOC_ARENA_MAX=1` (see [`mount_for_memory`]). Each test
//! prints what it measured as lines starting with `limits:` (visible with
//! `--no-capture`).

mod common;

use agentfs_control::client::{discover, Client};
use agentfs_control::{Command, Reply};
use common::*;
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command as Process;
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A size for a heavy test: `var` if set, else `default`, or a quarter of it
/// in the transport pass of `just test-unit` (`AGENTFS_PASSTHROUGH=off`),
/// which repeats every mount test: these depend little on the data path, and
/// CI time is better spent elsewhere.
fn size(var: &str, default: usize) -> usize {
    let transport_pass = std::env::var("AGENTFS_PASSTHROUGH").as_deref() == Ok("off");
    let default = if transport_pass {
        (default / 4).max(1)
    } else {
        default
    };
    env_usize(var, default)
}

fn cstr(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("no NUL in test names")
}

/// `Ok(ret)` for a non-negative libc return, else `Err(errno)`.
fn sys(ret: libc::c_int) -> Result<libc::c_int, i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

fn sys_size(ret: libc::ssize_t) -> Result<usize, i32> {
    usize::try_from(ret).map_err(|_| errno())
}

fn errname(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

/// Open a directory (`O_PATH` is not enough for `*at` creation).
fn open_dir(path: &Path) -> OwnedFd {
    let p = cpath(path);
    // SAFETY: `p` is a valid NUL-terminated path; the returned fd is owned below.
    let fd = sys(unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) })
        .unwrap_or_else(|e| panic!("open dir {}: {}", path.display(), errname(e)));
    // SAFETY: `fd` was just opened and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn openat(dir: &OwnedFd, name: &[u8], flags: libc::c_int) -> Result<OwnedFd, i32> {
    let n = cstr(name);
    // SAFETY: `dir` is an open directory fd, `n` a valid C string.
    let fd = sys(unsafe { libc::openat(dir.as_raw_fd(), n.as_ptr(), flags, 0o644) })?;
    // SAFETY: `fd` was just opened and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mkdirat(dir: &OwnedFd, name: &[u8]) -> Result<(), i32> {
    let n = cstr(name);
    // SAFETY: valid fd and C string.
    sys(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o755) }).map(drop)
}

fn unlinkat(dir: &OwnedFd, name: &[u8], flags: libc::c_int) -> Result<(), i32> {
    let n = cstr(name);
    // SAFETY: valid fd and C string.
    sys(unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), flags) }).map(drop)
}

fn fstatat(dir: &OwnedFd, name: &[u8]) -> Result<libc::stat, i32> {
    let n = cstr(name);
    // SAFETY: an all-zero `stat` is a valid value for the kernel to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and out pointer.
    sys(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            n.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

fn write_all(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: `data` is valid for `data.len()` bytes; `fd` is open.
    let n = sys_size(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })
        .unwrap_or_else(|e| panic!("write: {}", errname(e)));
    assert_eq!(n, data.len(), "short write");
}

fn read_some(fd: &OwnedFd, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` is valid for `len` bytes; `fd` is open.
    let n = sys_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, 0) })
        .unwrap_or_else(|e| panic!("pread: {}", errname(e)));
    buf.truncate(n);
    buf
}

fn abs(m: &Mount, name: &[u8]) -> CString {
    let mut p = m.path().as_os_str().as_bytes().to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    cstr(&p)
}

/// The names in `dir`, as bytes, without `.` and `..`.
fn names_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    names
}

/// The daemon's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn names_of_255_bytes_work_and_256_are_enametoolong() {
    let m = mount_or_skip!();
    let long = |c: u8, n: usize| vec![c; n];
    let (f255, d255, p255, s255, l255, r255) = (
        long(b'f', 255),
        long(b'd', 255),
        long(b'p', 255),
        long(b's', 255),
        long(b'l', 255),
        long(b'r', 255),
    );
    let path = |n: &[u8]| abs(&m, n);

    // 255 bytes: every operation that makes or finds a name works.
    // SAFETY (all calls in this test): arguments are valid C strings built
    // above and plain integers; returned fds are closed at once.
    unsafe {
        let fd = sys(libc::open(
            path(&f255).as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o644,
        ))
        .expect("create a 255-byte name");
        libc::close(fd);
        sys(libc::mkdir(path(&d255).as_ptr(), 0o755)).expect("mkdir 255");
        sys(libc::mknod(path(&p255).as_ptr(), libc::S_IFIFO | 0o644, 0)).expect("mkfifo 255");
        sys(libc::symlink(path(&f255).as_ptr(), path(&s255).as_ptr())).expect("symlink 255");
        sys(libc::link(path(&f255).as_ptr(), path(&l255).as_ptr())).expect("link 255");
        sys(libc::rename(path(&l255).as_ptr(), path(&r255).as_ptr())).expect("rename 255");
        let xname = cstr(&[b"user.".as_slice(), &long(b'x', 250)].concat());
        sys(libc::setxattr(
            path(&f255).as_ptr(),
            xname.as_ptr(),
            b"v".as_ptr().cast(),
            1,
            0,
        ))
        .expect("setxattr with a 255-byte name");
        let mut buf = [0u8; 8];
        let n = sys_size(libc::getxattr(
            path(&f255).as_ptr(),
            xname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        ))
        .expect("getxattr 255");
        assert_eq!(&buf[..n], b"v");
    }
    let names = names_in(m.path());
    for n in [&f255, &d255, &p255, &s255, &r255] {
        assert!(names.contains(n), "readdir lost a 255-byte name");
    }
    assert_eq!(
        fs::read_link(m.path().join(OsStr::from_bytes(&s255))).unwrap(),
        Path::new(OsStr::from_bytes(path(&f255).as_bytes()))
    );
    assert_eq!(
        fs::metadata(m.path().join(OsStr::from_bytes(&r255)))
            .unwrap()
            .len(),
        0
    );

    // 256 bytes (and far more): ENAMETOOLONG from each, nothing created.
    for n in [256usize, 1000, 1024, 1025, 4000] {
        let x = long(b'x', n);
        let t = |what: &str, ret: libc::c_int| {
            let got = sys(ret).map(drop);
            assert_eq!(
                got,
                Err(libc::ENAMETOOLONG),
                "{what} with a {n}-byte component: {:?}",
                got.map_err(errname)
            );
        };
        // SAFETY: valid C strings and plain integers; a stray fd from an
        // unexpected success would be reported by the assertion, not used.
        unsafe {
            let st = &mut std::mem::zeroed::<libc::stat>();
            t(
                "create",
                libc::open(path(&x).as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644),
            );
            t("open", libc::open(path(&x).as_ptr(), libc::O_RDONLY));
            t("stat", libc::lstat(path(&x).as_ptr(), st));
            t("mkdir", libc::mkdir(path(&x).as_ptr(), 0o755));
            t(
                "mknod",
                libc::mknod(path(&x).as_ptr(), libc::S_IFIFO | 0o644, 0),
            );
            t(
                "symlink",
                libc::symlink(c"target".as_ptr(), path(&x).as_ptr()),
            );
            t("link", libc::link(path(&f255).as_ptr(), path(&x).as_ptr()));
            t(
                "rename to",
                libc::rename(path(&f255).as_ptr(), path(&x).as_ptr()),
            );
            t(
                "rename from",
                libc::rename(path(&x).as_ptr(), path(b"other").as_ptr()),
            );
            t("unlink", libc::unlink(path(&x).as_ptr()));
            t("rmdir", libc::rmdir(path(&x).as_ptr()));
            t("create inside a dir", {
                let mut p = d255.clone();
                p.push(b'/');
                p.extend_from_slice(&x);
                libc::open(path(&p).as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644)
            });
            // xattr names: the kernel caps them at 255 bytes with ERANGE.
            let xname = cstr(&[b"user.".as_slice(), &long(b'x', n - 5)].concat());
            let got = sys(libc::setxattr(
                path(&f255).as_ptr(),
                xname.as_ptr(),
                b"v".as_ptr().cast(),
                1,
                0,
            ));
            assert_eq!(got, Err(libc::ERANGE), "setxattr with a {n}-byte name");
        }
    }
    // The same in a branch view, which FsCore reaches by another way.
    let view = m.join(".agentfs/branches/main");
    let too_long = view.join(OsStr::from_bytes(&long(b'v', 256)));
    let err = fs::write(&too_long, "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    fs::write(view.join(OsStr::from_bytes(&long(b'v', 255))), "x").unwrap();

    assert_eq!(
        names_in(m.path()).len(),
        6,
        "only the six 255-byte names exist: {:?}",
        names_in(m.path())
            .iter()
            .map(|n| n.len())
            .collect::<Vec<_>>()
    );
    // And they go away again.
    for n in [&f255, &p255, &s255, &r255, &long(b'v', 255)] {
        fs::remove_file(m.path().join(OsStr::from_bytes(n))).unwrap();
    }
    fs::remove_dir(m.path().join(OsStr::from_bytes(&d255))).unwrap();
    assert!(names_in(m.path()).is_empty());
}

#[test]
fn non_utf8_names_round_trip() {
    let m = mount_or_skip!();
    let names: Vec<Vec<u8>> = vec![
        b"\xff\xfe".to_vec(),
        b"caf\xe9".to_vec(),
        b"\x80".to_vec(),
        b"a\nb".to_vec(),
        b"\xed\xa0\x80surrogate".to_vec(),
        b"\xc0\xafoverlong-slash".to_vec(),
        b"\x01\x02\x7f\x1b[31m".to_vec(),
        b"tab\there".to_vec(),
        b" leading and trailing ".to_vec(),
        vec![0xff; 255],
        "\u{1F600}\u{200B}\u{FEFF}".as_bytes().to_vec(),
    ];
    let dir = m.join("names");
    fs::create_dir(&dir).unwrap();
    for (i, n) in names.iter().enumerate() {
        fs::write(dir.join(OsStr::from_bytes(n)), i.to_string()).unwrap();
    }
    let mut want = names.clone();
    want.sort();
    assert_eq!(names_in(&dir), want, "readdir returns the bytes given");
    for (i, n) in names.iter().enumerate() {
        let got = fs::read_to_string(dir.join(OsStr::from_bytes(n))).unwrap();
        assert_eq!(got, i.to_string());
    }

    // Symlink targets and xattr values that are not UTF-8.
    let link = dir.join("link");
    std::os::unix::fs::symlink(OsStr::from_bytes(b"\xff\xfe"), &link).unwrap();
    assert_eq!(
        fs::read_link(&link).unwrap().as_os_str().as_bytes(),
        b"\xff\xfe"
    );
    assert_eq!(fs::read_to_string(&link).unwrap(), "0");

    // In a branch made from a snapshot, the same bytes.
    let base = m.snapshot("names-base");
    m.branch(&base, "names-b");
    let in_branch = m.join(".agentfs/branches/names-b/names");
    let mut with_link = want.clone();
    with_link.push(b"link".to_vec());
    with_link.sort();
    assert_eq!(names_in(&in_branch), with_link);

    // Rename each to another non-UTF-8 name, then remove them all.
    for n in &names {
        let mut to = n.clone();
        to.truncate(250);
        to.extend_from_slice(b"\xfe\xfd");
        fs::rename(
            dir.join(OsStr::from_bytes(n)),
            dir.join(OsStr::from_bytes(&to)),
        )
        .unwrap();
    }
    let renamed = names_in(&dir);
    assert_eq!(renamed.len(), names.len() + 1);
    assert!(renamed
        .iter()
        .filter(|n| n.as_slice() != b"link")
        .all(|n| n.ends_with(b"\xfe\xfd")));
    fs::remove_dir_all(&dir).unwrap();
    assert!(!dir.exists());
    // The branch still has the originals.
    assert_eq!(names_in(&in_branch), with_link);
}

#[test]
fn dotdot_in_symlink_targets_is_stored_verbatim_and_resolved_by_the_kernel() {
    let m = mount_or_skip!();
    fs::create_dir_all(m.join("a/b/c")).unwrap();
    fs::write(m.join("x"), "top").unwrap();
    let targets: Vec<(&str, &str)> = vec![
        ("a/b/c/up3", "../../../x"),
        ("a/b/c/dots", "./.././../b/./c/../../../x"),
        ("a/b/trailing", "../b/c/"),
        ("a/b/c/far", "../../../../../../../../../../.."),
        ("a/abs", "/"),
        ("a/b/c/dangling", "../nope/../../missing"),
    ];
    for (link, target) in &targets {
        std::os::unix::fs::symlink(target, m.join(link)).unwrap();
    }
    for (link, target) in &targets {
        assert_eq!(
            fs::read_link(m.join(link)).unwrap(),
            Path::new(target),
            "readlink of {link} is the target as given"
        );
    }
    // The kernel resolves them, across `..` and the mount's own root.
    assert_eq!(fs::read_to_string(m.join("a/b/c/up3")).unwrap(), "top");
    assert_eq!(fs::read_to_string(m.join("a/b/c/dots")).unwrap(), "top");
    assert_eq!(
        fs::canonicalize(m.join("a/b/trailing")).unwrap(),
        fs::canonicalize(m.join("a/b/c")).unwrap()
    );
    assert_eq!(
        fs::canonicalize(m.join("a/b/c/far")).unwrap(),
        Path::new("/")
    );
    assert_eq!(fs::canonicalize(m.join("a/abs")).unwrap(), Path::new("/"));
    let err = fs::read(m.join("a/b/c/dangling")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));

    // A loop is ELOOP, not a hang.
    std::os::unix::fs::symlink("loop2", m.join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", m.join("loop2")).unwrap();
    let err = fs::read(m.join("loop1")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));

    // Target length: 4095 bytes (with `..` in it) work, 4096 do not.
    let long_target = format!("{}{}", "../".repeat(1000), "y".repeat(4095 - 3000));
    assert_eq!(long_target.len(), 4095);
    std::os::unix::fs::symlink(&long_target, m.join("long")).unwrap();
    assert_eq!(
        fs::read_link(m.join("long")).unwrap(),
        Path::new(&long_target)
    );
    let err = std::os::unix::fs::symlink("z".repeat(4096), m.join("too-long")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
}

#[test]
fn a_very_deep_tree_and_path_max() {
    let m = mount_or_skip!();
    let depth = env_usize("AGENTFS_NAMES_DEPTH", 2000);
    let name = b"deep";
    let started = Instant::now();
    let top = m.join("top");
    fs::create_dir(&top).unwrap();
    // Walk down with mkdirat/openat: each call sees a one-component path.
    let mut dir = open_dir(&top);
    for level in 0..depth {
        mkdirat(&dir, name).unwrap_or_else(|e| panic!("mkdirat at depth {level}: {}", errname(e)));
        dir = openat(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY)
            .unwrap_or_else(|e| panic!("openat at depth {level}: {}", errname(e)));
    }
    let leaf = openat(&dir, b"leaf", libc::O_CREAT | libc::O_EXCL | libc::O_RDWR).unwrap();
    write_all(&leaf, b"bottom");
    drop(leaf);
    assert_eq!(fstatat(&dir, b"leaf").unwrap().st_size, 6);
    drop(dir);
    println!(
        "limits: deep tree: {depth} levels made in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // As an absolute path it is far past PATH_MAX: the kernel says so.
    let mut long = top.as_os_str().as_bytes().to_vec();
    for _ in 0..depth {
        long.extend_from_slice(b"/deep");
    }
    long.extend_from_slice(b"/leaf");
    assert!(long.len() > 4096);
    let err = fs::read(OsStr::from_bytes(&long)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));

    // A snapshot and a branch hold the whole depth; the branch view reads it.
    let base = m.snapshot("deep-base");
    m.branch(&base, "deep-b");
    let mut dir = open_dir(&m.join(".agentfs/branches/deep-b/top"));
    for level in 0..depth {
        dir = openat(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY)
            .unwrap_or_else(|e| panic!("branch view at depth {level}: {}", errname(e)));
    }
    let leaf = openat(&dir, b"leaf", libc::O_RDONLY).unwrap();
    assert_eq!(read_some(&leaf, 64), b"bottom");
    drop((leaf, dir));

    // find walks it (fts with openat), rm -rf removes it.
    let out = run_with_timeout(
        Process::new("find").arg(&top).args(["-name", "leaf"]),
        CMD_TIMEOUT,
    );
    assert_success(&out, "find in the deep tree");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let started = Instant::now();
    let out = run_with_timeout(Process::new("rm").arg("-rf").arg(&top), CMD_TIMEOUT);
    assert_success(&out, "rm -rf of the deep tree");
    assert!(!top.exists());
    println!(
        "limits: deep tree: rm -rf of {depth} levels in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // Deleting the branch drops a deep tree inside the daemon too.
    m.cli_ok(&["branch-delete", "deep-b", "--force"]);
    m.cli_ok(&["snapshot-delete", "deep-base"]);
    m.status();

    // PATH_MAX: an absolute path of 4095 bytes resolves; 4096 does not.
    let prefix = m.path().as_os_str().as_bytes().len();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut len = prefix;
    // The last part stays <= 249 bytes so that it plus one byte is a valid name.
    while 4095 - len > 250 {
        parts.push(vec![b'p'; 200]);
        len += 201;
    }
    parts.push(vec![b'q'; 4095 - len - 1]);
    let mut dir = open_dir(m.path());
    for (i, p) in parts.iter().enumerate() {
        if i + 1 < parts.len() {
            mkdirat(&dir, p).unwrap();
            dir = openat(&dir, p, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        } else {
            drop(openat(&dir, p, libc::O_CREAT | libc::O_WRONLY).unwrap());
            drop(
                openat(
                    &dir,
                    &[p.as_slice(), b"r"].concat(),
                    libc::O_CREAT | libc::O_WRONLY,
                )
                .unwrap(),
            );
        }
    }
    let full: Vec<u8> = [m.path().as_os_str().as_bytes(), b"/", &parts.join(&b'/')].concat();
    assert_eq!(full.len(), 4095);
    fs::metadata(OsStr::from_bytes(&full)).expect("a 4095-byte absolute path resolves");
    let over = [full.as_slice(), b"r"].concat();
    let err = fs::metadata(OsStr::from_bytes(&over)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "4096 bytes");
    // ...but that file is there, found relative to a directory.
    fstatat(&dir, &[parts.last().unwrap().as_slice(), b"r"].concat()).unwrap();
    drop(dir);
    fs::remove_dir_all(m.path().join(OsStr::from_bytes(&parts[0]))).unwrap();
}

/// Mount for a memory measurement: the daemon's glibc malloc keeps one arena
/// (`MALLOC_ARENA_MAX=1`). With the default (up to 8 arenas per core), which
/// worker thread happens to allocate decides which arena grows, and RSS
/// wanders by megabytes from run to run; one arena measures what the daemon
/// keeps rather than how the scheduler spread it.
fn mount_for_memory() -> Option<Mount> {
    // nextest runs each test in its own process, and no other thread of this
    // one exists yet: the daemon inherits the variable, nothing else reads it.
    std::env::set_var("MALLOC_ARENA_MAX", "1");
    Mount::start()
}

/// How many create/delete cycles the memory tests run (`AGENTFS_LIMITS_ROUNDS`,
/// default 2): the later rounds show whether memory returns or keeps growing.
fn rounds() -> usize {
    env_usize("AGENTFS_LIMITS_ROUNDS", 2).max(1)
}

/// Memory stays bounded across cycles: the last round's peak exceeds the
/// first round's by less than half of what the first round added (plus
/// `slack_kib` for allocator noise). A leak of what a round creates would
/// add about the first round's growth again each round.
fn assert_no_growth_per_round(what: &str, base: u64, peaks: &[u64], slack_kib: u64) {
    let (first, last) = (peaks[0], peaks[peaks.len() - 1]);
    let growth = first.saturating_sub(base);
    assert!(
        last.saturating_sub(first) < growth / 2 + slack_kib,
        "{what}: RSS peaks {peaks:?} KiB from {base} KiB keep growing round after round"
    );
}

#[test]
fn one_directory_with_many_entries() {
    let Some(m) = mount_for_memory() else { return };
    let n = size("AGENTFS_NAMES_DIR_ENTRIES", 10_000);
    let pid = m.daemon_pid();
    let big = m.join("big");
    fs::create_dir(&big).unwrap();
    let dir = open_dir(&big);
    let name = |i: usize| format!("entry-{i:08}").into_bytes();
    m.status();
    let rss0 = rss_kib(pid);
    let mut peaks = Vec::new();
    for round in 0..rounds() {
        let started = Instant::now();
        for i in 0..n {
            let fd = openat(
                &dir,
                &name(i),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            )
            .unwrap_or_else(|e| panic!("create entry {i} of {n}: {}", errname(e)));
            drop(fd);
        }
        let create_s = started.elapsed().as_secs_f64();
        let peak = rss_kib(pid);
        peaks.push(peak);

        let started = Instant::now();
        let count = fs::read_dir(&big).unwrap().count();
        let readdir_s = started.elapsed().as_secs_f64();
        assert_eq!(count, n, "readdir counts every entry once");

        let started = Instant::now();
        let step = (n / 1000).max(1);
        for i in (0..n).step_by(step) {
            fstatat(&dir, &name(i)).unwrap_or_else(|e| panic!("lookup {i}: {}", errname(e)));
            assert_eq!(
                fstatat(&dir, format!("absent-{i}").as_bytes()).err(),
                Some(libc::ENOENT)
            );
        }
        let lookup_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        for i in 0..n {
            unlinkat(&dir, &name(i), 0).unwrap_or_else(|e| panic!("unlink {i}: {}", errname(e)));
        }
        let delete_s = started.elapsed().as_secs_f64();
        assert_eq!(fs::read_dir(&big).unwrap().count(), 0);
        m.status();
        let after = rss_kib(pid);
        println!(
            "limits: one directory, round {round}, {n} entries: create {create_s:.1} s ({:.0} us each), \
             readdir {readdir_s:.2} s, {} lookups + as many misses {lookup_s:.2} s, delete {delete_s:.1} s",
            create_s * 1e6 / n as f64,
            n.div_ceil(step),
        );
        println!(
            "limits: daemon RSS {rss0} KiB empty, {peak} KiB with {n} empty files ({:.2} KiB per file over empty), \
             {after} KiB after deleting them",
            peak.saturating_sub(rss0) as f64 / n as f64
        );
    }
    drop(dir);
    fs::remove_dir(&big).unwrap();
    // Generous: an empty file costs well under 8 KiB of daemon memory.
    assert!(
        peaks[0].saturating_sub(rss0) < 8 * n as u64 + 32 * 1024,
        "RSS grew from {rss0} to {} KiB for {n} files",
        peaks[0]
    );
    assert_no_growth_per_round("files", rss0, &peaks, 4 * 1024);
}

#[test]
fn thousands_of_descriptors_open_at_once() {
    let Some(m) = mount_for_memory() else { return };
    let wanted = env_usize("AGENTFS_LIMITS_OPEN_FILES", 5000);
    let pid = m.daemon_pid();
    // Room for n descriptors plus what the harness holds.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid out/in pointer.
    unsafe {
        sys(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim)).unwrap();
        let want = (wanted as u64 + 256).min(lim.rlim_max);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            sys(libc::setrlimit(libc::RLIMIT_NOFILE, &lim)).unwrap();
        }
    }
    // A machine whose hard limit is lower gets as many as it allows.
    let n = wanted.min(
        usize::try_from(lim.rlim_cur)
            .unwrap_or(usize::MAX)
            .saturating_sub(256),
    );
    if n < wanted {
        println!(
            "limits: RLIMIT_NOFILE hard limit {} allows {n} of {wanted} open files",
            lim.rlim_max
        );
    }
    assert!(
        n >= 1000,
        "RLIMIT_NOFILE hard limit {} is too low",
        lim.rlim_max
    );
    let dir_path = m.join("fds");
    fs::create_dir(&dir_path).unwrap();
    let dir = open_dir(&dir_path);
    let handles0 = u64_field(&m.status(), "open_handles");
    let daemon_fds0 = fd_count(pid);
    let rss0 = rss_kib(pid);

    let started = Instant::now();
    let mut fds = Vec::with_capacity(n);
    for i in 0..n {
        let fd = openat(
            &dir,
            format!("f{i}").as_bytes(),
            libc::O_CREAT | libc::O_RDWR,
        )
        .unwrap_or_else(|e| panic!("open file {i} of {n}: {}", errname(e)));
        write_all(&fd, format!("content of {i}").as_bytes());
        fds.push(fd);
    }
    let open_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    // All open at once: each answers with its own content.
    for (i, fd) in fds.iter().enumerate() {
        assert_eq!(read_some(fd, 64), format!("content of {i}").as_bytes());
    }
    let read_s = started.elapsed().as_secs_f64();
    let status = m.status();
    let handles = u64_field(&status, "open_handles");
    let (daemon_fds, rss1) = (fd_count(pid), rss_kib(pid));
    assert!(
        handles >= handles0 + n as u64,
        "status shows {handles} open handles with {n} files open"
    );
    // A snapshot with every one of them open is still point in time.
    let snap = m.snapshot("with-open-fds");
    write_all(&fds[0], b"!");
    m.branch(&snap, "fds-b");
    assert_eq!(
        fs::read_to_string(m.join(".agentfs/branches/fds-b/fds/f0")).unwrap(),
        "content of 0"
    );
    let started = Instant::now();
    drop(fds);
    let settled = wait_until(std::time::Duration::from_secs(60), || {
        u64_field(&m.status(), "open_handles") <= handles0
    });
    let after = u64_field(&m.status(), "open_handles");
    let close_s = started.elapsed().as_secs_f64();
    println!(
        "limits: {n} descriptors: create+write {open_s:.1} s, read all {read_s:.1} s, close until released {close_s:.1} s"
    );
    println!(
        "limits: {n} descriptors open at once: daemon open handles {handles0} -> {handles} -> {after}, \
         daemon fds {daemon_fds0} -> {daemon_fds} -> {}, RSS {rss0} -> {rss1} KiB ({:.2} KiB per open file)",
        fd_count(pid),
        rss1.saturating_sub(rss0) as f64 / n as f64
    );
    assert!(
        settled,
        "open handles did not return to {handles0}: {after}"
    );
    drop(dir);
}

#[test]
fn thousands_of_snapshots_and_branches() {
    let Some(m) = mount_for_memory() else { return };
    let n = size("AGENTFS_LIMITS_BRANCHES", 2000);
    let files = env_usize("AGENTFS_LIMITS_TREE_FILES", 1000);
    let pid = m.daemon_pid();
    // A tree worth copying, so that a per-snapshot copy would show in RSS.
    fs::create_dir(m.join("tree")).unwrap();
    for i in 0..files {
        fs::write(m.join(&format!("tree/f{i}")), i.to_string()).unwrap();
    }
    let endpoint = discover(m.path()).expect("control endpoint");
    let mut c = Client::connect(&endpoint).expect("connect");
    let call = |c: &mut Client, cmd: Command| c.call(cmd).unwrap_or_else(|e| panic!("{e}"));
    call(&mut c, Command::Status);
    let rss0 = rss_kib(pid);
    let mut peaks = Vec::new();
    for round in 0..rounds() {
        let before = rss_kib(pid);
        let started = Instant::now();
        let mut snaps = Vec::with_capacity(n);
        for i in 0..n {
            let Reply::Snapshot(s) = call(
                &mut c,
                Command::SnapshotCreate {
                    name: Some(format!("s-{i}")),
                    branch: None,
                },
            ) else {
                panic!("expected a snapshot")
            };
            snaps.push(s.id);
        }
        let snap_s = started.elapsed().as_secs_f64();
        let rss1 = rss_kib(pid);

        let started = Instant::now();
        let mut branches = Vec::with_capacity(n);
        for (i, s) in snaps.iter().enumerate() {
            let Reply::Branch(b) = call(
                &mut c,
                Command::BranchCreate {
                    from: s.clone(),
                    name: Some(format!("b-{i}")),
                },
            ) else {
                panic!("expected a branch")
            };
            branches.push(b.id);
        }
        let branch_s = started.elapsed().as_secs_f64();
        let rss2 = rss_kib(pid);

        // Every branch is there and usable by path.
        let Reply::Branches(list) = call(&mut c, Command::BranchList) else {
            panic!("expected branches")
        };
        assert_eq!(list.len(), n + 1);
        let views = m.join(".agentfs/branches");
        assert_eq!(fs::read_dir(&views).unwrap().count(), n + 1);
        for i in [0, n / 2, n - 1] {
            let f = views.join(format!("b-{i}/tree/f{}", files - 1));
            assert_eq!(fs::read_to_string(&f).unwrap(), (files - 1).to_string());
            fs::write(views.join(format!("b-{i}/own")), "x").unwrap();
        }
        let rss3 = rss_kib(pid);
        peaks.push(rss3);

        let started = Instant::now();
        for b in &branches {
            call(
                &mut c,
                Command::BranchDelete {
                    branch: b.clone(),
                    force: true,
                },
            );
        }
        for s in &snaps {
            call(
                &mut c,
                Command::SnapshotDelete {
                    snapshot: s.clone(),
                },
            );
        }
        let delete_s = started.elapsed().as_secs_f64();
        let Reply::Status(status) = call(&mut c, Command::Status) else {
            panic!("expected status")
        };
        assert_eq!(status.branches.len(), 1);
        assert_eq!(status.snapshots, 0);
        let rss4 = rss_kib(pid);
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;
        println!(
            "limits: round {round}: {n} snapshots in {snap_s:.2} s, {n} branches in {branch_s:.2} s, \
             all deleted in {delete_s:.2} s (tree of {files} files)"
        );
        println!(
            "limits: round {round}: daemon RSS {before} KiB before, {rss1} KiB with {n} snapshots ({:.2} KiB each), \
             {rss2} KiB with {n} branches too ({:.2} KiB each), {rss3} KiB after writing in 3 of them, \
             {rss4} KiB after deleting all",
            per(before, rss1),
            per(rss1, rss2)
        );
        if round == 0 {
            // Generous bounds: a copy of the tree per snapshot or branch
            // (>= 100 bytes per file) or a leak of one would break them.
            assert!(
                per(before, rss1) < 64.0,
                "RSS per snapshot {:.1} KiB",
                per(before, rss1)
            );
            assert!(
                per(rss1, rss2) < 64.0,
                "RSS per branch {:.1} KiB",
                per(rss1, rss2)
            );
        }
    }
    assert_no_growth_per_round("snapshots and branches", rss0, &peaks, 4 * 1024);
}
