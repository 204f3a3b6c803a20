//! Writes, truncates and chowns take a file's privileges away, as on a local
//! filesystem: setuid (and setgid with group-execute) when the writer is not
//! root, and `security.capability` whoever writes. The mount asks the kernel
//! for FUSE_HANDLE_KILLPRIV_V2 (no GETXATTR before every write), which
//! leaves this to the daemon; these tests would fail if it did not do it,
//! including for writes the kernel would pass through to the backstore.
//! Run as root with `setpriv` to act as `nobody`; both data paths
//! (`AGENTFS_PASSTHROUGH=off` for the transport).

mod common;

use common::{run_with_timeout, Mount};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const NOBODY: &str = "65534";

/// A valid `vfs_cap_data` (revision 2, effective, CAP_NET_RAW permitted).
fn capability_blob() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

fn set_capability(path: &Path) {
    let c = common::cpath(path);
    let name = c"security.capability";
    let blob = capability_blob();
    // SAFETY: NUL-terminated path and name, and a buffer of blob.len() bytes,
    // all outliving the call.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            blob.as_ptr().cast(),
            blob.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr security.capability: {}",
        std::io::Error::last_os_error()
    );
}

fn has_capability(path: &Path) -> bool {
    let c = common::cpath(path);
    let name = c"security.capability";
    // SAFETY: NUL-terminated path and name; a null buffer of size 0 asks for
    // the length only.
    let r = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "getxattr: {e}");
        return false;
    }
    true
}

fn as_nobody_sh(script: &str) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

fn usable() -> Option<Mount> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/setpriv").exists() {
        println!("SKIP: needs root and setpriv");
        return None;
    }
    let m = Mount::start()?;
    fs::set_permissions(
        m.path().parent().unwrap(),
        fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    fs::set_permissions(m.path(), fs::Permissions::from_mode(0o777)).unwrap();
    Some(m)
}

/// A root-owned file with `perm` and data, writable by everyone.
fn privileged_file(m: &Mount, name: &str, perm: u32, capability: bool) -> std::path::PathBuf {
    let p = m.join(name);
    fs::write(&p, b"0123456789").unwrap();
    if capability {
        set_capability(&p);
    }
    fs::set_permissions(&p, fs::Permissions::from_mode(perm)).unwrap();
    assert_eq!(mode(&p), perm);
    p
}

#[test]
fn a_write_by_another_user_clears_setuid_setgid_and_capabilities() {
    let Some(m) = usable() else { return };
    let f = privileged_file(&m, "suid", 0o6777, true);
    assert!(has_capability(&f));
    // Several writes through one descriptor, as a program would.
    let out = as_nobody_sh(&format!(
        "exec 3>>{0} && printf more >&3 && printf again >&3",
        common::shq(&f)
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(&f).unwrap(), b"0123456789moreagain");
    assert_eq!(mode(&f), 0o0777, "setuid and setgid (with g+x) cleared");
    assert!(!has_capability(&f), "capabilities dropped by the write");

    // setgid without group-execute is a locking marker: a write keeps it.
    let g = privileged_file(&m, "sgid-lock", 0o2767, false);
    let out = as_nobody_sh(&format!("printf x >> {}", common::shq(&g)));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&g), 0o2767);
}

#[test]
fn root_keeps_setuid_but_not_capabilities_when_it_writes() {
    let Some(m) = usable() else { return };
    let f = privileged_file(&m, "rootwrite", 0o4755, true);
    let mut file = fs::OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(&mut file, b"root").unwrap();
    drop(file);
    assert_eq!(mode(&f), 0o4755, "root (CAP_FSETID) keeps setuid");
    assert!(!has_capability(&f), "any write drops capabilities");
}

#[test]
fn truncate_and_chown_clear_privileges_too() {
    let Some(m) = usable() else { return };
    let f = privileged_file(&m, "trunc", 0o6777, true);
    let out = as_nobody_sh(&format!("truncate -s 3 {}", common::shq(&f)));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::metadata(&f).unwrap().len(), 3);
    assert_eq!(mode(&f), 0o0777);
    assert!(!has_capability(&f));

    let o = privileged_file(&m, "otrunc", 0o4777, true);
    let out = as_nobody_sh(&format!(": > {}", common::shq(&o)));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&o), 0o0777, "open with O_TRUNC by another user");
    assert!(!has_capability(&o));

    let c = privileged_file(&m, "chown", 0o6755, true);
    std::os::unix::fs::chown(&c, Some(1), Some(1)).unwrap();
    assert_eq!(mode(&c), 0o0755, "chown clears setuid and setgid (g+x)");
    assert!(!has_capability(&c), "chown drops capabilities");
}
