//! Who is asking: the caller's uid, gid, supplementary groups and pid.

use std::sync::OnceLock;

/// The credentials of one request.
///
/// Supplementary groups are read from `/proc/<pid>/status` only when a
/// permission check needs them (owner and primary group did not decide it),
/// so the common path costs nothing.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    groups: OnceLock<Vec<u32>>,
}

impl Ctx {
    /// A caller whose supplementary groups are read from /proc on demand.
    pub fn new(uid: u32, gid: u32, pid: u32) -> Ctx {
        Ctx {
            uid,
            gid,
            pid,
            groups: OnceLock::new(),
        }
    }

    /// A caller with known supplementary groups.
    pub fn with_groups(uid: u32, gid: u32, groups: Vec<u32>) -> Ctx {
        let cell = OnceLock::new();
        let _ = cell.set(groups);
        Ctx {
            uid,
            gid,
            pid: 0,
            groups: cell,
        }
    }

    /// The superuser, as FsCore's own internal work and tests use it.
    pub fn root() -> Ctx {
        Ctx::with_groups(0, 0, Vec::new())
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether `gid` is the caller's primary or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        gid == self.gid || self.groups().contains(&gid)
    }

    fn groups(&self) -> &[u32] {
        self.groups
            .get_or_init(|| read_groups(self.pid).unwrap_or_default())
    }
}

fn read_groups(pid: u32) -> Option<Vec<u32>> {
    if pid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Groups:"))?;
    Some(
        line["Groups:".len()..]
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}
