//! The control plane's handler: control-protocol commands applied to FsCore.
//!
//! [`CoreControl`] checks who is asking (the peer credentials the control
//! server read from the socket) and converts between core types and the
//! protocol's wire views. The rules (DESIGN promise 7):
//! - snapshot and branch create/delete: the mount owner (the uid that started
//!   the daemon) or root;
//! - branch-bind/unbind: the target process must exist and belong to the
//!   caller, unless the caller is root;
//! - status and lists: anyone who can reach the socket;
//! - on a mount without `--allow-other`, nothing for anyone but the owner and
//!   root: the socket sits where every user can reach it, but such a mount
//!   serves no one else, so its control plane answers no one else either.

use agentfs_control::protocol::{path_from_wire, DetachView};
use agentfs_control::{
    BindingView, BranchView, Command, CommitResolve, CommitView, ConflictView, ControlError,
    ControlHandler, DiffEntryView, DiffView, ErrorKind, PeerCred, Reply, SnapshotView, StatusView,
    PROTOCOL_VERSION,
};
use agentfs_core::{
    BranchId, BranchInfo, CommitOptions, CommitReport, DiffAspect, DiffChange, DiffKind, EntryType,
    FsCore, FsError, NodeId, Resolve, SnapshotInfo, ViewRef,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the mount lives, for `status`.
#[derive(Debug, Clone)]
pub struct MountFacts {
    pub mountpoint: PathBuf,
    pub backstore: PathBuf,
}

/// The daemon's [`ControlHandler`].
pub struct CoreControl {
    core: Arc<FsCore>,
    owner_uid: u32,
    facts: MountFacts,
    /// Whether the adapter serves file data through FUSE passthrough now.
    passthrough: Arc<AtomicBool>,
    /// Whether requests come over FUSE io_uring.
    uring: Arc<AtomicBool>,
    /// Whether users other than the owner and root may use the mount (and
    /// so its control plane): the mount's `--allow-other`.
    other_users: bool,
    root_invalidator: OnceLock<RootInvalidator>,
    commit_invalidator: OnceLock<CommitInvalidator>,
    /// Held through a binding and the root invalidation it may need, so no
    /// binding through the root is answered while the first one's
    /// invalidation is still running (its process would walk the default
    /// branch's entries still cached in the root).
    binding: parking_lot::Mutex<()>,
}

/// Makes the kernel forget the named entries of the mount root (and the root's
/// attributes).
pub type RootInvalidator = Box<dyn Fn(Vec<Vec<u8>>) + Send + Sync>;

/// Makes the kernel forget what it cached of branch `b` after a commit changed
/// it: the names `(directory, name)` and the attributes and pages of the nodes,
/// in every view of the branch (the mount root and `.agentfs/branches/<b>`).
pub type CommitInvalidator = Box<dyn Fn(BranchId, &[(NodeId, Vec<u8>)], &[NodeId]) + Send + Sync>;

impl CoreControl {
    /// A handler over `core` for a mount owned by `owner_uid`.
    pub fn new(core: Arc<FsCore>, owner_uid: u32, facts: MountFacts) -> CoreControl {
        CoreControl {
            core,
            owner_uid,
            facts,
            passthrough: Arc::new(AtomicBool::new(false)),
            uring: Arc::new(AtomicBool::new(false)),
            other_users: true,
            root_invalidator: OnceLock::new(),
            commit_invalidator: OnceLock::new(),
            binding: parking_lot::Mutex::new(()),
        }
    }

    /// Whether other users than the owner and root may send any command
    /// (default `true`); `false` for a mount without `--allow-other`.
    pub fn with_other_users(mut self, allowed: bool) -> CoreControl {
        self.other_users = allowed;
        self
    }

    /// Report that requests come over FUSE io_uring (the host sets it once
    /// the rings run).
    pub fn set_request_channel_uring(&self) {
        self.uring.store(true, Ordering::Release);
    }

    /// Report the data path from this flag (the adapter's `passthrough_active`).
    pub fn with_passthrough_flag(mut self, flag: Arc<AtomicBool>) -> CoreControl {
        self.passthrough = flag;
        self
    }

    fn bind(
        &self,
        peer: &PeerCred,
        branch: &str,
        pid: u32,
        shares_root: bool,
    ) -> Result<Reply, ControlError> {
        self.require_process(peer, pid, "bind")?;
        let core = &self.core;
        let b = core.find_branch(branch).map_err(control_error)?;
        // A second binding that sees the root shared already must not be
        // answered before the first one's invalidation below is done.
        let _serial = self.binding.lock();
        let (info, was_shared) = core
            .bind_view_sharing(pid, b, shares_root)
            .map_err(control_error)?;
        if shares_root && !was_shared {
            // Until now every caller saw the default branch at the root, so the
            // kernel may hold its entries: drop them before they mislead.
            if let Some(forget) = self.root_invalidator.get() {
                let names = core.root_names(core.default_branch()).unwrap_or_default();
                forget(names);
            }
        }
        Ok(Reply::Bound {
            pid: info.tgid,
            branch: b.to_string(),
        })
    }

    /// Install how to make the kernel forget the root's cached entries (set once
    /// the FUSE session exists).
    pub fn set_root_invalidator(&self, forget: RootInvalidator) {
        let _ = self.root_invalidator.set(forget);
    }

    /// Install how to make the kernel forget what a commit changed (set once
    /// the FUSE session exists).
    pub fn set_commit_invalidator(&self, forget: CommitInvalidator) {
        let _ = self.commit_invalidator.set(forget);
    }

    fn commit(
        &self,
        peer: &PeerCred,
        branch: &str,
        resolve: Option<CommitResolve>,
        delete: bool,
    ) -> Result<Reply, ControlError> {
        self.require_owner(peer, "commit branches")?;
        let core = &self.core;
        let b = core.find_branch(branch).map_err(control_error)?;
        let options = CommitOptions {
            resolve: resolve.map(|r| match r {
                CommitResolve::Theirs => Resolve::Theirs,
                CommitResolve::Ours => Resolve::Ours,
            }),
            delete,
        };
        let started = std::time::Instant::now();
        let report = core.branch_commit(b, options).map_err(control_error)?;
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        if report.committed {
            if let (Some(forget), Some(parent)) = (self.commit_invalidator.get(), report.parent) {
                forget(parent, &report.changed_entries, &report.changed_nodes);
            }
        }
        Ok(Reply::Commit(commit_view(&report, resolve, millis)))
    }

    /// One page of the diff from view `a` to view `b` (see [`DIFF_PAGE_BYTES`]).
    fn diff(&self, a: &str, b: &str, offset: u64) -> Result<Reply, ControlError> {
        let core = &self.core;
        let va = core.find_view(a).map_err(control_error)?;
        let vb = core.find_view(b).map_err(control_error)?;
        let started = std::time::Instant::now();
        let (changes, stats) = core.diff_with_stats(va, vb).map_err(control_error)?;
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(changes.len());
        let mut budget = DIFF_PAGE_BYTES;
        let mut page = Vec::new();
        for c in &changes[start..] {
            let v = diff_entry_view(c);
            // JSON escapes a byte as at most 6 bytes (`\u00XX`).
            let cost = 160 + 6 * (v.path.len() + v.from.as_ref().map_or(0, String::len));
            if !page.is_empty() && cost > budget {
                break;
            }
            budget = budget.saturating_sub(cost);
            page.push(v);
        }
        let end = start + page.len();
        Ok(Reply::Diff(DiffView {
            a: view_id(va),
            b: view_id(vb),
            total: changes.len() as u64,
            offset: start as u64,
            changes: page,
            next: (end < changes.len()).then_some(end as u64),
            changed_nodes: stats.changed_nodes as u64,
            nodes_read: stats.nodes_read as u64,
            millis,
        }))
    }

    /// `lower-detach`: before `export` changes host directory `dir`, every
    /// tree stops naming the lower paths it is about to change, if `dir` is
    /// the lower directory, inside it or around it; elsewhere nothing. `dir`
    /// is taken as sent (the CLI sends it canonical): looking it up here
    /// could walk into this very mount.
    fn lower_detach(
        &self,
        dir: &str,
        paths: &[String],
        touched: &[String],
    ) -> Result<Reply, ControlError> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let started = std::time::Instant::now();
        let dir = PathBuf::from(std::ffi::OsString::from_vec(path_from_wire(dir)));
        if !dir.is_absolute() {
            return Err(ControlError::invalid_argument(format!(
                "lower-detach needs an absolute directory, not {}",
                dir.display()
            )));
        }
        let lower = self
            .core
            .lower_path()
            .filter(|l| dir.starts_with(l) || l.starts_with(&dir));
        let Some(lower) = lower else {
            return Ok(Reply::Detached(DetachView {
                lower: false,
                dirs_read: 0,
                files_copied: 0,
                bytes_copied: 0,
                millis: started.elapsed().as_secs_f64() * 1000.0,
            }));
        };
        // Each path relative to `dir` as a path relative to the lower root:
        // `Some(empty)` for the lower root itself (or a path holding it),
        // `None` for a path outside it.
        let map = |wire: &String, whole: bool| -> Result<Option<Vec<u8>>, ControlError> {
            let rel = path_from_wire(wire);
            let rel = std::path::Path::new(std::ffi::OsStr::from_bytes(&rel));
            if rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(ControlError::invalid_argument(format!(
                    "lower-detach: {wire:?} is not a plain relative path"
                )));
            }
            let host = dir.join(rel);
            if let Ok(inside) = host.strip_prefix(lower) {
                return Ok(Some(inside.as_os_str().as_bytes().to_vec()));
            }
            // A path holding the lower directory: all of it changes if the
            // path is replaced, nothing of it if only its attributes do.
            Ok((whole && lower.starts_with(&host)).then(Vec::new))
        };
        let mut rel_paths = Vec::new();
        for p in paths {
            rel_paths.extend(map(p, true)?);
        }
        let mut rel_touched = Vec::new();
        for p in touched {
            rel_touched.extend(map(p, false)?);
        }
        let report = self
            .core
            .detach_lower(&rel_paths, &rel_touched)
            .map_err(control_error)?;
        Ok(Reply::Detached(DetachView {
            lower: true,
            dirs_read: report.dirs,
            files_copied: report.files,
            bytes_copied: report.bytes,
            millis: started.elapsed().as_secs_f64() * 1000.0,
        }))
    }

    fn require_owner(&self, peer: &PeerCred, what: &str) -> Result<(), ControlError> {
        if peer.uid == self.owner_uid || peer.uid == 0 {
            return Ok(());
        }
        Err(ControlError::permission_denied(format!(
            "permission denied: only the mount owner (uid {}) or root may {what}",
            self.owner_uid
        )))
    }

    /// The target process must exist and be the caller's (unless root).
    fn require_process(&self, peer: &PeerCred, pid: u32, what: &str) -> Result<(), ControlError> {
        let Some(info) = self.core.process(pid) else {
            return Err(ControlError::not_found(format!("no such process: {pid}")));
        };
        if peer.uid == 0 || info.uid == peer.uid {
            return Ok(());
        }
        Err(ControlError::permission_denied(format!(
            "permission denied: process {pid} belongs to uid {}, not to the caller (uid {}); only root may {what} another user's process",
            info.uid, peer.uid
        )))
    }

    fn branch_view(&self, info: &BranchInfo) -> BranchView {
        branch_view(info)
    }

    fn status(&self, peer: &PeerCred) -> Result<Reply, ControlError> {
        let core = &self.core;
        let branches = core.branch_list();
        let stats = core.stats();
        let name_of = |id| {
            branches
                .iter()
                .find(|b| b.id == id)
                .map(|b| b.name.clone())
                .unwrap_or_default()
        };
        let bindings = core
            .bindings()
            .into_iter()
            .map(|b| BindingView {
                pid: b.pid,
                branch: b.branch.to_string(),
                branch_name: name_of(b.branch),
            })
            .collect();
        let fs_bytes_free = core
            .statfs()
            .map(|s| s.bavail.saturating_mul(u64::from(s.frsize)))
            .unwrap_or(0);
        Ok(Reply::Status(StatusView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            mountpoint: self.facts.mountpoint.display().to_string(),
            backstore: self.facts.backstore.display().to_string(),
            data_path: if self.passthrough.load(Ordering::Acquire) {
                "passthrough"
            } else {
                "transport"
            }
            .to_string(),
            request_channel: if self.uring.load(Ordering::Acquire) {
                "io-uring"
            } else {
                "dev-fuse"
            }
            .to_string(),
            default_branch: core.default_branch().to_string(),
            caller_branch: core.branch_of(peer.pid).to_string(),
            branches: branches.iter().map(|b| self.branch_view(b)).collect(),
            snapshots: stats.snapshots as u64,
            bindings,
            open_handles: stats.open_handles as u64,
            content_objects: stats.content_objects,
            content_bytes: stats.content_bytes,
            cow_clones: stats.cow_clones,
            fs_bytes_free,
        }))
    }
}

impl ControlHandler for CoreControl {
    fn handle(&self, peer: &PeerCred, command: Command) -> Result<Reply, ControlError> {
        let op = command.op();
        let result = self.dispatch(peer, command);
        match &result {
            Ok(_) => tracing::info!(op, pid = peer.pid, uid = peer.uid, "control request done"),
            Err(e) => {
                tracing::info!(op, pid = peer.pid, uid = peer.uid, kind = %e.kind, "control request refused: {e}")
            }
        }
        result
    }
}

impl CoreControl {
    fn dispatch(&self, peer: &PeerCred, command: Command) -> Result<Reply, ControlError> {
        if !self.other_users && peer.uid != self.owner_uid && peer.uid != 0 {
            return Err(ControlError::permission_denied(format!(
                "permission denied: this mount is not shared (no --allow-other); only its owner (uid {}) or root may use it",
                self.owner_uid
            )));
        }
        let core = &self.core;
        match command {
            Command::SnapshotCreate { name, branch } => {
                self.require_owner(peer, "create snapshots")?;
                let b = match branch {
                    Some(b) => core.find_branch(&b).map_err(control_error)?,
                    None => core.branch_of(peer.pid),
                };
                let info = core.snapshot_create(b, name).map_err(control_error)?;
                Ok(Reply::Snapshot(snapshot_view(&info)))
            }
            Command::SnapshotList => Ok(Reply::Snapshots(
                core.snapshot_list().iter().map(snapshot_view).collect(),
            )),
            Command::SnapshotDelete { snapshot } => {
                self.require_owner(peer, "delete snapshots")?;
                let s = core.find_snapshot(&snapshot).map_err(control_error)?;
                core.snapshot_delete(s).map_err(control_error)?;
                Ok(Reply::Deleted { id: s.to_string() })
            }
            Command::BranchCreate { from, name } => {
                self.require_owner(peer, "create branches")?;
                let s = core.find_snapshot(&from).map_err(control_error)?;
                let info = core.branch_create(s, name).map_err(control_error)?;
                Ok(Reply::Branch(branch_view(&info)))
            }
            Command::BranchList => Ok(Reply::Branches(
                core.branch_list().iter().map(branch_view).collect(),
            )),
            Command::BranchDelete { branch, force } => {
                self.require_owner(peer, "delete branches")?;
                let b = core.find_branch(&branch).map_err(control_error)?;
                core.branch_delete(b, force).map_err(control_error)?;
                Ok(Reply::Deleted { id: b.to_string() })
            }
            Command::BranchBind { branch, pid } => self.bind(peer, &branch, pid, true),
            Command::BranchBindPrivate { branch, pid } => self.bind(peer, &branch, pid, false),
            Command::BranchUnbind { pid } => {
                self.require_process(peer, pid, "unbind")?;
                let was_bound = core.unbind(pid).map_err(control_error)?;
                Ok(Reply::Unbound { pid, was_bound })
            }
            Command::Status => self.status(peer),
            Command::BranchCommit {
                branch,
                resolve,
                delete,
            } => self.commit(peer, &branch, resolve, delete),
            Command::Diff { a, b, offset } => {
                // A diff names paths in directories other users may not read.
                self.require_owner(peer, "diff branches and snapshots")?;
                self.diff(&a, &b, offset)
            }
            Command::LowerDetach {
                dir,
                paths,
                touched,
            } => {
                self.require_owner(peer, "detach lower paths")?;
                self.lower_detach(&dir, &paths, &touched)
            }
        }
    }
}

/// The control error for a core error: its kind, and the error's own message.
/// Exhaustive on purpose: a new `FsError` variant must choose its kind here.
pub fn control_error(err: FsError) -> ControlError {
    let kind = match &err {
        FsError::UnknownView(_) | FsError::NotFound => ErrorKind::NotFound,
        FsError::NameTaken(_) | FsError::Exists => ErrorKind::NameTaken,
        FsError::Busy(_) => ErrorKind::Busy,
        FsError::Invalid | FsError::NameTooLong => ErrorKind::InvalidArgument,
        FsError::Perm | FsError::Access | FsError::ReadOnly => ErrorKind::PermissionDenied,
        FsError::NotDir
        | FsError::IsDir
        | FsError::NotEmpty
        | FsError::NoXattr
        | FsError::Range
        | FsError::TooBig
        | FsError::NotSupported
        | FsError::CrossDevice
        | FsError::TooManyLinks
        | FsError::BadHandle
        | FsError::Stale
        | FsError::Loop
        | FsError::FileTooBig
        | FsError::Io(_) => ErrorKind::Internal,
    };
    ControlError::new(kind, err.to_string())
}

/// Seconds since the Unix epoch, with sub-second precision.
/// Bytes of changes one diff reply carries at most, well under the protocol's
/// message limit ([`agentfs_control::MAX_MESSAGE_BYTES`]); the rest come in
/// further pages.
const DIFF_PAGE_BYTES: usize = 512 << 10;

/// `b<N>` or `s<N>`.
fn view_id(v: ViewRef) -> String {
    match v {
        ViewRef::Branch(b) => b.to_string(),
        ViewRef::Snapshot(s) => s.to_string(),
    }
}

fn change_name(k: DiffKind) -> &'static str {
    match k {
        DiffKind::Added => "added",
        DiffKind::Deleted => "deleted",
        DiffKind::Modified => "modified",
        DiffKind::Renamed => "renamed",
        DiffKind::TypeChanged => "type_changed",
    }
}

fn type_name(t: EntryType) -> String {
    match t {
        EntryType::File => "file",
        EntryType::Dir => "dir",
        EntryType::Symlink => "symlink",
        EntryType::Fifo => "fifo",
        EntryType::CharDevice => "char_device",
        EntryType::BlockDevice => "block_device",
        EntryType::Socket => "socket",
    }
    .to_string()
}

fn aspect_name(a: DiffAspect) -> String {
    match a {
        DiffAspect::Data => "data",
        DiffAspect::Mode => "mode",
        DiffAspect::Owner => "owner",
        DiffAspect::Target => "target",
        DiffAspect::Xattrs => "xattrs",
        DiffAspect::Times => "times",
        DiffAspect::Replaced => "replaced",
    }
    .to_string()
}

/// A core diff change as the protocol shows it.
pub fn diff_entry_view(c: &DiffChange) -> DiffEntryView {
    DiffEntryView {
        change: change_name(c.change).to_string(),
        path: c.path.clone(),
        from: c.from.clone(),
        entry_type: type_name(c.entry_type),
        old_type: c.old_type.map(type_name),
        what: c.what.iter().map(|w| aspect_name(*w)).collect(),
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// The wire view of a snapshot.
pub fn snapshot_view(info: &SnapshotInfo) -> SnapshotView {
    SnapshotView {
        id: info.id.to_string(),
        name: info.name.clone(),
        branch: info.branch.to_string(),
        created_unix: unix_seconds(info.created),
        children: info.children.iter().map(ToString::to_string).collect(),
    }
}

/// The wire view of a commit's report.
pub fn commit_view(
    report: &CommitReport,
    resolve: Option<CommitResolve>,
    millis: f64,
) -> CommitView {
    let id = |x: Option<String>| x.unwrap_or_default();
    CommitView {
        branch: id(report.child.map(|b| b.to_string())),
        parent: id(report.parent.map(|b| b.to_string())),
        base: id(report.base.map(|s| s.to_string())),
        committed: report.committed,
        fast_path: report.fast_path,
        branch_changes: report.child_changes as u64,
        parent_changes: report.parent_changes as u64,
        conflicts: report
            .conflicts
            .iter()
            .map(|c| ConflictView {
                path: c.path.clone(),
                child: c.child.to_string(),
                parent: c.parent.to_string(),
            })
            .collect(),
        resolve: resolve.filter(|_| !report.conflicts.is_empty()),
        deleted: report.deleted_child,
        millis,
    }
}

/// The wire view of a branch.
pub fn branch_view(info: &BranchInfo) -> BranchView {
    BranchView {
        id: info.id.to_string(),
        name: info.name.clone(),
        from: info.from.map(|s| s.to_string()),
        created_unix: unix_seconds(info.created),
        is_default: info.is_default,
        open_handles: info.open_handles as u64,
        bound_processes: info.bound_processes as u64,
    }
}

#[cfg(test)]
mod tests;
