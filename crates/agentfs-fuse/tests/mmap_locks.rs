//! mmap and file locks on a real mount, in the default branch and in a
//! branch made from a snapshot (where the first write is a copy-on-write).
//!
//! - A shared mapping's writes, after `msync`, are seen by `read(2)`, by
//!   another process's mapping, and by a branch made from a snapshot taken
//!   afterwards (so they reached the daemon, not only the page cache).
//! - A private mapping's writes stay private.
//! - A mapping of a file later truncated raises SIGBUS beyond the new end
//!   (in a python3 child, which must die by SIGBUS).
//! - POSIX record locks (`fcntl F_SETLK`) and `flock` conflict between two
//!   processes of one branch, and do not between processes bound to
//!   different branches: the same path in two branches is two files.
//!
//! Helper processes are python3 scripts; each test's own control case (the
//! conflict that must happen, the access that must succeed) keeps it honest.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use common::{
    assert_success, py_in, py_in_ok, spawn_py_in, wait_until, Guarded, Mount, CMD_TIMEOUT,
};
use serde_json::Value;

const PAGE: usize = 4096;

/// Maps the file shared, writes `tag` at offset 100 and at 2*PAGE+5, msyncs,
/// checks its own mapping, announces readiness (its pid) and waits for `go`;
/// then writes `tag2` at offset 200 without msync, unmaps and closes.
const SHARED_WRITER: &str = r#"
import mmap, os, sys, time
path, tag, tag2, ready, go = sys.argv[1:6]
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[100:100 + len(tag)] = tag.encode()
m[8197:8197 + len(tag)] = tag.encode()
m.flush()
assert m[100:100 + len(tag)] == tag.encode()
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
deadline = time.monotonic() + 120
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("writer timed out waiting for " + go)
    time.sleep(0.01)
m[200:200 + len(tag2)] = tag2.encode()
m.close()
os.close(fd)
"#;

/// Maps the file shared read-only in a fresh process and prints the bytes at
/// the two offsets the writer used.
const SHARED_READER: &str = r#"
import mmap, os, sys
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
sys.stdout.write(m[100:100 + n].decode() + "|" + m[8197:8197 + n].decode())
"#;

/// Writes through a private mapping and reports what the mapping, pread and a
/// second (shared) mapping of the same file see.
const PRIVATE_WRITER: &str = r#"
import json, mmap, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
priv = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
priv[0:8] = b"PRIVATE!"
priv.flush()
shared = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
print(json.dumps({
    "private": priv[0:8].decode(),
    "pread": os.pread(fd, 8, 0).decode(),
    "shared": shared[0:8].decode(),
}))
priv.close()
shared.close()
os.close(fd)
"#;

/// Maps three pages shared, touches all three, announces readiness, waits for
/// `go` (the file is truncated to one page meanwhile), reads page 0 again and
/// then touches page 2, which must raise SIGBUS. With `control` set nothing
/// is truncated and the last access must succeed.
const TRUNCATED_MAPPING: &str = r#"
import mmap, os, sys, time
path, ready, go = sys.argv[1:4]
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, 3 * 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
assert m[0] == ord("a") and m[2 * 4096 + 7] == ord("c"), "unexpected content before truncation"
print("before-truncate ok", flush=True)
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
deadline = time.monotonic() + 120
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("timed out waiting for " + go)
    time.sleep(0.01)
print("size-now", os.fstat(fd).st_size, flush=True)
assert m[0] == ord("a"), "page 0 changed"
print("page0 ok", flush=True)
v = m[2 * 4096 + 7]
print("page2 read", v, flush=True)
"#;

/// Takes a POSIX write lock on bytes [0, 100) and an exclusive flock, then
/// announces readiness (its pid) and holds both until `release` exists.
const LOCK_HOLDER: &str = r#"
import fcntl, os, sys, time
path, ready, release = sys.argv[1:4]
fd = os.open(path, os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
fd2 = os.open(path, os.O_RDONLY)
fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
deadline = time.monotonic() + 120
while not os.path.exists(release):
    if time.monotonic() > deadline:
        sys.exit("holder timed out waiting for " + release)
    time.sleep(0.01)
"#;

/// Tries, without blocking: a POSIX write lock overlapping [0, 100), one on a
/// disjoint range, F_GETLK on [0, 100), and an exclusive flock. Prints the
/// outcome of each ("ok" or the errno) as JSON.
const LOCK_CONTENDER: &str = r#"
import errno, fcntl, json, os, struct, sys
path = sys.argv[1]
res = {}
fd = os.open(path, os.O_RDWR)
def attempt(name, f):
    try:
        f()
        res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 100, 0)
l_type, _, _, _, l_pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, probe))
res["getlk_type"] = "unlocked" if l_type == fcntl.F_UNLCK else "locked"
res["getlk_pid"] = l_pid
attempt("fcntl_overlap", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50))
attempt("fcntl_disjoint", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 200))
fd2 = os.open(path, os.O_RDONLY)
attempt("flock", lambda: fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB))
print(json.dumps(res))
"#;

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Wait for a helper's ready file and return the pid it wrote there.
fn wait_ready(ready: &Path, what: &str) -> u32 {
    assert!(
        wait_until(CMD_TIMEOUT, || ready.exists()),
        "{what} never became ready ({})",
        ready.display()
    );
    fs::read_to_string(ready)
        .unwrap()
        .trim()
        .parse()
        .expect("ready file holds a pid")
}

/// Finish a helper that was told to go, requiring success.
fn finish(helper: Guarded, what: &str) -> String {
    let out = helper.wait_output(CMD_TIMEOUT);
    assert_success(&out, what);
    String::from_utf8(out.stdout).unwrap()
}

fn read_in(m: &Mount, branch: Option<&str>, path: &Path) -> Vec<u8> {
    match branch {
        None => fs::read(path).unwrap(),
        Some(_) => {
            let out = py_in_ok(
                m,
                branch,
                "import sys; sys.stdout.write(open(sys.argv[1], 'rb').read().hex())",
                &[s(path)],
            );
            (0..out.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&out[i..i + 2], 16).unwrap())
                .collect()
        }
    }
}

/// Shared mapping in `branch`: msync'd writes are visible to read(2), to a
/// second process's mapping, and (checked by the caller) to snapshots.
fn shared_mapping_case(m: &Mount, branch: Option<&str>, tag: &str) {
    let file = m.join("shared.bin");
    let dir = m
        .scratch()
        .join(format!("shared-{}", branch.unwrap_or("default")));
    fs::create_dir_all(&dir).unwrap();
    let (ready, go) = (dir.join("ready"), dir.join("go"));
    let tag2 = format!("{tag}-unsynced");
    let writer = spawn_py_in(
        m,
        branch,
        SHARED_WRITER,
        &[s(&file), tag, &tag2, s(&ready), s(&go)],
        Some(ready.clone()),
    );
    wait_ready(&ready, "shared-mapping writer");

    let data = read_in(m, branch, &file);
    assert_eq!(data.len(), 3 * PAGE, "file size changed");
    assert_eq!(
        &data[100..100 + tag.len()],
        tag.as_bytes(),
        "read(2) does not see the msync'd mapping write"
    );
    assert_eq!(&data[8197..8197 + tag.len()], tag.as_bytes());
    assert!(
        data[..100].iter().all(|&b| b == b'.'),
        "bytes before the write changed"
    );
    let seen = py_in_ok(
        m,
        branch,
        SHARED_READER,
        &[s(&file), &tag.len().to_string()],
    );
    assert_eq!(
        seen,
        format!("{tag}|{tag}"),
        "another process's mapping does not see the write"
    );

    fs::write(&go, "go").unwrap();
    finish(writer, "shared-mapping writer");
    // Unmapped and closed: the un-msync'd write is written back too.
    let data = read_in(m, branch, &file);
    assert_eq!(&data[200..200 + tag2.len()], tag2.as_bytes());
}

#[test]
fn shared_mapping_writes_reach_readers_other_mappings_and_snapshots() {
    let m = mount_or_skip!();
    let file = m.join("shared.bin");
    fs::write(&file, vec![b'.'; 3 * PAGE]).unwrap();

    shared_mapping_case(&m, None, "MAIN-TAG");
    // A snapshot taken now holds the msync'd bytes: a branch made from it has
    // its own inode (no shared page cache), so it reads them from the daemon.
    let snap = m.snapshot("after-main-mmap");
    m.branch(&snap, "A");
    m.branch(&snap, "B");
    let in_a = read_in(&m, Some("A"), &file);
    assert_eq!(&in_a[100..108], b"MAIN-TAG", "snapshot misses msync'd data");
    assert_eq!(&in_a[200..217], b"MAIN-TAG-unsynced");

    // In branch A the first write through a mapping is a copy-on-write.
    shared_mapping_case(&m, Some("A"), "BRANCH-A");
    let main = fs::read(&file).unwrap();
    assert_eq!(
        &main[100..108],
        b"MAIN-TAG",
        "a mapping write in branch A leaked into main"
    );
    let in_b = read_in(&m, Some("B"), &file);
    assert_eq!(
        &in_b[100..108],
        b"MAIN-TAG",
        "a mapping write in A leaked into B"
    );
}

#[test]
fn private_mapping_writes_stay_private() {
    let m = mount_or_skip!();
    let file = m.join("private.bin");
    let original = b"original content of the file\n".repeat(200);
    fs::write(&file, &original).unwrap();
    let snap = m.snapshot("before-private");
    m.branch(&snap, "A");

    for branch in [None, Some("A")] {
        let out = py_in_ok(&m, branch, PRIVATE_WRITER, &[s(&file)]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["private"], "PRIVATE!", "{branch:?}: {v}");
        assert_eq!(v["pread"], "original", "{branch:?}: {v}");
        assert_eq!(v["shared"], "original", "{branch:?}: {v}");
        assert_eq!(
            read_in(&m, branch, &file),
            original,
            "{branch:?}: a private mapping's write reached the file"
        );
    }
}

/// Map three pages in `branch`, truncate to one page with `truncate`, touch
/// page 2. Returns the helper's output.
fn truncated_mapping_case(
    m: &Mount,
    branch: Option<&str>,
    name: &str,
    truncate: impl FnOnce(&Path),
) -> std::process::Output {
    let file = m.join(name);
    let dir = m.scratch().join(name);
    fs::create_dir_all(&dir).unwrap();
    let (ready, go) = (dir.join("ready"), dir.join("go"));
    let child = spawn_py_in(
        m,
        branch,
        TRUNCATED_MAPPING,
        &[s(&file), s(&ready), s(&go)],
        Some(ready.clone()),
    );
    wait_ready(&ready, "mapping child");
    truncate(&file);
    fs::write(&go, "go").unwrap();
    child.wait_output(CMD_TIMEOUT)
}

#[test]
fn mapping_beyond_end_of_a_truncated_file_raises_sigbus() {
    let m = mount_or_skip!();
    let content: Vec<u8> = [b'a', b'b', b'c']
        .iter()
        .flat_map(|&c| vec![c; PAGE])
        .collect();
    for name in ["control.bin", "main.bin", "branch.bin"] {
        fs::write(m.join(name), &content).unwrap();
    }
    let snap = m.snapshot("before-truncate");
    m.branch(&snap, "A");

    // Control: without truncation the same access succeeds.
    let out = truncated_mapping_case(&m, None, "control.bin", |_| {});
    assert_success(&out, "mapping child without truncation");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("page2 read 99"), "{stdout}");

    let cases: [(Option<&str>, &str); 2] = [(None, "main.bin"), (Some("A"), "branch.bin")];
    for (branch, name) in cases {
        let out = truncated_mapping_case(&m, branch, name, |file| match branch {
            None => fs::OpenOptions::new()
                .write(true)
                .open(file)
                .unwrap()
                .set_len(PAGE as u64)
                .unwrap(),
            Some(_) => {
                py_in_ok(
                    &m,
                    branch,
                    "import os, sys; os.truncate(sys.argv[1], 4096)",
                    &[s(file)],
                );
            }
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGBUS),
            "{branch:?}: expected death by SIGBUS, got {} (stdout: {stdout}, stderr: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("size-now 4096") && stdout.contains("page0 ok"),
            "{branch:?}: the child did not see the truncation or lost page 0: {stdout}"
        );
        assert!(!stdout.contains("page2 read"), "{stdout}");
    }
    // The branch's truncation did not touch main's copy.
    assert_eq!(
        fs::metadata(m.join("branch.bin")).unwrap().len(),
        3 * PAGE as u64
    );
}

/// Run the contender in `branch` against `file` and parse its report.
fn contend(m: &Mount, branch: Option<&str>, file: &Path) -> Value {
    let out = py_in(m, branch, LOCK_CONTENDER, &[s(file)]);
    assert_success(&out, &format!("lock contender in {branch:?}"));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
}

fn assert_blocked(v: &Value, holder: u32, what: &str) {
    assert_eq!(v["fcntl_overlap"], "EAGAIN", "{what}: {v}");
    // EWOULDBLOCK is EAGAIN on Linux.
    assert_eq!(v["flock"], "EAGAIN", "{what}: {v}");
    assert_eq!(v["getlk_type"], "locked", "{what}: {v}");
    assert_eq!(
        v["getlk_pid"].as_u64(),
        Some(u64::from(holder)),
        "{what}: F_GETLK names another holder: {v}"
    );
    assert_eq!(
        v["fcntl_disjoint"], "ok",
        "{what}: a disjoint range must lock: {v}"
    );
}

fn assert_free(v: &Value, what: &str) {
    for key in ["fcntl_overlap", "fcntl_disjoint", "flock"] {
        assert_eq!(v[key], "ok", "{what}: {key}: {v}");
    }
    assert_eq!(v["getlk_type"], "unlocked", "{what}: {v}");
}

/// Start a lock holder in `branch`; returns it and its pid.
fn hold(
    m: &Mount,
    branch: Option<&str>,
    file: &Path,
    tag: &str,
) -> (Guarded, u32, std::path::PathBuf) {
    let dir = m.scratch().join(tag);
    fs::create_dir_all(&dir).unwrap();
    let (ready, release) = (dir.join("ready"), dir.join("release"));
    let holder = spawn_py_in(
        m,
        branch,
        LOCK_HOLDER,
        &[s(file), s(&ready), s(&release)],
        Some(ready.clone()),
    );
    let pid = wait_ready(&ready, "lock holder");
    (holder, pid, release)
}

#[test]
fn fcntl_and_flock_conflict_between_processes_of_one_branch() {
    let m = mount_or_skip!();
    let file = m.join("locked.dat");
    fs::write(&file, vec![0u8; 1000]).unwrap();
    let snap = m.snapshot("before-locks");
    m.branch(&snap, "A");

    for branch in [None, Some("A")] {
        let tag = format!("hold-{}", branch.unwrap_or("default"));
        let (holder, pid, release) = hold(&m, branch, &file, &tag);
        let v = contend(&m, branch, &file);
        assert_blocked(&v, pid, &format!("same branch {branch:?}"));
        fs::write(&release, "go").unwrap();
        finish(holder, "lock holder");
        // Released (the holder exited): the same attempts now succeed.
        let v = contend(&m, branch, &file);
        assert_free(&v, &format!("{branch:?} after release"));
    }
}

#[test]
fn locks_in_different_branches_do_not_block_each_other() {
    let m = mount_or_skip!();
    let file = m.join("locked.dat");
    fs::write(&file, vec![0u8; 1000]).unwrap();
    let snap = m.snapshot("before-locks");
    m.branch(&snap, "A");
    m.branch(&snap, "B");

    let (holder, pid, release) = hold(&m, Some("A"), &file, "hold-A");
    // Control: a second process in A is blocked, so the holder holds.
    let v = contend(&m, Some("A"), &file);
    assert_blocked(&v, pid, "second process in A");
    // Another branch, and the default branch, are other files.
    let v = contend(&m, Some("B"), &file);
    assert_free(&v, "process in B while A holds the locks");
    let v = contend(&m, None, &file);
    assert_free(&v, "process in main while A holds the locks");

    // And the other way round: main holds, A and B are free.
    let (main_holder, main_pid, main_release) = hold(&m, None, &file, "hold-main");
    let v = contend(&m, None, &file);
    assert_blocked(&v, main_pid, "second process in main");
    let v = contend(&m, Some("B"), &file);
    assert_free(&v, "process in B while main holds the locks");

    fs::write(&release, "go").unwrap();
    fs::write(&main_release, "go").unwrap();
    finish(holder, "lock holder in A");
    finish(main_holder, "lock holder in main");
}
