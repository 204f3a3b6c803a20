//! The mount binary's life cycle: SIGTERM and SIGINT of the foreground
//! daemon unmount cleanly with exit status 0, and the daemonizing mode returns
//! only once the mount is live.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    force_unmount, host_bin, is_fuse_mounted, signal, wait_timeout, wait_until, CMD_TIMEOUT,
    EXIT_TIMEOUT,
};

/// The daemon's exit status once it exits; if it does not within
/// [`EXIT_TIMEOUT`], it is killed and the test fails saying it did not exit
/// `when`.
fn exit_status_or_kill(child: &mut std::process::Child, when: &str) -> std::process::ExitStatus {
    match wait_timeout(child, EXIT_TIMEOUT) {
        Some(s) => s,
        None => {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            panic!("daemon did not exit within {EXIT_TIMEOUT:?} {when}");
        }
    }
}

fn stop_with(sig: libc::c_int) {
    let mut m = mount_or_skip!();
    fs::write(m.join("f"), "data").unwrap();
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "data");
    let mut child = m.take_daemon();
    signal(child.id(), sig);
    let status = exit_status_or_kill(&mut child, &format!("of signal {sig}"));
    let still_mounted = is_fuse_mounted(m.path());
    assert!(
        !still_mounted,
        "mountinfo still lists {} after the daemon exited",
        m.path().display()
    );
    assert_eq!(
        status.code(),
        Some(0),
        "daemon exit status after signal {sig}: {status}; stderr:\n{}",
        m.daemon_stderr()
    );
    // The mountpoint is an ordinary empty directory again.
    assert!(fs::read_dir(m.path()).unwrap().next().is_none());
}

#[test]
fn sigterm_unmounts_cleanly() {
    stop_with(libc::SIGTERM);
}

#[test]
fn sigint_unmounts_cleanly() {
    stop_with(libc::SIGINT);
}

/// Pids of processes whose command line mentions `needle` (our unique temp
/// mountpoint), so the test can make sure the daemon it started is gone.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn daemon_mode_returns_once_mounted() {
    if !common::fuse_available() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("agentfs-daemon-")
        .tempdir()
        .unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let mp = root.join("mnt");
    let store = root.join("store");
    fs::create_dir(&mp).unwrap();
    fs::create_dir(&store).unwrap();
    let errlog = root.join("stderr");
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            force_unmount(self.0);
        }
    }
    let _cleanup = Cleanup(&mp);

    // Output goes to files: a daemon keeps inherited pipes open.
    let mut parent = Command::new(host_bin())
        .arg("--backstore")
        .arg(&store)
        .arg(&mp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&errlog).unwrap()))
        .spawn()
        .unwrap();
    let status = match wait_timeout(&mut parent, CMD_TIMEOUT) {
        Some(s) => s,
        None => {
            signal(parent.id(), libc::SIGKILL);
            let _ = parent.wait();
            panic!("daemonizing parent did not exit");
        }
    };
    assert_eq!(
        status.code(),
        Some(0),
        "daemonizing parent: {status}; stderr:\n{}",
        fs::read_to_string(&errlog).unwrap_or_default()
    );
    assert!(
        is_fuse_mounted(&mp),
        "the parent exited 0 but the mount is not live yet"
    );
    fs::write(mp.join("f"), "daemonized").unwrap();
    assert_eq!(fs::read_to_string(mp.join("f")).unwrap(), "daemonized");

    let needle = mp.to_str().unwrap().to_string();
    let daemons = pids_mentioning(&needle);
    assert!(!daemons.is_empty(), "no daemon process found for {needle}");
    assert!(force_unmount(&mp), "could not unmount {}", mp.display());
    let gone = wait_until(Duration::from_secs(30), || {
        pids_mentioning(&needle).is_empty()
    });
    if !gone {
        for pid in pids_mentioning(&needle) {
            signal(pid, libc::SIGKILL);
        }
    }
    assert!(
        gone,
        "the daemon kept running after its mount was unmounted"
    );
}

/// A mount detached lazily while busy (`fusermount3 -u -z`, or the test
/// scripts' teardown), then sent SIGTERM: the daemon has nothing left to
/// unmount, waits for the last open file to close, and exits 0 without
/// logging an error (it logged "lazy unmount failed too: EINVAL" before).
#[test]
fn sigterm_after_a_lazy_detach_waits_for_the_last_file() {
    let mut m = mount_or_skip!();
    let mut open = fs::File::create(m.join("f")).unwrap();
    let mp = std::ffi::CString::new(m.path().to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; MNT_DETACH only detaches.
    let rc = unsafe { libc::umount2(mp.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(rc, 0, "umount2: {}", std::io::Error::last_os_error());
    let mut child = m.take_daemon();
    signal(child.id(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon left while a file was still open on the detached mount"
    );
    // The open file still works until it is closed.
    std::io::Write::write_all(&mut open, b"still served").unwrap();
    drop(open);
    let status = exit_status_or_kill(&mut child, "after the last file closed");
    let stderr = m.daemon_stderr();
    assert_eq!(status.code(), Some(0), "{status}; stderr:\n{stderr}");
    // The daemon's own shutdown says nothing alarming. (A RELEASE the
    // kernel dropped as the detached mount went may still make fuser log a
    // failed reply; that is timing, not this path.)
    let alarming = stderr.lines().any(|l| {
        l.contains("agentfs_fuse_host") && (l.contains(" ERROR ") || l.contains(" WARN "))
    });
    assert!(!alarming, "stderr:\n{stderr}");
}
