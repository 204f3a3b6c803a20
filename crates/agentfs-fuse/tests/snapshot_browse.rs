//! Browsing snapshots by path: `<mount>/.agentfs/snapshots/<name>/` shows each
//! snapshot read-only, next to the read-write `.agentfs/branches/<name>/`.
//!
//! Old content is read there after the branch changed it; every kind of
//! change gives EROFS and changes nothing; `cp -a`, `diff -r` and `find` work
//! on it; its listing follows snapshot-create and snapshot-delete (a deleted
//! snapshot's path is gone, a new snapshot of the same name shows its own
//! content); and the root's listing is what it was (`.agentfs` stays hidden).
//! The whole file runs on both data paths (`AGENTFS_PASSTHROUGH=off` for the
//! transport; passthrough otherwise, where the kernel allows it).

mod common;

use common::{cpath, errno, Mount, CMD_TIMEOUT};
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A file larger than one FUSE request, so reads take several (or pass through).
const BIG: usize = 3 << 20;

fn big_content(seed: u8) -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Build the tree the tests snapshot, under `base` (in the mount, or a host
/// directory for comparison).
fn build_tree(base: &Path) {
    fs::create_dir_all(base.join("src/deep/er")).unwrap();
    fs::write(base.join("src/a.txt"), b"one\n").unwrap();
    fs::write(base.join("src/deep/er/b.txt"), b"deep\n").unwrap();
    fs::write(base.join("empty"), b"").unwrap();
    fs::write(base.join("big.bin"), big_content(0)).unwrap();
    fs::write(base.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(base.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/a.txt", base.join("link")).unwrap();
    fs::hard_link(base.join("src/a.txt"), base.join("hard")).unwrap();
}

/// Change everything `build_tree` made, in place.
fn change_tree(base: &Path) {
    fs::write(base.join("src/a.txt"), b"two, longer\n").unwrap();
    fs::remove_file(base.join("src/deep/er/b.txt")).unwrap();
    fs::write(base.join("src/new.txt"), b"new\n").unwrap();
    fs::write(base.join("big.bin"), big_content(7)).unwrap();
    fs::set_permissions(base.join("run.sh"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(base.join("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", base.join("link")).unwrap();
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let name = std::ffi::CString::new(name).unwrap();
    let path = cpath(p);
    // SAFETY: both strings are NUL-terminated and live across the call; value
    // points to value.len() readable bytes.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_xattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let name = std::ffi::CString::new(name).unwrap();
    let path = cpath(p);
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated; buf has buf.len() writable bytes.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The errno of a failed result; panics (naming `what`) if it succeeded.
fn err_of<T>(what: &str, r: io::Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("{what}: succeeded on a snapshot"),
        Err(e) => e.raw_os_error().unwrap_or(0),
    }
}

fn assert_erofs<T>(what: &str, r: io::Result<T>) {
    let e = err_of(what, r);
    assert_eq!(
        e,
        libc::EROFS,
        "{what}: expected EROFS, got {}",
        io::Error::from_raw_os_error(e)
    );
}

/// `r` of a libc call returning -1 on error, as an io::Result.
fn sys(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(errno()))
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = common::run_with_timeout(cmd, CMD_TIMEOUT);
    common::assert_success(&out, what);
    String::from_utf8(out.stdout).unwrap()
}

/// `ls -a` of `dir`, one name a line, sorted by ls.
fn ls_a(dir: &Path) -> String {
    run(Command::new("ls").arg("-a").arg("-1").arg(dir), "ls -a")
}

/// Relative paths of everything `find` sees below `dir`, with their types.
fn find(dir: &Path) -> Vec<String> {
    let out = run(
        Command::new("find")
            .arg(".")
            .arg("-printf")
            .arg("%y %p\n")
            .current_dir(dir),
        "find",
    );
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

fn snap_dir(m: &Mount, name: &str) -> PathBuf {
    m.join(".agentfs/snapshots").join(name)
}

#[test]
fn a_snapshot_reads_as_it_was_while_the_branch_moves_on() {
    let Some(m) = Mount::start() else { return };
    build_tree(m.path());
    set_xattr(&m.join("src/a.txt"), "user.note", b"first").unwrap();
    let id = m.snapshot("base");
    // A file held open for writing across the snapshot: the snapshot keeps
    // what it held at that instant.
    let mut held = fs::OpenOptions::new()
        .append(true)
        .open(m.join("empty"))
        .unwrap();
    std::io::Write::write_all(&mut held, b"later").unwrap();
    change_tree(m.path());
    set_xattr(&m.join("src/a.txt"), "user.note", b"second").unwrap();

    let s = snap_dir(&m, "base");
    assert_eq!(fs::read(s.join("src/a.txt")).unwrap(), b"one\n");
    assert_eq!(fs::read(s.join("hard")).unwrap(), b"one\n");
    assert_eq!(fs::read(s.join("src/deep/er/b.txt")).unwrap(), b"deep\n");
    assert_eq!(fs::read(s.join("empty")).unwrap(), b"");
    assert!(fs::read(s.join("big.bin")).unwrap() == big_content(0));
    assert!(!s.join("src/new.txt").exists());
    assert_eq!(
        fs::read_link(s.join("link")).unwrap(),
        Path::new("src/a.txt")
    );
    assert_eq!(
        get_xattr(&s.join("src/a.txt"), "user.note").unwrap(),
        b"first"
    );
    let meta = fs::symlink_metadata(s.join("run.sh")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o755);
    assert_eq!(meta.len(), 18);
    assert_eq!(fs::metadata(s.join("hard")).unwrap().nlink(), 2);
    assert!(fs::metadata(&s).unwrap().is_dir());
    // The snapshot's program runs from there.
    let out = run(
        &mut Command::new(s.join("run.sh")),
        "run.sh in the snapshot",
    );
    assert_eq!(out, "hi\n");
    // By id too, with the same content.
    assert_eq!(
        fs::read(snap_dir(&m, &id).join("src/a.txt")).unwrap(),
        b"one\n"
    );

    // The branch has its own state, and the kernel never mixes the two up.
    assert_eq!(fs::read(m.join("src/a.txt")).unwrap(), b"two, longer\n");
    assert!(fs::read(m.join("big.bin")).unwrap() == big_content(7));
    assert_ne!(
        fs::metadata(m.join("src/a.txt")).unwrap().ino(),
        fs::metadata(s.join("src/a.txt")).unwrap().ino()
    );
    let view = m.join(".agentfs/branches/main");
    assert_eq!(fs::read(view.join("src/a.txt")).unwrap(), b"two, longer\n");

    // Reads through a descriptor, in pieces and by mmap.
    let mut f = fs::File::open(s.join("big.bin")).unwrap();
    let mut first = vec![0u8; 4096];
    f.read_exact(&mut first).unwrap();
    assert!(first[..] == big_content(0)[..4096]);
    let map = common::Mmap::of(&f, BIG);
    assert!(map.bytes() == big_content(0));
    // A read-only mapping: shared writable mappings of it are refused.
    assert!(try_shared_writable(&f, BIG).is_err());
    drop(map);
    drop(f);

    // The held file's writes, once more, do not reach the snapshot.
    std::io::Write::write_all(&mut held, b" and more").unwrap();
    drop(held);
    assert_eq!(fs::read(m.join("empty")).unwrap(), b"later and more");
    assert_eq!(fs::read(s.join("empty")).unwrap(), b"");
}

#[test]
fn every_change_under_a_snapshot_is_erofs() {
    let Some(m) = Mount::start() else { return };
    build_tree(m.path());
    set_xattr(&m.join("src/a.txt"), "user.note", b"first").unwrap();
    m.snapshot("base");
    let s = snap_dir(&m, "base");
    let a = s.join("src/a.txt");
    let before = find(&s);

    let open = |flags: i32, create: bool| {
        let mut o = fs::OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => o.write(true),
            libc::O_RDWR => o.read(true).write(true),
            _ => o.read(true),
        };
        o.custom_flags(flags & !libc::O_ACCMODE);
        if create {
            o.mode(0o644);
        }
        o.open(&a)
    };
    assert_erofs("open O_WRONLY", open(libc::O_WRONLY, false));
    assert_erofs("open O_RDWR", open(libc::O_RDWR, false));
    assert_erofs(
        "open O_APPEND",
        open(libc::O_WRONLY | libc::O_APPEND, false),
    );
    assert_erofs(
        "open O_RDONLY|O_TRUNC",
        open(libc::O_RDONLY | libc::O_TRUNC, false),
    );
    assert_erofs(
        "open O_WRONLY|O_TRUNC",
        open(libc::O_WRONLY | libc::O_TRUNC, false),
    );
    assert_erofs("create a new file", fs::File::create(s.join("src/new")));
    assert_erofs(
        "create O_EXCL",
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(s.join("excl")),
    );
    assert_erofs("mkdir", fs::create_dir(s.join("d")));
    let fifo = cpath(&s.join("fifo"));
    // SAFETY: fifo is a NUL-terminated path.
    assert_erofs("mknod", sys(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }));
    assert_erofs("symlink", std::os::unix::fs::symlink("x", s.join("sl")));
    assert_erofs("link", fs::hard_link(&a, s.join("src/a2")));
    assert_erofs("unlink", fs::remove_file(&a));
    assert_erofs("unlink a symlink", fs::remove_file(s.join("link")));
    assert_erofs("rmdir", fs::remove_dir(s.join("src/deep/er")));
    assert_erofs("rename", fs::rename(&a, s.join("src/renamed")));
    assert_erofs("rename a dir", fs::rename(s.join("src"), s.join("src2")));
    assert_erofs(
        "chmod",
        fs::set_permissions(&a, fs::Permissions::from_mode(0o600)),
    );
    assert_erofs(
        "chmod of the snapshot's root",
        fs::set_permissions(&s, fs::Permissions::from_mode(0o700)),
    );
    assert_erofs("chown", std::os::unix::fs::chown(&a, Some(1), Some(1)));
    let ca = cpath(&a);
    // SAFETY: ca is NUL-terminated; a null times pointer means "now".
    let touch = unsafe { libc::utimensat(libc::AT_FDCWD, ca.as_ptr(), std::ptr::null(), 0) };
    assert_erofs("utimensat", sys(touch));
    // SAFETY: ca is NUL-terminated.
    assert_erofs("truncate", sys(unsafe { libc::truncate(ca.as_ptr(), 0) }));
    assert_erofs("setxattr", set_xattr(&a, "user.note", b"changed"));
    assert_erofs("setxattr new", set_xattr(&a, "user.other", b"x"));
    let name = std::ffi::CString::new("user.note").unwrap();
    // SAFETY: both strings are NUL-terminated.
    let removed = unsafe { libc::lremovexattr(ca.as_ptr(), name.as_ptr()) };
    assert_erofs("removexattr", sys(removed));
    // access(W_OK) is the kernel's to answer from the mode bits (the mount
    // uses default_permissions, so FUSE never sees it): only the write itself
    // can say EROFS. Read access is granted as usual.
    // SAFETY: ca is NUL-terminated.
    sys(unsafe { libc::access(ca.as_ptr(), libc::R_OK) }).unwrap();

    // Between a snapshot and a branch: not one filesystem tree.
    let e = err_of("link into the branch", fs::hard_link(&a, m.join("a2")));
    assert_eq!(e, libc::EXDEV, "link from a snapshot into the branch");
    let e = err_of("rename into the branch", fs::rename(&a, m.join("a2")));
    assert_eq!(e, libc::EXDEV, "rename from a snapshot into the branch");
    // `mv` falls back to copy and unlink, which the snapshot refuses.
    let out =
        common::run_with_timeout(Command::new("mv").arg(&a).arg(m.join("moved")), CMD_TIMEOUT);
    assert!(!out.status.success(), "mv out of a snapshot must fail");

    // The virtual directories are read-only too, and `.agentfs` stays reserved.
    assert_erofs(
        "mkdir in .agentfs/snapshots",
        fs::create_dir(m.join(".agentfs/snapshots/new")),
    );

    // Nothing changed, in the snapshot or in the branch.
    assert_eq!(find(&s), before);
    assert_eq!(fs::read(&a).unwrap(), b"one\n");
    assert_eq!(get_xattr(&a, "user.note").unwrap(), b"first");
    assert_eq!(fs::metadata(&a).unwrap().mode() & 0o7777, 0o644);
    assert_eq!(fs::read(m.join("src/a.txt")).unwrap(), b"one\n");
    assert!(!m.join("a2").exists());
    // A branch made from it starts from the same, untouched state.
    m.branch("base", "after");
    let b = m.join(".agentfs/branches/after");
    assert_eq!(fs::read(b.join("src/a.txt")).unwrap(), b"one\n");
    assert!(fs::read(b.join("big.bin")).unwrap() == big_content(0));
}

#[test]
fn cp_diff_and_find_work_on_a_snapshot() {
    let Some(m) = Mount::start() else { return };
    let scratch = m.scratch();
    let original = scratch.join("original");
    build_tree(&original);
    build_tree(m.path());
    m.snapshot("base");
    change_tree(m.path());
    let s = snap_dir(&m, "base");

    // diff -r against the tree as it was: no difference (symlinks compared
    // by target with --no-dereference).
    run(
        Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&original)
            .arg(&s),
        "diff -r original snapshot",
    );
    // ... and against the branch: differences.
    let out = common::run_with_timeout(
        Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&s)
            .arg(m.path()),
        CMD_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "snapshot and branch differ");

    // find sees the same tree as in the original.
    assert_eq!(find(&s), find(&original));

    // cp -a out of the snapshot gives the tree as it was, modes and links kept.
    let copy = scratch.join("copy");
    run(
        Command::new("cp").arg("-a").arg(&s).arg(&copy),
        "cp -a snapshot",
    );
    run(
        Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&original)
            .arg(&copy),
        "diff -r original copy",
    );
    assert_eq!(
        fs::metadata(copy.join("run.sh")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::read_link(copy.join("link")).unwrap(),
        Path::new("src/a.txt")
    );

    // cp -a from the snapshot into a branch restores a file there.
    run(
        Command::new("cp")
            .arg("-a")
            .arg(s.join("src/a.txt"))
            .arg(m.join("src/a.txt")),
        "cp -a snapshot file into the branch",
    );
    assert_eq!(fs::read(m.join("src/a.txt")).unwrap(), b"one\n");
    assert_eq!(fs::read(s.join("src/a.txt")).unwrap(), b"one\n");
}

#[test]
fn the_listing_follows_snapshot_create_and_delete() {
    let Some(m) = Mount::start() else { return };
    let snaps = m.join(".agentfs/snapshots");
    let root_before = ls_a(m.path());
    assert!(
        !root_before.lines().any(|l| l == ".agentfs"),
        "the root lists .agentfs: {root_before}"
    );
    assert_eq!(names(&snaps), BTreeSet::new());
    assert_eq!(
        names(&m.join(".agentfs")),
        ["branches", "control", "snapshots"]
            .into_iter()
            .map(String::from)
            .collect()
    );

    fs::write(m.join("f"), b"first").unwrap();
    let root_with_f = ls_a(m.path());
    m.snapshot("one");
    fs::write(m.join("f"), b"second").unwrap();
    m.snapshot("two");
    assert_eq!(
        names(&snaps),
        ["one", "two"].into_iter().map(String::from).collect()
    );
    assert_eq!(ls_a(&snaps), ".\n..\none\ntwo\n");
    assert_eq!(fs::read(snaps.join("one/f")).unwrap(), b"first");
    assert_eq!(fs::read(snaps.join("two/f")).unwrap(), b"second");
    assert_eq!(
        err_of("a name never made", fs::metadata(snaps.join("three"))),
        libc::ENOENT
    );
    // Browsing changes nothing the root shows.
    assert_eq!(ls_a(m.path()), root_with_f);
    // Nor what the control plane lists.
    let branches = m.cli_json(&["branch-list"]);
    assert_eq!(branches.as_array().unwrap().len(), 1, "{branches}");
    assert_eq!(m.status()["branches"].as_array().map(Vec::len), Some(1));

    // A process standing in a snapshot when it is deleted.
    let cwd_in_one = snaps.join("one");
    let held = fs::File::open(snaps.join("one/f")).unwrap();
    m.cli_ok(&["snapshot-delete", "one"]);
    assert_eq!(
        names(&snaps),
        ["two"].into_iter().map(String::from).collect()
    );
    let gone = err_of("stat of a deleted snapshot", fs::metadata(&cwd_in_one));
    assert_eq!(gone, libc::ENOENT);
    let gone = err_of("read in a deleted snapshot", fs::read(snaps.join("one/f")));
    assert_eq!(gone, libc::ENOENT);
    // A descriptor opened before keeps reading what it opened.
    let mut text = String::new();
    (&held).read_to_string(&mut text).unwrap();
    assert_eq!(text, "first");
    drop(held);

    // A new snapshot of the old name shows its own content, never the old one.
    fs::write(m.join("f"), b"third").unwrap();
    m.snapshot("one");
    assert_eq!(fs::read(snaps.join("one/f")).unwrap(), b"third");
    assert_eq!(fs::read(snaps.join("two/f")).unwrap(), b"second");
    m.cli_ok(&["snapshot-delete", "two"]);
    m.cli_ok(&["snapshot-delete", "one"]);
    assert_eq!(names(&snaps), BTreeSet::new());
    assert_eq!(ls_a(m.path()), root_with_f);
}

#[test]
fn a_process_inside_a_deleted_snapshot_gets_errors_not_data() {
    let Some(m) = Mount::start() else { return };
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/f"), b"old").unwrap();
    m.snapshot("gone");
    let dir = snap_dir(&m, "gone").join("d");
    // Warm the kernel's caches of the snapshot's names and attributes.
    assert_eq!(fs::read(dir.join("f")).unwrap(), b"old");
    let script = r#"
import os, sys
os.chdir(sys.argv[1])
print(open("f").read(), flush=True)
sys.stdin.readline()
for what, op in [("listdir", lambda: os.listdir(".")), ("read", lambda: open("f").read())]:
    try:
        op()
        print(what, "ok")
    except OSError as e:
        print(what, e.errno)
"#;
    let mut child = Command::new(common::python())
        .arg("-c")
        .arg(script)
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "old\n");
    m.cli_ok(&["snapshot-delete", "gone"]);
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = common::wait_timeout(&mut child, CMD_TIMEOUT).expect("python exits");
    assert!(status.success(), "python: {status}, printed {rest:?}");
    let stale = libc::ESTALE.to_string();
    for what in ["listdir", "read"] {
        let got = rest
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{what} ")))
            .unwrap_or_else(|| panic!("no {what} line in {rest:?}"));
        assert!(
            got == stale || got == libc::ENOENT.to_string(),
            "{what} inside a deleted snapshot: {got} (want ESTALE or ENOENT)"
        );
    }
}

#[test]
fn browsing_leaves_no_trace_across_a_remount_or_a_crash() {
    let Some(mut m) = Mount::start() else { return };
    fs::write(m.join("f"), b"old").unwrap();
    m.snapshot("base");
    fs::write(m.join("f"), b"new").unwrap();
    assert_eq!(fs::read(snap_dir(&m, "base").join("f")).unwrap(), b"old");
    let branches = |m: &Mount| m.cli_json(&["branch-list"]).as_array().unwrap().len();
    assert_eq!(branches(&m), 1);

    m.remount();
    assert_eq!(branches(&m), 1, "a browsed snapshot came back as a branch");
    assert_eq!(fs::read(snap_dir(&m, "base").join("f")).unwrap(), b"old");
    assert_eq!(fs::read(m.join("f")).unwrap(), b"new");

    m.crash_and_remount();
    assert_eq!(branches(&m), 1, "a browsed snapshot came back as a branch");
    assert_eq!(fs::read(snap_dir(&m, "base").join("f")).unwrap(), b"old");
    assert_eq!(
        names(&m.join(".agentfs/snapshots")),
        ["base"].into_iter().map(String::from).collect()
    );
}

#[test]
fn a_snapshot_of_an_overlay_reads_lower_files_it_never_read_before() {
    let lower = tempfile::Builder::new()
        .prefix("agentfs-browse-lower-")
        .tempdir()
        .unwrap();
    build_tree(lower.path());
    let Some(m) = Mount::start_with(&["--lower", lower.path().to_str().unwrap()]) else {
        return;
    };
    // Nothing below the root has been read when the snapshot is taken.
    m.snapshot("base");
    change_tree(m.path());
    let s = snap_dir(&m, "base");
    run(
        Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(lower.path())
            .arg(&s),
        "diff -r lower snapshot",
    );
    assert_eq!(find(&s), find(lower.path()));
    assert_erofs(
        "write a lower file in a snapshot",
        fs::write(s.join("src/a.txt"), b"x"),
    );
    assert_erofs("unlink in a snapshot", fs::remove_file(s.join("empty")));
    // The branch changed; the lower directory did not.
    assert_eq!(fs::read(m.join("src/a.txt")).unwrap(), b"two, longer\n");
    assert_eq!(fs::read(lower.path().join("src/a.txt")).unwrap(), b"one\n");
    assert!(lower.path().join("src/deep/er/b.txt").exists());
}

#[test]
fn a_branch_exec_process_browses_snapshots_and_branches_by_path() {
    let Some(m) = Mount::start() else { return };
    fs::write(m.join("f"), b"old\n").unwrap();
    m.snapshot("base");
    m.branch("base", "feat");
    fs::write(m.join("f"), b"new\n").unwrap();
    // The real .agentfs dentries exist before the namespace is made.
    assert_eq!(fs::read(snap_dir(&m, "base").join("f")).unwrap(), b"old\n");
    let mnt = common::shq(m.path());
    let script = format!(
        "set -e; echo mine > {mnt}/f; \
         cat {mnt}/f {mnt}/.agentfs/snapshots/base/f {mnt}/.agentfs/branches/main/f; \
         ls {mnt}/.agentfs; ls {mnt}/.agentfs/snapshots; ls {mnt}/.agentfs/branches; \
         ls -a {mnt}; \
         if diff -r {mnt}/.agentfs/snapshots/base {mnt} >/dev/null; then echo same; else echo differ; fi; \
         if echo x > {mnt}/.agentfs/snapshots/base/f; then echo wrote; fi 2>/dev/null; \
         cd {mnt} && {cli} status >/dev/null && echo cli-ok",
        cli = common::shq(&common::cli_bin()),
    );
    let out = m.in_branch_ok("feat", &script);
    let expected = [
        "mine",
        "old",
        "new", // the branch, the snapshot, main through its view
        "branches",
        "control",
        "snapshots", // ls .agentfs
        "base",
        "feat",
        "main", // the snapshots, then the branches
        ".",
        "..",
        "f", // ls -a of the mount path: .agentfs stays hidden
        "differ",
        "cli-ok",
    ];
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, expected, "inside branch-exec:\n{out}");
    assert_eq!(fs::read(m.join("f")).unwrap(), b"new\n");
    assert_eq!(fs::read(snap_dir(&m, "base").join("f")).unwrap(), b"old\n");
}

#[test]
fn a_reused_snapshot_name_never_shows_the_old_content() {
    let Some(m) = Mount::start_with(&["--attr-ttl-ms", "600000"]) else {
        return;
    };
    fs::create_dir_all(m.join("d/e")).unwrap();
    let s = snap_dir(&m, "again");
    for i in 0..20 {
        let text = format!("version {i}\n");
        // Another size every time, so a stale size would show too.
        fs::write(m.join("d/e/f"), text.repeat(i + 1)).unwrap();
        m.snapshot("again");
        // Warm every cache on the way: names, attributes, pages.
        let meta = fs::metadata(s.join("d/e/f")).unwrap();
        assert_eq!(meta.len(), (text.len() * (i + 1)) as u64, "round {i}");
        assert_eq!(
            fs::read_to_string(s.join("d/e/f")).unwrap(),
            text.repeat(i + 1),
            "round {i}"
        );
        assert!(names(&s.join("d/e")).contains("f"));
        m.cli_ok(&["snapshot-delete", "again"]);
        let e = err_of("the deleted snapshot", fs::metadata(s.join("d/e/f")));
        assert_eq!(e, libc::ENOENT, "round {i}");
    }
}

/// The daemon's final count of `metric`, from the log it writes at unmount.
fn final_count(log: &str, metric: &str) -> u64 {
    let key = format!("metric=\"{metric}\" value=");
    log.lines()
        .filter(|l| l.contains("final count"))
        .find_map(|l| l.split_once(&key).map(|(_, v)| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

#[test]
fn snapshot_reads_pass_through_when_the_kernel_allows_it() {
    let Some(mut m) = Mount::start() else { return };
    const LEN: usize = 16 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 253) as u8).collect();
    fs::write(m.join("f"), &data).unwrap();
    m.snapshot("base");
    fs::write(m.join("f"), b"changed").unwrap();
    let direct = m.status()["data_path"] == "passthrough";
    assert!(fs::read(snap_dir(&m, "base").join("f")).unwrap() == data);

    let mut daemon = m.take_daemon();
    assert!(common::force_unmount(m.path()), "unmount");
    let status = common::wait_timeout(&mut daemon, CMD_TIMEOUT).expect("daemon exits");
    assert!(status.success(), "daemon: {status}");
    let log = m.daemon_stderr();
    let reads = final_count(&log, "fuse.requests.read");
    println!("snapshot read of 16 MiB, passthrough {direct}: {reads} read requests");
    // 16 MiB in requests of at most 1 MiB is 16 reads at least when the
    // daemon serves them; passthrough leaves the daemon (almost) none.
    if direct {
        assert!(
            reads < 8,
            "{reads} reads reached the daemon with passthrough"
        );
    } else {
        assert!(
            reads >= 16,
            "only {reads} reads counted through the transport"
        );
    }
}

/// `sh -c SCRIPT` as nobody (uid and gid 65534, no groups); its output.
fn as_nobody_sh(script: &str) -> std::process::Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/bin/sh", "-c", script]);
    common::run_with_timeout(&mut cmd, CMD_TIMEOUT)
}

#[test]
fn a_snapshot_keeps_the_permissions_it_had_for_other_users() {
    if !common::is_root() || !Path::new("/usr/bin/setpriv").exists() {
        assert!(
            std::env::var("AGENTFS_REQUIRE_FUSE").as_deref() != Ok("1"),
            "this test needs root and /usr/bin/setpriv"
        );
        println!("SKIP: needs root and setpriv to act as a second user");
        return;
    }
    let Some(m) = Mount::start() else { return };
    // Let nobody walk to the mount (the test's temp dir is private to root).
    fs::set_permissions(
        m.path().parent().unwrap(),
        fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    fs::write(m.join("public.txt"), b"public\n").unwrap();
    fs::write(m.join("private.txt"), b"private\n").unwrap();
    fs::set_permissions(m.join("private.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(m.join("secret")).unwrap();
    fs::write(m.join("secret/key"), b"k\n").unwrap();
    fs::set_permissions(m.join("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(m.join("mine.txt"), b"nobody's\n").unwrap();
    std::os::unix::fs::chown(m.join("mine.txt"), Some(65534), Some(65534)).unwrap();
    m.snapshot("perms");
    // The branch opens everything up afterwards; the snapshot must not.
    fs::set_permissions(m.join("private.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(m.join("secret"), fs::Permissions::from_mode(0o755)).unwrap();

    let s = snap_dir(&m, "perms");
    let q = |p: &str| common::shq(&s.join(p));
    // (what, script, must succeed)
    let checks = [
        (
            "list the snapshots",
            format!("ls {}", common::shq(&m.join(".agentfs/snapshots"))),
            true,
        ),
        (
            "read a 0644 file",
            format!("grep -qx public {}", q("public.txt")),
            true,
        ),
        (
            "read a file that was 0600",
            format!("cat {}", q("private.txt")),
            false,
        ),
        (
            "list a directory that was 0700",
            format!("ls {}", q("secret")),
            false,
        ),
        (
            "read inside a directory that was 0700",
            format!("cat {}", q("secret/key")),
            false,
        ),
        ("read its own file", format!("cat {}", q("mine.txt")), true),
    ];
    for (what, script, should_work) in &checks {
        let out = as_nobody_sh(&format!("{script} >/dev/null 2>&1"));
        assert_eq!(
            out.status.success(),
            *should_work,
            "as nobody: {what} ({script})"
        );
    }
    // Its own file, which its mode lets it write: the snapshot says EROFS.
    let out = as_nobody_sh(&format!("echo x >> {}", q("mine.txt")));
    assert!(!out.status.success(), "nobody wrote into a snapshot");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Read-only file system"), "stderr: {err}");
    // As the branch now says, nobody reads what was private.
    let out = as_nobody_sh(&format!("cat {}", common::shq(&m.join("private.txt"))));
    assert!(out.status.success(), "the branch's 0644 file is readable");
}

/// Whether `f` can be mapped shared and writable (the mapping is undone at once).
fn try_shared_writable(f: &fs::File, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh mapping of an open descriptor, checked; a successful
    // mapping is unmapped at once.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        libc::munmap(ptr, len);
    }
    Ok(())
}
