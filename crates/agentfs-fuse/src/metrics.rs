//! The adapter's counters, and every metric name in one place.
//!
//! Counters are plain atomics: requests by operation, errors by errno, and
//! jobs the transport refused. [`Metrics::snapshot`] turns them into
//! `(name, value)` pairs for logs and a future `stats` command; the names are
//! the constants below, so a dashboard and the code cannot drift apart.

use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of the per-operation request counters: `fuse.requests.<op>`.
pub const REQUESTS: &str = "fuse.requests";
/// Prefix of the per-errno error counters: `fuse.errors.<ERRNO NAME>`.
pub const ERRORS: &str = "fuse.errors";
/// Jobs the transport refused (it was shut down); each became an EIO.
pub const SUBMIT_FAILURES: &str = "fuse.submit_failures";

/// The operations the adapter serves, for per-operation counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    Lseek,
}

impl Op {
    /// Every operation, in counter order.
    pub const ALL: [Op; 31] = [
        Op::Lookup,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Access,
        Op::Create,
        Op::Fallocate,
        Op::Lseek,
    ];

    /// The operation's name in logs and metric names.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Errnos above this are counted together in the last slot.
const MAX_ERRNO: usize = 134;

/// The adapter's counters. Shared by every FUSE thread and transport job.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; Op::ALL.len()],
    errors: [AtomicU64; MAX_ERRNO + 1],
    submit_failures: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            submit_failures: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// One request of `op` arrived.
    pub fn count_request(&self, op: Op) {
        self.requests[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// One request was answered with `errno`.
    pub fn count_error(&self, errno: i32) {
        let slot = usize::try_from(errno).unwrap_or(0).min(MAX_ERRNO);
        self.errors[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// The transport refused a job.
    pub fn count_submit_failure(&self) {
        self.submit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of `op` so far.
    pub fn requests(&self, op: Op) -> u64 {
        self.requests[op.index()].load(Ordering::Relaxed)
    }

    /// Errors answered with `errno` so far.
    pub fn errors(&self, errno: i32) -> u64 {
        let slot = usize::try_from(errno).unwrap_or(0).min(MAX_ERRNO);
        self.errors[slot].load(Ordering::Relaxed)
    }

    /// Every non-zero counter as `(metric name, value)`.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for op in Op::ALL {
            let n = self.requests(op);
            if n > 0 {
                out.push((format!("{REQUESTS}.{}", op.name()), n));
            }
        }
        for (errno, counter) in self.errors.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                out.push((format!("{ERRORS}.{}", errno_name(errno as i32)), n));
            }
        }
        let n = self.submit_failures.load(Ordering::Relaxed);
        if n > 0 {
            out.push((SUBMIT_FAILURES.to_string(), n));
        }
        out
    }
}

/// The symbolic name of an errno (`ENOENT`), or its number for rare ones.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::E2BIG => "E2BIG",
        libc::ENXIO => "ENXIO",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENOSYS => "ENOSYS",
        _ => return format!("errno{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_listed_in_index_order() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
    }

    #[test]
    fn counters_show_up_under_their_names() {
        let m = Metrics::new();
        m.count_request(Op::Lookup);
        m.count_request(Op::Lookup);
        m.count_error(libc::ENOENT);
        m.count_error(9999);
        m.count_submit_failure();
        let snap = m.snapshot();
        assert!(
            snap.contains(&("fuse.requests.lookup".to_string(), 2)),
            "{snap:?}"
        );
        assert!(
            snap.contains(&("fuse.errors.ENOENT".to_string(), 1)),
            "{snap:?}"
        );
        assert!(
            snap.contains(&(format!("fuse.errors.errno{MAX_ERRNO}"), 1)),
            "{snap:?}"
        );
        assert!(
            snap.contains(&("fuse.submit_failures".to_string(), 1)),
            "{snap:?}"
        );
        assert_eq!(m.requests(Op::Write), 0);
        assert!(!snap.iter().any(|(k, _)| k == "fuse.requests.write"));
        assert_eq!(m.errors(libc::ENOENT), 1);
    }
}
