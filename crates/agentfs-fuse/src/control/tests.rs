//! The handler's permission rules and conversions, against a real FsCore over
//! an in-memory backstore and a process table the test writes by hand.

use super::*;
use agentfs_core::backstore::mem::MemBackstore;
use agentfs_core::{CoreConfig, ProcessInfo, ProcessTable};
use parking_lot::Mutex;
use std::collections::HashMap;

const OWNER: u32 = 1000;
const OTHER: u32 = 2000;

#[derive(Clone, Default)]
struct Procs(Arc<Mutex<HashMap<u32, ProcessInfo>>>);

impl Procs {
    fn spawn(&self, pid: u32, ppid: u32, uid: u32) {
        let info = ProcessInfo {
            tgid: pid,
            ppid,
            start_time: u64::from(pid) * 10,
            uid,
        };
        self.0.lock().insert(pid, info);
    }
}

impl ProcessTable for Procs {
    fn info(&self, pid: u32) -> Option<ProcessInfo> {
        self.0.lock().get(&pid).copied()
    }
}

/// A handler, its process table, and pids: 1 init (root), 10 the owner's
/// shell, 20 another user's shell.
fn setup() -> (CoreControl, Procs) {
    let procs = Procs::default();
    procs.spawn(1, 0, 0);
    procs.spawn(10, 1, OWNER);
    procs.spawn(20, 1, OTHER);
    let core = FsCore::new(
        Arc::new(MemBackstore::new()),
        CoreConfig {
            process_table: Box::new(procs.clone()),
            default_branch_name: "main".into(),
        },
    );
    let facts = MountFacts {
        mountpoint: "/mnt/a".into(),
        backstore: "/var/store".into(),
    };
    (CoreControl::new(Arc::new(core), OWNER, facts), procs)
}

fn peer(pid: u32, uid: u32) -> PeerCred {
    PeerCred { pid, uid, gid: uid }
}

fn snapshot(h: &CoreControl, who: PeerCred, name: &str) -> Result<SnapshotView, ControlError> {
    match h.handle(
        &who,
        Command::SnapshotCreate {
            name: Some(name.into()),
            branch: None,
        },
    )? {
        Reply::Snapshot(s) => Ok(s),
        other => panic!("unexpected reply {other:?}"),
    }
}

fn branch(
    h: &CoreControl,
    who: PeerCred,
    from: &str,
    name: &str,
) -> Result<BranchView, ControlError> {
    match h.handle(
        &who,
        Command::BranchCreate {
            from: from.into(),
            name: Some(name.into()),
        },
    )? {
        Reply::Branch(b) => Ok(b),
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn only_owner_or_root_may_snapshot_and_branch() {
    let (h, _) = setup();
    let err = snapshot(&h, peer(20, OTHER), "x").unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied);
    assert!(err.message.contains("uid 1000"), "{err}");

    let s = snapshot(&h, peer(10, OWNER), "by-owner").unwrap();
    assert!(s.id.starts_with('s'), "{s:?}");
    assert_eq!(s.name, "by-owner");
    let s_root = snapshot(&h, peer(1, 0), "by-root").unwrap();
    assert_ne!(s_root.id, s.id);

    let err = branch(&h, peer(20, OTHER), &s.id, "nope").unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied);
    let b = branch(&h, peer(10, OWNER), &s.id, "feature").unwrap();
    assert_eq!(b.from.as_deref(), Some(s.id.as_str()));
    assert!(!b.is_default);

    for cmd in [
        Command::BranchDelete {
            branch: b.id.clone(),
            force: true,
        },
        Command::SnapshotDelete {
            snapshot: s_root.id.clone(),
        },
    ] {
        let err = h.handle(&peer(20, OTHER), cmd.clone()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied, "{cmd:?}");
    }
    let Reply::Deleted { id } = h
        .handle(
            &peer(10, OWNER),
            Command::BranchDelete {
                branch: b.id.clone(),
                force: false,
            },
        )
        .unwrap()
    else {
        panic!("expected Deleted");
    };
    assert_eq!(id, b.id);
}

#[test]
fn lists_and_status_are_open_to_anyone() {
    let (h, _) = setup();
    snapshot(&h, peer(10, OWNER), "one").unwrap();
    let Reply::Snapshots(list) = h.handle(&peer(20, OTHER), Command::SnapshotList).unwrap() else {
        panic!("expected Snapshots");
    };
    assert_eq!(list.len(), 1);
    let Reply::Branches(list) = h.handle(&peer(20, OTHER), Command::BranchList).unwrap() else {
        panic!("expected Branches");
    };
    assert_eq!(list.len(), 1);
    assert!(list[0].is_default);
    assert_eq!(list[0].name, "main");
    let Reply::Status(st) = h.handle(&peer(20, OTHER), Command::Status).unwrap() else {
        panic!("expected Status");
    };
    assert_eq!(st.data_path, "transport");
    assert_eq!(st.protocol, PROTOCOL_VERSION);
    assert_eq!(st.mountpoint, "/mnt/a");
    assert_eq!(st.backstore, "/var/store");
    assert_eq!(st.default_branch, list[0].id);
    assert_eq!(st.caller_branch, st.default_branch);
    assert_eq!(st.snapshots, 1);
}

#[test]
fn an_unshared_mount_answers_only_its_owner_and_root() {
    let (h, _) = setup();
    let h = h.with_other_users(false);
    for command in [
        Command::Status,
        Command::SnapshotList,
        Command::BranchList,
        Command::BranchUnbind { pid: 20 },
        Command::BranchBind {
            branch: "main".into(),
            pid: 20,
        },
    ] {
        let err = h.handle(&peer(20, OTHER), command.clone()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied, "{command:?}");
        assert!(err.message.contains("--allow-other"), "{}", err.message);
    }
    assert!(h.core.bindings().is_empty());
    for who in [peer(10, OWNER), peer(1, 0)] {
        assert!(h.handle(&who, Command::Status).is_ok(), "{who:?}");
    }
    snapshot(&h, peer(10, OWNER), "still-mine").unwrap();
}

#[test]
fn bind_needs_an_existing_process_of_the_caller() {
    let (h, procs) = setup();
    let s = snapshot(&h, peer(10, OWNER), "base").unwrap();
    let b = branch(&h, peer(10, OWNER), &s.id, "work").unwrap();

    let missing = Command::BranchBind {
        branch: b.id.clone(),
        pid: 999,
    };
    assert_eq!(
        h.handle(&peer(10, OWNER), missing).unwrap_err().kind,
        ErrorKind::NotFound
    );

    // Another user's process: refused to the owner, allowed to root.
    let theirs = Command::BranchBind {
        branch: b.id.clone(),
        pid: 20,
    };
    let err = h.handle(&peer(10, OWNER), theirs.clone()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied);
    assert!(h.handle(&peer(1, 0), theirs).is_ok());

    // A user who is not the mount owner may bind its own processes.
    procs.spawn(21, 20, OTHER);
    let own = Command::BranchBind {
        branch: "work".into(),
        pid: 21,
    };
    let Reply::Bound { pid, branch: bound } = h.handle(&peer(20, OTHER), own).unwrap() else {
        panic!("expected Bound");
    };
    assert_eq!((pid, bound.as_str()), (21, b.id.as_str()));

    let unknown = Command::BranchBind {
        branch: "no-such-branch".into(),
        pid: 10,
    };
    assert_eq!(
        h.handle(&peer(10, OWNER), unknown).unwrap_err().kind,
        ErrorKind::NotFound
    );

    let Reply::Status(st) = h.handle(&peer(21, OTHER), Command::Status).unwrap() else {
        panic!("expected Status");
    };
    assert_eq!(st.caller_branch, b.id);
    assert!(
        st.bindings
            .iter()
            .any(|v| v.pid == 21 && v.branch_name == "work"),
        "{:?}",
        st.bindings
    );

    let err = h
        .handle(&peer(10, OWNER), Command::BranchUnbind { pid: 21 })
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied);
    let Reply::Unbound { was_bound, .. } = h
        .handle(&peer(20, OTHER), Command::BranchUnbind { pid: 21 })
        .unwrap()
    else {
        panic!("expected Unbound");
    };
    assert!(was_bound);
    assert_eq!(
        h.handle(&peer(10, OWNER), Command::BranchUnbind { pid: 4242 })
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
}

#[test]
fn snapshot_without_branch_takes_the_callers_branch() {
    let (h, procs) = setup();
    let s = snapshot(&h, peer(10, OWNER), "base").unwrap();
    let b = branch(&h, peer(10, OWNER), &s.id, "side").unwrap();
    procs.spawn(11, 10, OWNER);
    h.handle(
        &peer(10, OWNER),
        Command::BranchBind {
            branch: b.id.clone(),
            pid: 11,
        },
    )
    .unwrap();
    let from_bound = snapshot(&h, peer(11, OWNER), "of-side").unwrap();
    assert_eq!(from_bound.branch, b.id);
    let explicit = h
        .handle(
            &peer(11, OWNER),
            Command::SnapshotCreate {
                name: None,
                branch: Some("main".into()),
            },
        )
        .unwrap();
    let Reply::Snapshot(explicit) = explicit else {
        panic!("expected Snapshot")
    };
    assert_eq!(explicit.branch, s.branch);
}

#[test]
fn core_errors_map_to_control_kinds() {
    let cases = [
        (FsError::UnknownView("b9".into()), ErrorKind::NotFound),
        (FsError::NameTaken("x".into()), ErrorKind::NameTaken),
        (FsError::Busy("bound".into()), ErrorKind::Busy),
        (FsError::Invalid, ErrorKind::InvalidArgument),
        (FsError::NameTooLong, ErrorKind::InvalidArgument),
        (FsError::Perm, ErrorKind::PermissionDenied),
        (FsError::Access, ErrorKind::PermissionDenied),
        (
            FsError::Io(std::io::Error::other("disk")),
            ErrorKind::Internal,
        ),
        (FsError::Stale, ErrorKind::Internal),
    ];
    for (err, kind) in cases {
        let msg = err.to_string();
        let c = control_error(err);
        assert_eq!(c.kind, kind, "{msg}");
        assert_eq!(c.message, msg);
    }
}

#[test]
fn views_use_display_ids_and_unix_seconds() {
    use agentfs_core::{BranchId, SnapshotId};
    use std::time::Duration;
    let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
    let s = SnapshotInfo {
        id: SnapshotId(2),
        name: "n".into(),
        branch: BranchId(1),
        created: t,
        children: vec![BranchId(3)],
    };
    let v = snapshot_view(&s);
    assert_eq!((v.id.as_str(), v.branch.as_str()), ("s2", "b1"));
    assert_eq!(v.children, ["b3"]);
    assert!((v.created_unix - 1_700_000_000.25).abs() < 1e-6);
    let b = BranchInfo {
        id: BranchId(3),
        name: "x".into(),
        from: Some(SnapshotId(2)),
        created: t,
        is_default: false,
        open_handles: 4,
        bound_processes: 5,
    };
    let v = branch_view(&b);
    assert_eq!((v.id.as_str(), v.from.as_deref()), ("b3", Some("s2")));
    assert_eq!((v.open_handles, v.bound_processes), (4, 5));
}

#[test]
fn branch_commit_is_for_the_owner_and_answers_a_commit_reply() {
    let (h, _) = setup();
    let s = snapshot(&h, peer(10, OWNER), "base").unwrap();
    let b = branch(&h, peer(10, OWNER), &s.id, "work").unwrap();
    let commit = |who: PeerCred, resolve| {
        h.handle(
            &who,
            Command::BranchCommit {
                branch: b.id.clone(),
                resolve,
                delete: false,
            },
        )
    };
    let err = commit(peer(20, OTHER), None).unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    let Reply::Commit(v) = commit(peer(10, OWNER), None).unwrap() else {
        panic!("not a commit reply");
    };
    assert!(v.committed && v.fast_path, "{v:?}");
    assert_eq!(
        (v.branch.as_str(), v.base.as_str()),
        (b.id.as_str(), s.id.as_str())
    );
    assert!(v.conflicts.is_empty() && v.resolve.is_none());
    let missing = h
        .handle(
            &peer(1, 0),
            Command::BranchCommit {
                branch: "nope".into(),
                resolve: Some(CommitResolve::Ours),
                delete: true,
            },
        )
        .unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound);
}

/// `lower-detach` maps the export's directory onto the lower root: the
/// lower directory itself, a directory inside it, one holding it; anything
/// else (and a mount without a lower directory) is nothing to do; only the
/// owner or root may ask; a relative directory or a path with `..` is refused.
#[test]
fn lower_detach_maps_the_directory_onto_the_lower_root() {
    use agentfs_control::protocol::path_to_wire;
    use std::os::unix::ffi::OsStrExt;
    let detach = |h: &CoreControl, who: PeerCred, dir: &std::path::Path, paths: &[&str]| {
        h.handle(
            &who,
            Command::LowerDetach {
                dir: path_to_wire(dir.as_os_str().as_bytes()),
                paths: paths.iter().map(|p| p.to_string()).collect(),
                touched: vec![],
            },
        )
        .map(|r| match r {
            Reply::Detached(d) => (d.lower, d.files_copied, d.dirs_read),
            other => panic!("not a detached reply: {other:?}"),
        })
    };
    let elsewhere = tempfile::tempdir().unwrap();
    let (plain, _) = setup();
    assert_eq!(
        detach(&plain, peer(10, OWNER), elsewhere.path(), &["a"]),
        Ok((false, 0, 0))
    );

    let top = tempfile::tempdir().unwrap();
    let top = top.path().canonicalize().unwrap();
    let lower = top.join("checkout");
    std::fs::create_dir_all(lower.join("sub")).unwrap();
    std::fs::write(lower.join("sub/x"), "X").unwrap();
    std::fs::write(lower.join("sub/z"), "Z").unwrap();
    std::fs::write(lower.join("y"), "Y").unwrap();
    let core = FsCore::new(
        Arc::new(MemBackstore::new()),
        CoreConfig {
            process_table: Box::new(Procs::default()),
            default_branch_name: "main".into(),
        },
    );
    core.attach_lower(Arc::new(agentfs_core::Lower::open(&lower).unwrap()))
        .unwrap();
    let facts = MountFacts {
        mountpoint: "/mnt/a".into(),
        backstore: "/var/store".into(),
    };
    let h = CoreControl::new(Arc::new(core), OWNER, facts);
    let err = detach(&h, peer(20, OTHER), &lower, &["y"]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    let err = detach(&h, peer(10, OWNER), std::path::Path::new("rel"), &["y"]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    let err = detach(&h, peer(10, OWNER), &lower.join("sub"), &["../y"]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert_eq!(
        detach(&h, peer(10, OWNER), elsewhere.path(), &["y"]),
        Ok((false, 0, 0))
    );
    // Inside: `x` of DIR is `sub/x` of the lower root (root and `sub` read).
    assert_eq!(
        detach(&h, peer(10, OWNER), &lower.join("sub"), &["x"]),
        Ok((true, 1, 2))
    );
    // Around: replacing `checkout` in its parent changes all of it.
    assert_eq!(
        detach(&h, peer(1, 0), &top, &["checkout"]),
        Ok((true, 2, 0))
    );
    // Nothing left to do.
    assert_eq!(detach(&h, peer(1, 0), &lower, &["y"]), Ok((true, 0, 0)));
}
