//! The control plane end to end on a real mount: the README scenario
//! (snapshot, change, branch, bind a shell, write in the branch), deletion
//! rules and space reclamation, names and ids, the CLI's error contract, a
//! daemon that survives malformed control messages, point-in-time snapshots
//! under an open writer, and the mount binary's own errors.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    assert_one_line_failure, assert_success, cli_bin, find_named, force_unmount, host_bin, id_of,
    is_fuse_mounted, run_with_timeout, shq, signal, u64_field, wait_timeout, wait_until, Guarded,
    Mount, CMD_TIMEOUT, EXIT_TIMEOUT,
};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

fn cat_in(m: &Mount, branch: &str, rel: &str) -> String {
    m.in_branch_ok(branch, &format!("cat {}", shq(&m.join(rel))))
}

#[test]
fn readme_scenario() {
    let m = mount_or_skip!();
    fs::write(m.join("f"), "v1\n").unwrap();
    fs::create_dir(m.join("src")).unwrap();
    fs::write(m.join("src/lib.rs"), "fn one() {}\n").unwrap();

    let base = m.cli_json(&["snapshot-create", "--name", "base"]);
    assert_eq!(base["name"], "base", "{base}");
    let base_id = id_of(&base);

    // Change main after the snapshot.
    fs::write(m.join("f"), "v2\n").unwrap();
    fs::write(m.join("src/lib.rs"), "fn two() {}\n").unwrap();
    fs::write(m.join("src/new.rs"), "// new\n").unwrap();

    let feat = m.cli_json(&["branch-create", "--from", "base", "--name", "feat"]);
    assert_eq!(feat["name"], "feat", "{feat}");
    assert_ne!(id_of(&feat), base_id);

    // A shell that binds itself sees the snapshot; this process sees main.
    let script = format!(
        "{cli} --mount {mnt} branch-bind --branch feat >/dev/null && cat {mnt}/f {mnt}/src/lib.rs && \
         if test -e {mnt}/src/new.rs; then echo new-visible; else echo new-absent; fi",
        cli = shq(&cli_bin()),
        mnt = shq(m.path()),
    );
    let out = run_with_timeout(Command::new("sh").arg("-c").arg(&script), CMD_TIMEOUT);
    assert_success(&out, "bound shell");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "v1\nfn one() {}\nnew-absent\n",
        "a shell bound to feat sees the snapshot's content"
    );
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "v2\n");
    assert_eq!(
        fs::read_to_string(m.join("src/lib.rs")).unwrap(),
        "fn two() {}\n"
    );

    // Write in the branch: main and the snapshot keep their content.
    m.in_branch_ok(
        "feat",
        &format!(
            "echo feat-edit > {mnt}/f && echo feat-file > {mnt}/src/feat.rs && rm {mnt}/src/lib.rs",
            mnt = shq(m.path())
        ),
    );
    assert_eq!(cat_in(&m, "feat", "f"), "feat-edit\n");
    assert_eq!(cat_in(&m, "feat", "src/feat.rs"), "feat-file\n");
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "v2\n");
    assert!(
        !m.join("src/feat.rs").exists(),
        "main sees the branch's new file"
    );
    assert_eq!(
        fs::read_to_string(m.join("src/lib.rs")).unwrap(),
        "fn two() {}\n"
    );
    // Another branch from the same snapshot shows the snapshot unchanged.
    m.branch(&base_id, "check");
    assert_eq!(cat_in(&m, "check", "f"), "v1\n");
    assert_eq!(cat_in(&m, "check", "src/lib.rs"), "fn one() {}\n");
    let listing = m.in_branch_ok("check", &format!("ls {}/src", shq(m.path())));
    assert_eq!(listing, "lib.rs\n", "snapshot's src/ listing");
}

/// Spawn a process bound to `branch` that stays alive (blocked in `sleep`)
/// until dropped; returns once it runs.
fn hold_bound_process(m: &Mount, branch: &str) -> Guarded {
    let pidfile = m.scratch().join(format!("holder-{branch}.pid"));
    let script = format!(
        "echo $$ > {p}.tmp && mv {p}.tmp {p} && exec sleep 600",
        p = shq(&pidfile)
    );
    let child = Command::new(cli_bin())
        .arg("--mount")
        .arg(m.path())
        .args(["branch-exec", "--branch", branch, "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bound holder");
    let guard = Guarded::new(child, Some(pidfile.clone()));
    assert!(
        wait_until(CMD_TIMEOUT, || pidfile.exists()),
        "bound holder process never started"
    );
    guard
}

fn branch_names(m: &Mount) -> Vec<String> {
    let list = m.cli_json(&["branch-list"]);
    list.as_array()
        .unwrap_or_else(|| panic!("branch-list --json is not a list: {list}"))
        .iter()
        .map(|b| b["name"].as_str().expect("branch name").to_string())
        .collect()
}

#[test]
fn branch_delete_refused_while_bound_and_forced() {
    let m = mount_or_skip!();
    fs::write(m.join("f"), "x").unwrap();
    let snap = m.snapshot("base");
    let feat = m.branch(&snap, "feat");
    let holder = hold_bound_process(&m, "feat");

    let pid: u64 = fs::read_to_string(holder.pidfile.as_ref().unwrap())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = m.status();
    let bound = status["bindings"]
        .as_array()
        .expect("status.bindings")
        .iter()
        .any(|b| b["pid"].as_u64() == Some(pid) || b["branch"] == feat.as_str());
    let branch_view = find_named(&status["branches"], "feat").expect("feat in status.branches");
    assert!(
        bound || u64_field(branch_view, "bound_processes") > 0,
        "status shows no binding for the holder (pid {pid}): {status}"
    );

    let out = m.cli(&["branch-delete", "feat"]);
    let line = assert_one_line_failure(&out, "branch-delete of a branch in use");
    assert!(
        line.to_lowercase().contains("busy") || line.to_lowercase().contains("bound"),
        "error should say the branch is busy/bound: {line}"
    );
    assert!(
        branch_names(&m).contains(&"feat".to_string()),
        "refused delete removed it"
    );

    m.cli_ok(&["branch-delete", "feat", "--force"]);
    let names = branch_names(&m);
    assert!(
        !names.contains(&"feat".to_string()),
        "forced delete kept it: {names:?}"
    );
    assert!(names.contains(&"main".to_string()), "{names:?}");
    drop(holder);
    // The daemon still serves and main is intact.
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "x");
    m.status();
}

#[test]
fn deleting_a_branch_reclaims_its_space() {
    let m = mount_or_skip!();
    fs::write(m.join("small"), "s").unwrap();
    let snap = m.snapshot("base");
    m.branch(&snap, "big");
    let before = u64_field(&m.status(), "content_bytes");
    m.in_branch_ok(
        "big",
        &format!(
            "dd if=/dev/urandom of={} bs=1M count=8 conv=fsync status=none",
            shq(&m.join("big.bin"))
        ),
    );
    let status = m.status();
    let written = u64_field(&status, "content_bytes");
    assert!(u64_field(&status, "content_objects") >= 1, "{status}");
    let data_path = status["data_path"].as_str().unwrap_or_default();
    assert!(
        ["transport", "passthrough"].contains(&data_path),
        "status.data_path: {status}"
    );
    assert!(
        written >= before + 7 * MIB,
        "8 MiB written in a branch should show in content_bytes: before {before}, after {written}"
    );
    m.cli_ok(&["branch-delete", "big"]);
    let mut last = written;
    let reclaimed = wait_until(Duration::from_secs(60), || {
        last = u64_field(&m.status(), "content_bytes");
        written.saturating_sub(last) >= 7 * MIB
    });
    assert!(
        reclaimed,
        "content_bytes did not drop by >= 7 MiB after branch-delete: {written} -> {last}"
    );
}

#[test]
fn lists_show_names_and_ids_and_ids_address_objects() {
    let m = mount_or_skip!();
    fs::write(m.join("f"), "one").unwrap();
    let s1 = m.snapshot("first");
    fs::write(m.join("f"), "two").unwrap();
    let s2 = m.snapshot("second");
    assert_ne!(s1, s2);

    let snaps = m.cli_json(&["snapshot-list"]);
    let first = find_named(&snaps, "first").unwrap_or_else(|| panic!("no 'first' in {snaps}"));
    let second = find_named(&snaps, "second").unwrap_or_else(|| panic!("no 'second' in {snaps}"));
    assert_eq!(id_of(first), s1);
    assert_eq!(id_of(second), s2);
    let text = m.cli_ok(&["snapshot-list"]);
    for needle in ["first", "second", s1.as_str(), s2.as_str()] {
        assert!(
            text.contains(needle),
            "snapshot-list lacks {needle}: {text}"
        );
    }

    // Branch from a snapshot addressed by id; exec in a branch addressed by id.
    let b = m.cli_json(&["branch-create", "--from", &s1, "--name", "by-id"]);
    let b_id = id_of(&b);
    let out = m.cli_ok(&[
        "branch-exec",
        "--branch",
        &b_id,
        "--",
        "cat",
        m.join("f").to_str().unwrap(),
    ]);
    assert_eq!(out, "one");
    let branches = m.cli_json(&["branch-list"]);
    let main = find_named(&branches, "main").unwrap_or_else(|| panic!("no main in {branches}"));
    assert_eq!(main["is_default"], true, "{main}");
    assert_eq!(id_of(find_named(&branches, "by-id").unwrap()), b_id);
    let text = m.cli_ok(&["branch-list"]);
    for needle in ["main", "by-id", b_id.as_str()] {
        assert!(text.contains(needle), "branch-list lacks {needle}: {text}");
    }

    // An unnamed snapshot still gets an id and shows in the list.
    let unnamed = m.cli_json(&["snapshot-create"]);
    let unnamed_id = id_of(&unnamed);
    let snaps = m.cli_json(&["snapshot-list"]);
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == unnamed_id.as_str()),
        "{snaps}"
    );

    // Delete by id.
    m.cli_ok(&["branch-delete", &b_id]);
    assert!(find_named(&m.cli_json(&["branch-list"]), "by-id").is_none());
    m.cli_ok(&["snapshot-delete", &s2]);
    let snaps = m.cli_json(&["snapshot-list"]);
    assert!(find_named(&snaps, "second").is_none(), "{snaps}");
    assert!(find_named(&snaps, "first").is_some(), "{snaps}");
    // Main is unaffected by snapshot deletion.
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "two");
}

#[test]
fn cli_errors_are_one_line_and_exit_1() {
    let m = mount_or_skip!();
    let snap = m.snapshot("base");
    m.branch(&snap, "feat");

    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "bind to an unknown branch",
            vec!["branch-bind", "--branch", "nope"],
        ),
        ("delete an unknown branch", vec!["branch-delete", "nope"]),
        (
            "exec in an unknown branch",
            vec!["branch-exec", "--branch", "nope", "--", "true"],
        ),
        (
            "branch from an unknown snapshot",
            vec!["branch-create", "--from", "nope"],
        ),
        (
            "delete an unknown snapshot",
            vec!["snapshot-delete", "nope"],
        ),
        (
            "snapshot name taken",
            vec!["snapshot-create", "--name", "base"],
        ),
        (
            "branch name taken",
            vec!["branch-create", "--from", "base", "--name", "feat"],
        ),
        (
            "branch name 'main' taken",
            vec!["branch-create", "--from", "base", "--name", "main"],
        ),
    ];
    for (what, args) in &cases {
        let out = m.cli(args);
        let line = assert_one_line_failure(&out, what);
        assert!(out.stdout.is_empty(), "{what}: stdout not empty");
        if what.contains("unknown") {
            assert!(
                line.contains("nope"),
                "{what}: error should name 'nope': {line}"
            );
        }
    }
    // Nothing was created by the failed commands.
    let snaps = m.cli_json(&["snapshot-list"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    let names = branch_names(&m);
    assert_eq!(names.len(), 2, "{names:?}");

    // --mount on a directory that is not an AgentFS mount.
    let plain = tempfile::tempdir().unwrap();
    let out = run_with_timeout(
        Command::new(cli_bin())
            .arg("--mount")
            .arg(plain.path())
            .arg("status"),
        CMD_TIMEOUT,
    );
    assert_one_line_failure(&out, "--mount on a plain directory");
    let out = run_with_timeout(
        Command::new(cli_bin())
            .arg("--mount")
            .arg(plain.path().join("missing"))
            .arg("snapshot-list"),
        CMD_TIMEOUT,
    );
    assert_one_line_failure(&out, "--mount on a missing directory");
}

/// The control socket's path, read from `M/.agentfs/control`.
fn control_socket(m: &Mount) -> PathBuf {
    let text = fs::read_to_string(m.join(".agentfs/control")).expect("read .agentfs/control");
    let is_socket = |p: &Path| {
        fs::metadata(p)
            .map(|md| md.file_type().is_socket())
            .unwrap_or(false)
    };
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        for key in ["socket", "socket_path", "control_socket", "path"] {
            if let Some(p) = v[key].as_str() {
                if is_socket(Path::new(p)) {
                    return PathBuf::from(p);
                }
            }
        }
    }
    text.split(|c: char| c.is_whitespace() || c == '=' || c == '"' || c == ',')
        .map(|t| t.trim_start_matches("socket:"))
        .filter(|t| t.starts_with('/'))
        .map(PathBuf::from)
        .find(|p| is_socket(p))
        .unwrap_or_else(|| panic!("no socket path found in .agentfs/control: {text:?}"))
}

fn connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Read one framed reply (4-byte big-endian length, then JSON).
fn read_reply(s: &mut UnixStream) -> Value {
    let mut header = [0u8; 4];
    s.read_exact(&mut header)
        .expect("daemon answered with a frame header (not a timeout or a silent close)");
    let len = u32::from_be_bytes(header) as usize;
    assert!(len <= 1 << 20, "reply length {len} over the protocol limit");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("reply body");
    serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "reply is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    })
}

fn send_frame(s: &mut UnixStream, body: &[u8]) {
    let mut buf = (body.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(body);
    s.write_all(&buf).expect("send frame");
}

fn assert_err_kind(reply: &Value, kind: &str, what: &str) {
    assert_eq!(reply["err"]["kind"], kind, "{what}: {reply}");
    assert!(
        reply["err"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: error without a message: {reply}"
    );
}

#[test]
fn malformed_control_messages_get_errors_and_daemon_keeps_serving() {
    let m = mount_or_skip!();
    let sock = control_socket(&m);

    // A well-formed request over the raw socket works (checks the framing).
    let mut s = connect(&sock);
    send_frame(
        &mut s,
        json!({"version": 1, "command": {"op": "status"}})
            .to_string()
            .as_bytes(),
    );
    let ok = read_reply(&mut s);
    assert_eq!(ok["ok"]["reply"], "status", "{ok}");
    drop(s);

    // Garbage in a valid frame.
    let mut s = connect(&sock);
    send_frame(&mut s, b"\xff\xfe this is not json {");
    assert_err_kind(&read_reply(&mut s), "bad-message", "garbage body");
    drop(s);

    // Valid JSON that is not a request.
    let mut s = connect(&sock);
    send_frame(
        &mut s,
        br#"{"version": 1, "command": {"op": "format-the-disk"}}"#,
    );
    assert_err_kind(&read_reply(&mut s), "bad-message", "unknown op");
    drop(s);

    // A version the daemon does not speak.
    let mut s = connect(&sock);
    send_frame(&mut s, br#"{"version": 99, "command": {"op": "status"}}"#);
    let reply = read_reply(&mut s);
    assert_eq!(reply["err"]["kind"], "unsupported-version", "{reply}");
    drop(s);

    // An oversized length prefix: answered with an error, not an allocation.
    let mut s = connect(&sock);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    // The daemon may already have answered and closed: a failed write is fine.
    let _ = s.write_all(b"{}");
    assert_err_kind(
        &read_reply(&mut s),
        "bad-message",
        "oversized length prefix",
    );
    drop(s);

    // Raw text with no framing at all ("GET " as a length is ~1.2 GB).
    let mut s = connect(&sock);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_err_kind(&read_reply(&mut s), "bad-message", "unframed text");
    drop(s);

    // A frame cut short, then a close; and a connection that says nothing.
    let mut s = connect(&sock);
    s.write_all(&[0, 0, 0, 50, b'{']).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    drop(s);
    drop(connect(&sock));

    // The daemon still serves, over the raw socket and through the CLI.
    let mut s = connect(&sock);
    send_frame(
        &mut s,
        json!({"version": 1, "command": {"op": "branch-list"}})
            .to_string()
            .as_bytes(),
    );
    let reply = read_reply(&mut s);
    assert_eq!(reply["ok"]["reply"], "branches", "{reply}");
    drop(s);
    let status = m.status();
    assert!(
        status["branches"].as_array().is_some_and(|b| !b.is_empty()),
        "{status}"
    );
    fs::write(m.join("after"), "still a filesystem").unwrap();
    assert_eq!(
        fs::read_to_string(m.join("after")).unwrap(),
        "still a filesystem"
    );
}

#[test]
fn snapshot_is_point_in_time_for_an_open_writer() {
    let m = mount_or_skip!();
    let p = m.join("pit");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"A").unwrap();
    let snap = m.snapshot("pit");
    f.write_all(b"B").unwrap();
    // A write at an offset inside the snapshotted range, too.
    std::os::unix::fs::FileExt::write_all_at(&f, b"a", 0).unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(&p).unwrap(), "aB");
    m.branch(&snap, "from-pit");
    assert_eq!(
        cat_in(&m, "from-pit", "pit"),
        "A",
        "snapshot changed after it was taken"
    );

    // And the same with a writer in a branch, snapshotting that branch.
    let later = m.snapshot("later");
    m.branch(&later, "w");
    let holder_dir = m.scratch();
    let script = format!(
        "exec 3>{p}; printf X >&3; touch {d}/wrote; while ! test -e {d}/go; do sleep 0.05; done; printf Y >&3",
        p = shq(&p),
        d = shq(&holder_dir)
    );
    let child = Command::new(cli_bin())
        .arg("--mount")
        .arg(m.path())
        .args(["branch-exec", "--branch", "w", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let writer = Guarded::new(child, None);
    assert!(wait_until(CMD_TIMEOUT, || holder_dir
        .join("wrote")
        .exists()));
    let ws = m.cli_json(&["snapshot-create", "--name", "w-snap", "--branch", "w"]);
    let ws_id = id_of(&ws);
    fs::write(holder_dir.join("go"), "").unwrap();
    let out = writer.wait_output(CMD_TIMEOUT);
    assert_success(&out, "writer in branch w");
    m.branch(&ws_id, "w-check");
    assert_eq!(cat_in(&m, "w-check", "pit"), "X");
    assert_eq!(cat_in(&m, "w", "pit"), "XY");
    assert_eq!(
        fs::read_to_string(&p).unwrap(),
        "aB",
        "main touched by branch w"
    );
}

/// Run `agentfs-fuse-host --foreground ARGS` expecting it to fail at once.
fn host_must_fail(args: &[&std::ffi::OsStr], mountpoint: &Path, what: &str) -> String {
    let log_dir = tempfile::tempdir().unwrap();
    let errlog = log_dir.path().join("stderr");
    let mut child = Command::new(host_bin())
        .arg("--foreground")
        .args(args)
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&errlog).unwrap()))
        .spawn()
        .expect("spawn agentfs-fuse-host");
    let status = match wait_timeout(&mut child, CMD_TIMEOUT) {
        Some(s) => s,
        None => {
            signal(child.id(), libc::SIGTERM);
            if wait_timeout(&mut child, EXIT_TIMEOUT).is_none() {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
            panic!("{what}: agentfs-fuse-host kept running instead of failing");
        }
    };
    let stderr = fs::read_to_string(&errlog).unwrap();
    let out = Output {
        status,
        stdout: Vec::new(),
        stderr: stderr.clone().into_bytes(),
    };
    let line = assert_one_line_failure(&out, what);
    assert!(
        line.starts_with("agentfs-fuse-host: error:"),
        "{what}: stderr line should start with 'agentfs-fuse-host: error:': {line}"
    );
    line
}

#[test]
fn mount_binary_errors() {
    let m = mount_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let fresh_store = tmp.path().join("store2");
    fs::create_dir(&fresh_store).unwrap();

    // Mountpoint that does not exist.
    let missing = tmp.path().join("no-such-dir");
    host_must_fail(
        &["--backstore".as_ref(), fresh_store.as_os_str()],
        &missing,
        "missing mountpoint",
    );
    assert!(!missing.exists(), "the host created the missing mountpoint");

    // Mountpoint that already holds this AgentFS mount.
    host_must_fail(
        &["--backstore".as_ref(), fresh_store.as_os_str()],
        m.path(),
        "mountpoint already mounted",
    );
    // Backstore that is a regular file.
    let file_store = tmp.path().join("store-file");
    fs::write(&file_store, "not a dir").unwrap();
    let mp2 = tmp.path().join("mnt2");
    fs::create_dir(&mp2).unwrap();
    host_must_fail(
        &["--backstore".as_ref(), file_store.as_os_str()],
        &mp2,
        "backstore is a regular file",
    );
    assert_eq!(fs::read_to_string(&file_store).unwrap(), "not a dir");
    // Backstore in use by the running mount.
    host_must_fail(
        &["--backstore".as_ref(), m.backstore().as_os_str()],
        &mp2,
        "backstore in use",
    );
    let leaked = is_fuse_mounted(&mp2);
    if leaked {
        force_unmount(&mp2);
    }
    assert!(!leaked, "a failed host left a mount at {}", mp2.display());

    // The first mount is untouched by all of this.
    fs::write(m.join("ok"), "fine").unwrap();
    assert_eq!(fs::read_to_string(m.join("ok")).unwrap(), "fine");
    m.status();
}
