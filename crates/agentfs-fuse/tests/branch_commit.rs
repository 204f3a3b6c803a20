//! `branch-commit` on a real mount: the parent's views (the mount root and
//! `.agentfs/branches/<parent>`) show the committed state at once although
//! the kernel was caching names and attributes for 60 s; a conflicting
//! commit is refused with its paths and exit status 1 and changes nothing;
//! a commit survives a remount.

mod common;

use std::fs;

use common::shq;

#[test]
fn commit_is_seen_at_once_refused_on_conflict_and_persists() {
    let mut m = mount_or_skip!();
    fs::create_dir(m.join("dir")).unwrap();
    fs::write(m.join("f"), "v1\n").unwrap();
    fs::write(m.join("dir/a"), "a\n").unwrap();
    // The kernel sends a file's RELEASE after `close` returns. A snapshot
    // taken while a writer's release is still on its way copies the object
    // for itself (writes could still come): the parent then holds another
    // object than the snapshot, with the same bytes, and the commit below
    // would merge rather than take the fast path it checks. Wait until the
    // daemon has released every handle (specs/snapshots-and-branches.md).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m.cli_json(&["status"])["open_handles"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "handles still open 10 s after close"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    m.snapshot("base");
    m.branch("base", "feat");
    m.in_branch_ok(
        "feat",
        &format!(
            "printf 'v2, longer than before\\n' > {mnt}/f && echo new > {mnt}/dir/new && rm {mnt}/dir/a",
            mnt = shq(m.path())
        ),
    );
    // The kernel caches main's names and attributes (60 s), in both views.
    let view = m.join(".agentfs/branches/main");
    for root in [m.path().to_path_buf(), view.clone()] {
        assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "v1\n");
        assert!(root.join("dir/a").exists());
        assert!(!root.join("dir/new").exists());
    }

    let r = m.cli_json(&["branch-commit", "feat"]);
    assert_eq!(r["committed"], true, "{r}");
    assert_eq!(r["fast_path"], true, "{r}");
    for root in [m.path().to_path_buf(), view.clone()] {
        assert_eq!(
            fs::read_to_string(root.join("f")).unwrap(),
            "v2, longer than before\n",
            "{}",
            root.display()
        );
        assert!(!root.join("dir/a").exists(), "{}", root.display());
        assert_eq!(fs::read_to_string(root.join("dir/new")).unwrap(), "new\n");
    }

    // Both change f: refused, listed, nothing changes.
    m.snapshot("base2");
    m.branch("base2", "feat2");
    m.in_branch_ok(
        "feat2",
        &format!(
            "echo child > {mnt}/f && echo only-child > {mnt}/g",
            mnt = shq(m.path())
        ),
    );
    fs::write(m.join("f"), "parent\n").unwrap();
    let out = m.cli(&["--json", "branch-commit", "feat2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = common::reply_value(v);
    assert_eq!(v["committed"], false, "{v}");
    assert_eq!(v["conflicts"][0]["path"], "f", "{v}");
    assert_eq!(v["conflicts"][0]["child"], "modified", "{v}");
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "parent\n");
    assert!(!m.join("g").exists());
    // The branch wins when asked, and goes.
    let r = m.cli_json(&["branch-commit", "feat2", "--theirs", "--delete"]);
    assert_eq!(r["committed"], true, "{r}");
    assert_eq!(r["deleted"], true, "{r}");
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "child\n");
    assert_eq!(fs::read_to_string(m.join("g")).unwrap(), "only-child\n");

    m.remount();
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "child\n");
    assert_eq!(fs::read_to_string(m.join("dir/new")).unwrap(), "new\n");
    assert!(!m.join("dir/a").exists());
}

/// A process of the branch keeps a file open for writing across the commit
/// (through passthrough where the kernel allows it: it then writes the
/// backing file without asking the daemon). The parent gets the bytes as of
/// the commit; the writes after it stay in the branch.
const WRITER: &str = r#"
import os, sys, time
path, ready, go = sys.argv[1:4]
fd = os.open(path, os.O_RDWR)
os.pwrite(fd, b"A1-before-commit", 0)
with open(ready, "w") as f:
    f.write(str(os.getpid()))
while not os.path.exists(go):
    time.sleep(0.01)
os.pwrite(fd, b"A2-after--commit", 0)
os.close(fd)
"#;

#[test]
fn a_writer_open_across_the_commit_never_writes_the_parent() {
    let m = mount_or_skip!();
    fs::write(m.join("f"), "0000000000000000").unwrap();
    m.snapshot("base");
    m.branch("base", "feat");
    let dir = m.scratch();
    fs::create_dir_all(&dir).unwrap();
    let (ready, go) = (dir.join("ready"), dir.join("go"));
    let writer = common::spawn_py_in(
        &m,
        Some("feat"),
        WRITER,
        &[
            m.join("f").to_str().unwrap(),
            ready.to_str().unwrap(),
            go.to_str().unwrap(),
        ],
        Some(ready.clone()),
    );
    assert!(
        common::wait_until(common::CMD_TIMEOUT, || ready.exists()),
        "the writer never got ready"
    );
    let r = m.cli_json(&["branch-commit", "feat"]);
    assert_eq!(r["committed"], true, "{r}");
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "A1-before-commit");
    fs::write(&go, "go").unwrap();
    let out = writer.wait_output(common::CMD_TIMEOUT);
    common::assert_success(&out, "writer");
    assert_eq!(
        fs::read_to_string(m.join("f")).unwrap(),
        "A1-before-commit",
        "a write in the branch after the commit reached the parent"
    );
    let in_branch = m.in_branch_ok("feat", &format!("cat {}", shq(&m.join("f"))));
    assert_eq!(in_branch, "A2-after--commit");
}

/// Branches of branches (each from a snapshot of the one above), three
/// levels deep, committed up one level at a time; a kept branch committed
/// again after more work applies only what is new.
#[test]
fn three_levels_commit_up_and_a_kept_branch_commits_again() {
    let m = mount_or_skip!();
    fs::write(m.join("f"), "0\n").unwrap();
    let mut parent = "main".to_string();
    for level in 1..=3 {
        let snap = format!("at-{level}");
        m.cli_ok(&["snapshot-create", "--branch", &parent, "--name", &snap]);
        let name = format!("level{level}");
        m.branch(&snap, &name);
        m.in_branch_ok(
            &name,
            &format!("echo {level} > {}", shq(&m.join(&format!("from-{level}")))),
        );
        parent = name;
    }
    m.in_branch_ok("level3", &format!("echo 3 > {}", shq(&m.join("f"))));
    for (child, into) in [
        ("level3", "level2"),
        ("level2", "level1"),
        ("level1", "main"),
    ] {
        let r = m.cli_json(&["branch-commit", child]);
        assert_eq!(r["committed"], true, "{child}: {r}");
        let into_id = m.cli_json(&["branch-list"]);
        let into_id = common::find_named(&into_id, into).unwrap()["id"].clone();
        assert_eq!(r["parent"], into_id, "{child} commits into {into}");
    }
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "3\n");
    for level in 1..=3 {
        assert!(m.join(&format!("from-{level}")).exists(), "level {level}");
    }
    // More work in level1, and in main elsewhere: the second commit is clean.
    m.in_branch_ok("level1", &format!("echo again > {}", shq(&m.join("f"))));
    fs::write(m.join("main-only"), "m\n").unwrap();
    let r = m.cli_json(&["branch-commit", "level1"]);
    assert_eq!(r["committed"], true, "{r}");
    assert_eq!(r["conflicts"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "again\n");
    assert_eq!(fs::read_to_string(m.join("main-only")).unwrap(), "m\n");
}

/// A snapshot taken while the parent still has a file open for writing
/// (the kernel sends RELEASE after `close` returns, so `echo > f` followed
/// at once by `snapshot-create` meets this too) gives the snapshot its own
/// copy of the file. The copy carries the file's own mtime and ctime, and a
/// commit compares its bytes, so the parent's file counts as unchanged: the
/// child's edit of one such file and deletion of another commit cleanly.
#[test]
fn a_file_open_for_writing_at_the_snapshot_is_no_conflict_later() {
    let m = mount_or_skip!();
    let mut f = fs::File::create(m.join("f")).unwrap();
    std::io::Write::write_all(&mut f, b"0\n").unwrap();
    let mut g = fs::File::create(m.join("g")).unwrap();
    std::io::Write::write_all(&mut g, b"g\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    m.snapshot("open");
    let in_main = fs::metadata(m.join("f")).unwrap().modified().unwrap();
    let in_snap = fs::metadata(m.join(".agentfs/snapshots/open/f"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        in_snap, in_main,
        "the snapshot's copy keeps the file's mtime"
    );
    drop((f, g));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m.cli_json(&["status"])["open_handles"] != 0 {
        assert!(std::time::Instant::now() < deadline, "handles still open");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let d = m.cli_json(&["diff", "open", "main"]);
    assert_eq!(d["changes"], serde_json::json!([]), "{d}");
    m.branch("open", "child");
    m.in_branch_ok(
        "child",
        &format!(
            "echo child > {} && rm {}",
            shq(&m.join("f")),
            shq(&m.join("g"))
        ),
    );
    let r = m.cli_json(&["branch-commit", "child"]);
    assert_eq!(r["committed"], true, "{r}");
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "child\n");
    assert!(!m.join("g").exists());
}
