//! The `agentfs-control-cli` binary against an in-process `ControlServer` with
//! a fake handler, through a temp dir that holds `.agentfs/control` like a
//! mount would: output formats, errors and exit codes, mount discovery, and
//! which pid the bind commands send.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Output};
use std::sync::{Arc, Mutex};

use agentfs_control::{
    control_file_path, BindingView, BranchView, Command, ControlError, ControlHandler,
    ControlServer, DiffEntryView, DiffView, Endpoint, PeerCred, Reply, SnapshotView, StatusView,
    PROTOCOL_VERSION,
};

const BIN: &str = env!("CARGO_BIN_EXE_agentfs-control-cli");

#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<(PeerCred, Command)>>,
}

fn branch(id: &str, name: &str, default: bool) -> BranchView {
    BranchView {
        id: id.into(),
        name: name.into(),
        from: if default { None } else { Some("s1".into()) },
        created_unix: 1_700_000_000.0,
        is_default: default,
        open_handles: 2,
        bound_processes: 1,
    }
}

fn snapshot(id: &str, name: &str, branch: &str) -> SnapshotView {
    SnapshotView {
        id: id.into(),
        name: name.into(),
        branch: branch.into(),
        created_unix: 1_700_000_000.0,
        children: vec!["b2".into()],
    }
}

fn branches() -> Vec<BranchView> {
    vec![
        branch("b1", "main", true),
        branch("b2", "feature-with-long-name", false),
    ]
}

fn status() -> StatusView {
    StatusView {
        version: "0.1.0".into(),
        protocol: PROTOCOL_VERSION,
        mountpoint: "/mnt/agentfs".into(),
        backstore: "/var/agentfs".into(),
        data_path: "passthrough".into(),
        request_channel: "dev-fuse".into(),
        default_branch: "b1".into(),
        caller_branch: "b2".into(),
        branches: branches(),
        snapshots: 1,
        bindings: vec![BindingView {
            pid: 4242,
            branch: "b2".into(),
            branch_name: "feature-with-long-name".into(),
        }],
        open_handles: 4,
        content_objects: 10,
        content_bytes: 2048,
        cow_clones: 3,
        fs_bytes_free: 5 << 30,
    }
}

impl ControlHandler for Fake {
    fn handle(&self, peer: &PeerCred, command: Command) -> Result<Reply, ControlError> {
        self.seen.lock().unwrap().push((*peer, command.clone()));
        match command {
            Command::SnapshotCreate { name, branch } => Ok(Reply::Snapshot(snapshot(
                "s2",
                &name.unwrap_or_default(),
                &branch.unwrap_or_else(|| "b1".into()),
            ))),
            Command::SnapshotList => Ok(Reply::Snapshots(vec![
                snapshot("s1", "base", "b1"),
                snapshot("s10", "before-refactor", "b2"),
            ])),
            Command::SnapshotDelete { snapshot } if snapshot == "nope" => {
                Err(ControlError::not_found(format!("no snapshot {snapshot:?}")))
            }
            Command::SnapshotDelete { snapshot } => Ok(Reply::Deleted { id: snapshot }),
            Command::BranchCreate { from, name } => {
                let mut b = branch("b3", &name.unwrap_or_default(), false);
                b.from = Some(from);
                Ok(Reply::Branch(b))
            }
            Command::BranchList => Ok(Reply::Branches(branches())),
            Command::BranchDelete { branch, .. } => Ok(Reply::Deleted { id: branch }),
            Command::BranchBind { branch, .. } if branch == "missing" => {
                Err(ControlError::not_found("no branch \"missing\""))
            }
            Command::BranchBind { branch, pid } | Command::BranchBindPrivate { branch, pid } => {
                Ok(Reply::Bound { pid, branch })
            }
            Command::BranchUnbind { pid } => Ok(Reply::Unbound {
                pid,
                was_bound: true,
            }),
            Command::Status => Ok(Reply::Status(status())),
            Command::BranchCommit {
                branch, resolve, ..
            } => Ok(Reply::Commit(agentfs_control::CommitView {
                branch,
                parent: "b1".into(),
                base: "s1".into(),
                committed: resolve.is_some(),
                fast_path: false,
                branch_changes: 2,
                parent_changes: 1,
                conflicts: vec![agentfs_control::ConflictView {
                    path: "src/lib.rs".into(),
                    child: "modified".into(),
                    parent: "modified".into(),
                }],
                resolve,
                deleted: false,
                millis: 0.1,
            })),
            // Two pages of one change each, to exercise paging.
            Command::Diff { a, b, offset } => {
                let change = |change: &str, path: &str, what: &[&str]| DiffEntryView {
                    change: change.into(),
                    path: path.into(),
                    from: (change == "renamed").then(|| "old\\xff".into()),
                    entry_type: "file".into(),
                    old_type: None,
                    what: what.iter().map(|w| w.to_string()).collect(),
                };
                let (changes, next) = match offset {
                    0 => (vec![change("renamed", "new", &[])], Some(1)),
                    _ => (vec![change("modified", "z", &["data", "mode"])], None),
                };
                Ok(Reply::Diff(DiffView {
                    a,
                    b,
                    total: 2,
                    offset,
                    changes,
                    next,
                    changed_nodes: 3,
                    nodes_read: 5,
                    millis: 0.1,
                }))
            }
            // This fake mount has no lower directory.
            Command::LowerDetach { .. } => {
                Ok(Reply::Detached(agentfs_control::protocol::DetachView {
                    lower: false,
                    dirs_read: 0,
                    files_copied: 0,
                    bytes_copied: 0,
                    millis: 0.0,
                }))
            }
        }
    }
}

/// A fake mount: `<dir>/.agentfs/control` naming a live server's socket.
struct Mount {
    dir: tempfile::TempDir,
    fake: Arc<Fake>,
    _server: ControlServer,
}

impl Mount {
    fn new() -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let fake = Arc::new(Fake::default());
        let server = ControlServer::bind(&socket, fake.clone()).unwrap();
        fs::create_dir(dir.path().join(".agentfs")).unwrap();
        let endpoint = Endpoint {
            protocol: PROTOCOL_VERSION,
            socket,
            mountpoint: dir.path().to_path_buf(),
        };
        fs::write(control_file_path(dir.path()), endpoint.to_json_bytes()).unwrap();
        Mount {
            dir,
            fake,
            _server: server,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        cli_in(None, args, Some(self.path()))
    }

    fn seen(&self) -> Vec<(PeerCred, Command)> {
        self.fake.seen.lock().unwrap().clone()
    }

    fn commands(&self) -> Vec<Command> {
        self.seen().into_iter().map(|(_, c)| c).collect()
    }
}

/// Run the CLI with `--mount` when given, in `cwd` when given, with
/// `AGENTFS_MOUNT` unset.
fn cli_in(cwd: Option<&Path>, args: &[&str], mount: Option<&Path>) -> Output {
    let mut p = Proc::new(BIN);
    if let Some(m) = mount {
        p.arg("--mount").arg(m);
    }
    p.args(args).env_remove("AGENTFS_MOUNT");
    if let Some(dir) = cwd {
        p.current_dir(dir);
    }
    p.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    assert_eq!(stderr(o), "");
    stdout(o)
}

#[test]
fn snapshot_create_prints_one_line_with_names() {
    let m = Mount::new();
    let out = ok(&m.run(&["snapshot-create", "--name", "before-refactor"]));
    assert_eq!(
        out,
        "created snapshot s2 (name \"before-refactor\") of branch b1 \"main\"\n"
    );
    assert_eq!(
        m.commands()[0],
        Command::SnapshotCreate {
            name: Some("before-refactor".into()),
            branch: None
        }
    );
    ok(&m.run(&["snapshot-create", "--branch", "b2"]));
    assert!(m.commands().contains(&Command::SnapshotCreate {
        name: None,
        branch: Some("b2".into())
    }));
}

#[test]
fn lists_are_aligned_tables() {
    let m = Mount::new();
    let out = ok(&m.run(&["snapshot-list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID "), "{out}");
    // Every column starts at the same offset on every line.
    let col = lines[0].find("NAME").unwrap();
    assert_eq!(lines[1].find("base"), Some(col), "{out}");
    assert_eq!(lines[2].find("before-refactor"), Some(col), "{out}");
    let col = lines[0].find("BRANCH").unwrap();
    assert_eq!(lines[1].find("b1 \"main\""), Some(col), "{out}");
    assert!(lines[2].contains("2023-11-14 22:13:20"), "{out}");

    let out = ok(&m.run(&["branch-list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let col = lines[0].find("FROM").unwrap();
    assert_eq!(lines[2].find("s1"), Some(col), "{out}");
    assert!(lines[1].starts_with('*'), "default marked: {out}");
    assert!(!lines[2].starts_with('*'), "{out}");
}

#[test]
fn json_prints_the_reply_as_one_document() {
    let m = Mount::new();
    let out = ok(&m.run(&["--json", "branch-list"]));
    let reply: Reply = serde_json::from_str(&out).unwrap();
    assert_eq!(reply, Reply::Branches(branches()));

    // --json also works after the subcommand.
    let out = ok(&m.run(&["status", "--json"]));
    let reply: Reply = serde_json::from_str(&out).unwrap();
    assert_eq!(reply, Reply::Status(status()));

    let out = ok(&m.run(&["--json", "snapshot-delete", "s1"]));
    let reply: Reply = serde_json::from_str(&out).unwrap();
    assert_eq!(reply, Reply::Deleted { id: "s1".into() });
}

#[test]
fn single_results_are_one_line() {
    let m = Mount::new();
    assert_eq!(
        ok(&m.run(&["branch-create", "--from", "s2", "--name", "exp"])),
        "created branch b3 \"exp\" from snapshot s2\n"
    );
    assert_eq!(
        ok(&m.run(&["snapshot-delete", "s2"])),
        "deleted snapshot s2\n"
    );
    assert_eq!(
        ok(&m.run(&["branch-delete", "b3", "--force"])),
        "deleted branch b3\n"
    );
    assert_eq!(
        m.commands()[2],
        Command::BranchDelete {
            branch: "b3".into(),
            force: true
        }
    );
}

#[test]
fn status_is_a_readable_report() {
    let m = Mount::new();
    let out = ok(&m.run(&["status"]));
    assert!(out.contains("your branch:"), "{out}");
    assert!(out.contains("b2 \"feature-with-long-name\""), "{out}");
    assert!(out.contains("passthrough"), "{out}");
    assert!(out.contains("5.0 GiB"), "{out}");
    assert!(out.contains("4242"), "{out}");
}

#[test]
fn remote_error_is_one_line_and_exit_1() {
    let m = Mount::new();
    let o = m.run(&["snapshot-delete", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "agentfs-control-cli: no snapshot \"nope\"\n");
    assert_eq!(stdout(&o), "");
}

#[test]
fn plain_directory_is_not_an_agentfs_mount() {
    let dir = tempfile::tempdir().unwrap();
    let o = cli_in(None, &["status"], Some(dir.path()));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "agentfs-control-cli: {} is not an AgentFS mount (no .agentfs/control)\n",
            dir.path().display()
        )
    );
    // Without --mount, from a directory with no mount above it.
    let o = cli_in(Some(dir.path()), &["status"], None);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("agentfs-control-cli: "), "{err}");
    assert!(err.contains("not inside an AgentFS mount"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn mount_is_found_from_cwd_and_from_the_environment() {
    let m = Mount::new();
    let deep: PathBuf = m.path().join("src").join("deeper");
    fs::create_dir_all(&deep).unwrap();
    let out = ok(&cli_in(Some(&deep), &["--json", "branch-list"], None));
    assert_eq!(
        serde_json::from_str::<Reply>(&out).unwrap(),
        Reply::Branches(branches())
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let o = Proc::new(BIN)
        .args(["--json", "branch-list"])
        .env("AGENTFS_MOUNT", m.path())
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(m.commands().len(), 2);
}

#[test]
fn branch_bind_defaults_to_the_parent_process() {
    let m = Mount::new();
    let me = std::process::id();
    let out = ok(&m.run(&["branch-bind", "--branch", "b2"]));
    assert_eq!(
        out,
        format!("bound process {me} to branch b2 \"feature-with-long-name\"\n")
    );
    ok(&m.run(&["branch-bind", "--branch", "b2", "--pid", "4242"]));
    assert_eq!(
        ok(&m.run(&["branch-unbind"])),
        format!("unbound process {me}\n")
    );
    let commands = m.commands();
    assert!(commands.contains(&Command::BranchBind {
        branch: "b2".into(),
        pid: me
    }));
    assert!(commands.contains(&Command::BranchBind {
        branch: "b2".into(),
        pid: 4242
    }));
    assert!(commands.contains(&Command::BranchUnbind { pid: me }));
}

#[test]
fn branch_exec_binds_its_own_pid_then_runs_the_command() {
    let m = Mount::new();
    let out = ok(&m.run(&["branch-exec", "--branch", "x", "--", "sh", "-c", "echo $$"]));
    let pid: u32 = out.trim().parse().unwrap();
    let seen = m.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (peer, command) = &seen[0];
    assert_eq!(
        *command,
        Command::BranchBind {
            branch: "x".into(),
            pid
        }
    );
    // The bind came from the same process the command ran as.
    assert_eq!(peer.pid, pid);
    assert_ne!(pid, std::process::id());
}

#[test]
fn branch_exec_of_a_missing_program_exits_127_and_unbinds() {
    let m = Mount::new();
    let o = m.run(&[
        "branch-exec",
        "--branch",
        "x",
        "--",
        "/nonexistent/agentfs-test-prog",
    ]);
    assert_eq!(o.status.code(), Some(127));
    let err = stderr(&o);
    assert!(
        err.starts_with("agentfs-control-cli: cannot run /nonexistent/agentfs-test-prog: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let commands = m.commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    let Command::BranchBind { pid, .. } = commands[0] else {
        panic!("{commands:?}")
    };
    assert_eq!(commands[1], Command::BranchUnbind { pid });
}

#[test]
fn branch_exec_does_not_run_the_command_when_binding_fails() {
    let m = Mount::new();
    let marker = m.path().join("ran");
    let o = m.run(&[
        "branch-exec",
        "--branch",
        "missing",
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "agentfs-control-cli: no branch \"missing\"\n");
    assert!(!marker.exists());
}

#[test]
fn usage_errors_keep_clap_exit_code_2() {
    let m = Mount::new();
    assert_eq!(m.run(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(m.run(&["branch-create"]).status.code(), Some(2));
    assert_eq!(
        m.run(&["branch-exec", "--branch", "x"]).status.code(),
        Some(2)
    );
    assert!(m.commands().is_empty());
}

#[test]
fn branch_commit_refused_lists_conflicts_and_fails() {
    let m = Mount::new();
    let o = m.run(&["branch-commit", "feature"]);
    assert_eq!(o.status.code(), Some(1), "stdout: {}", stdout(&o));
    let out = stdout(&o);
    assert!(out.starts_with("refused: feature and b1"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("src/lib.rs") && l.contains("modified")),
        "{out}"
    );
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));
    // --json: the same reply as one document, and the same status.
    let o = m.run(&["--json", "branch-commit", "feature"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["value"]["conflicts"][0]["path"], "src/lib.rs");
    // Settled for the branch: committed, status 0.
    let out = ok(&m.run(&["branch-commit", "feature", "--theirs", "--delete"]));
    assert!(out.starts_with("committed branch feature into b1"), "{out}");
    assert!(m.commands().contains(&Command::BranchCommit {
        branch: "feature".into(),
        resolve: Some(agentfs_control::CommitResolve::Theirs),
        delete: true
    }));
    // --theirs and --ours together are a usage error.
    let o = m.run(&["branch-commit", "feature", "--theirs", "--ours"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn diff_reads_every_page_and_prints_one_line_per_change() {
    let m = Mount::new();
    let out = ok(&m.run(&["diff", "s1", "b2"]));
    assert_eq!(out, "R old\\xff -> new\nM z (data, mode)\n");
    let offsets: Vec<u64> = m
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::Diff { offset, .. } => Some(offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, vec![0, 1]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&m.run(&["--json", "diff", "s1", "b2"]))).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"a": "s1", "b": "b2", "changes": [
            {"change": "renamed", "path": "new", "from": "old\\xff", "type": "file"},
            {"change": "modified", "path": "z", "type": "file", "what": ["data", "mode"]},
        ]})
    );
}
