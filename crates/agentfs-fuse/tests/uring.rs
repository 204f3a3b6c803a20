//! FUSE over io_uring (`--fuse-uring auto`): once the kernel grants it at
//! INIT, requests come from one ring per CPU, served by a pinned daemon
//! thread each (`fuse-ring-N`), not from `read(2)` of `/dev/fuse`.
//!
//! Needs a kernel with FUSE over io_uring (6.14+) and the fuse module's
//! `enable_uring` parameter on (it only lets a FUSE server ask for the rings;
//! servers that do not ask are unaffected); skipped otherwise. The
//! whole mount suite also runs over the rings in `just test-unit`
//! (`AGENTFS_FUSE_URING=auto`); this file proves the rings are really the
//! channel, and covers each kind of request and answer once.

mod common;

use common::Mount;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether FUSE servers may ask for io_uring here (`just test-unit` turns
/// the parameter on for its run and back off after).
fn uring_allowed() -> bool {
    fs::read_to_string(PARAM).is_ok_and(|v| v.trim() == "Y")
}

/// Voluntary context switches of the daemon's ring threads: each request a
/// ring brings wakes its thread once.
fn ring_thread_wakeups(pid: u32) -> (usize, u64) {
    let mut threads = 0;
    let mut switches = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("daemon tasks") {
        let dir = task.expect("task").path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("fuse-ring-") {
            continue;
        }
        threads += 1;
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        switches += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (threads, switches)
}

fn start() -> Option<Mount> {
    if !common::fuse_available() || !uring_allowed() {
        eprintln!("skipping: FUSE over io_uring is off here ({PARAM} is not Y)");
        return None;
    }
    Mount::start_with(&["--fuse-uring", "auto"])
}

#[test]
fn requests_come_from_the_rings() {
    let Some(m) = start() else { return };
    assert!(
        m.daemon_stderr().contains("FUSE over io_uring"),
        "the daemon did not start its rings:\n{}",
        m.daemon_stderr()
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (threads, before) = ring_thread_wakeups(m.daemon_pid());
    assert!(threads >= cpus, "{threads} ring threads for {cpus} CPUs");
    // 300 names the kernel has never seen: one LOOKUP each.
    for i in 0..300 {
        assert!(fs::symlink_metadata(m.join(&format!("absent-{i}"))).is_err());
    }
    let (_, after) = ring_thread_wakeups(m.daemon_pid());
    assert!(
        after - before >= 300,
        "300 lookups woke the ring threads {} times: they did not serve them",
        after - before
    );
}

#[test]
fn every_kind_of_request_is_answered_over_the_rings() {
    let Some(m) = start() else { return };
    let d = m.join("dir");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o750);

    // create, write, read back, fsync, size
    let f = d.join("file");
    let mut w = fs::File::create(&f).unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    w.write_all(&data).unwrap();
    w.sync_all().unwrap();
    drop(w);
    assert_eq!(fs::metadata(&f).unwrap().len(), data.len() as u64);
    assert_eq!(fs::read(&f).unwrap(), data);
    let mut r = fs::File::open(&f).unwrap();
    r.seek(SeekFrom::Start(1_000_000)).unwrap();
    let mut part = vec![0u8; 4096];
    r.read_exact(&mut part).unwrap();
    assert_eq!(part, data[1_000_000..1_004_096]);

    // truncate, times, links, rename, symlink
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(10)
        .unwrap();
    assert_eq!(fs::read(&f).unwrap(), &data[..10]);
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 123);
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), t);
    fs::hard_link(&f, d.join("link")).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().nlink(), 2);
    fs::rename(d.join("link"), d.join("moved")).unwrap();
    std::os::unix::fs::symlink("file", d.join("sym")).unwrap();
    assert_eq!(fs::read_link(d.join("sym")).unwrap(), Path::new("file"));
    assert_eq!(fs::read(d.join("sym")).unwrap(), &data[..10]);

    // directory listing (readdir and readdirplus), many entries
    for i in 0..500 {
        fs::write(d.join(format!("n{i:03}")), b"x").unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 503, "{names:?}");
    assert_eq!(&names[..3], ["file", "moved", "n000"]);
    assert_eq!(names[502], "sym");

    // xattrs
    let out = std::process::Command::new("setfattr")
        .args(["-n", "user.k", "-v", "value"])
        .arg(&f)
        .output();
    if let Ok(out) = out {
        assert!(out.status.success(), "setfattr: {out:?}");
        let got = std::process::Command::new("getfattr")
            .args(["--only-values", "-n", "user.k"])
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(got.stdout, b"value");
    }

    // statfs, unlink, rmdir, errors
    assert!(nix::sys::statvfs::statvfs(m.path()).unwrap().blocks() > 0);
    assert_eq!(
        fs::create_dir(&d).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    assert_eq!(
        fs::remove_dir(&d).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_dir_all(&d).unwrap();
    assert!(!d.exists());
}
