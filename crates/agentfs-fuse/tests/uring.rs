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

/// What the daemon's threads whose names start with `prefix` have done so
/// far: (threads, voluntary context switches, nanoseconds on a CPU).
fn thread_stats(pid: u32, prefix: &str) -> (usize, u64, u64) {
    let (mut threads, mut switches, mut ran_ns) = (0, 0, 0);
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("daemon tasks") {
        let dir = task.expect("task").path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        threads += 1;
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        switches += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        // schedstat: time on a CPU (ns), time waiting to run, timeslices.
        let schedstat = fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        ran_ns += schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (threads, switches, ran_ns)
}

fn start_rings(extra: &[&str]) -> Option<Mount> {
    if !common::fuse_available() || !uring_allowed() {
        eprintln!("skipping: FUSE over io_uring is off here ({PARAM} is not Y)");
        return None;
    }
    let mut args = vec!["--fuse-uring", "auto"];
    args.extend_from_slice(extra);
    let m = Mount::start_with(&args)?;
    assert!(
        m.daemon_stderr()
            .contains("FUSE over io_uring: one queue per CPU"),
        "the daemon did not start its rings:\n{}",
        m.daemon_stderr()
    );
    Some(m)
}

fn start() -> Option<Mount> {
    start_rings(&[])
}

/// 300 names the kernel has never seen: one LOOKUP each.
fn look_up_300_new_names(m: &Mount) {
    for i in 0..300 {
        assert!(fs::symlink_metadata(m.join(&format!("absent-{i}"))).is_err());
    }
}

#[test]
fn requests_come_from_the_rings() {
    // Without polling each request wakes a ring thread once: countable.
    let Some(m) = start_rings(&["--ring-poll-us", "0"]) else {
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (threads, before, _) = thread_stats(m.daemon_pid(), "fuse-ring-");
    assert!(threads >= cpus, "{threads} ring threads for {cpus} CPUs");
    look_up_300_new_names(&m);
    let (_, after, _) = thread_stats(m.daemon_pid(), "fuse-ring-");
    assert!(
        after - before >= 300,
        "300 lookups woke the ring threads {} times: they did not serve them",
        after - before
    );
}

#[test]
fn polling_rings_serve_requests_without_dev_fuse() {
    // With the default poll window a ring thread may find the next request
    // without sleeping, so count the other way: the threads reading
    // /dev/fuse stay asleep (no lookup comes to them), the ring threads run.
    let Some(m) = start() else { return };
    let pid = m.daemon_pid();
    // fuser starts its reader threads (fuser-N) once the mount is up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while thread_stats(pid, "fuser-").0 == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (readers, readers_before, _) = thread_stats(pid, "fuser-");
    assert!(
        readers > 0,
        "no /dev/fuse reader threads (fuser-N) within 10 s"
    );
    let (_, _, ran_before) = thread_stats(pid, "fuse-ring-");
    look_up_300_new_names(&m);
    let (_, readers_after, _) = thread_stats(pid, "fuser-");
    let (_, _, ran_after) = thread_stats(pid, "fuse-ring-");
    assert!(
        readers_after - readers_before < 30,
        "300 lookups woke the /dev/fuse readers {} times: they came that way",
        readers_after - readers_before
    );
    assert!(ran_after > ran_before, "the ring threads never ran");
    // And the answers were right: a name made now is found at once.
    fs::write(m.join("present"), b"x").unwrap();
    assert_eq!(fs::read(m.join("present")).unwrap(), b"x");
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
