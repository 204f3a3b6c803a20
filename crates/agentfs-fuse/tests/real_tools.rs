//! Real tools on a real mount, in the default branch and in a branch made
//! from a snapshot (where every first write is a copy-on-write): git, cargo,
//! sqlite (python3's sqlite3), `cp -a` and tar of a tree with every kind of
//! entry, and an editor-style atomic save watched by a polling reader.
//!
//! Each test checks what the tool produced (object counts, file contents,
//! row counts, lstat fields), not only exit codes, and each phase in a branch
//! is followed by a check that the default branch did not change.
//!
//! Processes that must see a branch are started through `branch-exec`; no
//! helper is ever started with its working directory on the mount (a cwd is
//! an inode of one branch, see specs/bindings.md), so every tool gets
//! absolute paths (`git -C`, `cargo --manifest-path`).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    assert_success, command_in, py_in_ok, run_with_timeout, shq, spawn_py_in, wait_until, Mount,
    CMD_TIMEOUT,
};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Run `program args...` in `branch` (or unbound) with `env`, requiring
/// success; returns (stdout, stderr).
fn run_in(
    m: &Mount,
    branch: Option<&str>,
    env: &[(&str, String)],
    program: &str,
    args: &[&str],
) -> (String, String) {
    let mut cmd = command_in(m, branch, program, args);
    cmd.current_dir(m.scratch());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_timeout(&mut cmd, CMD_TIMEOUT);
    assert_success(&out, &format!("{program} {args:?} in branch {branch:?}"));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sh -c script` on the host, unbound, requiring success; returns stdout.
fn host_sh(script: &str) -> String {
    let out = run_with_timeout(
        Command::new("sh")
            .arg("-c")
            .arg(format!("set -eu\n{script}")),
        CMD_TIMEOUT,
    );
    assert_success(&out, &format!("sh -c {script:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------- git ----

/// Files in the generated repository.
const GIT_FILES: usize = 3000;

/// `git -C repo ARGS` in `branch`, with no system or global configuration.
///
/// `maintenance.auto=false`: `git commit` otherwise starts
/// `git maintenance run --auto --detach`, a daemonized grandchild. Once its
/// parent exits it is reparented to init, so AgentFS's ancestry walk no
/// longer finds the branch binding and it works on the *default* branch's
/// repository (and its root lookups evict the branch's dentry, so the bound
/// shell's getcwd fails with ENOENT). See the test
/// `daemonized_grandchild_keeps_the_branch`.
fn git(m: &Mount, branch: Option<&str>, repo: &Path, args: &[&str]) -> String {
    let mut argv = vec![
        "-C",
        s(repo),
        "-c",
        "user.name=AgentFS Test",
        "-c",
        "user.email=test@agentfs.invalid",
        "-c",
        "safe.directory=*",
        "-c",
        "maintenance.auto=false",
        "-c",
        "gc.autoDetach=false",
        "-c",
        "advice.detachedHead=false",
    ];
    argv.extend_from_slice(args);
    let home = m.scratch().join("home");
    fs::create_dir_all(&home).unwrap();
    let env = [
        ("GIT_CONFIG_NOSYSTEM", "1".to_string()),
        ("GIT_CONFIG_GLOBAL", "/dev/null".to_string()),
        ("HOME", s(&home).to_string()),
        ("LC_ALL", "C".to_string()),
    ];
    run_in(m, branch, &env, "git", &argv).0
}

/// Assert `git fsck --full --strict` is clean: success and nothing reported
/// but unreachable/dangling notes.
fn assert_fsck_clean(m: &Mount, branch: Option<&str>, repo: &Path) {
    let out = git(
        m,
        branch,
        repo,
        &["fsck", "--full", "--strict", "--no-dangling"],
    );
    assert!(
        out.trim().is_empty(),
        "git fsck in {branch:?} reported: {out}"
    );
}

/// `git count-objects -v` as (loose count, in-pack count).
fn object_counts(m: &Mount, branch: Option<&str>, repo: &Path) -> (u64, u64) {
    let out = git(m, branch, repo, &["count-objects", "-v"]);
    let field = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in count-objects output: {out}"))
    };
    (field("count:"), field("in-pack:"))
}

fn read_in(m: &Mount, branch: Option<&str>, path: &Path) -> String {
    match branch {
        None => fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        Some(_) => py_in_ok(
            m,
            branch,
            "import sys; sys.stdout.write(open(sys.argv[1]).read())",
            &[s(path)],
        ),
    }
}

fn exists_in(m: &Mount, branch: Option<&str>, path: &Path) -> bool {
    let out = py_in_ok(
        m,
        branch,
        "import os, sys; print(os.path.lexists(sys.argv[1]))",
        &[s(path)],
    );
    out.trim() == "True"
}

/// Writes `count` files under `root` with a Python helper in `branch`:
/// `d{i%30:02}/e{i%5}/f{i}.txt` holding `prefix` and the index.
fn write_tree(
    m: &Mount,
    branch: Option<&str>,
    root: &Path,
    start: usize,
    count: usize,
    prefix: &str,
) {
    py_in_ok(
        m,
        branch,
        r#"
import os, sys
root, start, count, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for i in range(start, start + count):
    d = os.path.join(root, "d%02d" % (i % 30), "e%d" % (i % 5))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%d.txt" % i), "w") as f:
        f.write((prefix + " %d\n" % i) * (1 + i % 4))
"#,
        &[s(root), &start.to_string(), &count.to_string(), prefix],
    );
}

/// The commit/branch/checkout/gc/fsck cycle in `branch`: on a new branch
/// `topic`, modify 40 files, delete file number `deleted`, add 20 files in a
/// new directory, commit; check out the base commit and back, checking the
/// working tree each time; then gc and fsck. Returns the new HEAD.
fn git_cycle(
    m: &Mount,
    branch: Option<&str>,
    repo: &Path,
    topic: &str,
    tag: &str,
    deleted: usize,
) -> String {
    let base = git(m, branch, repo, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    let changed = repo.join("d00/e0/f0.txt");
    let deleted = repo.join(format!(
        "d{:02}/e{}/f{deleted}.txt",
        deleted % 30,
        deleted % 5
    ));
    let (changed_base, deleted_base) = (read_in(m, branch, &changed), read_in(m, branch, &deleted));
    git(m, branch, repo, &["checkout", "-q", "-b", topic]);
    write_tree(m, branch, repo, 0, 40, tag);
    let rm = git(m, branch, repo, &["rm", "-q", s(&deleted)]);
    assert!(rm.trim().is_empty(), "{rm}");
    write_tree(m, branch, &repo.join(format!("new-{topic}")), 0, 20, tag);
    git(m, branch, repo, &["add", "-A"]);
    git(
        m,
        branch,
        repo,
        &["commit", "-q", "-m", &format!("{tag} change")],
    );
    let head = git(m, branch, repo, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    let stat = git(m, branch, repo, &["diff", "--shortstat", &base, &head]);
    assert!(
        stat.contains("61 files changed"),
        "{branch:?}: commit {head} over {base} should change 61 files: {stat}"
    );

    // Back to the base commit: the working tree follows.
    git(m, branch, repo, &["checkout", "-q", &base]);
    assert_eq!(read_in(m, branch, &changed), changed_base);
    assert_eq!(read_in(m, branch, &deleted), deleted_base);
    assert!(!exists_in(m, branch, &repo.join(format!("new-{topic}"))));
    git(m, branch, repo, &["checkout", "-q", topic]);
    assert_eq!(read_in(m, branch, &changed), format!("{tag} 0\n"));
    assert!(!exists_in(m, branch, &deleted));
    let status = git(m, branch, repo, &["status", "--porcelain"]);
    assert_eq!(status, "", "{branch:?}: tree not clean after checkout");

    git(m, branch, repo, &["gc", "-q", "--prune=now"]);
    let (loose, packed) = object_counts(m, branch, repo);
    assert_eq!(loose, 0, "{branch:?}: gc left loose objects");
    assert!(
        packed as usize > GIT_FILES,
        "{branch:?}: only {packed} objects packed"
    );
    assert_fsck_clean(m, branch, repo);
    assert_eq!(git(m, branch, repo, &["status", "--porcelain"]), "");
    head
}

#[test]
fn git_commit_checkout_gc_fsck_in_main_and_in_a_branch() {
    let m = mount_or_skip!();
    let repo = m.join("repo");
    fs::create_dir(&repo).unwrap();
    write_tree(&m, None, &repo, 0, GIT_FILES, "file");

    git(&m, None, &repo, &["init", "-q", "-b", "main"]);
    git(&m, None, &repo, &["add", "-A"]);
    git(&m, None, &repo, &["commit", "-q", "-m", "initial"]);
    let files = git(&m, None, &repo, &["ls-files"]);
    assert_eq!(files.lines().count(), GIT_FILES);
    let initial = git(&m, None, &repo, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    let feature = git_cycle(&m, None, &repo, "feature", "main-edit", 41);
    assert_ne!(feature, initial);

    // Snapshot the repository and repeat the cycle inside a branch.
    let snap = m.snapshot("repo-snap");
    m.branch(&snap, "work");
    let b = Some("work");
    assert_eq!(
        git(&m, b, &repo, &["rev-parse", "HEAD"]).trim(),
        feature,
        "the branch does not start at the snapshot's HEAD"
    );
    assert_eq!(git(&m, b, &repo, &["status", "--porcelain"]), "");
    assert_fsck_clean(&m, b, &repo);
    let in_branch = git_cycle(&m, b, &repo, "in-branch", "branch-edit", 42);
    assert_ne!(in_branch, feature);
    let log = git(&m, b, &repo, &["log", "--oneline", "in-branch"]);
    assert_eq!(log.lines().count(), 3, "{log}");

    // The default branch's repository did not change.
    assert_eq!(git(&m, None, &repo, &["rev-parse", "HEAD"]).trim(), feature);
    assert_eq!(git(&m, None, &repo, &["status", "--porcelain"]), "");
    let refs = git(&m, None, &repo, &["for-each-ref", "--format=%(refname)"]);
    let refs: BTreeSet<&str> = refs.lines().collect();
    assert_eq!(
        refs,
        BTreeSet::from(["refs/heads/feature", "refs/heads/main"]),
        "the branch's refs leaked into main"
    );
    assert_eq!(
        fs::read_to_string(repo.join("d00/e0/f0.txt")).unwrap(),
        "main-edit 0\n"
    );
    assert!(!repo.join("new-in-branch").exists());
    assert!(repo.join("new-feature").is_dir());
    assert_fsck_clean(&m, None, &repo);
}

// -------------------------------------------------------------- cargo ----

const CARGO_TOML: &str = r#"[package]
name = "tiny"
version = "0.1.0"
edition = "2021"

[dependencies]
"#;

fn lib_rs(greeting: &str) -> String {
    format!(
        r#"//! A crate built by the AgentFS mount tests.
pub const GREETING: &str = "{greeting}";

pub fn add(a: u64, b: u64) -> u64 {{
    a + b
}}

#[cfg(test)]
mod tests {{
    #[test]
    fn adds() {{
        assert_eq!(super::add(2, 3), 5);
    }}

    #[test]
    fn greets() {{
        assert!(super::GREETING.starts_with("hello"));
    }}
}}
"#
    )
}

const MAIN_RS: &str = "fn main() {\n    println!(\"{}\", tiny::GREETING);\n}\n";

/// `cargo ARGS --offline --manifest-path M/tiny/Cargo.toml` in `branch`, with
/// the target dir on the mount and a private CARGO_HOME; (stdout, stderr).
fn cargo(m: &Mount, branch: Option<&str>, args: &[&str]) -> (String, String) {
    let krate = m.join("tiny");
    let manifest = krate.join("Cargo.toml");
    let mut argv = args.to_vec();
    argv.extend_from_slice(&["--offline", "--manifest-path", s(&manifest)]);
    let cargo_home = m.scratch().join("cargo-home");
    fs::create_dir_all(&cargo_home).unwrap();
    let env = [
        ("CARGO_TARGET_DIR", s(&krate.join("target")).to_string()),
        ("CARGO_HOME", s(&cargo_home).to_string()),
        ("CARGO_INCREMENTAL", "1".to_string()),
        ("CARGO_TERM_COLOR", "never".to_string()),
        ("RUSTFLAGS", String::new()),
        ("RUSTC_WRAPPER", String::new()),
    ];
    run_in(m, branch, &env, "cargo", &argv)
}

fn compiled(stderr: &str) -> bool {
    stderr.contains("Compiling tiny")
}

fn write_in(m: &Mount, branch: Option<&str>, path: &Path, content: &str) {
    py_in_ok(
        m,
        branch,
        "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
        &[s(path), content],
    );
}

#[test]
fn cargo_builds_tests_and_rebuilds_incrementally_in_main_and_in_a_branch() {
    let m = mount_or_skip!();
    let krate = m.join("tiny");
    fs::create_dir_all(krate.join("src")).unwrap();
    fs::write(krate.join("Cargo.toml"), CARGO_TOML).unwrap();
    fs::write(krate.join("src/lib.rs"), lib_rs("hello v1")).unwrap();
    fs::write(krate.join("src/main.rs"), MAIN_RS).unwrap();

    let (_, err) = cargo(&m, None, &["build"]);
    assert!(compiled(&err), "first build compiled nothing: {err}");
    let (out, _) = cargo(&m, None, &["test"]);
    assert!(
        out.contains("test tests::adds ... ok") && out.contains("2 passed"),
        "{out}"
    );
    // Nothing changed: cargo's mtime fingerprints must say fresh.
    let (_, err) = cargo(&m, None, &["build"]);
    assert!(!compiled(&err), "no-op build recompiled: {err}");
    // Content change: the rebuilt binary has the new constant.
    fs::write(krate.join("src/lib.rs"), lib_rs("hello v2")).unwrap();
    let (out, err) = cargo(&m, None, &["run", "-q"]);
    assert_eq!(out, "hello v2\n", "{err}");
    // An mtime change alone triggers a rebuild too.
    let lib = fs::File::options()
        .write(true)
        .open(krate.join("src/lib.rs"))
        .unwrap();
    lib.set_modified(std::time::SystemTime::now()).unwrap();
    drop(lib);
    let (_, err) = cargo(&m, None, &["build"]);
    assert!(compiled(&err), "touched source not rebuilt: {err}");
    let incremental = krate.join("target/debug/incremental");
    assert!(
        fs::read_dir(&incremental).unwrap().next().is_some(),
        "no incremental session under {}",
        incremental.display()
    );

    // A branch from a snapshot: same paths, same mtimes, so still fresh.
    let snap = m.snapshot("crate-snap");
    m.branch(&snap, "work");
    let b = Some("work");
    let (_, err) = cargo(&m, b, &["build"]);
    assert!(
        !compiled(&err),
        "the branch's first build recompiled: {err}"
    );
    write_in(&m, b, &krate.join("src/lib.rs"), &lib_rs("hello branch"));
    let (out, err) = cargo(&m, b, &["run", "-q"]);
    assert_eq!(out, "hello branch\n", "{err}");
    let (out, _) = cargo(&m, b, &["test"]);
    assert!(out.contains("2 passed"), "{out}");

    // Main's sources and artifacts are untouched: fresh, and still v2.
    let (_, err) = cargo(&m, None, &["build"]);
    assert!(!compiled(&err), "the branch's build dirtied main: {err}");
    let (out, _) = cargo(&m, None, &["run", "-q"]);
    assert_eq!(out, "hello v2\n");
}

// ------------------------------------------------------------- sqlite ----

/// Creates the WAL database and its table; prints the journal mode.
const SQLITE_SETUP: &str = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, writer INTEGER, seq INTEGER,"
            " payload TEXT, UNIQUE (writer, seq))")
con.close()
print(mode)
"#;

/// Inserts `n` rows, one transaction each, retrying on SQLITE_BUSY; starts
/// when `go` exists. Prints how many times it was busy.
const SQLITE_WRITER: &str = r#"
import json, os, sqlite3, sys, time
db, writer, n, ready, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
con = sqlite3.connect(db, timeout=0, isolation_level=None)
# Two connections opening one WAL database at once may find the other one
# rebuilding the WAL index: SQLITE_BUSY, on any filesystem. Retry that here
# (the timed part below counts its own retries).
for attempt in range(2000):
    try:
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        break
    except sqlite3.OperationalError as e:
        if "locked" not in str(e) and "busy" not in str(e):
            raise
        time.sleep(0.005)
else:
    sys.exit("the database stayed busy at start")
assert mode == "wal", mode
open(ready, "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("writer timed out waiting for " + go)
    time.sleep(0.005)
busy = 0
for i in range(n):
    while True:
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t (writer, seq, payload) VALUES (?, ?, ?)",
                        (writer, i, os.urandom(64).hex()))
            con.execute("COMMIT")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            busy += 1
            if con.in_transaction:
                con.execute("ROLLBACK")
            time.sleep(0.001)
con.close()
print(json.dumps({"busy": busy}))
"#;

/// Integrity check, journal mode, and row counts per writer, as JSON.
const SQLITE_CHECK: &str = r#"
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
res = {
    "integrity": [r[0] for r in con.execute("PRAGMA integrity_check")],
    "mode": con.execute("PRAGMA journal_mode").fetchone()[0],
    "rows": con.execute("SELECT COUNT(*) FROM t").fetchone()[0],
    "distinct": con.execute("SELECT COUNT(*) FROM (SELECT DISTINCT writer, seq FROM t)").fetchone()[0],
    "per_writer": {str(w): c for w, c in con.execute("SELECT writer, COUNT(*) FROM t GROUP BY writer")},
}
con.close()
print(json.dumps(res))
"#;

const SQLITE_ROWS: usize = 200;

fn sqlite_check(m: &Mount, branch: Option<&str>, db: &Path) -> Value {
    let out = py_in_ok(m, branch, SQLITE_CHECK, &[s(db)]);
    serde_json::from_str(out.trim()).unwrap()
}

/// Two concurrent writer processes in `branch`, writers `w1` and `w2`.
fn sqlite_writers(m: &Mount, branch: Option<&str>, db: &Path, w1: u32, w2: u32) {
    let dir = m
        .scratch()
        .join(format!("sqlite-{}", branch.unwrap_or("main")));
    fs::create_dir_all(&dir).unwrap();
    let go = dir.join("go");
    let n = SQLITE_ROWS.to_string();
    let writers: Vec<_> = [w1, w2]
        .iter()
        .map(|w| {
            let ready = dir.join(format!("ready-{w}"));
            let g = spawn_py_in(
                m,
                branch,
                SQLITE_WRITER,
                &[s(db), &w.to_string(), &n, s(&ready), s(&go)],
                None,
            );
            (g, ready)
        })
        .collect();
    let all_ready = writers
        .iter()
        .all(|(_, ready)| wait_until(CMD_TIMEOUT, || ready.exists()));
    if !all_ready {
        // Let the ready one finish, and show what the other one said.
        fs::write(&go, "go").unwrap();
        let said: Vec<String> = writers
            .into_iter()
            .map(|(g, _)| {
                let out = g.wait_output(CMD_TIMEOUT);
                format!(
                    "{:?}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .collect();
        panic!("a sqlite writer in {branch:?} never got ready: {said:#?}");
    }
    fs::write(&go, "go").unwrap();
    for (g, _) in writers {
        let out = g.wait_output(CMD_TIMEOUT);
        assert_success(&out, &format!("sqlite writer in {branch:?}"));
        println!(
            "sqlite writer in {branch:?}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
}

#[test]
fn sqlite_wal_with_two_concurrent_writers_in_main_and_in_a_branch() {
    let m = mount_or_skip!();
    let db = m.join("data/test.db");
    fs::create_dir(m.join("data")).unwrap();
    let mode = py_in_ok(&m, None, SQLITE_SETUP, &[s(&db)]);
    assert_eq!(mode.trim(), "wal");

    sqlite_writers(&m, None, &db, 1, 2);
    let v = sqlite_check(&m, None, &db);
    assert_eq!(v["integrity"], serde_json::json!(["ok"]), "{v}");
    assert_eq!(v["mode"], "wal", "{v}");
    assert_eq!(v["rows"].as_u64(), Some(2 * SQLITE_ROWS as u64), "{v}");
    assert_eq!(v["distinct"], v["rows"], "{v}");
    assert_eq!(
        v["per_writer"]["1"].as_u64(),
        Some(SQLITE_ROWS as u64),
        "{v}"
    );

    let snap = m.snapshot("db-snap");
    m.branch(&snap, "work");
    let b = Some("work");
    sqlite_writers(&m, b, &db, 3, 4);
    let v = sqlite_check(&m, b, &db);
    assert_eq!(v["integrity"], serde_json::json!(["ok"]), "branch: {v}");
    assert_eq!(
        v["rows"].as_u64(),
        Some(4 * SQLITE_ROWS as u64),
        "branch: {v}"
    );
    assert_eq!(v["distinct"], v["rows"], "branch: {v}");
    assert_eq!(
        v["per_writer"]["4"].as_u64(),
        Some(SQLITE_ROWS as u64),
        "{v}"
    );

    // Main is as it was.
    let v = sqlite_check(&m, None, &db);
    assert_eq!(
        v["integrity"],
        serde_json::json!(["ok"]),
        "main after branch: {v}"
    );
    assert_eq!(
        v["rows"].as_u64(),
        Some(2 * SQLITE_ROWS as u64),
        "main: {v}"
    );
    assert!(
        v["per_writer"].get("3").is_none(),
        "branch rows in main: {v}"
    );
}

// ------------------------------------------------------- cp -a and tar ----

/// Builds the reference tree on the host: hard links, relative, absolute and
/// dangling symlinks, user.* xattrs, a 1 GiB sparse file with 12 KiB written,
/// setgid and sticky directories, odd modes, a foreign owner, a 3 MiB file,
/// and nanosecond mtimes on every entry (directories last).
const BUILD_TREE: &str = r##"
import os, sys
root = sys.argv[1]
os.makedirs(os.path.join(root, "dir/sub/deeper"))
def w(rel, data, mode=0o644):
    p = os.path.join(root, rel)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
w("dir/plain.txt", b"plain text\n" * 10)
w("dir/exec.sh", b"#!/bin/sh\necho hi\n", 0o755)
w("dir/private", b"secret\n", 0o600)
w("dir/odd-mode", b"odd\n", 0o4751)
w("empty", b"")
w("dir/sub/deeper/name with spaces \u00e9.txt", "unicode \u00e9\n".encode())
w("dir/big.bin", os.urandom(3 * 1024 * 1024 + 17))
w("dir/owned", b"owned by nobody\n", 0o640)
os.chown(os.path.join(root, "dir/owned"), 65534, 65534)
w("dir/hard1", b"hard linked content\n")
os.link(os.path.join(root, "dir/hard1"), os.path.join(root, "dir/sub/hard2"))
os.link(os.path.join(root, "dir/hard1"), os.path.join(root, "hard3"))
os.symlink("dir/plain.txt", os.path.join(root, "link-rel"))
os.symlink("../plain.txt", os.path.join(root, "dir/sub/link-up"))
os.symlink("/etc/hostname", os.path.join(root, "link-abs"))
os.symlink("does/not/exist", os.path.join(root, "link-dangling"))
os.setxattr(os.path.join(root, "dir/plain.txt"), "user.comment", b"hello xattr")
os.setxattr(os.path.join(root, "dir/hard1"), "user.bin", bytes(range(256)))
os.setxattr(os.path.join(root, "dir"), "user.dirattr", b"on a directory")
sp = os.path.join(root, "sparse.img")
with open(sp, "wb") as f:
    f.truncate(1 << 30)
    for off in (0, 1 << 29, (1 << 30) - 4096):
        f.seek(off)
        f.write(bytes([0x5a]) * 4096)
os.mkdir(os.path.join(root, "sgid"))
os.chmod(os.path.join(root, "sgid"), 0o2775)
w("sgid/inside", b"in a setgid dir\n")
os.mkdir(os.path.join(root, "sticky"))
os.chmod(os.path.join(root, "sticky"), 0o1777)
os.mkdir(os.path.join(root, "emptydir"))
entries = []
for dirpath, dirnames, filenames in os.walk(root, topdown=False):
    for name in filenames + dirnames:
        entries.append(os.path.join(dirpath, name))
entries.append(root)
for i, p in enumerate(entries):
    t = 1600000000 * 10**9 + 123456789 + i * 1000003
    os.utime(p, ns=(t - 5 * 10**9, t), follow_symlinks=False)
"##;

/// Compares two trees entry by entry through lstat (type and mode, nlink,
/// size of non-directories, uid, gid, mtime_ns), symlink targets, user.*
/// xattrs, content (for sparse files: over the union of both data maps), the
/// hard-link groups, and requires sparse.img to stay sparse on both sides.
/// Prints a JSON list of differences.
const COMPARE_TREES: &str = r#"
import hashlib, json, os, stat, sys
a_root, b_root = sys.argv[1], sys.argv[2]
SEEK_DATA, SEEK_HOLE = 3, 4
def data_map(p):
    out, fd = [], os.open(p, os.O_RDONLY)
    try:
        size, off = os.fstat(fd).st_size, 0
        while off < size:
            try:
                start = os.lseek(fd, off, SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, SEEK_HOLE)
            out.append((start, end))
            off = end
    finally:
        os.close(fd)
    return out
def digest(p, regions):
    h, fd = hashlib.sha256(), os.open(p, os.O_RDONLY)
    try:
        for start, end in regions:
            off = start
            while off < end:
                chunk = os.pread(fd, min(1 << 20, end - off), off)
                if not chunk:
                    break
                h.update(off.to_bytes(8, "little") + chunk)
                off += len(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()
def walk(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            p = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(p, root)
            if name == "" and rel != ".":
                continue
            out[rel] = (p, os.lstat(p))
    return out
a, b = walk(a_root), walk(b_root)
diffs = []
if set(a) != set(b):
    diffs.append({"only_in_a": sorted(set(a) - set(b)), "only_in_b": sorted(set(b) - set(a))})
links_a, links_b = {}, {}
for rel in sorted(set(a) & set(b)):
    (pa, sa), (pb, sb) = a[rel], b[rel]
    fa = {"mode": oct(sa.st_mode), "nlink": sa.st_nlink, "uid": sa.st_uid, "gid": sa.st_gid,
          "mtime_ns": sa.st_mtime_ns}
    fb = {"mode": oct(sb.st_mode), "nlink": sb.st_nlink, "uid": sb.st_uid, "gid": sb.st_gid,
          "mtime_ns": sb.st_mtime_ns}
    if not stat.S_ISDIR(sa.st_mode):
        fa["size"], fb["size"] = sa.st_size, sb.st_size
    if stat.S_ISLNK(sa.st_mode) and stat.S_ISLNK(sb.st_mode):
        fa["target"], fb["target"] = os.readlink(pa), os.readlink(pb)
    if not stat.S_ISLNK(sa.st_mode) and not stat.S_ISLNK(sb.st_mode):
        for f, p in ((fa, pa), (fb, pb)):
            f["xattrs"] = {k: os.getxattr(p, k).hex() for k in sorted(os.listxattr(p)) if k.startswith("user.")}
    if stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode):
        regions = sorted(set(data_map(pa)) | set(data_map(pb)))
        fa["content"], fb["content"] = digest(pa, regions), digest(pb, regions)
        if sa.st_nlink > 1:
            links_a.setdefault(sa.st_ino, set()).add(rel)
            links_b.setdefault(sb.st_ino, set()).add(rel)
        if os.path.basename(rel) == "sparse.img":
            for side, st in (("a", sa), ("b", sb)):
                if st.st_blocks * 512 > 1 << 20:
                    diffs.append({"path": rel, "not_sparse": side, "blocks": st.st_blocks})
    if fa != fb:
        diffs.append({"path": rel, "a": fa, "b": fb})
groups_a = sorted(sorted(g) for g in links_a.values())
groups_b = sorted(sorted(g) for g in links_b.values())
if groups_a != groups_b:
    diffs.append({"hard_link_groups": {"a": groups_a, "b": groups_b}})
if len(a) < 20:
    diffs.append({"too_few_entries": len(a)})
print(json.dumps(diffs))
"#;

/// Compare `a` (on the host, read unbound) with `b` read in `branch`: the
/// Python walk, then `diff -r --no-dereference` (without the 1 GiB sparse
/// file, whose content the walk compares over its data map).
fn assert_same_tree(m: &Mount, branch: Option<&str>, a: &Path, b: &Path, what: &str) {
    let out = py_in_ok(m, branch, COMPARE_TREES, &[s(a), s(b)]);
    let diffs: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        diffs,
        serde_json::json!([]),
        "{what}: trees differ:\n{}",
        serde_json::to_string_pretty(&diffs).unwrap()
    );
    let diff_cmd = format!(
        "diff -r --no-dereference -x sparse.img {} {}",
        shq(a),
        shq(b)
    );
    let mut cmd = command_in(m, branch, "sh", &["-c", &diff_cmd]);
    let out = run_with_timeout(&mut cmd, CMD_TIMEOUT);
    assert_success(&out, &format!("{what}: {diff_cmd}"));
}

const TAR_OPTS: &str = "--xattrs --xattrs-include='user.*'";

/// `tar -c SRC | tar -x` into DST (created), in `branch`.
fn tar_copy(m: &Mount, branch: Option<&str>, src: &Path, dst: &Path) {
    let script = format!(
        "set -eu; mkdir {dst}; (cd {src} && tar {TAR_OPTS} --sparse -cf - .) | (cd {dst} && tar {TAR_OPTS} -xpf -)",
        src = shq(src),
        dst = shq(dst)
    );
    let mut cmd = command_in(m, branch, "sh", &["-c", &script]);
    let out = run_with_timeout(&mut cmd, CMD_TIMEOUT);
    assert_success(&out, &format!("tar copy in {branch:?}: {script}"));
}

fn cp_a(m: &Mount, branch: Option<&str>, src: &Path, dst: &Path) {
    run_in(m, branch, &[], "cp", &["-a", s(src), s(dst)]);
}

#[test]
fn cp_a_and_tar_preserve_a_tree_onto_the_mount_back_out_and_in_a_branch() {
    let m = mount_or_skip!();
    let host = m.scratch().join("host");
    fs::create_dir(&host).unwrap();
    let src = host.join("src");
    py_in_ok(&m, None, BUILD_TREE, &[s(&src)]);
    let blocks = host_sh(&format!("stat -c %b {}", shq(&src.join("sparse.img"))));
    assert!(
        blocks.trim().parse::<u64>().unwrap() < 2048,
        "the host reference file is not sparse: {blocks}"
    );

    // Onto the mount.
    let (cp_dst, tar_dst) = (m.join("cp"), m.join("tar"));
    cp_a(&m, None, &src, &cp_dst);
    assert_same_tree(&m, None, &src, &cp_dst, "cp -a onto the mount");
    tar_copy(&m, None, &src, &tar_dst);
    assert_same_tree(&m, None, &src, &tar_dst, "tar onto the mount");

    // Back out to ext4.
    cp_a(&m, None, &cp_dst, &host.join("cp-back"));
    assert_same_tree(&m, None, &src, &host.join("cp-back"), "cp -a back out");
    tar_copy(&m, None, &tar_dst, &host.join("tar-back"));
    assert_same_tree(&m, None, &src, &host.join("tar-back"), "tar back out");

    // In a branch: the snapshot's copy reads the same, and copies made in the
    // branch (every entry new or copied on write) match too.
    let snap = m.snapshot("tree-snap");
    m.branch(&snap, "work");
    let b = Some("work");
    assert_same_tree(&m, b, &src, &cp_dst, "the snapshot's copy seen in a branch");
    cp_a(&m, b, &cp_dst, &m.join("cp-in-branch"));
    assert_same_tree(
        &m,
        b,
        &src,
        &m.join("cp-in-branch"),
        "cp -a within the branch",
    );
    tar_copy(&m, b, &tar_dst, &m.join("tar-in-branch"));
    assert_same_tree(
        &m,
        b,
        &src,
        &m.join("tar-in-branch"),
        "tar within the branch",
    );
    cp_a(&m, b, &m.join("tar-in-branch"), &host.join("branch-back"));
    assert_same_tree(
        &m,
        None,
        &src,
        &host.join("branch-back"),
        "cp -a out of the branch",
    );
    // Metadata changes in the branch stay there.
    let script = "import os, sys; p = sys.argv[1]; os.chmod(p, 0o600); \
                  os.setxattr(p, 'user.comment', b'changed in branch'); os.utime(p, ns=(1, 1))";
    py_in_ok(&m, b, script, &[s(&cp_dst.join("dir/plain.txt"))]);
    assert!(!m.join("cp-in-branch").exists());
    assert_same_tree(
        &m,
        None,
        &src,
        &cp_dst,
        "main's copy after the branch's changes",
    );
}

// -------------------------------------------------- editor-style save ----

/// The content of version `k` of the saved document: a header, a body whose
/// length depends on `k`, and a trailer, so a torn read cannot look whole.
const VERSION_FN: &str = r#"
def version(k):
    return ("version %d\n" % k + ("%08d" % k) * (500 + (k % 7) * 1000) + "\nend %d\n" % k).encode()
"#;

/// Saves versions 1..=count like an editor: write a temp file, fsync it,
/// rename it over the target, fsync the directory. Starts once `ready`
/// (the reader's) exists; creates `done` at the end.
const SAVER: &str = r#"
import os, sys, time
target, count, ready, done = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.monotonic() + 120
while not os.path.exists(ready):
    if time.monotonic() > deadline:
        sys.exit("saver timed out waiting for the reader")
    time.sleep(0.005)
d = os.path.dirname(target)
tmp = os.path.join(d, "." + os.path.basename(target) + ".swp")
for k in range(1, count + 1):
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data = version(k)
    while data:
        data = data[os.write(fd, data):]
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, target)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
open(done, "w").close()
"#;

/// Reopens the target by name in a loop until `done` exists (then once more),
/// checking each read is exactly one version and versions never go back.
const POLLER: &str = r#"
import json, os, sys, time
target, ready, done = sys.argv[1:4]
reads, seen, last, errors = 0, set(), -1, []
open(ready, "w").close()
deadline = time.monotonic() + 120
while True:
    finished = os.path.exists(done)
    with open(target, "rb") as f:
        data = f.read()
    reads += 1
    k = -1
    if data.startswith(b"version "):
        try:
            k = int(data[8:data.index(b"\n")])
        except ValueError:
            pass
    if k < 0 or data != version(k):
        errors.append({"read": reads, "len": len(data), "head": data[:40].decode("latin-1")})
    else:
        if k < last:
            errors.append({"read": reads, "went_back": [last, k]})
        last = k
        seen.add(k)
    if finished or len(errors) > 10 or time.monotonic() > deadline:
        break
print(json.dumps({"reads": reads, "distinct": len(seen), "last": last, "errors": errors}))
"#;

const SAVES: usize = 200;

fn atomic_save_case(m: &Mount, branch: Option<&str>, target: &Path) {
    let dir = m
        .scratch()
        .join(format!("save-{}", branch.unwrap_or("main")));
    fs::create_dir_all(&dir).unwrap();
    let (ready, done) = (dir.join("ready"), dir.join("done"));
    let poller = format!("{VERSION_FN}{POLLER}");
    let saver = format!("{VERSION_FN}{SAVER}");
    let reader = spawn_py_in(m, branch, &poller, &[s(target), s(&ready), s(&done)], None);
    let writer = spawn_py_in(
        m,
        branch,
        &saver,
        &[s(target), &SAVES.to_string(), s(&ready), s(&done)],
        None,
    );
    let out = writer.wait_output(CMD_TIMEOUT);
    assert_success(&out, &format!("saver in {branch:?}"));
    let out = reader.wait_output(CMD_TIMEOUT);
    assert_success(&out, &format!("poller in {branch:?}"));
    let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    println!("atomic save in {branch:?}: {v}");
    assert_eq!(v["errors"], serde_json::json!([]), "{branch:?}: {v}");
    assert_eq!(
        v["last"].as_u64(),
        Some(SAVES as u64),
        "{branch:?}: the final read is not the last version: {v}"
    );
    assert!(v["reads"].as_u64().unwrap() >= 1, "{v}");
}

fn version(k: usize) -> Vec<u8> {
    let mut v = format!("version {k}\n").into_bytes();
    v.extend(format!("{k:08}").repeat(500 + (k % 7) * 1000).into_bytes());
    v.extend(format!("\nend {k}\n").into_bytes());
    v
}

#[test]
fn editor_atomic_save_never_shows_a_torn_file_to_a_polling_reader() {
    let m = mount_or_skip!();
    fs::create_dir(m.join("docs")).unwrap();
    let doc = m.join("docs/doc.txt");
    let main_doc = m.join("docs/main-doc.txt");
    fs::write(&doc, version(0)).unwrap();
    fs::write(&main_doc, version(0)).unwrap();

    atomic_save_case(&m, None, &main_doc);
    assert_eq!(fs::read(&main_doc).unwrap(), version(SAVES));

    let snap = m.snapshot("docs-snap");
    m.branch(&snap, "work");
    atomic_save_case(&m, Some("work"), &doc);
    // Main's document is still version 0; the branch's is the last one.
    assert_eq!(fs::read(&doc).unwrap(), version(0));
    let in_branch = py_in_ok(
        &m,
        Some("work"),
        "import sys; print(open(sys.argv[1], 'rb').read().split(b'\\n')[0].decode())",
        &[s(&doc)],
    );
    assert_eq!(in_branch.trim(), format!("version {SAVES}"));
    let leftovers: Vec<PathBuf> = fs::read_dir(m.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(leftovers.len(), 2, "temp files left in main: {leftovers:?}");
}

// ------------------------------------------------- known binding bugs ----

/// Forks a daemon the way `git maintenance run --detach` does (fork, setsid,
/// fork, the middle process exits), waits until the grandchild has been
/// reparented away from the middle process, and has it report what it reads
/// at `path`.
const DAEMONIZE: &str = r#"
import os, sys, time
path, out = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    os.setsid()
    middle = os.getpid()
    if os.fork() == 0:
        deadline = time.monotonic() + 60
        while os.getppid() == middle and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            seen = open(path).read()
        except OSError as e:
            seen = "error: %s" % e
        with open(out + ".tmp", "w") as f:
            f.write(seen)
        os.rename(out + ".tmp", out)
    os._exit(0)
os.wait()
deadline = time.monotonic() + 60
while not os.path.exists(out) and time.monotonic() < deadline:
    time.sleep(0.01)
print(open(out).read())
"#;

/// Found through git: `git commit` starts `git maintenance run --auto
/// --detach`, whose daemonized grandchild is reparented to init; a binding
/// found by walking the live PPid chain then resolved to the default branch.
/// Under `branch-exec` (as root) the process runs in a private mount namespace
/// with the branch bind-mounted over the mount path, which its descendants
/// keep whoever their parent becomes. (A shell bound with `branch-bind` still
/// depends on the PPid chain: specs/bindings.md.)
#[test]
fn daemonized_grandchild_of_a_bound_process_keeps_its_branch() {
    let m = mount_or_skip!();
    let file = m.join("where.txt");
    fs::write(&file, "main").unwrap();
    let snap = m.snapshot("daemon-snap");
    m.branch(&snap, "work");
    write_in(&m, Some("work"), &file, "work");
    let out = m.scratch().join("daemon-saw");
    let seen = py_in_ok(&m, Some("work"), DAEMONIZE, &[s(&file), s(&out)]);
    assert_eq!(
        seen.trim(),
        "work",
        "a daemonized grandchild of a process bound to 'work' read another branch"
    );
}

/// Changes into `dir`, announces readiness, waits for `go`, then prints its
/// working directory as getcwd(2) reports it.
const CWD_HOLDER: &str = r#"
import os, sys, time
d, ready, go = sys.argv[1:4]
os.chdir(d)
open(ready, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.01)
try:
    print(os.getcwd())
except OSError as e:
    print("getcwd failed: %s" % e)
"#;

/// Found through git (the detached maintenance process above did this to the
/// bound shell): every branch shares the mount root, so when a process of
/// another branch looks up the same top-level name, the kernel's dentry for it
/// is replaced (the node id differs), and a process whose working directory is
/// below it got ENOENT from getcwd(2). `branch-exec` (as root) now runs its
/// command in a private mount namespace with the branch's own root
/// bind-mounted over the mount path, so its dentries are its branch's alone.
/// (A shell bound with `branch-bind` still shares the root: specs/bindings.md.)
#[test]
fn cwd_of_a_bound_process_survives_a_lookup_from_another_branch() {
    let m = mount_or_skip!();
    let proj = m.join("proj");
    fs::create_dir(&proj).unwrap();
    fs::write(proj.join("file"), "x").unwrap();
    let snap = m.snapshot("cwd-snap");
    m.branch(&snap, "work");
    let dir = m.scratch();
    let (ready, go) = (dir.join("cwd-ready"), dir.join("cwd-go"));
    let holder = spawn_py_in(
        &m,
        Some("work"),
        CWD_HOLDER,
        &[s(&proj), s(&ready), s(&go)],
        None,
    );
    assert!(wait_until(CMD_TIMEOUT, || ready.exists()));
    // The unbound test process (default branch) walks the same path.
    assert_eq!(fs::read_to_string(proj.join("file")).unwrap(), "x");
    fs::write(&go, "go").unwrap();
    let out = holder.wait_output(CMD_TIMEOUT);
    assert_success(&out, "cwd holder");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), s(&proj));
}
