//! Branch isolation when several shells bind through the shared mount root at
//! once (walkthrough-issue6.sh step 3: a `branch-bind typo` shell and a
//! `branch-bind refactor` shell started together).
//!
//! While no process is bound through the mount root, the kernel caches the
//! root's entries (the default branch's) for the full TTL; the first such
//! binding makes it forget them (`CoreControl`'s root invalidator). A second
//! binding made while the first one's invalidation was still running saw the
//! root as shared already and was answered at once, so its shell could walk
//! through a cached default-branch entry (`specs`) and rename a file in the
//! default branch. These tests pin the rule: no shared-root binding is
//! answered before the kernel has forgotten the root's default-branch entries.
//!
//! `scripts/repro-bind-isolation.sh` runs the same race on a real mount.

use agentfs_control::protocol::{Command, Reply};
use agentfs_control::{ControlHandler, PeerCred};
use agentfs_core::backstore::mem::MemBackstore;
use agentfs_core::{CoreConfig, FsCore, ProcessInfo, ProcessTable};
use agentfs_fuse::{CoreControl, MountFacts};
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const OWNER: u32 = 1000;

/// A process table written by hand: pid -> (ppid, start time).
#[derive(Clone, Default)]
struct Procs(Arc<Mutex<HashMap<u32, ProcessInfo>>>);

impl Procs {
    fn spawn(&self, pid: u32, ppid: u32) {
        let info = ProcessInfo {
            tgid: pid,
            ppid,
            start_time: u64::from(pid) * 10,
            uid: OWNER,
        };
        self.0.lock().unwrap().insert(pid, info);
    }
}

impl ProcessTable for Procs {
    fn info(&self, pid: u32) -> Option<ProcessInfo> {
        self.0.lock().unwrap().get(&pid).copied()
    }
}

/// A handler over an in-memory core with a snapshot `base` and branches
/// `typo` and `refactor`; pids 10 and 11 are two shells of the owner.
fn setup() -> Arc<CoreControl> {
    let procs = Procs::default();
    procs.spawn(1, 0);
    procs.spawn(10, 1);
    procs.spawn(11, 1);
    let core = FsCore::new(
        Arc::new(MemBackstore::new()),
        CoreConfig {
            process_table: Box::new(procs),
            default_branch_name: "main".into(),
        },
    );
    let facts = MountFacts {
        mountpoint: "/mnt/a".into(),
        backstore: "/var/store".into(),
    };
    let h = Arc::new(CoreControl::new(Arc::new(core), OWNER, facts));
    let owner = peer(10);
    let cmd = Command::SnapshotCreate {
        name: Some("base".into()),
        branch: None,
    };
    h.handle(&owner, cmd).expect("snapshot");
    for name in ["typo", "refactor"] {
        let cmd = Command::BranchCreate {
            from: "base".into(),
            name: Some(name.into()),
        };
        h.handle(&owner, cmd).expect("branch");
    }
    h
}

fn peer(pid: u32) -> PeerCred {
    PeerCred {
        pid,
        uid: OWNER,
        gid: OWNER,
    }
}

fn bind(h: &CoreControl, pid: u32, branch: &str) {
    let cmd = Command::BranchBind {
        branch: branch.into(),
        pid,
    };
    match h.handle(&peer(pid), cmd) {
        Ok(Reply::Bound { .. }) => {}
        other => panic!("bind {pid} to {branch}: {other:?}"),
    }
}

/// What happened, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The root invalidator has made the kernel forget the root's entries.
    RootForgotten,
    /// The second shell's `branch-bind` was answered.
    SecondBound,
}

/// Shell 10 binds to `typo` (the first binding through the root: its reply
/// waits for the kernel to forget the root's entries); while that
/// invalidation is under way, shell 11 binds to `refactor`. Shell 11 must not
/// be answered before the invalidation is done: from its reply on it walks
/// the root as `refactor`, and an entry of `main` still cached there would
/// lead it into `main`'s tree.
#[test]
fn a_binding_is_answered_only_after_the_roots_entries_are_forgotten() {
    let h = setup();
    let events = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (bound_tx, bound_rx) = mpsc::channel::<()>();
    let bound_rx = Mutex::new(bound_rx);
    let started_tx = Mutex::new(started_tx);
    let log = Arc::clone(&events);
    // The invalidator stands for the kernel taking its time: it finishes when
    // the second binding has been answered (the bug) or, with the fix, when
    // it has waited long enough for that answer not to come. The wait only
    // bounds how long a passing run takes; the verdict is the order of events.
    h.set_root_invalidator(Box::new(move |names: Vec<Vec<u8>>| {
        let _ = names;
        let _ = started_tx.lock().unwrap().send(());
        let _ = bound_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_millis(1500));
        log.lock().unwrap().push(Event::RootForgotten);
    }));

    let first = {
        let h = Arc::clone(&h);
        std::thread::spawn(move || bind(&h, 10, "typo"))
    };
    started_rx
        .recv()
        .expect("the first binding invalidates the root");
    let second = {
        let (h, log) = (Arc::clone(&h), Arc::clone(&events));
        std::thread::spawn(move || {
            bind(&h, 11, "refactor");
            log.lock().unwrap().push(Event::SecondBound);
            let _ = bound_tx.send(());
        })
    };
    first.join().unwrap();
    second.join().unwrap();
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events,
        [Event::RootForgotten, Event::SecondBound],
        "the second shell was answered while the kernel could still hold main's root entries"
    );
}
