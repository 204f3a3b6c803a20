//! The per-process binding table: which branch a process sees at the mount path.
//!
//! A binding is keyed by (pid, process start time), so a pid reused by a new
//! process does not inherit a dead process's branch. A process with no binding
//! of its own sees the branch of its nearest bound ancestor; with none, the
//! default branch. Process facts come from a [`ProcessTable`] (`/proc` in
//! production, a fake in tests).

use crate::ids::BranchId;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What FsCore needs to know about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Thread-group id (the process id, even when asked about a thread).
    pub tgid: u32,
    /// Parent process id; 0 for the top of the tree.
    pub ppid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Real uid of the process.
    pub uid: u32,
}

/// Source of process facts.
pub trait ProcessTable: Send + Sync + 'static {
    /// Facts about the process or thread `pid`, or `None` if it does not exist.
    fn info(&self, pid: u32) -> Option<ProcessInfo>;
}

/// The real process table under `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcFs;

impl ProcessTable for ProcFs {
    fn info(&self, pid: u32) -> Option<ProcessInfo> {
        if pid == 0 {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let tgid: u32 = field("Tgid:")?.parse().ok()?;
        let ppid: u32 = field("PPid:")?.parse().ok()?;
        let uid: u32 = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        // rest starts at field 3 (state); start time is field 22.
        let start_time = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(ProcessInfo {
            tgid,
            ppid,
            start_time,
            uid,
        })
    }
}

/// One binding as the control plane lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingInfo {
    pub pid: u32,
    pub start_time: u64,
    pub branch: BranchId,
}

/// How far up the process tree a lookup walks before giving up (guards against
/// a corrupt or cyclic table).
const MAX_ANCESTRY: usize = 4096;

pub(crate) struct Bindings {
    table: Box<dyn ProcessTable>,
    // Leaf lock: never held while taking another lock.
    /// pid -> (start time, branch, whether the process reaches the branch
    /// through the shared mount root rather than a private view of its own).
    map: RwLock<HashMap<u32, (u64, BranchId, bool)>>,
    // Leaf lock.
    last_prune: Mutex<Instant>,
}

/// How often `root_is_shared` looks for dead bound processes.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

impl Bindings {
    pub(crate) fn new(table: Box<dyn ProcessTable>) -> Self {
        Bindings {
            table,
            map: RwLock::new(HashMap::new()),
            last_prune: Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn process(&self, pid: u32) -> Option<ProcessInfo> {
        self.table.info(pid)
    }

    /// Bind the process `pid` (a thread id names its process) to `branch`.
    /// `shares_root`: the process sees the branch through the shared mount
    /// root (not a private view of the branch's own directory).
    pub(crate) fn bind(
        &self,
        pid: u32,
        branch: BranchId,
        shares_root: bool,
    ) -> Option<ProcessInfo> {
        self.bind_sharing(pid, branch, shares_root)
            .map(|(info, _)| info)
    }

    /// [`Bindings::bind`], also answering whether a binding through the
    /// shared root existed just before this one: read under the same lock as
    /// the insert, so a prune of a dead binding cannot slip in between (the
    /// root would be cacheable for that moment, and its entries cached then
    /// would not be forgotten).
    pub(crate) fn bind_sharing(
        &self,
        pid: u32,
        branch: BranchId,
        shares_root: bool,
    ) -> Option<(ProcessInfo, bool)> {
        let info = self.table.info(pid)?;
        let entry = (info.start_time, branch, shares_root);
        let mut map = self.map.write();
        let was_shared = map.values().any(|(_, _, shares)| *shares);
        map.insert(info.tgid, entry);
        Some((info, was_shared))
    }

    /// Whether any bound process looks up names through the shared root, so
    /// that the root's entries differ by caller and must not be cached. Dead
    /// processes' bindings are pruned at most once a second on the way, so the
    /// root becomes cacheable again soon after the last bound shell exits.
    pub(crate) fn root_is_shared(&self) -> bool {
        let shared = self.map.read().values().any(|(_, _, shares)| *shares);
        if shared {
            let due = {
                let mut last = self.last_prune.lock();
                let due = last.elapsed() >= PRUNE_INTERVAL;
                if due {
                    *last = Instant::now();
                }
                due
            };
            if due {
                self.list();
                return self.map.read().values().any(|(_, _, shares)| *shares);
            }
        }
        shared
    }

    /// Remove the binding of `pid`; answers whether there was one.
    pub(crate) fn unbind(&self, pid: u32) -> bool {
        let tgid = self.table.info(pid).map_or(pid, |i| i.tgid);
        self.map.write().remove(&tgid).is_some()
    }

    /// Drop every binding to `branch` (when it is deleted); answers how many.
    pub(crate) fn unbind_branch(&self, branch: BranchId) -> usize {
        let mut map = self.map.write();
        let before = map.len();
        map.retain(|_, (_, b, _)| *b != branch);
        before - map.len()
    }

    /// Live bindings to `branch` (dead processes do not count).
    pub(crate) fn count_for(&self, branch: BranchId) -> usize {
        self.list().iter().filter(|b| b.branch == branch).count()
    }

    /// Bindings whose process is still alive; dead ones are pruned on the way.
    pub(crate) fn list(&self) -> Vec<BindingInfo> {
        let entries: Vec<_> = self.map.read().iter().map(|(p, v)| (*p, *v)).collect();
        let mut live = Vec::new();
        for (pid, (start_time, branch, _)) in entries {
            match self.table.info(pid) {
                Some(info) if info.start_time == start_time => live.push(BindingInfo {
                    pid,
                    start_time,
                    branch,
                }),
                _ => {
                    let mut map = self.map.write();
                    if map.get(&pid).is_some_and(|(s, _, _)| *s == start_time) {
                        map.remove(&pid);
                    }
                }
            }
        }
        live.sort_by_key(|b| b.pid);
        live
    }

    /// The branch `pid` sees: its own binding, its nearest bound ancestor's, or `None`.
    pub(crate) fn resolve(&self, pid: u32) -> Option<BranchId> {
        let map = self.map.read();
        if map.is_empty() {
            return None;
        }
        let mut pid = pid;
        for _ in 0..MAX_ANCESTRY {
            let info = self.table.info(pid)?;
            if let Some((start, branch, _)) = map.get(&info.tgid) {
                if *start == info.start_time {
                    return Some(*branch);
                }
            }
            if info.ppid == 0 || info.ppid == info.tgid {
                return None;
            }
            pid = info.ppid;
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    /// A process table the test writes by hand.
    #[derive(Clone, Default)]
    pub(crate) struct FakeProcs(pub Arc<Mutex<HashMap<u32, ProcessInfo>>>);

    impl FakeProcs {
        pub(crate) fn spawn(&self, pid: u32, ppid: u32, start_time: u64) {
            let info = ProcessInfo {
                tgid: pid,
                ppid,
                start_time,
                uid: 1000,
            };
            self.0.lock().insert(pid, info);
        }
        pub(crate) fn exit(&self, pid: u32) {
            self.0.lock().remove(&pid);
        }
    }

    impl ProcessTable for FakeProcs {
        fn info(&self, pid: u32) -> Option<ProcessInfo> {
            self.0.lock().get(&pid).copied()
        }
    }

    #[test]
    fn children_inherit_nearest_bound_ancestor() {
        let procs = FakeProcs::default();
        procs.spawn(1, 0, 1);
        procs.spawn(10, 1, 5);
        procs.spawn(11, 10, 6);
        procs.spawn(12, 11, 7);
        let b = Bindings::new(Box::new(procs.clone()));
        assert_eq!(b.resolve(12), None);
        b.bind(10, BranchId(2), true);
        assert_eq!(b.resolve(12), Some(BranchId(2)));
        b.bind(11, BranchId(3), true);
        assert_eq!(b.resolve(12), Some(BranchId(3)));
        assert_eq!(b.resolve(10), Some(BranchId(2)));
        assert_eq!(b.resolve(1), None);
    }

    #[test]
    fn a_binding_says_whether_the_root_was_shared_before_it() {
        let procs = FakeProcs::default();
        procs.spawn(1, 0, 1);
        for pid in [10, 11, 12, 13] {
            procs.spawn(pid, 1, u64::from(pid));
        }
        let b = Bindings::new(Box::new(procs.clone()));
        let shared = |pid, root| b.bind_sharing(pid, BranchId(2), root).unwrap().1;
        assert!(!shared(10, false), "a private view does not share the root");
        assert!(!shared(11, true), "the first binding through the root");
        assert!(shared(12, true));
        // Both root bindings gone (one exited and pruned, one unbound): the
        // next binding through the root is the first again.
        procs.exit(11);
        assert_eq!(b.list().len(), 2);
        assert!(b.unbind(12));
        assert!(!shared(13, true));
    }

    #[test]
    fn reused_pid_is_not_bound() {
        let procs = FakeProcs::default();
        procs.spawn(1, 0, 1);
        procs.spawn(20, 1, 100);
        let b = Bindings::new(Box::new(procs.clone()));
        b.bind(20, BranchId(7), true);
        assert_eq!(b.resolve(20), Some(BranchId(7)));
        procs.exit(20);
        procs.spawn(20, 1, 200);
        assert_eq!(b.resolve(20), None);
        assert!(b.list().is_empty(), "dead binding pruned");
    }

    #[test]
    fn real_proc_fs_reads_this_process() {
        let me = std::process::id();
        let info = ProcFs.info(me).expect("own process");
        assert_eq!(info.tgid, me);
        assert!(info.start_time > 0);
        assert_eq!(info.ppid, nix_ppid());
    }

    fn nix_ppid() -> u32 {
        // SAFETY: getppid has no preconditions and cannot fail.
        unsafe { libc::getppid() as u32 }
    }
}
