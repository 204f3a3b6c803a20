//! The adapter's virtual nodes: `.agentfs`, `.agentfs/control`,
//! `.agentfs/branches` and `.agentfs/snapshots`.
//!
//! They exist in every branch alike and never reach FsCore: `.agentfs` is
//! found by lookup in the root but not listed by readdir (like ZFS's `.zfs`),
//! and `control` is a read-only file whose bytes are the control
//! [`Endpoint`](agentfs_control::Endpoint) as JSON, so a client standing
//! anywhere in the mount can find the daemon's socket. The entries of
//! `branches` and `snapshots` are FsCore's to answer (see `namespace.rs` and
//! `snapshots.rs`).
//!
//! The root of a view (`.agentfs/branches/<b>`, `.agentfs/snapshots/<s>`) has
//! an `.agentfs` of its own, holding `control` only: it cannot be the real
//! one, an ancestor of the view (see [`crate::inode`]). In a `branch-exec`
//! namespace, where the view is the mount path, the real `.agentfs` is
//! bind-mounted over it, so `control`, `branches` and `snapshots` are all
//! there.

use crate::attr::BLKSIZE;
use crate::inode::{
    Ino, AGENTFS_DIR_INO, BRANCHES_DIR_INO, CONTROL_FILE_INO, ROOT_INO, SNAPSHOTS_DIR_INO,
};
use agentfs_core::FsError;
use fuser::{FileAttr, FileType, INodeNo};
use std::ffi::OsStr;
use std::time::SystemTime;

/// Name of the virtual directory in the root.
pub const AGENTFS_DIR_NAME: &str = ".agentfs";
/// Name of the control file in `.agentfs`.
pub const CONTROL_FILE_NAME: &str = "control";
/// Name of the directory of branches in `.agentfs`.
pub const BRANCHES_DIR_NAME: &str = "branches";
/// Name of the directory of snapshots (read-only) in `.agentfs`.
pub const SNAPSHOTS_DIR_NAME: &str = "snapshots";

/// The contents and owner of the virtual nodes.
#[derive(Debug, Clone)]
pub struct VirtualNodes {
    control: Vec<u8>,
    uid: u32,
    gid: u32,
    time: SystemTime,
}

impl VirtualNodes {
    /// Virtual nodes owned by `uid:gid` whose control file holds `control`.
    pub fn new(control: Vec<u8>, uid: u32, gid: u32) -> VirtualNodes {
        VirtualNodes {
            control,
            uid,
            gid,
            time: SystemTime::now(),
        }
    }

    /// Attributes of a virtual node; `None` for any other inode.
    pub fn attr(&self, ino: Ino) -> Option<FileAttr> {
        let (ino, kind, perm, nlink, size) = match ino {
            Ino::AgentfsDir => (AGENTFS_DIR_INO, FileType::Directory, 0o555, 4, 0),
            Ino::BranchesDir => (BRANCHES_DIR_INO, FileType::Directory, 0o555, 2, 0),
            Ino::SnapshotsDir => (SNAPSHOTS_DIR_INO, FileType::Directory, 0o555, 2, 0),
            Ino::ViewAgentfsDir(field) => {
                let ino = crate::inode::VIEW_AGENTFS_BASE | field;
                (ino, FileType::Directory, 0o555, 2, 0)
            }
            Ino::ControlFile => (
                CONTROL_FILE_INO,
                FileType::RegularFile,
                0o444,
                1,
                self.control.len() as u64,
            ),
            Ino::Root | Ino::Node(..) => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        })
    }

    /// Lookup of `name` in `parent` when the answer is virtual; `None` when
    /// FsCore must answer.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Option<Result<FileAttr, FsError>> {
        match parent {
            p if p.is_root_dir() && name == AGENTFS_DIR_NAME => {
                let dir = p.agentfs_dir().and_then(|i| Ino::decode(i).ok())?;
                self.attr(dir).map(Ok)
            }
            Ino::AgentfsDir if name == CONTROL_FILE_NAME => self.attr(Ino::ControlFile).map(Ok),
            Ino::AgentfsDir if name == BRANCHES_DIR_NAME => self.attr(Ino::BranchesDir).map(Ok),
            Ino::AgentfsDir if name == SNAPSHOTS_DIR_NAME => self.attr(Ino::SnapshotsDir).map(Ok),
            Ino::AgentfsDir => Some(Err(FsError::NotFound)),
            Ino::ViewAgentfsDir(_) if name == CONTROL_FILE_NAME => {
                self.attr(Ino::ControlFile).map(Ok)
            }
            Ino::ViewAgentfsDir(_) => Some(Err(FsError::NotFound)),
            Ino::ControlFile => Some(Err(FsError::NotDir)),
            // Branch and snapshot names are FsCore's to answer.
            Ino::Root | Ino::Node(..) | Ino::BranchesDir | Ino::SnapshotsDir => None,
        }
    }

    /// Entries of `.agentfs` after cookie `offset`: (ino, cookie, type, name).
    pub fn entries(&self, offset: u64) -> Vec<(u64, u64, FileType, &'static str)> {
        self.entries_of(Ino::AgentfsDir, offset)
    }

    /// Entries of `.agentfs` (`dir` AgentfsDir) or of a view's own
    /// `.agentfs` (`dir` ViewAgentfsDir) after cookie `offset`; none for
    /// any other `dir`.
    pub fn entries_of(&self, dir: Ino, offset: u64) -> Vec<(u64, u64, FileType, &'static str)> {
        if let Ino::ViewAgentfsDir(field) = dir {
            let all = [
                (
                    crate::inode::VIEW_AGENTFS_BASE | field,
                    1,
                    FileType::Directory,
                    ".",
                ),
                (
                    crate::inode::view_root_of_field(field),
                    2,
                    FileType::Directory,
                    "..",
                ),
                (
                    CONTROL_FILE_INO,
                    3,
                    FileType::RegularFile,
                    CONTROL_FILE_NAME,
                ),
            ];
            return all.into_iter().filter(|e| e.1 > offset).collect();
        }
        if dir != Ino::AgentfsDir {
            return Vec::new();
        }
        let all = [
            (AGENTFS_DIR_INO, 1, FileType::Directory, "."),
            (ROOT_INO, 2, FileType::Directory, ".."),
            (
                CONTROL_FILE_INO,
                3,
                FileType::RegularFile,
                CONTROL_FILE_NAME,
            ),
            (BRANCHES_DIR_INO, 4, FileType::Directory, BRANCHES_DIR_NAME),
            (
                SNAPSHOTS_DIR_INO,
                5,
                FileType::Directory,
                SNAPSHOTS_DIR_NAME,
            ),
        ];
        all.into_iter().filter(|e| e.1 > offset).collect()
    }

    /// Length of the control file.
    pub fn control_len(&self) -> u64 {
        self.control.len() as u64
    }

    /// Up to `size` bytes of the control file at `offset`.
    pub fn read(&self, offset: u64, size: u32) -> &[u8] {
        let len = self.control.len();
        let start = usize::try_from(offset).unwrap_or(len).min(len);
        let end = start.saturating_add(size as usize).min(len);
        &self.control[start..end]
    }
}

/// Whether `name` in `parent` is the reserved name `.agentfs` of the root,
/// which FsCore must never create, remove or rename.
pub fn is_reserved(parent: Ino, name: &OsStr) -> bool {
    parent.is_root_dir() && name == AGENTFS_DIR_NAME
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> VirtualNodes {
        VirtualNodes::new(b"{\"protocol\": 1}\n".to_vec(), 1000, 1000)
    }

    #[test]
    fn agentfs_dir_is_found_in_the_root_only() {
        let v = nodes();
        let dir = v
            .lookup(Ino::Root, OsStr::new(".agentfs"))
            .unwrap()
            .unwrap();
        assert_eq!(dir.ino, INodeNo(AGENTFS_DIR_INO));
        assert_eq!(dir.kind, FileType::Directory);
        assert!(v.lookup(Ino::Root, OsStr::new("other")).is_none());
        let sub = Ino::Node(agentfs_core::BranchId(1), agentfs_core::NodeId(5));
        assert!(v.lookup(sub, OsStr::new(".agentfs")).is_none());
    }

    #[test]
    fn control_file_is_read_only_and_sized_by_its_content() {
        let v = nodes();
        let f = v
            .lookup(Ino::AgentfsDir, OsStr::new("control"))
            .unwrap()
            .unwrap();
        assert_eq!(f.ino, INodeNo(CONTROL_FILE_INO));
        assert_eq!(f.perm, 0o444);
        assert_eq!(f.size, 16);
        assert!(matches!(
            v.lookup(Ino::AgentfsDir, OsStr::new("nope")),
            Some(Err(FsError::NotFound))
        ));
        assert!(matches!(
            v.lookup(Ino::ControlFile, OsStr::new("x")),
            Some(Err(FsError::NotDir))
        ));
        let snaps = v
            .lookup(Ino::AgentfsDir, OsStr::new("snapshots"))
            .unwrap()
            .unwrap();
        assert_eq!(snaps.ino, INodeNo(SNAPSHOTS_DIR_INO));
        assert_eq!((snaps.kind, snaps.perm), (FileType::Directory, 0o555));
        // Snapshot names are FsCore's.
        assert!(v.lookup(Ino::SnapshotsDir, OsStr::new("base")).is_none());
    }

    #[test]
    fn reads_are_clamped_to_the_content() {
        let v = nodes();
        assert_eq!(v.read(0, 4096), b"{\"protocol\": 1}\n");
        assert_eq!(v.read(2, 8), b"protocol");
        assert_eq!(v.read(16, 10), b"");
        assert_eq!(v.read(u64::MAX, 10), b"");
    }

    #[test]
    fn listing_resumes_after_a_cookie() {
        let v = nodes();
        let names: Vec<_> = v.entries(0).into_iter().map(|e| e.3).collect();
        assert_eq!(names, [".", "..", "control", "branches", "snapshots"]);
        let names: Vec<_> = v.entries(2).into_iter().map(|e| e.3).collect();
        assert_eq!(names, ["control", "branches", "snapshots"]);
        assert!(v.entries(5).is_empty());
    }

    #[test]
    fn a_view_root_has_an_agentfs_of_its_own_with_control_only() {
        use crate::inode::{view_root, VIEW_AGENTFS_BASE};
        let v = nodes();
        let b = agentfs_core::BranchId(3);
        let root = Ino::decode(view_root(b).unwrap()).unwrap();
        let dir = v.lookup(root, OsStr::new(".agentfs")).unwrap().unwrap();
        assert_ne!(dir.ino, INodeNo(AGENTFS_DIR_INO));
        let Ok(own @ Ino::ViewAgentfsDir(_)) = Ino::decode(dir.ino.0) else {
            panic!("not a view's .agentfs: {:#x}", dir.ino.0)
        };
        assert_eq!(dir.ino.0 & VIEW_AGENTFS_BASE, VIEW_AGENTFS_BASE);
        let control = v.lookup(own, OsStr::new("control")).unwrap().unwrap();
        assert_eq!(control.ino, INodeNo(CONTROL_FILE_INO));
        for other in ["branches", "snapshots", "x"] {
            assert!(matches!(
                v.lookup(own, OsStr::new(other)),
                Some(Err(FsError::NotFound))
            ));
        }
        let names: Vec<_> = v.entries_of(own, 0).into_iter().map(|e| e.3).collect();
        assert_eq!(names, [".", "..", "control"]);
        assert_eq!(v.entries_of(own, 0)[1].0, view_root(b).unwrap());
        assert!(v.entries_of(Ino::BranchesDir, 0).is_empty());
    }

    #[test]
    fn only_dot_agentfs_in_the_root_is_reserved() {
        assert!(is_reserved(Ino::Root, OsStr::new(".agentfs")));
        assert!(!is_reserved(Ino::Root, OsStr::new("agentfs")));
        let sub = Ino::Node(agentfs_core::BranchId(1), agentfs_core::NodeId(5));
        assert!(!is_reserved(sub, OsStr::new(".agentfs")));
    }
}
