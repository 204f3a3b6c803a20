//! Branch isolation on a real mount: two processes bound to two branches open
//! the same path at the same time and each sees only its own writes, by name
//! and through its descriptor; the default branch and a third branch from the
//! same snapshot keep the original; inode numbers differ between branches;
//! bindings pass to forked children and end with `branch-unbind`.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{cli_bin, python, shq, wait_until, Guarded, Mount, CMD_TIMEOUT};
use serde_json::Value;

/// Opens the path read-write with O_TRUNC, writes its content and keeps the
/// descriptor; announces readiness through a file outside the mount; waits
/// for the go file; then reports what it sees by name and through the fd.
const WORKER: &str = r#"
import json, os, sys, time
path, content, ready, go, out = sys.argv[1:6]
fd = os.open(path, os.O_RDWR | os.O_TRUNC)
os.write(fd, content.encode())
ino_at_write = os.fstat(fd).st_ino
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
deadline = time.monotonic() + 120
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("worker timed out waiting for " + go)
    time.sleep(0.02)
with open(path) as f:
    by_name = f.read()
by_fd = os.pread(fd, 4096, 0).decode()
res = {
    "by_name": by_name,
    "by_fd": by_fd,
    "ino_name": os.stat(path).st_ino,
    "ino_fd": os.fstat(fd).st_ino,
    "ino_at_write": ino_at_write,
}
os.close(fd)
with open(out + ".tmp", "w") as f:
    json.dump(res, f)
os.rename(out + ".tmp", out)
"#;

fn spawn_worker(m: &Mount, branch: &str, content: &str, dir: &Path) -> Guarded {
    let file = m.join("shared.txt");
    let child = Command::new(cli_bin())
        .arg("--mount")
        .arg(m.path())
        .args([
            "branch-exec",
            "--branch",
            branch,
            "--",
            python(),
            "-c",
            WORKER,
        ])
        .arg(&file)
        .arg(content)
        .arg(dir.join(format!("ready-{branch}")))
        .arg(dir.join("go"))
        .arg(dir.join(format!("out-{branch}.json")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn branch-exec worker");
    let pidfile = dir.join(format!("ready-{branch}"));
    Guarded::new(child, Some(pidfile))
}

#[test]
fn concurrent_processes_in_two_branches_see_only_their_own_writes() {
    let m = mount_or_skip!();
    let shared = m.join("shared.txt");
    fs::write(&shared, "original\n").unwrap();
    let snap = m.snapshot("base");
    let a = m.branch(&snap, "A");
    let b = m.branch(&snap, "B");
    let c = m.branch(&snap, "C");
    assert!(
        a != b && b != c && a != c,
        "branch ids must differ: {a} {b} {c}"
    );

    let dir = m.scratch();
    let wa = spawn_worker(&m, "A", "written-by-A", &dir);
    let wb = spawn_worker(&m, "B", "B wrote this, a longer line\n", &dir);
    for name in ["A", "B"] {
        let ready = dir.join(format!("ready-{name}"));
        assert!(
            wait_until(CMD_TIMEOUT, || ready.exists()),
            "worker in branch {name} never became ready"
        );
    }

    // Both descriptors are open with their writes done. The unbound test
    // process (default branch) and a process in C still see the original.
    assert_eq!(fs::read_to_string(&shared).unwrap(), "original\n");
    let in_c = m.in_branch_ok("C", &format!("cat {}", shq(&shared)));
    assert_eq!(in_c, "original\n", "branch C sees another branch's write");

    fs::write(dir.join("go"), "go").unwrap();
    let out_a = wa.wait_output(CMD_TIMEOUT);
    let out_b = wb.wait_output(CMD_TIMEOUT);
    common::assert_success(&out_a, "worker A");
    common::assert_success(&out_b, "worker B");
    let read = |name: &str| -> Value {
        let text = fs::read_to_string(dir.join(format!("out-{name}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let (ra, rb) = (read("A"), read("B"));
    assert_eq!(ra["by_name"], "written-by-A", "A by name: {ra}");
    assert_eq!(ra["by_fd"], "written-by-A", "A through fd: {ra}");
    assert_eq!(
        rb["by_name"], "B wrote this, a longer line\n",
        "B by name: {rb}"
    );
    assert_eq!(
        rb["by_fd"], "B wrote this, a longer line\n",
        "B through fd: {rb}"
    );
    assert_eq!(
        ra["ino_name"], ra["ino_fd"],
        "A: name and fd disagree on the inode"
    );
    assert_eq!(
        rb["ino_name"], rb["ino_fd"],
        "B: name and fd disagree on the inode"
    );

    let ino_main = fs::metadata(&shared).unwrap().ino();
    let ino_a = ra["ino_name"].as_u64().unwrap();
    let ino_b = rb["ino_name"].as_u64().unwrap();
    let ino_c: u64 = m
        .in_branch_ok("C", &format!("stat -c %i {}", shq(&shared)))
        .trim()
        .parse()
        .unwrap();
    let inos = [ino_main, ino_a, ino_b, ino_c];
    for i in 0..inos.len() {
        for j in i + 1..inos.len() {
            assert_ne!(
                inos[i], inos[j],
                "inode numbers must differ between branches (main, A, B, C) = {inos:?}"
            );
        }
    }

    // After the workers are gone, everything stayed where it was written.
    assert_eq!(fs::read_to_string(&shared).unwrap(), "original\n");
    assert_eq!(
        m.in_branch_ok("A", &format!("cat {}", shq(&shared))),
        "written-by-A"
    );
    assert_eq!(
        m.in_branch_ok("B", &format!("cat {}", shq(&shared))),
        "B wrote this, a longer line\n"
    );
    assert_eq!(
        m.in_branch_ok("C", &format!("cat {}", shq(&shared))),
        "original\n"
    );
    // A branch made later from the same snapshot also sees the original.
    m.branch(&snap, "D");
    assert_eq!(
        m.in_branch_ok("D", &format!("cat {}", shq(&shared))),
        "original\n"
    );
}

#[test]
fn forked_children_inherit_and_unbind_returns_to_main() {
    let m = mount_or_skip!();
    let f = m.join("f");
    fs::write(&f, "main-content").unwrap();
    let snap = m.snapshot("base");
    m.branch(&snap, "A");
    m.in_branch_ok("A", &format!("printf A-content > {}", shq(&f)));
    assert_eq!(fs::read_to_string(&f).unwrap(), "main-content");

    // A subshell, a child sh and a grandchild of the bound process. Temp
    // paths hold no shell metacharacters, so nested quoting stays simple.
    let fp = f.to_str().unwrap();
    assert!(
        !fp.contains(['\'', '"', ' ', '$', '\\']),
        "odd temp path {fp}"
    );
    let out = m.in_branch_ok(
        "A",
        &format!("cat {fp}; echo; (cat {fp}); echo; sh -c 'cat {fp}; echo; sh -c \"cat {fp}\"'"),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["A-content"; 4], "children of a bound process");

    // branch-bind binds the CLI's parent (this shell); its later children
    // see A; after branch-unbind they see main again.
    let cli = cli_bin();
    let script = format!(
        "{cli} --mount {mnt} branch-bind --branch A >/dev/null && cat {f} && echo && \
         sh -c 'cat {f}' && echo && \
         {cli} --mount {mnt} branch-unbind >/dev/null && cat {f} && echo",
        cli = shq(&cli),
        mnt = shq(m.path()),
        f = shq(&f),
    );
    let out = common::run_with_timeout(Command::new("sh").arg("-c").arg(&script), CMD_TIMEOUT);
    common::assert_success(&out, "bind/unbind shell");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["A-content", "A-content", "main-content"],
        "bind, child, unbind"
    );

    // The test process itself was never bound.
    assert_eq!(fs::read_to_string(&f).unwrap(), "main-content");
    let status = m.status();
    let bindings = status["bindings"]
        .as_array()
        .expect("status.bindings is a list");
    // Bindings of exited processes are dead and pruned when listed
    // (specs/bindings.md), so nothing is left.
    assert!(
        bindings.is_empty(),
        "no process should be bound any more: {bindings:?}"
    );
}

#[test]
fn new_directory_in_one_branch_is_invisible_elsewhere() {
    let m = mount_or_skip!();
    fs::write(m.join("seed"), "s").unwrap();
    let snap = m.snapshot("base");
    m.branch(&snap, "A");
    m.branch(&snap, "B");
    let dir = m.join("only-in-a");
    m.in_branch_ok(
        "A",
        &format!(
            "mkdir {d} && mkdir {d}/sub && echo hi > {d}/sub/file",
            d = shq(&dir)
        ),
    );
    assert_eq!(
        m.in_branch_ok("A", &format!("cat {}/sub/file", shq(&dir))),
        "hi\n"
    );
    let probe = format!(
        "if test -e {d}; then echo present; else echo absent; fi; ls -a {m}",
        d = shq(&dir),
        m = shq(m.path())
    );
    let in_b = m.in_branch_ok("B", &probe);
    assert_eq!(
        in_b.lines().next(),
        Some("absent"),
        "B sees A's dir: {in_b}"
    );
    assert!(!in_b.contains("only-in-a"), "B lists A's dir: {in_b}");
    assert!(!dir.exists(), "main sees A's dir");
    let root: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(root, ["seed"], "main's root listing");
    // And the reverse: a same-named dir made in main does not show A's content.
    fs::create_dir(&dir).unwrap();
    assert!(!dir.join("sub").exists());
    assert_eq!(
        m.in_branch_ok("A", &format!("cat {}/sub/file", shq(&dir))),
        "hi\n"
    );
}
