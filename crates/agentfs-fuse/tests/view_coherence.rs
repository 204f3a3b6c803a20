//! The two kernel views of a branch agree at once, whatever the TTL.
//!
//! A branch's files are reachable from the mount root (by processes of that
//! branch) and through `.agentfs/branches/<name>/`; these are distinct kernel
//! inodes with caches of their own. The mount here caches names and
//! attributes for 10 minutes, so only the adapter's invalidations can make a
//! change through one view visible through the other within the few seconds
//! each check waits.

mod common;

use common::{wait_until, Mount};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// How long a check waits for the other view to agree. Far below the TTL.
const AGREE: Duration = Duration::from_secs(3);

fn agrees(what: &str, mut cond: impl FnMut() -> bool) {
    assert!(
        wait_until(AGREE, &mut cond),
        "{what}: the other view still disagrees after {AGREE:?}"
    );
}

fn size(p: &Path) -> Option<u64> {
    fs::symlink_metadata(p).ok().map(|m| m.len())
}

#[test]
fn a_change_through_either_view_is_seen_through_the_other() {
    let Some(m) = Mount::start_with(&["--attr-ttl-ms", "600000"]) else {
        return;
    };
    let root = m.path().to_path_buf();
    let view = m.join(".agentfs/branches/main");
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/f"), b"one").unwrap();

    // Both views have looked at everything, so both caches are warm.
    for base in [&root, &view] {
        assert_eq!(fs::read(base.join("d/f")).unwrap(), b"one");
        assert!(fs::symlink_metadata(base.join("d/new")).is_err());
        assert!(fs::symlink_metadata(base.join("d/later")).is_err());
    }

    // New content (another size) through the view: the root sees it.
    fs::write(view.join("d/f"), b"three!").unwrap();
    agrees("size after a write through the view", || {
        size(&root.join("d/f")) == Some(6)
    });
    assert_eq!(fs::read(root.join("d/f")).unwrap(), b"three!");

    // A name the root had cached as absent, created through the view.
    fs::write(view.join("d/new"), b"n").unwrap();
    agrees("a file created through the view", || {
        root.join("d/new").exists()
    });

    // And the other way: created through the root, seen through the view.
    fs::write(root.join("d/later"), b"l").unwrap();
    agrees("a file created through the root", || {
        view.join("d/later").exists()
    });

    // Unlink through the root.
    fs::remove_file(root.join("d/new")).unwrap();
    agrees("a file unlinked through the root", || {
        !view.join("d/new").exists()
    });

    // Rename through the view.
    fs::rename(view.join("d/later"), view.join("d/renamed")).unwrap();
    agrees("a rename through the view", || {
        !root.join("d/later").exists() && root.join("d/renamed").exists()
    });

    // chmod through the root.
    fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o600)).unwrap();
    agrees("a chmod through the root", || {
        fs::symlink_metadata(view.join("d/f"))
            .map(|md| md.permissions().mode() & 0o777 == 0o600)
            .unwrap_or(false)
    });

    // A writer through the root (passthrough or not): the view sees the new
    // size once the writer closes.
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(root.join("d/f"))
            .unwrap();
        f.write_all(b" and more").unwrap();
    }
    agrees("size after a writer through the root closed", || {
        size(&view.join("d/f")) == Some(15)
    });
    assert_eq!(fs::read(view.join("d/f")).unwrap(), b"three! and more");

    // A writer that stays open (a log being appended to): the other view
    // sees each append while the file is still open, with passthrough too.
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(root.join("d/f"))
            .unwrap();
        for (i, chunk) in [&b"-one"[..], b"-two", b"-three"].iter().enumerate() {
            f.write_all(chunk).unwrap();
            let want = [4u64, 8, 14][i] + 15;
            agrees(&format!("size while a writer is open, append {i}"), || {
                size(&view.join("d/f")) == Some(want)
            });
        }
    }

    // A directory made and removed through the view.
    fs::create_dir(view.join("d/sub")).unwrap();
    agrees("mkdir through the view", || root.join("d/sub").is_dir());
    fs::remove_dir(view.join("d/sub")).unwrap();
    agrees("rmdir through the view", || !root.join("d/sub").exists());
}
