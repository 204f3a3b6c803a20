//! Which inodes are open for execution, so `open(O_RDONLY | O_TRUNC)` of a
//! running program fails with ETXTBSY instead of truncating it.
//!
//! The kernel refuses to let anyone write to a file a process executes
//! (ETXTBSY), checking in the VFS before it asks the filesystem. For
//! `O_WRONLY`/`O_RDWR` opens that check comes before FUSE OPEN. But with
//! `FUSE_ATOMIC_O_TRUNC` (which the adapter asks for, so truncation and
//! copy-on-write are one step) an `O_RDONLY | O_TRUNC` open carries the
//! truncation in OPEN, and the kernel checks for a running program only after
//! OPEN returned: the daemon would already have truncated the executable, and
//! the running process dies of SIGBUS on its next page fault (pjdfstest
//! `open::etxtbsy` caught this). The kernel marks the opens `execve` makes with
//! `__FMODE_EXEC` in the OPEN flags; this table counts them per inode until
//! their release, and such a truncating open of a counted inode is refused.
//!
//! One approximation: the kernel lifts its refusal when the program exits,
//! and the RELEASE of the exec open reaches the daemon a moment later, so a
//! read-only truncating open in that moment gets ETXTBSY too.

use parking_lot::Mutex;
use std::collections::HashMap;

/// `__FMODE_EXEC`: the flag bit the kernel sets in the OPEN flags of `execve`'s open.
pub(crate) const FMODE_EXEC: i32 = 0x20;

/// Whether raw OPEN `flags` truncate without asking for write access, the one
/// case where the kernel checks for a running program only after OPEN.
pub(crate) fn truncates_read_only(flags: i32) -> bool {
    flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE == libc::O_RDONLY
}

#[derive(Default)]
struct Table {
    /// Exec opens by file handle, with their inode.
    handles: HashMap<u64, u64>,
    /// Exec opens per inode.
    inodes: HashMap<u64, u32>,
}

/// Exec opens of one mount, by inode number and file handle.
#[derive(Default)]
pub(crate) struct ExecOpens {
    // Leaf lock: taken alone, held for a map update only.
    table: Mutex<Table>,
}

impl ExecOpens {
    /// Handle `fh` of inode `ino` was opened by `execve`.
    pub(crate) fn opened(&self, fh: u64, ino: u64) {
        let mut t = self.table.lock();
        if t.handles.insert(fh, ino).is_none() {
            *t.inodes.entry(ino).or_default() += 1;
        }
    }

    /// Handle `fh` was released (any handle: those not counted are ignored).
    pub(crate) fn released(&self, fh: u64) {
        let mut t = self.table.lock();
        let Some(ino) = t.handles.remove(&fh) else {
            return;
        };
        if let Some(n) = t.inodes.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                t.inodes.remove(&ino);
            }
        }
    }

    /// Whether some process executes inode `ino`.
    pub(crate) fn executing(&self, ino: u64) -> bool {
        self.table.lock().inodes.contains_key(&ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exec_opens_until_their_release() {
        let e = ExecOpens::default();
        assert!(!e.executing(7));
        e.opened(1, 7);
        e.opened(2, 7);
        e.released(99); // not an exec open
        assert!(e.executing(7));
        e.released(1);
        assert!(e.executing(7), "one exec open is left");
        e.released(2);
        assert!(!e.executing(7));
        e.released(2); // a second release of the same handle changes nothing
        assert!(!e.executing(7));
    }

    #[test]
    fn only_read_only_truncation_needs_the_check() {
        assert!(truncates_read_only(libc::O_RDONLY | libc::O_TRUNC));
        // Opens asking for write access are refused by the VFS before OPEN.
        assert!(!truncates_read_only(libc::O_WRONLY | libc::O_TRUNC));
        assert!(!truncates_read_only(libc::O_RDWR | libc::O_TRUNC));
        assert!(!truncates_read_only(libc::O_RDONLY));
    }
}
