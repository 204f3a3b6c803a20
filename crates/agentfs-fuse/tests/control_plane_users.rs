//! The control plane's credential checks, exercised by a second, unprivileged
//! user (`nobody`) against a real mount owned by root: the caller's uid comes
//! from the socket (SO_PEERCRED), never from the message.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Run `agentfs-control-cli --mount M ARGS` as uid/gid 65534 (nobody) with no
/// supplementary groups.
fn as_nobody(m: &Mount, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(cli_bin())
        .arg("--mount")
        .arg(m.path())
        .args(args);
    run_with_timeout(&mut cmd, CMD_TIMEOUT)
}

fn as_nobody_sh(script: &str) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "sh",
        "-c",
        script,
    ]);
    run_with_timeout(&mut cmd, CMD_TIMEOUT)
}

/// Let other users walk to the mount and to the control socket (the test's temp
/// dirs and the backstore are private to root by default).
fn open_the_way(m: &Mount) {
    for dir in [m.path().parent().unwrap(), m.backstore()] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).unwrap();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unprivileged_user_can_look_but_not_change_a_mount_it_does_not_own() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        // CI (AGENTFS_REQUIRE_FUSE=1) runs as root with util-linux: never skip there.
        assert!(
            std::env::var("AGENTFS_REQUIRE_FUSE").as_deref() != Ok("1"),
            "this test needs root and /usr/bin/setpriv"
        );
        println!("SKIP: needs root and setpriv to act as a second user");
        return;
    }
    let Some(m) = Mount::start() else { return };
    open_the_way(&m);
    let base = m.snapshot("users-base");
    m.branch(&base, "users-b");

    // Anyone may read the state.
    let out = as_nobody(&m, &["status"]);
    assert_success(&out, "status as nobody");

    // Snapshots and branches are the owner's (root's) to change.
    for args in [
        vec!["snapshot-create", "--name", "by-nobody"],
        vec![
            "branch-create",
            "--from",
            "users-base",
            "--name",
            "by-nobody",
        ],
        vec!["branch-delete", "users-b", "--force"],
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

    // Binding another user's process (pid 1, root's) is refused.
    let out = as_nobody(&m, &["branch-bind", "--branch", "users-b", "--pid", "1"]);
    let line = assert_one_line_failure(&out, "binding root's process as nobody");
    assert!(line.contains("permission denied"), "{line}");
    assert!(
        m.status()["bindings"].as_array().unwrap().is_empty(),
        "nothing was bound"
    );

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
    let mut sleeper = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let out = m.cli(&["branch-bind", "--branch", "users-b", "--pid", &pid]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_success(&out, "root binding nobody's process");
    assert!(stderr(&out).is_empty());
}
