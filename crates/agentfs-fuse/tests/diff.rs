//! `agentfs-control-cli diff` on a real mount: edits made in a branch through
//! its `.agentfs/branches/<name>/` path (write, chmod, delete, create,
//! rename, type change, symlink) come back from `diff --json` exactly, in
//! path order, the same after a remount; the text form is one line per
//! change; unknown views are refused with one line; another user may not
//! diff (a diff names paths in directories it may not read).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::json;

#[test]
fn diff_of_a_branch_against_its_snapshot() {
    let mut m = mount_or_skip!();
    fs::write(m.join("a"), "a\n").unwrap();
    fs::create_dir_all(m.join("dir/sub")).unwrap();
    fs::write(m.join("dir/b"), "b\n").unwrap();
    fs::write(m.join("dir/sub/c"), "c\n").unwrap();
    fs::write(m.join("dir/sub/x"), "x\n").unwrap();
    fs::write(m.join("keep"), "k\n").unwrap();
    m.snapshot("base");
    m.branch("base", "feat");

    let br = m.join(".agentfs/branches/feat");
    fs::write(br.join("dir/b"), "b, longer now\n").unwrap();
    fs::set_permissions(br.join("keep"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(br.join("a")).unwrap();
    fs::create_dir(br.join("new")).unwrap();
    fs::write(br.join("new/f"), "f\n").unwrap();
    fs::rename(br.join("dir/sub/c"), br.join("c2")).unwrap();
    fs::remove_file(br.join("dir/sub/x")).unwrap();
    fs::create_dir(br.join("dir/sub/x")).unwrap();
    std::os::unix::fs::symlink("keep", br.join("ln")).unwrap();
    // The default branch is untouched by all of it.
    assert!(m.join("a").exists());

    let expected = json!({
        "a": "s1",
        "b": "b2",
        "changes": [
            {"change": "deleted", "path": "a", "type": "file"},
            {"change": "renamed", "path": "c2", "from": "dir/sub/c", "type": "file"},
            {"change": "modified", "path": "dir/b", "type": "file", "what": ["data"]},
            {"change": "type_changed", "path": "dir/sub/x", "type": "dir", "old_type": "file"},
            {"change": "modified", "path": "keep", "type": "file", "what": ["mode"]},
            {"change": "added", "path": "ln", "type": "symlink"},
            {"change": "added", "path": "new", "type": "dir"},
            {"change": "added", "path": "new/f", "type": "file"},
        ]
    });
    assert_eq!(m.cli_json(&["diff", "base", "feat"]), expected);
    // Ids work as names do.
    assert_eq!(m.cli_json(&["diff", "s1", "b2"]), expected);

    let text = m.cli_ok(&["diff", "base", "feat"]);
    assert_eq!(
        text,
        "D a\n\
         R dir/sub/c -> c2\n\
         M dir/b (data)\n\
         T dir/sub/x (file -> dir)\n\
         M keep (mode)\n\
         A ln\n\
         A new\n\
         A new/f\n"
    );
    // The other way round; and a branch against itself.
    let back = m.cli_json(&["diff", "feat", "base"]);
    assert_eq!(
        back["changes"][0],
        json!({"change": "added", "path": "a", "type": "file"})
    );
    assert_eq!(back["changes"].as_array().unwrap().len(), 8, "{back}");
    assert_eq!(m.cli_json(&["diff", "main", "base"])["changes"], json!([]));

    let out = m.cli(&["diff", "base", "no-such-view"]);
    let err = common::assert_one_line_failure(&out, "diff against an unknown view");
    assert!(err.contains("no-such-view"), "{err}");

    // Name hints and ids are persisted: the same answer after a remount.
    m.remount();
    assert_eq!(m.cli_json(&["diff", "base", "feat"]), expected);
}

#[test]
fn only_the_owner_or_root_may_diff() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/usr/bin/setpriv").exists() {
        assert!(
            std::env::var("AGENTFS_REQUIRE_FUSE").as_deref() != Ok("1"),
            "this test needs root and /usr/bin/setpriv"
        );
        println!("SKIP: needs root and setpriv to act as a second user");
        return;
    }
    let m = mount_or_skip!();
    fs::set_permissions(
        m.path().parent().unwrap(),
        fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    m.snapshot("base");
    let as_nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(common::cli_bin())
            .arg("--mount")
            .arg(m.path())
            .args(args);
        common::run_with_timeout(&mut cmd, std::time::Duration::from_secs(30))
    };
    // The mount answers nobody (so the refusal below is diff's own)...
    common::assert_success(&as_nobody(&["snapshot-list"]), "snapshot-list as nobody");
    // ...but not a diff.
    let out = as_nobody(&["diff", "base", "main"]);
    let line = common::assert_one_line_failure(&out, "diff as nobody");
    assert!(line.contains("permission denied"), "{line}");
    // Root may.
    assert_eq!(m.cli_json(&["diff", "base", "main"])["changes"], json!([]));
}
