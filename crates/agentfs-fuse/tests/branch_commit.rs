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
