//! `agentfs-fuse-host --lower DIR` over a real git checkout: `git status` is
//! clean, an edit shows in `git status` and `git diff` as exactly that file, a
//! branch made before the edit does not see it, the mount survives a clean
//! remount and a `kill -9`, and the lower checkout (its `.git` included) is
//! byte for byte what it was.

mod common;

use common::{assert_success, run_with_timeout, Mount, CMD_TIMEOUT};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = run_with_timeout(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
            .args(args),
        CMD_TIMEOUT,
    );
    assert_success(&out, &format!("git {args:?} in {}", dir.display()));
    String::from_utf8(out.stdout).expect("git output is UTF-8")
}

/// Every path under `dir` with its mode, size, mtime and bytes (or target).
fn fingerprint(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let body = if m.is_dir() {
                stack.push(p.clone());
                String::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else {
                format!("{:x?}", std::fs::read(&p).unwrap())
            };
            let key = p.strip_prefix(dir).unwrap().display().to_string();
            out.insert(
                key,
                format!(
                    "{:o} {} {}.{} {body}",
                    m.mode(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec()
                ),
            );
        }
    }
    out
}

/// A small git checkout: nested directories, an executable, a symlink.
fn make_checkout(dir: &Path) {
    for d in ["src/net", "src/fs", "docs", "scripts"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for i in 0..30 {
        let sub = ["src/net", "src/fs", "docs"][i % 3];
        std::fs::write(
            dir.join(format!("{sub}/f{i}.txt")),
            format!("file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    std::fs::write(dir.join("README.md"), "# project\n").unwrap();
    std::fs::write(dir.join("scripts/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(
        dir.join("scripts/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("README.md", dir.join("link.md")).unwrap();
    // Files written in the same second as the index are "racily clean" to
    // git, which then reads and rewrites them on every status: date them back
    // as in a checkout made a while ago.
    let aged = Command::new("find")
        .arg(dir)
        .args(["-exec", "touch", "-h", "-d", "2 minutes ago", "{}", "+"])
        .output()
        .unwrap();
    assert_success(&aged, "touch -d");
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "init"]);
}

#[test]
fn git_checkout_as_lower_directory() {
    let lower_dir = tempfile::tempdir().unwrap();
    let lower = std::fs::canonicalize(lower_dir.path()).unwrap();
    make_checkout(&lower);
    let before = fingerprint(&lower);
    let lower_arg = lower.to_str().unwrap().to_string();
    let Some(mut m) = Mount::start_with(&["--lower", &lower_arg]) else {
        return;
    };
    let mnt = m.path().to_path_buf();

    // st_ino keeps the lower file's low 32 bits, which is what git's index
    // holds: the first `git status` finds every file unchanged without
    // reading it, and so does not rewrite the index.
    let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino() & 0xffff_ffff;
    assert_eq!(
        ino(&mnt.join("src/fs/f1.txt")),
        ino(&lower.join("src/fs/f1.txt"))
    );
    let index = |p: &Path| {
        let m = std::fs::metadata(p.join(".git/index")).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let index_before = index(&mnt);
    assert_eq!(
        git(&mnt, &["status", "--porcelain"]),
        "",
        "fresh overlay is not clean"
    );
    assert_eq!(index(&mnt), index_before, "git status rewrote the index");
    assert_eq!(
        std::fs::read_to_string(mnt.join("src/fs/f1.txt")).unwrap(),
        "file 1\nfile 1\n"
    );
    assert_eq!(
        std::fs::read_link(mnt.join("link.md")).unwrap(),
        Path::new("README.md")
    );
    m.snapshot("base");
    m.branch("base", "feature");

    // One edit: git sees exactly it.
    let edited = "src/net/f3.txt";
    let mut text = std::fs::read_to_string(mnt.join(edited)).unwrap();
    text.push_str("edited\n");
    std::fs::write(mnt.join(edited), &text).unwrap();
    let want_status = format!(" M {edited}\n");
    assert_eq!(git(&mnt, &["status", "--porcelain"]), want_status);
    assert_eq!(git(&mnt, &["diff", "--name-only"]), format!("{edited}\n"));
    let diff = git(&mnt, &["diff"]);
    assert!(diff.contains("+edited"), "git diff: {diff}");

    // The branch made before the edit sees the checkout as it was.
    let in_feature = m.in_branch_ok(
        "feature",
        &format!("cat {}", common::shq(&mnt.join(edited))),
    );
    assert_eq!(in_feature, "file 3\n".repeat(4));
    let feature_status = m.in_branch_ok(
        "feature",
        &format!("git -C {} status --porcelain", common::shq(&mnt)),
    );
    assert_eq!(feature_status, "", "branch feature is not clean");

    // Unlink and a directory made opaque show as deletions only.
    std::fs::remove_file(mnt.join("docs/f2.txt")).unwrap();
    assert_eq!(
        git(&mnt, &["status", "--porcelain"]),
        format!(" D docs/f2.txt\n{want_status}")
    );
    std::fs::write(mnt.join("docs/f2.txt"), "file 2\n".repeat(3)).unwrap();
    assert_eq!(git(&mnt, &["status", "--porcelain"]), want_status);

    // The state survives a clean remount and a crash.
    m.remount();
    assert_eq!(git(&mnt, &["status", "--porcelain"]), want_status);
    // git status refreshes the index through index.lock without fsync: make
    // that durable, or a crash may keep the lock file (as on any filesystem).
    // fsync of a directory is the sync point (specs/persistence.md); syncfs(2)
    // never reaches a FUSE daemon, so it would leave the 5 ms journal window.
    let dir = std::fs::File::open(mnt.join(".git")).unwrap();
    dir.sync_all().expect("fsync of .git");
    drop(dir);
    m.crash_and_remount();
    assert_eq!(git(&mnt, &["status", "--porcelain"]), want_status);
    assert_eq!(git(&mnt, &["diff", "--name-only"]), format!("{edited}\n"));

    // A commit inside the mount writes only the mount's .git.
    git(&mnt, &["commit", "-qam", "edit"]);
    assert_eq!(git(&mnt, &["status", "--porcelain"]), "");
    drop(m);
    assert_eq!(fingerprint(&lower), before, "the lower checkout changed");
    assert_eq!(git(&lower, &["status", "--porcelain"]), "");
}

/// Exit status 1 and the error line (the last on stderr: in the foreground
/// the log goes there too).
fn failure(out: &std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("agentfs-fuse-host: error:"),
        "{what}: {stderr}"
    );
    last
}

#[test]
fn a_backstore_of_an_overlay_needs_its_lower_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let (lower, other, backstore, mnt) = (
        root.join("lower"),
        root.join("other"),
        root.join("store"),
        root.join("mnt"),
    );
    for d in [&lower, &other, &backstore, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(lower.join("a"), "a").unwrap();
    let lower_arg = lower.to_str().unwrap().to_string();
    let Some(m) = Mount::start_on(Some(&backstore), &["--lower", &lower_arg]) else {
        return;
    };
    assert_eq!(std::fs::read_to_string(m.join("a")).unwrap(), "a");
    drop(m);

    let refused = |extra: &[&str]| {
        let out = run_with_timeout(
            Command::new(common::host_bin())
                .args(extra)
                .arg("--backstore")
                .arg(&backstore)
                .arg("--foreground")
                .arg(&mnt),
            CMD_TIMEOUT,
        );
        if common::is_fuse_mounted(&mnt) {
            common::force_unmount(&mnt);
            panic!("mounted with {extra:?}");
        }
        failure(&out, &format!("mount with {extra:?}"))
    };
    let none = refused(&[]);
    assert!(none.contains(&format!("--lower {lower_arg}")), "{none}");
    let wrong = refused(&["--lower", other.to_str().unwrap()]);
    assert!(wrong.contains("is an overlay of"), "{wrong}");
    // A mountpoint inside the lower directory: reading it would enter the mount.
    let inner = lower.join("sub");
    std::fs::create_dir(&inner).unwrap();
    let fresh = root.join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let out = run_with_timeout(
        Command::new(common::host_bin())
            .args(["--lower", &lower_arg, "--backstore"])
            .arg(&fresh)
            .arg("--foreground")
            .arg(&inner),
        CMD_TIMEOUT,
    );
    if common::is_fuse_mounted(&inner) {
        common::force_unmount(&inner);
        panic!("mounted inside the lower directory");
    }
    let msg = failure(&out, "mountpoint inside the lower directory");
    assert!(msg.contains("inside the lower directory"), "{msg}");
    // A backstore with files of its own cannot become an overlay.
    let plain = root.join("plain");
    std::fs::create_dir(&plain).unwrap();
    let Some(m) = Mount::start_on(Some(&plain), &[]) else {
        return;
    };
    std::fs::write(m.join("mine"), "x").unwrap();
    drop(m);
    let out = run_with_timeout(
        Command::new(common::host_bin())
            .args(["--lower", &lower_arg, "--backstore"])
            .arg(&plain)
            .arg("--foreground")
            .arg(&mnt),
        CMD_TIMEOUT,
    );
    if common::is_fuse_mounted(&mnt) {
        common::force_unmount(&mnt);
        panic!("an used backstore became an overlay");
    }
    let msg = failure(&out, "--lower on a used backstore");
    assert!(msg.contains("new backstore"), "{msg}");
}

#[test]
fn lower_isolation_copy_is_point_in_time() {
    let lower_dir = tempfile::tempdir().unwrap();
    let lower = std::fs::canonicalize(lower_dir.path()).unwrap();
    make_checkout(&lower);
    let lower_arg = lower.to_str().unwrap().to_string();
    let Some(mut m) = Mount::start_with(&["--lower", &lower_arg, "--lower-isolation", "copy"])
    else {
        return;
    };
    let mnt = m.path().to_path_buf();
    std::fs::write(lower.join("README.md"), "changed underneath\n").unwrap();
    std::fs::write(lower.join("docs/new.txt"), "new\n").unwrap();
    std::fs::remove_file(lower.join("src/fs/f1.txt")).unwrap();
    assert_eq!(
        std::fs::read_to_string(mnt.join("README.md")).unwrap(),
        "# project\n"
    );
    assert!(!mnt.join("docs/new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(mnt.join("src/fs/f1.txt")).unwrap(),
        "file 1\nfile 1\n"
    );
    m.remount();
    assert_eq!(
        std::fs::read_to_string(mnt.join("README.md")).unwrap(),
        "# project\n"
    );
    // git sees the checkout as it was at the first mount: nothing changed.
    assert_eq!(git(&mnt, &["status", "--porcelain"]), "");
}

/// The branch cycle on an overlay: a branch edits one file, `diff` against the
/// base names exactly it (directories read in one tree are read in all, so
/// reading is no change), `branch-commit` brings it to main, and git in main
/// sees exactly that edit; the lower checkout is untouched.
#[test]
fn diff_and_commit_on_an_overlay_name_only_real_changes() {
    let lower_dir = tempfile::tempdir().unwrap();
    let lower = std::fs::canonicalize(lower_dir.path()).unwrap();
    make_checkout(&lower);
    let before = fingerprint(&lower);
    let lower_arg = lower.to_str().unwrap().to_string();
    let Some(m) = Mount::start_with(&["--lower", &lower_arg]) else {
        return;
    };
    let mnt = m.path().to_path_buf();
    m.snapshot("base");
    m.branch("base", "feature");
    // Read every directory and file in main (git status would also rewrite
    // .git/index, a real change).
    let out = run_with_timeout(
        Command::new("sh").arg("-c").arg(format!(
            "find {} -type f -exec cat {{}} + | wc -c",
            common::shq(&mnt)
        )),
        CMD_TIMEOUT,
    );
    assert_success(&out, "find | cat in main");
    let edited = "src/fs/f4.txt";
    m.in_branch_ok(
        "feature",
        &format!("echo feature >> {}", common::shq(&mnt.join(edited))),
    );
    let paths = |a: &str, b: &str| -> Vec<String> {
        let v = m.cli_json(&["diff", a, b]);
        v["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("diff reply: {v}"))
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c["change"].as_str().unwrap(),
                    c["path"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(paths("base", "main"), Vec::<String>::new());
    assert_eq!(paths("base", "feature"), vec![format!("modified {edited}")]);
    m.cli_ok(&["branch-commit", "feature"]);
    assert_eq!(
        git(&mnt, &["status", "--porcelain"]),
        format!(" M {edited}\n")
    );
    assert!(git(&mnt, &["diff"]).contains("+feature"));
    drop(m);
    assert_eq!(fingerprint(&lower), before, "the lower checkout changed");
}

/// A reader already open on a file that still comes from the lower directory
/// sees what a writer then writes through another descriptor (the write
/// copies the file up; the reader must not stay on the lower file).
#[test]
fn a_reader_open_before_the_copy_up_sees_the_write() {
    let lower_dir = tempfile::tempdir().unwrap();
    let lower = std::fs::canonicalize(lower_dir.path()).unwrap();
    std::fs::write(lower.join("f"), "lower bytes\n").unwrap();
    let lower_arg = lower.to_str().unwrap().to_string();
    let Some(m) = Mount::start_with(&["--lower", &lower_arg]) else {
        return;
    };
    use std::os::unix::fs::FileExt;
    let reader = std::fs::File::open(m.join("f")).unwrap();
    let mut buf = [0u8; 64];
    let n = reader.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"lower bytes\n");
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("f"))
        .unwrap();
    writer.write_all_at(b"UPPER", 0).unwrap();
    writer.sync_all().unwrap();
    let n = reader.read_at(&mut buf, 0).unwrap();
    assert_eq!(
        &buf[..n],
        b"UPPER bytes\n",
        "the open reader missed the write"
    );
    drop((reader, writer));
    drop(m);
    assert_eq!(std::fs::read(lower.join("f")).unwrap(), b"lower bytes\n");
}
