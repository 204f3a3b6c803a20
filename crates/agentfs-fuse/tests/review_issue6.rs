//! Review of issue 6 on a real mount: `export` of a branch whose edits
//! reuse names (renames in a chain, a swap, a file moved out of a directory
//! that is then deleted, a rename inside a renamed directory, a file given a
//! second name and written through it) leaves the host directory exactly as
//! the branch, with the diff the daemon really sends.

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
             && mv d/f f && rm -r d && mv r s && mv s/in/h s/in/k \
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
