//! Review of issue 6 on a real mount: `export` of a branch whose edits
//! reuse names (renames in a chain, a swap, a file moved out of a directory
//! that is then deleted, a rename and a deletion inside a renamed directory,
//! a file given a second name and written through it) leaves the host
//! directory exactly as the branch, with the diff the daemon really sends;
//! a change of the branch root's own mode does not stop an export; names
//! that need escaping (`a\x41` literally, non-UTF-8, newline) come out as
//! the same bytes; and commit then export onto the mount's own `--lower`
//! directory, where every other branch and snapshot keeps what it had
//! (the daemon copies up what the export is about to change there first).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::shq;

/// Every regular file under `root` (relative path → bytes), skipping nothing.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                if p.file_name().is_some_and(|n| n == ".agentfs") {
                    continue;
                }
                stack.push(p);
            } else if ft.is_file() {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn export_of_renames_that_reuse_names_matches_the_branch() {
    let m = mount_or_skip!();
    let host = tempfile::tempdir().unwrap();
    // The same starting tree in the mount and on the host.
    for root in [m.path(), host.path()] {
        fs::create_dir_all(root.join("d")).unwrap();
        fs::create_dir_all(root.join("r/in")).unwrap();
        for (p, body) in [
            ("a", "A\n"),
            ("b", "B\n"),
            ("x", "X\n"),
            ("y", "Y\n"),
            ("d/f", "F\n"),
            ("d/g", "G\n"),
            ("r/in/h", "H\n"),
            ("r/in/z", "Z\n"),
            ("l", "L\n"),
        ] {
            fs::write(root.join(p), body).unwrap();
        }
    }
    m.snapshot("base");
    m.branch("base", "work");
    m.in_branch_ok(
        "work",
        &format!(
            "cd {mnt} && mv b c && mv a b && mv x t && mv y x && mv t y \
             && mv d/f f && rm -r d && rm r/in/z && mv r s && mv s/in/h s/in/k \
             && ln l l2 && printf 'L2\\n' > l2",
            mnt = shq(m.path())
        ),
    );
    let branch = m.join(".agentfs/branches/work");
    let want = files(&branch);
    assert_eq!(want.get("b").map(Vec::as_slice), Some(&b"A\n"[..]));
    m.cli_ok(&["export", "work", "--to", host.path().to_str().unwrap()]);
    assert_eq!(files(host.path()), want);
}

/// The cycle on an overlay mount: commit a branch that renamed a file
/// it never wrote, then export that branch onto the `--lower` checkout. The
/// export renames the file on the host; the parent branch (now holding the
/// rename) read the file from its old lower path, which was gone (ENOENT),
/// until export had the daemon copy up what it was about to change.
#[test]
fn commit_then_export_onto_the_lower_keeps_a_renamed_file_readable() {
    let lower = tempfile::tempdir().unwrap();
    fs::write(lower.path().join("a"), "A\n").unwrap();
    fs::write(lower.path().join("keep"), "K\n").unwrap();
    let lower_arg = lower.path().to_str().unwrap().to_string();
    let Some(m) = common::Mount::start_with(&["--lower", &lower_arg]) else {
        return;
    };
    // Nothing reads `a` before the export: the daemon would keep its lower
    // file open (up to 256 are), which reads the old bytes.
    assert!(m.join("a").exists());
    m.snapshot("base");
    m.branch("base", "work");
    m.in_branch_ok("work", &format!("mv {mnt}/a {mnt}/b", mnt = shq(m.path())));
    let r = m.cli_json(&["branch-commit", "work"]);
    assert_eq!(r["committed"], true, "{r}");
    assert!(m.join("b").exists());
    m.cli_ok(&["export", "work", "--to", &lower_arg]);
    assert_eq!(fs::read_to_string(lower.path().join("b")).unwrap(), "A\n");
    assert_eq!(
        fs::read_to_string(m.join("b")).map_err(|e| e.to_string()),
        Ok("A\n".to_string()),
        "the parent branch's committed file after the export"
    );
}

/// Export onto the `--lower` checkout deletes and rewrites lower files that
/// another branch, a snapshot and the default branch still hold unchanged
/// (one in a directory no tree had read yet): each keeps its bytes and
/// names, none sees the export's new file, diff finds no change in them,
/// and so after a `kill -9` and a remount. An export to any other directory
/// copies nothing up.
#[test]
fn export_onto_the_lower_leaves_other_branches_and_snapshots_as_they_were() {
    let lower = tempfile::tempdir().unwrap();
    let l = lower.path();
    fs::create_dir_all(l.join("d/e")).unwrap();
    for (p, body) in [
        ("a", "A\n"),
        ("keep", "K\n"),
        ("m", "M\n"),
        ("d/x", "X\n"),
        ("d/e/y", "Y\n"),
    ] {
        fs::write(l.join(p), body).unwrap();
    }
    let lower_arg = l.to_str().unwrap().to_string();
    let Some(mut m) = common::Mount::start_with(&["--lower", &lower_arg]) else {
        return;
    };
    // Only the root is read (no file is opened: the daemon would keep its
    // lower file open, which reads the old bytes whatever happens to it).
    assert!(m.join("a").exists());
    m.snapshot("base");
    m.branch("base", "work");
    m.branch("base", "other");
    m.in_branch_ok(
        "work",
        &format!(
            "cd {mnt} && rm a && rm -r d && printf 'M2\\n' > m && printf 'N\\n' > n",
            mnt = shq(m.path())
        ),
    );
    // Elsewhere: nothing to copy up.
    let elsewhere = tempfile::tempdir().unwrap();
    for p in ["a", "m"] {
        fs::copy(l.join(p), elsewhere.path().join(p)).unwrap();
    }
    let out = m.cli_json(&["export", "work", "--to", elsewhere.path().to_str().unwrap()]);
    assert!(out["detached"].is_null(), "{out}");
    assert_eq!(
        fs::read_to_string(elsewhere.path().join("m")).unwrap(),
        "M2\n"
    );

    let out = m.cli_json(&["export", "work", "--to", &lower_arg]);
    assert_eq!(out["detached"]["lower"], true, "{out}");
    // a, m, d/x, d/e/y; `n` is new and `keep` is not touched.
    assert_eq!(out["detached"]["files_copied"], 4, "{out}");
    assert!(!l.join("a").exists() && !l.join("d").exists());
    assert_eq!(fs::read_to_string(l.join("m")).unwrap(), "M2\n");
    assert_eq!(fs::read_to_string(l.join("n")).unwrap(), "N\n");

    let check = |m: &common::Mount| {
        for (view, what) in [
            (m.path().to_path_buf(), "main"),
            (m.join(".agentfs/branches/other"), "the other branch"),
            (m.join(".agentfs/snapshots/base"), "the snapshot"),
        ] {
            for (p, body) in [
                ("a", "A\n"),
                ("keep", "K\n"),
                ("m", "M\n"),
                ("d/x", "X\n"),
                ("d/e/y", "Y\n"),
            ] {
                assert_eq!(
                    fs::read_to_string(view.join(p)).map_err(|e| e.to_string()),
                    Ok(body.to_string()),
                    "{p} in {what} after the export"
                );
            }
            assert!(!view.join("n").exists(), "{what} sees the exported file");
        }
        for b in ["other", "main"] {
            let diff = m.cli_json(&["diff", "base", b]);
            assert_eq!(diff["changes"], serde_json::json!([]), "diff base {b}");
        }
        let branch = m.join(".agentfs/branches/work");
        assert_eq!(fs::read_to_string(branch.join("m")).unwrap(), "M2\n");
        assert!(!branch.join("a").exists() && !branch.join("d").exists());
    };
    check(&m);
    m.crash_and_remount();
    check(&m);
}

/// A branch whose root directory changed mode: the diff names the root by
/// the empty path, which export refused as "not a plain relative path", so
/// nothing of the branch could be exported.
#[test]
fn export_of_a_branch_whose_root_changed_mode_succeeds() {
    let m = mount_or_skip!();
    let host = tempfile::tempdir().unwrap();
    fs::write(m.join("a"), "A\n").unwrap();
    fs::write(host.path().join("a"), "A\n").unwrap();
    m.snapshot("base");
    m.branch("base", "work");
    m.in_branch_ok(
        "work",
        &format!("chmod 0750 {mnt} && echo B > {mnt}/b", mnt = shq(m.path())),
    );
    let diff = m.cli_json(&["diff", "base", "work"]);
    assert!(
        diff["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == ""),
        "the root's change is in the diff: {diff}"
    );
    m.cli_ok(&["export", "work", "--to", host.path().to_str().unwrap()]);
    assert_eq!(fs::read_to_string(host.path().join("b")).unwrap(), "B\n");
}

/// Names the diff must escape (a literal `a\x41`, which must not become
/// `aA`; a trailing backslash; a byte that is not UTF-8; a newline) come
/// out of `export` as the very same bytes.
#[test]
fn export_keeps_names_that_need_escaping() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let m = mount_or_skip!();
    let host = tempfile::tempdir().unwrap();
    m.snapshot("base");
    m.branch("base", "work");
    let view = m.join(".agentfs/branches/work");
    let names: [&[u8]; 5] = [b"a\\x41", b"aA", b"back\\", b"bad\xffbyte", b"new\nline"];
    for (i, name) in names.iter().enumerate() {
        fs::write(view.join(OsStr::from_bytes(name)), format!("{i}\n")).unwrap();
    }
    m.cli_ok(&["export", "work", "--to", host.path().to_str().unwrap()]);
    let mut got: Vec<Vec<u8>> = fs::read_dir(host.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    got.sort();
    let mut want: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
    want.sort();
    assert_eq!(got, want);
    for (i, name) in names.iter().enumerate() {
        let body = fs::read_to_string(host.path().join(OsStr::from_bytes(name))).unwrap();
        assert_eq!(body, format!("{i}\n"));
    }
}
