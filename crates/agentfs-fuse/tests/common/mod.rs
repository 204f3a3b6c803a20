//! Shared harness of the integration tests that mount AgentFS for real.
//!
//! [`Mount`] owns one live mount: fresh temp dirs for the mountpoint and the
//! backstore, the `agentfs-fuse-host --foreground` child, and the guarantee
//! that the mount is gone when the guard drops, even when the test panicked
//! (`fusermount3 -u`, then `umount`, then `umount -l`; SIGTERM the child by
//! pid, SIGKILL it if it does not exit in time). Every external command runs
//! under a deadline so that a hang turns into a failure, never a stuck run.
//!
//! Tests skip (print `SKIP: ...` and return) only when `/dev/fuse` is missing,
//! and fail instead when `AGENTFS_REQUIRE_FUSE=1` is set, as `.ci/run` does.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a mount may take to come up (debug build on a shared 2-core box).
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long any one CLI or helper command may run before it counts as hung.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the daemon may take to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The mount binary of this crate.
pub fn host_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agentfs-fuse-host"))
}

/// The `agentfs-control-cli` binary: a sibling of the directory holding this
/// test executable (`target/debug/deps/xxx` -> `target/debug/agentfs-control-cli`).
pub fn cli_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test exe has a parent dir");
    let profile = deps.parent().expect("deps dir has a parent dir");
    let cli = profile.join("agentfs-control-cli");
    assert!(
        cli.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before these tests",
        cli.display()
    );
    cli
}

/// A Python interpreter for helper scripts run inside bound branches.
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Whether the tests may mount. `false` means "skip"; panics when FUSE is
/// missing but `AGENTFS_REQUIRE_FUSE=1` demands it.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    if std::env::var("AGENTFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("/dev/fuse is missing but AGENTFS_REQUIRE_FUSE=1: these tests must run");
    }
    println!("SKIP: /dev/fuse is missing, not mounting AgentFS");
    false
}

/// `let m = mount_or_skip!();` — a fresh [`Mount`], or return from the test
/// when FUSE is unavailable (and not required).
#[macro_export]
macro_rules! mount_or_skip {
    () => {
        match $crate::common::Mount::start() {
            Some(m) => m,
            None => return,
        }
    };
}

/// Single-quote `s` for `sh -c`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Quote a path for `sh -c`.
pub fn shq(p: &Path) -> String {
    sh_quote(p.to_str().expect("test paths are UTF-8"))
}

/// Spawn `cmd` with piped output, wait at most `timeout`, kill it (by pid)
/// and panic if it takes longer.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out_reader = drain(child.stdout.take().expect("piped stdout"));
    let err_reader = drain(child.stderr.take().expect("piped stderr"));
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{what} did not finish within {timeout:?}; stderr so far:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::Builder::new()
        .name("test-drain".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
        .expect("spawn drain thread")
}

/// Wait for `child` at most `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("wait for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Send `sig` to `pid` (a process this test started).
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes plain integers; `pid` is positive so it targets
    // exactly one process, one that this test spawned.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Poll `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Decode the octal escapes (`\040`) of a /proc/self/mountinfo field.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystem type of whatever is mounted exactly at `path`, if anything
/// (the last, i.e. topmost, entry of /proc/self/mountinfo wins).
pub fn mounted_fstype(path: &Path) -> Option<String> {
    let want = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || sep + 1 >= fields.len() {
            continue;
        }
        if Path::new(&unescape_mountinfo(fields[4])) == want {
            found = Some(fields[sep + 1].to_string());
        }
    }
    found
}

/// Whether a FUSE filesystem is mounted exactly at `path`.
pub fn is_fuse_mounted(path: &Path) -> bool {
    mounted_fstype(path).is_some_and(|t| t.starts_with("fuse"))
}

/// Unmount whatever FUSE mount sits at `path`: `fusermount3 -u`, then
/// `umount`, then a lazy `umount -l`. Returns whether it is gone.
pub fn force_unmount(path: &Path) -> bool {
    let attempts: [(&str, &[&str]); 4] = [
        ("fusermount3", &["-u"]),
        ("fusermount", &["-u"]),
        ("umount", &[]),
        ("umount", &["-l"]),
    ];
    for (prog, args) in attempts {
        if !is_fuse_mounted(path) {
            return true;
        }
        let child = Command::new(prog)
            .args(args)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = child {
            if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
    !is_fuse_mounted(path)
}

/// One live AgentFS mount, unmounted on drop.
pub struct Mount {
    child: Option<Child>,
    mountpoint: PathBuf,
    backstore: PathBuf,
    stderr_log: PathBuf,
    /// Extra flags for the daemon (see [`Mount::start_with`]).
    extra_args: Vec<String>,
    /// Holds mountpoint/, backstore/ and the daemon's stderr log.
    dir: TempDir,
}

impl Mount {
    /// Mount a fresh AgentFS, or `None` (after printing `SKIP:`) when FUSE is
    /// unavailable and not required.
    pub fn start() -> Option<Mount> {
        Mount::start_with(&[])
    }

    /// Like [`Mount::start`], with extra `agentfs-fuse-host` flags.
    pub fn start_with(extra_args: &[&str]) -> Option<Mount> {
        Mount::start_on(None, extra_args)
    }

    /// Like [`Mount::start_with`], with the backstore at `backstore` (an
    /// existing directory the caller owns, e.g. a small tmpfs) instead of a
    /// fresh one in the temp dir.
    pub fn start_on(backstore: Option<&Path>, extra_args: &[&str]) -> Option<Mount> {
        if !fuse_available() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("agentfs-it-")
            .tempdir()
            .expect("create temp dir");
        let root = fs::canonicalize(dir.path()).expect("canonicalize temp dir");
        let mountpoint = root.join("mnt");
        fs::create_dir(&mountpoint).expect("mkdir mountpoint");
        let backstore = match backstore {
            Some(b) => b.to_path_buf(),
            None => {
                let b = root.join("store");
                fs::create_dir(&b).expect("mkdir backstore");
                b
            }
        };
        let stderr_log = root.join("daemon.stderr");
        let mut m = Mount {
            child: None,
            mountpoint,
            backstore,
            stderr_log,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            dir,
        };
        m.spawn_daemon();
        Some(m)
    }

    fn spawn_daemon(&mut self) {
        let log = fs::File::create(&self.stderr_log).expect("create daemon stderr log");
        // AGENTFS_PASSTHROUGH=off|auto picks the data path for the whole run,
        // so the same tests cover passthrough and the transport.
        let data_path = std::env::var("AGENTFS_PASSTHROUGH").unwrap_or_else(|_| "auto".into());
        // AGENTFS_FUSE_URING=auto serves the run's mounts over io_uring
        // (the fuse module's enable_uring must be Y; `just test-unit` sets it).
        let channel = std::env::var("AGENTFS_FUSE_URING").unwrap_or_else(|_| "off".into());
        let mut child = Command::new(host_bin())
            .arg("--passthrough")
            .arg(data_path)
            .arg("--fuse-uring")
            .arg(channel)
            .args(&self.extra_args)
            .arg("--backstore")
            .arg(&self.backstore)
            .arg("--foreground")
            .arg("--allow-other")
            .arg(&self.mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn agentfs-fuse-host");
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel::<String>();
        thread::Builder::new()
            .name("test-daemon-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            })
            .expect("spawn stdout reader");

        let deadline = Instant::now() + MOUNT_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let announced = line.contains("mounted at");
                    seen.push(line);
                    if announced {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the daemon is exiting or gone.
                    let status = self
                        .child
                        .as_mut()
                        .and_then(|c| wait_timeout(c, EXIT_TIMEOUT));
                    panic!(
                        "agentfs-fuse-host exited ({status:?}) before announcing the mount; stdout: {seen:?}; stderr:\n{}",
                        self.daemon_stderr()
                    );
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "agentfs-fuse-host exited with {status} before announcing the mount; stdout: {seen:?}; stderr:\n{}",
                    self.daemon_stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "agentfs-fuse-host did not print 'mounted at' within {MOUNT_TIMEOUT:?}; stdout: {seen:?}; stderr:\n{}",
                    self.daemon_stderr()
                );
            }
        }
        assert!(
            wait_until(Duration::from_secs(10), || is_fuse_mounted(&self.mountpoint)),
            "daemon said it mounted {} but /proc/self/mountinfo does not list a FUSE mount there (stdout: {seen:?})",
            self.mountpoint.display()
        );
    }

    /// The mount path.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `path()/rel`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The backstore directory.
    pub fn backstore(&self) -> &Path {
        &self.backstore
    }

    /// A scratch directory outside the mount, unique to this mount.
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        fs::create_dir_all(&p).expect("mkdir scratch");
        p
    }

    /// Unmount cleanly, wait for the daemon to exit (it checkpoints), and
    /// mount the same backstore again at the same path.
    pub fn remount(&mut self) {
        assert!(
            force_unmount(&self.mountpoint),
            "cannot unmount {}",
            self.mountpoint.display()
        );
        let mut child = self.child.take().expect("daemon running");
        let status = wait_timeout(&mut child, EXIT_TIMEOUT).unwrap_or_else(|| {
            signal(child.id(), libc::SIGKILL);
            panic!(
                "the daemon did not exit after unmount; stderr:\n{}",
                self.daemon_stderr()
            )
        });
        assert!(
            status.success(),
            "daemon exit {status}; stderr:\n{}",
            self.daemon_stderr()
        );
        self.spawn_daemon();
    }

    /// `kill -9` the daemon, clean the dead connection (lazy unmount), and
    /// mount the same backstore again at the same path.
    pub fn crash_and_remount(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
        assert!(
            force_unmount(&self.mountpoint),
            "cannot detach {}",
            self.mountpoint.display()
        );
        self.spawn_daemon();
    }

    /// Mount the same backstore again at the same path after the test took
    /// the daemon ([`Mount::take_daemon`]) and it is gone: detach whatever
    /// connection is left, then start a new daemon.
    pub fn mount_again(&mut self) {
        assert!(self.child.is_none(), "the old daemon is still in the guard");
        assert!(
            force_unmount(&self.mountpoint),
            "cannot detach {}",
            self.mountpoint.display()
        );
        self.spawn_daemon();
    }

    /// The daemon's pid.
    pub fn daemon_pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Take the daemon child out of the guard (for tests that stop it
    /// themselves). The guard still unmounts on drop.
    pub fn take_daemon(&mut self) -> Child {
        self.child.take().expect("daemon running")
    }

    /// What the daemon wrote on stderr so far.
    pub fn daemon_stderr(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Run `agentfs-control-cli --mount M ARGS...`.
    pub fn cli<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = Command::new(cli_bin());
        cmd.arg("--mount").arg(&self.mountpoint).args(args);
        run_with_timeout(&mut cmd, CMD_TIMEOUT)
    }

    /// Run the CLI and require success; returns stdout.
    pub fn cli_ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = self.cli(args);
        assert_success(&out, &format!("agentfs-control-cli {:?}", os_args(args)));
        String::from_utf8(out.stdout).expect("CLI stdout is UTF-8")
    }

    /// Run `agentfs-control-cli --mount M --json ARGS...`, require success and
    /// return the reply's payload (see [`reply_value`]).
    pub fn cli_json<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Value {
        let mut cmd = Command::new(cli_bin());
        cmd.arg("--mount")
            .arg(&self.mountpoint)
            .arg("--json")
            .args(args);
        let out = run_with_timeout(&mut cmd, CMD_TIMEOUT);
        assert_success(
            &out,
            &format!("agentfs-control-cli --json {:?}", os_args(args)),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("CLI --json printed non-JSON ({e}): {text:?}"));
        reply_value(v)
    }

    /// The CLI's `status --json` payload.
    pub fn status(&self) -> Value {
        self.cli_json(&["status"])
    }

    /// Run `sh -c CMD` bound to `branch` via `branch-exec`.
    pub fn in_branch(&self, branch: &str, cmd: &str) -> Output {
        self.cli(&["branch-exec", "--branch", branch, "--", "sh", "-c", cmd])
    }

    /// [`Mount::in_branch`] that must succeed; returns stdout.
    pub fn in_branch_ok(&self, branch: &str, cmd: &str) -> String {
        let out = self.in_branch(branch, cmd);
        assert_success(
            &out,
            &format!("branch-exec --branch {branch} -- sh -c {cmd:?}"),
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Create a snapshot of the default branch named `name`; returns its id.
    pub fn snapshot(&self, name: &str) -> String {
        let v = self.cli_json(&["snapshot-create", "--name", name]);
        assert_eq!(v["name"], name, "snapshot-create reply: {v}");
        id_of(&v)
    }

    /// Create a branch named `name` from snapshot `from`; returns its id.
    pub fn branch(&self, from: &str, name: &str) -> String {
        let v = self.cli_json(&["branch-create", "--from", from, "--name", name]);
        assert_eq!(v["name"], name, "branch-create reply: {v}");
        id_of(&v)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = force_unmount(&self.mountpoint);
        if let Some(mut child) = self.child.take() {
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                signal(child.id(), libc::SIGTERM);
                if wait_timeout(&mut child, EXIT_TIMEOUT).is_none() {
                    signal(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                }
            }
        }
        let unmounted = unmounted || force_unmount(&self.mountpoint);
        if thread::panicking() {
            eprintln!(
                "--- agentfs-fuse-host stderr ({}) ---\n{}",
                self.mountpoint.display(),
                self.daemon_stderr()
            );
        }
        if !unmounted {
            eprintln!(
                "WARNING: {} is still mounted after cleanup",
                self.mountpoint.display()
            );
        }
    }
}

fn os_args<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<String> {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect()
}

/// Panic with the command's output unless it exited 0.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assert the CLI-style failure contract: exit code 1 and exactly one
/// non-empty line on stderr. Returns that line.
pub fn assert_one_line_failure(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit 1, got {}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one stderr line, got {lines:?}"
    );
    assert!(!lines[0].trim().is_empty(), "{what}: stderr line is empty");
    lines[0].to_string()
}

/// The payload of a CLI `--json` reply, whatever wrapping the CLI keeps:
/// `{"ok": R}` -> R; `{"reply": .., "value": V}` -> V; anything else as is.
pub fn reply_value(v: Value) -> Value {
    let v = match v {
        Value::Object(ref map) if map.len() == 1 && map.contains_key("ok") => map["ok"].clone(),
        other => other,
    };
    match v {
        Value::Object(ref map) if map.contains_key("reply") && map.contains_key("value") => {
            map["value"].clone()
        }
        other => other,
    }
}

/// The `id` string of a snapshot or branch view.
pub fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no string id in {v}"))
        .to_string()
}

/// The entry of a JSON list whose `name` is `name`, if any.
pub fn find_named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a JSON list, got {list}"))
        .iter()
        .find(|e| e["name"] == name)
}

/// An entry's u64 field, panicking with context when absent.
pub fn u64_field(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no u64 field {field:?} in {v}"))
}

/// `path` as a C string.
pub fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path has no NUL")
}

/// The last OS error as a raw errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .expect("last_os_error has an errno")
}

/// Whether this test runs as root (chown, mknod of devices).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A process started by a test that is killed (by pid) when dropped: the
/// spawned child and, if the script recorded it, the pid it wrote to
/// `pidfile` (for when the CLI forks instead of exec'ing).
pub struct Guarded {
    pub child: Option<Child>,
    pub pidfile: Option<PathBuf>,
}

impl Guarded {
    pub fn new(child: Child, pidfile: Option<PathBuf>) -> Guarded {
        Guarded {
            child: Some(child),
            pidfile,
        }
    }

    /// Wait for the child to exit on its own and return its output.
    pub fn wait_output(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("child present");
        let out_reader = child.stdout.take().map(drain);
        let err_reader = child.stderr.take().map(drain);
        let status = match wait_timeout(&mut child, timeout) {
            Some(s) => {
                // It finished on its own: nothing left to kill, and the pid
                // in the pidfile may belong to someone else by now.
                self.pidfile = None;
                s
            }
            None => {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                panic!("helper process did not finish within {timeout:?}");
            }
        };
        Output {
            status,
            stdout: out_reader
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
            stderr: err_reader
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(pidfile) = &self.pidfile {
            if let Ok(text) = fs::read_to_string(pidfile) {
                if let Ok(pid) = text.trim().parse::<u32>() {
                    if pid > 1 {
                        signal(pid, libc::SIGKILL);
                    }
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// A command that runs `program args...` bound to `branch` through
/// `branch-exec`, or unbound (so on the default branch) when `branch` is
/// `None`. The caller adds environment and spawns it.
pub fn command_in<S: AsRef<std::ffi::OsStr>>(
    m: &Mount,
    branch: Option<&str>,
    program: &str,
    args: &[S],
) -> Command {
    match branch {
        Some(b) => {
            let mut cmd = Command::new(cli_bin());
            cmd.arg("--mount")
                .arg(m.path())
                .args(["branch-exec", "--branch", b, "--", program])
                .args(args);
            cmd
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    }
}

/// Run `python3 -c script args...` in `branch` (or the default branch) under
/// [`CMD_TIMEOUT`].
pub fn py_in(m: &Mount, branch: Option<&str>, script: &str, args: &[&str]) -> Output {
    let mut argv = vec!["-c", script];
    argv.extend_from_slice(args);
    run_with_timeout(&mut command_in(m, branch, python(), &argv), CMD_TIMEOUT)
}

/// [`py_in`] that must succeed; returns stdout.
pub fn py_in_ok(m: &Mount, branch: Option<&str>, script: &str, args: &[&str]) -> String {
    let out = py_in(m, branch, script, args);
    assert_success(
        &out,
        &format!("python3 script in branch {branch:?} with args {args:?}"),
    );
    String::from_utf8(out.stdout).expect("script stdout is UTF-8")
}

/// Spawn `python3 -c script args...` in `branch` (or the default branch) with
/// piped output; killed on drop (and the pid in `pidfile`, if the script
/// writes its pid there).
pub fn spawn_py_in(
    m: &Mount,
    branch: Option<&str>,
    script: &str,
    args: &[&str],
    pidfile: Option<PathBuf>,
) -> Guarded {
    let mut argv = vec!["-c", script];
    argv.extend_from_slice(args);
    let child = command_in(m, branch, python(), &argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3 helper");
    Guarded::new(child, pidfile)
}

/// A read-only mapping of a file, unmapped on drop.
pub struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mmap {
    pub fn of(f: &std::fs::File, len: usize) -> Mmap {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared read-only mapping of an open descriptor;
        // the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mmap { ptr, len }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len are the mapping made in `of`, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}
