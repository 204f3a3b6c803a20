//! Who can reach and use the control plane, exercised by second and third
//! unprivileged users (`nobody`, uid 65534, and `daemon`, uid 1) against real
//! mounts owned by root:
//!
//! - the socket lives where every user of the mount can reach it (not in the
//!   owner-only backstore), and a dead daemon's socket does not block the
//!   next mount;
//! - the caller's uid comes from the socket (SO_PEERCRED), never from the
//!   message: fields claiming another uid, gid or pid change nothing;
//! - a non-owner cannot create, delete or rename snapshots and branches, nor
//!   bind or unbind another user's process;
//! - under `<mount>/.agentfs/` a non-owner may read the control pointer and
//!   the list of branch names, and reaches a branch's files only as far as
//!   their modes allow (the same rules as at the mount path);
//! - a mount without `--allow-other` answers no one but its owner and root.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NOBODY: &str = "65534";
const DAEMON_USER: &str = "1";

/// `setpriv` as `uid` (gid the same) with no supplementary groups, then `args`.
fn as_user(uid: &str, program: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--"])
        .arg(program)
        .args(args);
    run_with_timeout(&mut cmd, CMD_TIMEOUT)
}

/// Run `agentfs-control-cli --mount M ARGS` as nobody.
fn as_nobody(m: &Mount, args: &[&str]) -> Output {
    let mut all = vec!["--mount", m.path().to_str().unwrap()];
    all.extend_from_slice(args);
    as_user(NOBODY, &cli_bin(), &all)
}

fn as_nobody_sh(script: &str) -> Output {
    as_user(NOBODY, Path::new("/bin/sh"), &["-c", script])
}

/// Let other users walk to the mount (the test's temp dir is private to root).
/// Nothing else is opened: the backstore stays 0700, so the control socket must
/// be reachable without it.
fn open_the_mount(m: &Mount) {
    fs::set_permissions(
        m.path().parent().unwrap(),
        fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    fs::set_permissions(m.backstore(), fs::Permissions::from_mode(0o700)).unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether this machine can run these tests (root, setpriv); fails instead of
/// skipping where CI demands the mount tests.
fn can_switch_users() -> bool {
    if is_root() && Path::new("/usr/bin/setpriv").exists() {
        return true;
    }
    // CI (AGENTFS_REQUIRE_FUSE=1) runs as root with util-linux: never skip there.
    assert!(
        std::env::var("AGENTFS_REQUIRE_FUSE").as_deref() != Ok("1"),
        "this test needs root and /usr/bin/setpriv"
    );
    println!("SKIP: needs root and setpriv to act as a second user");
    false
}

/// The control socket named by `M/.agentfs/control`.
fn socket_of(mount: &Path) -> PathBuf {
    let text = fs::read_to_string(mount.join(".agentfs/control")).expect("read .agentfs/control");
    let v: Value = serde_json::from_str(&text).expect(".agentfs/control is JSON");
    PathBuf::from(v["socket"].as_str().expect("socket field"))
}

/// Send each of `frames` (JSON texts) on its own connection to `socket`, as
/// user `uid`, and return the parsed responses. Python does the socket work
/// so that it runs with the switched credentials.
fn raw_requests_as(uid: &str, socket: &Path, frames: &[Value]) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, socket, struct, sys
path, frames = sys.argv[1], json.loads(sys.argv[2])
out = []
for frame in frames:
    body = json.dumps(frame).encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(path)
    s.sendall(struct.pack(">I", len(body)) + body)
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise SystemExit("closed before a reply")
        head += chunk
    (n,) = struct.unpack(">I", head)
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise SystemExit("reply cut short")
        data += chunk
    out.append(json.loads(data))
    s.close()
print(json.dumps(out))
"#;
    let frames = serde_json::to_string(frames).unwrap();
    let out = as_user(
        uid,
        Path::new(python()),
        &["-c", SCRIPT, socket.to_str().unwrap(), &frames],
    );
    assert_success(&out, &format!("raw control requests as uid {uid}"));
    let v: Value = serde_json::from_slice(&out.stdout).expect("script prints JSON");
    v.as_array().expect("a list of replies").clone()
}

fn err_kind(reply: &Value) -> &str {
    reply["err"]["kind"].as_str().unwrap_or("<not an error>")
}

/// A `sleep` run as `uid`, killed on drop.
fn sleeper_as(uid: &str) -> Guarded {
    let child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--", "sleep", "120"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Guarded::new(child, None)
}

#[test]
fn the_socket_is_reachable_without_the_backstore_and_stale_ones_do_not_block() {
    if !can_switch_users() {
        return;
    }
    let Some(mut m) = Mount::start() else { return };
    open_the_mount(&m);
    let socket = socket_of(m.path());
    assert!(
        !socket.starts_with(m.backstore()),
        "the socket {} is still inside the owner-only backstore",
        socket.display()
    );
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o666, "socket mode");
    let dir = fs::symlink_metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(dir.uid(), 0);
    assert_eq!(dir.mode() & 0o022, 0, "socket dir writable by others");

    // A second user reaches it through the mount path alone.
    let out = as_nobody(&m, &["--json", "status"]);
    assert_success(&out, "status as nobody with a 0700 backstore");

    // kill -9: the socket file stays behind; a new daemon on the same
    // mountpoint replaces it.
    let mut daemon = m.take_daemon();
    signal(daemon.id(), libc::SIGKILL);
    let _ = daemon.wait();
    assert!(
        fs::symlink_metadata(&socket).is_ok(),
        "expected the dead daemon's socket to be left behind"
    );
    // The CLI names a dead mount as such, not as "not an AgentFS mount".
    let out = m.cli(&["status"]);
    let line = assert_one_line_failure(&out, "status on a dead mount");
    assert!(
        line.contains("is gone") && line.contains("fusermount3 -u"),
        "{line}"
    );
    let lazy = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(m.path())
        .status()
        .unwrap();
    assert!(lazy.success(), "fusermount3 -u -z after kill -9");
    let store2 = m.scratch().join("store2");
    fs::create_dir(&store2).unwrap();
    let again = Daemon::start(m.path(), &store2, &["--allow-other"]);
    assert_eq!(
        socket_of(m.path()),
        socket,
        "one mountpoint, one socket name"
    );
    let out = as_nobody(&m, &["--json", "status"]);
    assert_success(&out, "status as nobody after the remount");
    let status = reply_value(serde_json::from_slice(&out.stdout).unwrap());
    assert_eq!(status["backstore"], store2.to_str().unwrap(), "{status}");
    drop(again);
    assert!(
        fs::symlink_metadata(&socket).is_err(),
        "a clean exit removes the socket"
    );
}

#[test]
fn an_unprivileged_user_can_look_but_not_change_a_mount_it_does_not_own() {
    if !can_switch_users() {
        return;
    }
    let Some(m) = Mount::start() else { return };
    open_the_mount(&m);
    let base = m.snapshot("users-base");
    m.branch(&base, "users-b");

    // Anyone may read the state.
    let out = as_nobody(&m, &["status"]);
    assert_success(&out, "status as nobody");
    assert_success(&as_nobody(&m, &["branch-list"]), "branch-list as nobody");
    assert_success(
        &as_nobody(&m, &["snapshot-list"]),
        "snapshot-list as nobody",
    );

    // Snapshots and branches are the owner's (root's) to change.
    for args in [
        vec!["snapshot-create", "--name", "by-nobody"],
        vec![
            "snapshot-create",
            "--name",
            "by-nobody",
            "--branch",
            "users-b",
        ],
        vec![
            "branch-create",
            "--from",
            "users-base",
            "--name",
            "by-nobody",
        ],
        vec!["branch-delete", "users-b", "--force"],
        vec!["branch-delete", "users-b"],
        vec!["snapshot-delete", "users-base"],
    ] {
        let out = as_nobody(&m, &args);
        let line = assert_one_line_failure(&out, &format!("{args:?} as nobody"));
        assert!(line.contains("permission denied"), "{args:?}: {line}");
    }
    let names = m.cli_ok(&["branch-list"]);
    assert!(
        names.contains("users-b") && !names.contains("by-nobody"),
        "{names}"
    );
    let snaps = m.cli_ok(&["snapshot-list"]);
    assert!(
        snaps.contains("users-base") && !snaps.contains("by-nobody"),
        "{snaps}"
    );

    // Nor through the branch views: no rename, create or remove of a branch
    // directory, and no writing the control pointer (for root neither).
    let views = m.join(".agentfs/branches");
    let script = format!(
        "cd {v} || exit 9; \
         mv users-b renamed 2>/dev/null && exit 1; \
         mkdir new-branch 2>/dev/null && exit 2; \
         rmdir users-b 2>/dev/null && exit 3; \
         echo x > ../control 2>/dev/null && exit 4; \
         ls >/dev/null || exit 5; \
         exit 0",
        v = shq(&views)
    );
    let out = as_nobody_sh(&script);
    assert_success(&out, "branch views as nobody");
    let out = run_with_timeout(Command::new("sh").args(["-c", &script]), CMD_TIMEOUT);
    assert_success(&out, "branch views as root");
    assert!(m.cli_ok(&["branch-list"]).contains("users-b"));

    // Binding another user's process is refused: root's (pid 1), and another
    // unprivileged user's.
    let other = sleeper_as(DAEMON_USER);
    let other_pid = other.child.as_ref().unwrap().id().to_string();
    for pid in ["1", other_pid.as_str()] {
        let out = as_nobody(&m, &["branch-bind", "--branch", "users-b", "--pid", pid]);
        let line = assert_one_line_failure(&out, &format!("binding pid {pid} as nobody"));
        assert!(line.contains("permission denied"), "{line}");
    }
    assert!(
        m.status()["bindings"].as_array().unwrap().is_empty(),
        "nothing was bound"
    );

    // Nor can it unbind someone else's binding.
    let out = m.cli(&["branch-bind", "--branch", "users-b", "--pid", &other_pid]);
    assert_success(&out, "root binding the daemon user's process");
    let out = as_nobody(&m, &["branch-unbind", "--pid", &other_pid]);
    let line = assert_one_line_failure(&out, "unbinding another user's process as nobody");
    assert!(line.contains("permission denied"), "{line}");
    let bindings = m.status()["bindings"].clone();
    assert!(
        bindings
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["pid"].as_u64() == other_pid.parse().ok()),
        "the binding survived: {bindings}"
    );
    drop(other);

    // Binding its own shell is allowed, and that shell then sees the branch.
    let cli = cli_bin();
    let script = format!(
        "{cli} --mount {m} branch-bind --branch users-b >/dev/null && {cli} --mount {m} status --json",
        cli = shq(&cli),
        m = shq(m.path())
    );
    let out = as_nobody_sh(&script);
    assert_success(&out, "binding its own shell as nobody");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = reply_value(status);
    let users_b = find_named(&status["branches"], "users-b").expect("branch listed")["id"].clone();
    assert_eq!(status["caller_branch"], users_b, "{status}");

    // Root may bind anyone's process.
    let sleeper = sleeper_as(NOBODY);
    let pid = sleeper.child.as_ref().unwrap().id().to_string();
    let out = m.cli(&["branch-bind", "--branch", "users-b", "--pid", &pid]);
    drop(sleeper);
    assert_success(&out, "root binding nobody's process");
    assert!(stderr(&out).is_empty());
}

#[test]
fn a_message_claiming_another_uid_changes_nothing() {
    if !can_switch_users() {
        return;
    }
    let Some(m) = Mount::start() else { return };
    open_the_mount(&m);
    let base = m.snapshot("claims-base");
    m.branch(&base, "claims-b");
    let socket = socket_of(m.path());
    // Every place a credential could be smuggled: the envelope, the command,
    // with the names SO_PEERCRED and the handler use.
    let creds = serde_json::json!({"uid": 0, "gid": 0, "pid": 1, "euid": 0,
                                   "peer": {"uid": 0, "gid": 0, "pid": 1}});
    let claim = |mut frame: Value| {
        for (k, v) in creds.as_object().unwrap() {
            frame[k] = v.clone();
            frame["command"][k] = v.clone();
        }
        frame
    };
    let frames = vec![
        claim(serde_json::json!({"version": 1,
            "command": {"op": "snapshot-create", "name": "claimed", "branch": null}})),
        claim(serde_json::json!({"version": 1,
            "command": {"op": "branch-create", "from": "claims-base", "name": "claimed"}})),
        claim(serde_json::json!({"version": 1,
            "command": {"op": "branch-delete", "branch": "claims-b", "force": true}})),
        claim(serde_json::json!({"version": 1,
            "command": {"op": "snapshot-delete", "snapshot": "claims-base"}})),
        // The `pid` field of branch-bind names the target, so it is not
        // overwritten by `claim`'s pid; the target is root's init.
        {
            let mut f = claim(serde_json::json!({"version": 1, "command": {}}));
            f["command"] = serde_json::json!({"op": "branch-bind", "branch": "claims-b",
                "pid": 1, "uid": 0, "gid": 0, "peer": {"uid": 0}});
            f
        },
        claim(serde_json::json!({"version": 1, "command": {"op": "status"}})),
    ];
    let replies = raw_requests_as(NOBODY, &socket, &frames);
    assert_eq!(replies.len(), frames.len());
    for (frame, reply) in frames.iter().zip(&replies).take(5) {
        assert_eq!(
            err_kind(reply),
            "permission-denied",
            "request {frame} got {reply}"
        );
    }
    // Status answers and reports the branch of the real caller (the python
    // process, unbound: the default branch), not of the claimed pid 1.
    let status = &replies[5]["ok"]["value"];
    assert_eq!(replies[5]["ok"]["reply"], "status", "{}", replies[5]);
    assert_eq!(
        status["caller_branch"], status["default_branch"],
        "{status}"
    );

    // Nothing changed.
    let names = m.cli_ok(&["branch-list"]);
    assert!(
        names.contains("claims-b") && !names.contains("claimed"),
        "{names}"
    );
    let snaps = m.cli_ok(&["snapshot-list"]);
    assert!(
        snaps.contains("claims-base") && !snaps.contains("claimed"),
        "{snaps}"
    );
    assert!(m.status()["bindings"].as_array().unwrap().is_empty());

    // The same frames from the owner (root) do what they say: the test would
    // notice if the frames themselves were malformed.
    let replies = raw_requests_as("0", &socket, &frames[..1]);
    assert_eq!(replies[0]["ok"]["reply"], "snapshot", "{}", replies[0]);
}

#[test]
fn dot_agentfs_shows_a_non_owner_only_what_modes_allow() {
    if !can_switch_users() {
        return;
    }
    let Some(m) = Mount::start() else { return };
    open_the_mount(&m);
    // Root's tree: a public file, a private directory, a private file.
    fs::write(m.join("public.txt"), "public\n").unwrap();
    fs::set_permissions(m.join("public.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(m.join("secret")).unwrap();
    fs::write(m.join("secret/key"), "k\n").unwrap();
    fs::set_permissions(m.join("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(m.join("private.txt"), "mine\n").unwrap();
    fs::set_permissions(m.join("private.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let base = m.snapshot("views-base");
    m.branch(&base, "views-b");

    let agentfs = m.join(".agentfs");
    let view = m.join(".agentfs/branches/views-b");
    // (what, shell test, must succeed)
    let checks: Vec<(&str, String, bool)> = vec![
        (
            "read the control pointer",
            format!("cat {} >/dev/null", shq(&agentfs.join("control"))),
            true,
        ),
        (
            "list the branches",
            format!("ls {} | grep -qx views-b", shq(&agentfs.join("branches"))),
            true,
        ),
        (
            "read a 0644 file in a branch view",
            format!("grep -qx public {}", shq(&view.join("public.txt"))),
            true,
        ),
        (
            "list a branch root",
            format!("ls {} | grep -qx public.txt", shq(&view)),
            true,
        ),
        (
            "list a 0700 directory of root's",
            format!("ls {}", shq(&view.join("secret"))),
            false,
        ),
        (
            "read a file inside a 0700 directory",
            format!("cat {}", shq(&view.join("secret/key"))),
            false,
        ),
        (
            "read a 0600 file of root's",
            format!("cat {}", shq(&view.join("private.txt"))),
            false,
        ),
        (
            "write a 0644 file of root's",
            format!("echo x >> {}", shq(&view.join("public.txt"))),
            false,
        ),
        (
            "create a file in root's 0755 branch root",
            format!("touch {}", shq(&view.join("planted"))),
            false,
        ),
        (
            "rename root's file",
            format!(
                "mv {} {}",
                shq(&view.join("public.txt")),
                shq(&view.join("moved"))
            ),
            false,
        ),
        (
            "chmod root's file",
            format!("chmod 666 {}", shq(&view.join("public.txt"))),
            false,
        ),
        (
            "set an xattr on root's file",
            format!(
                "{py} -c 'import os,sys; os.setxattr(sys.argv[1], \"user.x\", b\"1\")' {p}",
                py = python(),
                p = shq(&view.join("public.txt"))
            ),
            false,
        ),
        (
            "read the 0600 file at the mount path",
            format!("cat {}", shq(&m.join("private.txt"))),
            false,
        ),
    ];
    for (what, script, should_work) in &checks {
        let out = as_nobody_sh(&format!("{script} 2>/dev/null"));
        assert_eq!(
            out.status.success(),
            *should_work,
            "nobody: {what} ({script}): {} {}",
            out.status,
            stderr(&out)
        );
    }
    // The refusals left the tree alone, and root sees everything.
    assert_eq!(
        fs::read_to_string(view.join("public.txt")).unwrap(),
        "public\n"
    );
    assert!(!view.join("planted").exists() && !view.join("moved").exists());
    assert_eq!(fs::read_to_string(view.join("secret/key")).unwrap(), "k\n");
}

#[test]
fn a_mount_without_allow_other_answers_only_its_owner() {
    if !can_switch_users() || !fuse_available() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("agentfs-private-")
        .tempdir()
        .unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let (mp, store) = (root.join("mnt"), root.join("store"));
    fs::create_dir(&mp).unwrap();
    fs::create_dir(&store).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o711)).unwrap();
    let d = Daemon::start(&mp, &store, &[]);
    let socket = socket_of(&mp);
    let status = serde_json::json!({"version": 1, "command": {"op": "status"}});
    let bind = serde_json::json!({"version": 1,
        "command": {"op": "branch-bind", "branch": "main", "pid": 1}});
    // The socket is reachable (it is where every user can reach it), but the
    // mount serves no one else, so neither does its control plane.
    for reply in raw_requests_as(NOBODY, &socket, &[status.clone(), bind]) {
        assert_eq!(err_kind(&reply), "permission-denied", "{reply}");
        assert!(
            reply["err"]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-other"),
            "{reply}"
        );
    }
    // The owner is served.
    let replies = raw_requests_as("0", &socket, &[status]);
    assert_eq!(replies[0]["ok"]["reply"], "status", "{}", replies[0]);
    drop(d);
}

/// A foreground `agentfs-fuse-host` this test started itself (for flags the
/// shared [`Mount`] does not use, or a second daemon on a mountpoint):
/// unmounted and stopped by pid on drop.
struct Daemon {
    child: Option<Child>,
    mountpoint: PathBuf,
}

impl Daemon {
    fn start(mountpoint: &Path, store: &Path, flags: &[&str]) -> Daemon {
        let mut child = Command::new(host_bin())
            .args(flags)
            .arg("--backstore")
            .arg(store)
            .arg("--foreground")
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agentfs-fuse-host");
        let stdout = child.stdout.take().unwrap();
        let d = Daemon {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("mounted at") => break,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "agentfs-fuse-host exited before mounting {}",
                        mountpoint.display()
                    )
                }
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not mount in time"
            );
        }
        assert!(wait_until(Duration::from_secs(10), || is_fuse_mounted(
            mountpoint
        )));
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        force_unmount(&self.mountpoint);
        if let Some(mut child) = self.child.take() {
            if wait_timeout(&mut child, EXIT_TIMEOUT).is_none() {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}
