//! Faults of the backstore on a real mount (specs/faults.md).
//!
//! - Full backstore: the backstore lives on a small tmpfs this test mounts
//!   ([`Tmpfs`]); filling it makes writes fail with ENOSPC while lookups,
//!   stats, reads of existing files and mkdir keep working, fsynced data stays
//!   intact byte for byte, snapshot and branch commands answer (success or a
//!   clear error, never a hang), deleting files frees the space and writes
//!   succeed again, and a remount shows it all.
//! - Slow backstore: `--fault-slow-backstore` makes every backstore call
//!   sleep 3 s; metadata of this and another branch and cached reads keep
//!   answering, a write that must wait fails at its deadline (ETIMEDOUT), and
//!   the mount is healthy afterwards.
//! - Operations in flight (a `dd conv=fsync` loop and a `find` loop) during
//!   SIGTERM, a refused `umount`, `fusermount3 -u -z`, and `kill -9` plus a
//!   lazy unmount: the daemon exits (or the operations fail cleanly), and the
//!   next mount shows every fsynced file intact.
//!
//! Every test runs on whichever data path `AGENTFS_PASSTHROUGH` selects (the
//! suite runs once with passthrough and once with `off`). The full-backstore
//! test needs root (to mount a tmpfs) and skips without it.

mod common;

use common::*;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A tmpfs of `size_mib` MiB mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount one, or `None` (after printing `SKIP:`) when not root.
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        if !is_root() {
            println!("SKIP: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("agentfs-faults-tmpfs-")
            .tempdir()
            .expect("create tmpfs mountpoint");
        let out = run_with_timeout(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size_mib}m,mode=0755"))
                .arg("agentfs-faults")
                .arg(dir.path()),
            CMD_TIMEOUT,
        );
        assert_success(&out, "mount -t tmpfs");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Free bytes on the tmpfs, as statvfs reports them.
    fn free_bytes(&self) -> u64 {
        free_bytes(self.path())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for args in [&[][..], &["-l"][..]] {
            let status = Command::new("umount")
                .args(args)
                .arg(self.dir.path())
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if status.is_ok_and(|s| s.success()) {
                return;
            }
        }
        eprintln!(
            "WARNING: tmpfs {} is still mounted",
            self.dir.path().display()
        );
    }
}

/// Free bytes of the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = cpath(path);
    // SAFETY: statvfs is plain old data, valid when zeroed.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and outlives the call; `st` is writable.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(r, 0, "statvfs {}: errno {}", path.display(), errno());
    st.f_bavail * st.f_frsize
}

/// Deterministic bytes for file `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Create `path` with `data` and fsync it.
fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The raw OS error of `e`, for messages and asserts.
fn os_err(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Run `cmd` for at most `limit`; `Some(output)` if it finished, `None` if it
/// hung (it is killed by pid).
fn finishes_within(cmd: &mut Command, limit: Duration) -> Option<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    match wait_timeout(&mut child, limit) {
        Some(_) => Some(child.wait_with_output().expect("collect output")),
        None => {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            None
        }
    }
}

/// A control command on a full backstore: it must answer within `limit`,
/// with success or the CLI's one-line error. Returns whether it succeeded.
fn control_answers(m: &Mount, args: &[&str]) -> bool {
    let mut cmd = Command::new(cli_bin());
    cmd.arg("--mount").arg(m.path()).args(args);
    let out = finishes_within(&mut cmd, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("agentfs-control-cli {args:?} hung on a full backstore"));
    if out.status.success() {
        println!("{args:?} on a full backstore: succeeded");
        true
    } else {
        let line = assert_one_line_failure(&out, &format!("{args:?} on a full backstore"));
        println!("{args:?} on a full backstore: {line}");
        false
    }
}

const MIB: usize = 1 << 20;

#[test]
fn a_full_backstore_gives_enospc_keeps_serving_and_recovers_when_space_is_freed() {
    let Some(tmpfs) = Tmpfs::mount(64) else {
        return;
    };
    let store = tmpfs.path().join("store");
    fs::create_dir(&store).unwrap();
    let Some(mut m) = Mount::start_on(Some(&store), &[]) else {
        return;
    };

    // Files written and fsynced before the disk fills.
    let kept: Vec<(PathBuf, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                m.join(&format!("kept-{i}")),
                pattern(i, MIB + 4321 * i as usize),
            )
        })
        .collect();
    for (path, data) in &kept {
        write_synced(path, data).unwrap();
    }
    fs::create_dir(m.join("dir")).unwrap();
    fs::write(m.join("dir/small"), b"small file").unwrap();

    // Fill: 1 MiB files until a write or fsync fails; it must be ENOSPC.
    let chunk = pattern(99, MIB);
    let mut fills = Vec::new();
    let mut failure = None;
    'fill: for i in 0..256 {
        let path = m.join(&format!("fill-{i}"));
        let mut f = match fs::File::create(&path) {
            Ok(f) => f,
            Err(e) => {
                failure = Some(("create", e));
                break;
            }
        };
        fills.push(path);
        for _ in 0..4 {
            if let Err(e) = f.write_all(&chunk[..MIB / 4]) {
                failure = Some(("write", e));
                break 'fill;
            }
        }
        if let Err(e) = f.sync_all() {
            failure = Some(("fsync", e));
            break;
        }
    }
    let (what, err) = failure.expect("64 MiB of tmpfs never filled up after 256 MiB of writes");
    println!(
        "full after {} fill files: {what} failed with {err} (tmpfs free: {} bytes)",
        fills.len(),
        tmpfs.free_bytes()
    );
    assert_eq!(
        os_err(&err),
        libc::ENOSPC,
        "{what} on a full backstore: {err}"
    );
    // Another write still fails the same way (not EIO, not a hang).
    let more = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(m.join("one-more"))
        .and_then(|f| f.write_all_at(&chunk, 0).and_then(|()| f.sync_all()));
    match more {
        Err(e) => assert_eq!(os_err(&e), libc::ENOSPC, "second write: {e}"),
        Ok(()) => panic!("a 1 MiB write and fsync succeeded on a full backstore"),
    }

    // The mount keeps working: listing, stat, reads of existing data, mkdir.
    let names: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for i in 0..3 {
        assert!(names.contains(&format!("kept-{i}")), "{names:?}");
    }
    for (path, data) in &kept {
        assert_eq!(fs::metadata(path).unwrap().len(), data.len() as u64);
        assert!(
            fs::read(path).unwrap() == *data,
            "{} damaged",
            path.display()
        );
    }
    assert_eq!(fs::read(m.join("dir/small")).unwrap(), b"small file");
    fs::create_dir(m.join("made-while-full")).unwrap();
    assert!(m.join("made-while-full").is_dir());

    // Snapshot and branch commands answer, whatever they answer. They would
    // keep the fill files' objects alive, so they go again before the space
    // is freed.
    if control_answers(&m, &["snapshot-create", "--name", "while-full"]) {
        if control_answers(
            &m,
            &["branch-create", "--from", "while-full", "--name", "b-full"],
        ) {
            m.cli_ok(&["branch-delete", "b-full"]);
        }
        m.cli_ok(&["snapshot-delete", "while-full"]);
    }

    // Freeing space makes writes succeed again. Freed objects go once the
    // journal records of the unlinks are durable, so wait (bounded).
    let _ = fs::remove_file(m.join("one-more"));
    for path in &fills {
        fs::remove_file(path).unwrap();
    }
    let want = 24 * MIB as u64;
    assert!(
        wait_until(Duration::from_secs(30), || tmpfs.free_bytes() >= want),
        "space was not freed within 30 s of deleting the fill files: {} bytes free",
        tmpfs.free_bytes()
    );
    let after = pattern(7, 8 * MIB);
    write_synced(&m.join("after"), &after).unwrap();
    assert!(fs::read(m.join("after")).unwrap() == after);

    // The journal came through: a remount shows everything acknowledged.
    m.remount();
    for (path, data) in &kept {
        assert!(
            fs::read(path).unwrap() == *data,
            "{} after remount",
            path.display()
        );
    }
    assert!(fs::read(m.join("after")).unwrap() == after);
    assert!(m.join("made-while-full").is_dir());
    assert!(!m.join("fill-0").exists());
    drop(m);
    drop(tmpfs);
}

/// How long each backstore call sleeps during the storm.
const STORM_MS: u64 = 3000;
/// The request deadline of the storm test's mount.
const OP_TIMEOUT_MS: u64 = 1500;
/// A metadata operation slower than this during the storm counts as waiting
/// on the backstore (every backstore call takes [`STORM_MS`]): a hang
/// detector with room for a loaded 2-core machine, not a benchmark.
const ANSWER_BOUND: Duration = Duration::from_millis(1000);

/// The storm's control file and its I/O processes: ends both on drop (the
/// file first, so the daemon's workers stop sleeping).
struct Storm {
    control: PathBuf,
    stop: PathBuf,
    writers: Vec<std::process::Child>,
}

impl Storm {
    fn start(control: &Path, stop: &Path) -> Storm {
        fs::write(control, STORM_MS.to_string()).unwrap();
        Storm {
            control: control.to_path_buf(),
            stop: stop.to_path_buf(),
            writers: Vec::new(),
        }
    }

    /// A process writing and fsyncing new files in `dir` until the storm ends.
    fn add_writer(&mut self, dir: &Path, n: usize) {
        let script = format!(
            "i=0; while [ ! -e {stop} ]; do dd if=/dev/zero of={dir}/storm-{n}-$i bs=64k count=1 conv=fsync 2>/dev/null; i=$((i+1)); done",
            stop = shq(&self.stop),
            dir = shq(dir),
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn storm writer");
        self.writers.push(child);
    }

    /// End the storm: no more delays, writers stop and are reaped (killed by
    /// pid if they do not stop within `limit`).
    fn end(&mut self, limit: Duration) {
        let _ = fs::remove_file(&self.control);
        let _ = fs::write(&self.stop, b"");
        for mut w in self.writers.drain(..) {
            if wait_timeout(&mut w, limit).is_none() {
                signal(w.id(), libc::SIGKILL);
                let _ = w.wait();
            }
        }
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.end(Duration::from_secs(20));
    }
}

/// Latencies of one kind of operation.
#[derive(Default)]
struct Lat(Vec<Duration>);

impl Lat {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let v = f();
        self.0.push(start.elapsed());
        v
    }
    fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }
    fn median(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
}

#[test]
fn a_slow_backstore_never_stalls_metadata_and_waits_end_at_their_deadline() {
    if !fuse_available() {
        return;
    }
    let ctl = tempfile::tempdir().unwrap();
    let control = ctl.path().join("slow-ms");
    let stop = ctl.path().join("stop");
    let control_arg = control.to_str().unwrap().to_string();
    let timeout_arg = OP_TIMEOUT_MS.to_string();
    // TTL 0: every stat and lookup reaches the daemon, so the measurement
    // is of the daemon, not of the kernel's caches.
    let Some(m) = Mount::start_with(&[
        "--fault-slow-backstore",
        &control_arg,
        "--op-timeout-ms",
        &timeout_arg,
        "--attr-ttl-ms",
        "0",
    ]) else {
        return;
    };

    // Before the storm: files, a directory, a file read once and kept open
    // (its pages cached), and a second branch.
    fs::create_dir(m.join("dir")).unwrap();
    for i in 0..20 {
        fs::write(m.join(&format!("dir/f{i}")), format!("file {i}")).unwrap();
    }
    fs::write(m.join("dir/empty"), b"").unwrap();
    let cached_data = pattern(5, 256 << 10);
    write_synced(&m.join("cached"), &cached_data).unwrap();
    let cached = fs::File::open(m.join("cached")).unwrap();
    let mut buf = vec![0u8; cached_data.len()];
    cached.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == cached_data);
    // Pin those pages. The kernel may reclaim a file's page cache at any
    // moment (this machine's memory cgroup is reclaimed proactively: pages
    // go within seconds), and an evicted page is read again from the
    // stalled backstore when the daemon serves file data.
    // SAFETY: nothing writes or truncates the file while it is mapped.
    let pinned = unsafe { memmap2::Mmap::map(&cached) }.unwrap();
    pinned.lock().expect("mlock the cached file's pages");
    m.snapshot("before-storm");
    m.branch("before-storm", "other");
    let other = m.join(".agentfs/branches/other");
    assert!(
        other.join("dir/f3").is_file(),
        "the other branch is reachable by path"
    );
    fs::create_dir(m.join("io")).unwrap();
    // A file open for writing: with passthrough the kernel writes it
    // directly, so its size is the backstore's to tell.
    let mut writing = fs::File::create(m.join("writing")).unwrap();
    writing.write_all(b"open for writing").unwrap();

    let mut storm = Storm::start(&control, &stop);
    // More writers than data workers (8): without a fair share of the data
    // lane they would hold every worker.
    // A directory each: creates in one directory queue on its lock in the
    // kernel and would reach the daemon one at a time.
    for n in 0..16 {
        let dir = m.join(&format!("io/w{n}"));
        fs::create_dir(&dir).unwrap();
        storm.add_writer(&dir, n);
    }
    // Let the writers fill every data worker with sleeping backstore calls.
    std::thread::sleep(Duration::from_millis(500));

    let (mut stat, mut lookup_missing, mut readdir, mut cached_read) = (
        Lat::default(),
        Lat::default(),
        Lat::default(),
        Lat::default(),
    );
    let (mut other_stat, mut other_readdir) = (Lat::default(), Lat::default());
    let (mut other_truncate, mut other_open) = (Lat::default(), Lat::default());
    let other_empty = cpath(&other.join("dir/empty"));
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut round = 0;
    while std::time::Instant::now() < until {
        let i = round % 20;
        let md = stat.time(|| fs::metadata(m.join(&format!("dir/f{i}"))));
        assert_eq!(md.unwrap().len(), format!("file {i}").len() as u64);
        let missing = lookup_missing.time(|| fs::metadata(m.join(&format!("dir/none-{round}"))));
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        let n = readdir.time(|| fs::read_dir(m.join("dir")).unwrap().count());
        assert_eq!(n, 21);
        cached_read.time(|| cached.read_exact_at(&mut buf, 0).unwrap());
        assert!(buf == cached_data);
        let md = other_stat.time(|| fs::metadata(other.join(format!("dir/f{i}"))));
        assert!(md.unwrap().is_file());
        let n = other_readdir.time(|| fs::read_dir(other.join("dir")).unwrap().count());
        assert_eq!(n, 21);
        // Data-lane requests of the other branch that need no backstore
        // call: the stalled branch holds at most half of the data workers.
        // SAFETY: `other_empty` is a NUL-terminated path that outlives the call.
        let r = other_truncate.time(|| unsafe { libc::truncate(other_empty.as_ptr(), 0) });
        assert_eq!(r, 0, "truncate in the other branch: errno {}", errno());
        // Read-only open of a file the branch shares with its snapshot: no
        // object of its own to hand the kernel, so no backstore call.
        let opened = other_open.time(|| fs::File::open(other.join(format!("dir/f{i}"))));
        opened.unwrap_or_else(|e| panic!("open in the other branch, round {round}: {e}"));
        round += 1;
        std::thread::sleep(Duration::from_millis(20));
    }

    // An operation that must wait on the backstore ends at its deadline.
    let start = std::time::Instant::now();
    let created = fs::File::create(m.join("during-storm")).and_then(|mut f| {
        f.write_all(b"written in the storm")?;
        f.sync_all()
    });
    let waited = start.elapsed();
    let err =
        created.expect_err("create+write+fsync succeeded with every backstore call taking 3 s");
    println!("create/write/fsync during the storm: {err} after {waited:?}");
    assert_eq!(os_err(&err), libc::ETIMEDOUT, "{err}");
    assert!(
        waited < Duration::from_secs(20),
        "an operation waited {waited:?}, far past its {OP_TIMEOUT_MS} ms deadline"
    );

    // A stat that must ask the backstore answers, or fails at its deadline.
    let start = std::time::Instant::now();
    let st = fs::metadata(m.join("writing"));
    let waited = start.elapsed();
    println!("stat of a file open for writing during the storm: {st:?} after {waited:?}");
    match &st {
        Ok(md) => assert_eq!(md.len(), 16),
        Err(e) => assert_eq!(os_err(e), libc::ETIMEDOUT, "{e}"),
    }
    assert!(waited < Duration::from_secs(20), "stat waited {waited:?}");

    // A listing with attributes (readdirplus: the first getdents of a
    // directory) of the directory holding that file: its size is the
    // backstore's to tell, so the listing answers or fails at its deadline,
    // never after the backstore's 3 s.
    let start = std::time::Instant::now();
    let listed = fs::read_dir(m.path()).and_then(|d| d.collect::<io::Result<Vec<_>>>());
    let waited = start.elapsed();
    println!(
        "readdirplus of the directory holding it: {} after {waited:?}",
        match &listed {
            Ok(v) => format!("{} entries", v.len()),
            Err(e) => e.to_string(),
        }
    );
    match &listed {
        Ok(v) => assert!(v.iter().any(|e| e.file_name() == "writing")),
        Err(e) => assert_eq!(os_err(e), libc::ETIMEDOUT, "{e}"),
    }
    assert!(
        waited < Duration::from_millis(STORM_MS),
        "readdirplus waited {waited:?} for the backstore, past its {OP_TIMEOUT_MS} ms deadline"
    );

    // So does a truncate (setattr with a size: data lane).
    let start = std::time::Instant::now();
    let target = cpath(&m.join("dir/f1"));
    // SAFETY: `target` is a NUL-terminated path that outlives the call.
    let r = unsafe { libc::truncate(target.as_ptr(), 1) };
    let (r, e, waited) = (r, errno(), start.elapsed());
    println!("truncate during the storm: {r} (errno {e}) after {waited:?}");
    assert_eq!((r, e), (-1, libc::ETIMEDOUT), "truncate during the storm");

    let data_path = std::env::var("AGENTFS_PASSTHROUGH").unwrap_or_else(|_| "auto".into());
    println!(
        "storm latencies ({round} rounds, backstore calls {STORM_MS} ms, data path {data_path}):"
    );
    for (what, lat) in [
        ("stat existing file", &stat),
        ("lookup missing name", &lookup_missing),
        ("readdir 21 entries", &readdir),
        ("read cached file 256 KiB", &cached_read),
        ("stat in other branch", &other_stat),
        ("readdir in other branch", &other_readdir),
        ("truncate in other branch", &other_truncate),
        ("open in other branch", &other_open),
    ] {
        println!(
            "  {what:<26} median {:>8.3} ms  max {:>8.3} ms",
            lat.median().as_secs_f64() * 1e3,
            lat.max().as_secs_f64() * 1e3
        );
        assert!(
            lat.max() < ANSWER_BOUND,
            "{what} took {:?} during the storm: it waited on the backstore",
            lat.max()
        );
    }

    // After the storm the mount is healthy.
    storm.end(Duration::from_secs(30));
    let after = pattern(11, 1 << 20);
    write_synced(&m.join("after-storm"), &after).unwrap();
    assert!(fs::read(m.join("after-storm")).unwrap() == after);
    fs::write(m.join("io/after"), b"ok").unwrap();
    assert_eq!(fs::read(m.join("io/after")).unwrap(), b"ok");
    // The timed-out create still happened; the file is usable.
    assert!(
        wait_until(Duration::from_secs(10), || m.join("during-storm").exists()),
        "the create answered ETIMEDOUT never completed"
    );
    fs::write(m.join("during-storm"), b"rewritten").unwrap();
    // So did the timed-out truncate.
    assert!(
        wait_until(Duration::from_secs(10), || fs::metadata(m.join("dir/f1"))
            .is_ok_and(|md| md.len() == 1)),
        "the truncate answered ETIMEDOUT never completed"
    );
    assert_eq!(fs::read(m.join("during-storm")).unwrap(), b"rewritten");
    let synced = fs::File::open(m.join("after-storm")).unwrap();
    synced.sync_all().unwrap();
    drop(pinned);
    drop(cached);
    drop(writing);
    drop(storm);
    drop(m);
}

/// Bytes of each file the in-flight writer makes.
const IO_FILE_LEN: usize = 256 << 10;

/// Operations in flight on `m`: a shell in `<mount>/io` writing files of
/// zeros with fsync (`dd conv=fsync`), appending each file's name to
/// `ledger` (outside the mount) once dd succeeded, and a shell running
/// `find` over the mount; each loops until one of its operations fails.
fn start_io(m: &Mount, ledger: &Path) -> Vec<std::process::Child> {
    fs::create_dir_all(m.join("io")).unwrap();
    let writer = format!(
        "cd {io} || exit 1; i=0; while dd if=/dev/zero of=w-$i bs=64k count=4 conv=fsync 2>/dev/null; do echo w-$i >> {ledger}; i=$((i+1)); done",
        io = shq(&m.join("io")),
        ledger = shq(ledger),
    );
    let finder = format!(
        "cd {m} || exit 1; while find . >/dev/null 2>&1; do :; done",
        m = shq(m.path())
    );
    [writer, finder]
        .iter()
        .map(|script| {
            Command::new("sh")
                .args(["-c", script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn in-flight I/O")
        })
        .collect()
}

/// Wait for `children` to end on their own within `limit`; kill (by pid) and
/// fail if one does not.
fn wait_all_end(children: Vec<std::process::Child>, limit: Duration, what: &str) {
    for mut c in children {
        if wait_timeout(&mut c, limit).is_none() {
            signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
            panic!("an I/O process still ran {limit:?} after {what}: it hung");
        }
    }
}

/// Files fsynced before anything happened, and their contents.
fn write_kept(m: &Mount) -> Vec<(String, Vec<u8>)> {
    let kept: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("kept-{i}"), pattern(100 + i, 100_000 + i as usize)))
        .collect();
    for (name, data) in &kept {
        write_synced(&m.join(name), data).unwrap();
    }
    kept
}

/// After a remount: every kept file and every file the ledger says dd
/// fsynced are there, byte for byte. Returns how many ledger files there were.
fn verify_durable(m: &Mount, kept: &[(String, Vec<u8>)], ledger: &Path) -> usize {
    for (name, data) in kept {
        assert!(fs::read(m.join(name)).unwrap() == *data, "{name} damaged");
    }
    let ledger = fs::read_to_string(ledger).unwrap_or_default();
    let zeros = vec![0u8; IO_FILE_LEN];
    for name in ledger.lines() {
        let got = fs::read(m.join("io").join(name))
            .unwrap_or_else(|e| panic!("io/{name} was fsynced but is gone: {e}"));
        assert!(
            got == zeros,
            "io/{name}: {} bytes, not its zeros",
            got.len()
        );
    }
    // The tree is whole: every entry listed can be stat'ed.
    for e in fs::read_dir(m.join("io")).unwrap() {
        fs::metadata(e.unwrap().path()).unwrap();
    }
    ledger.lines().count()
}

#[test]
fn sigterm_with_operations_in_flight_exits_and_keeps_every_fsynced_file() {
    let Some(mut m) = Mount::start() else {
        return;
    };
    let kept = write_kept(&m);
    let ledger = m.scratch().join("ledger");
    let io = start_io(&m, &ledger);
    std::thread::sleep(Duration::from_millis(800));
    let mut daemon = m.take_daemon();
    signal(daemon.id(), libc::SIGTERM);
    // The busy mount is detached lazily; the daemon waits a while for the
    // session to end, then exits anyway.
    let status = wait_timeout(&mut daemon, Duration::from_secs(40)).unwrap_or_else(|| {
        signal(daemon.id(), libc::SIGKILL);
        panic!("the daemon did not exit after SIGTERM with I/O in flight")
    });
    assert!(
        status.success(),
        "daemon exit {status}: {}",
        m.daemon_stderr()
    );
    // With the daemon gone, what was in flight fails (ENOTCONN) and ends.
    wait_all_end(io, Duration::from_secs(20), "the daemon exited");
    m.mount_again();
    let n = verify_durable(&m, &kept, &ledger);
    println!("SIGTERM with dd and find in flight: daemon exit {status}; {n} fsynced files intact");
    assert!(
        n > 0,
        "the writer never completed a file: nothing was in flight"
    );
}

#[test]
fn lazy_unmount_with_operations_in_flight_ends_the_daemon_once_they_stop() {
    let Some(mut m) = Mount::start() else {
        return;
    };
    let kept = write_kept(&m);
    let ledger = m.scratch().join("ledger");
    let io = start_io(&m, &ledger);
    std::thread::sleep(Duration::from_millis(800));
    // A plain umount of the busy mount is refused and changes nothing.
    let out = run_with_timeout(Command::new("umount").arg(m.path()), CMD_TIMEOUT);
    assert!(!out.status.success(), "umount of a busy mount succeeded");
    assert!(is_fuse_mounted(m.path()) && m.join("kept-0").is_file());
    let out = run_with_timeout(
        Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(m.path()),
        CMD_TIMEOUT,
    );
    assert_success(&out, "fusermount3 -u -z");
    assert!(!is_fuse_mounted(m.path()), "still mounted after -z");
    // The detached mount keeps serving the processes inside it.
    std::thread::sleep(Duration::from_millis(500));
    let mut daemon = m.take_daemon();
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon quit while processes still used the detached mount"
    );
    for c in &io {
        signal(c.id(), libc::SIGKILL);
    }
    wait_all_end(io, Duration::from_secs(20), "SIGKILL");
    // The last user gone, the session ends and the daemon exits by itself.
    let status = wait_timeout(&mut daemon, Duration::from_secs(40)).unwrap_or_else(|| {
        signal(daemon.id(), libc::SIGKILL);
        panic!("the daemon did not exit after the lazily unmounted mount lost its last user")
    });
    assert!(
        status.success(),
        "daemon exit {status}: {}",
        m.daemon_stderr()
    );
    m.mount_again();
    let n = verify_durable(&m, &kept, &ledger);
    println!(
        "fusermount3 -u -z with I/O in flight: daemon exit {status}; {n} fsynced files intact"
    );
    assert!(
        n > 0,
        "the writer never completed a file: nothing was in flight"
    );
}

#[test]
fn kill_9_with_operations_in_flight_then_lazy_unmount_recovers() {
    let Some(mut m) = Mount::start() else {
        return;
    };
    let kept = write_kept(&m);
    let ledger = m.scratch().join("ledger");
    let io = start_io(&m, &ledger);
    std::thread::sleep(Duration::from_millis(800));
    let mut daemon = m.take_daemon();
    signal(daemon.id(), libc::SIGKILL);
    let _ = daemon.wait();
    wait_all_end(io, Duration::from_secs(20), "kill -9 of the daemon");
    let out = run_with_timeout(
        Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(m.path()),
        CMD_TIMEOUT,
    );
    assert_success(&out, "fusermount3 -u -z of a dead mount");
    m.mount_again();
    let n = verify_durable(&m, &kept, &ledger);
    println!(
        "kill -9 with I/O in flight, fusermount3 -u -z: {n} fsynced files intact after recovery"
    );
    assert!(
        n > 0,
        "the writer never completed a file: nothing was in flight"
    );
}
