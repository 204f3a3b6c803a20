//! Decoding a request taken from a ring and calling the adapter with it.
//!
//! On a ring the kernel splits a request in three: `struct fuse_in_header`
//! (the entry's `in_out`), the opcode's own fixed header, its first argument,
//! (`op_in`; nothing for opcodes whose first argument is empty, such as
//! LOOKUP), and the rest of its arguments one after the other in the payload
//! buffer (names NUL-terminated, then write data or xattr values). The
//! layouts are those of `<linux/fuse.h>`.

use super::{answer, Queue};
use crate::adapter::AgentFs;
use crate::metrics::Op;
use crate::wire::{
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
};
use fuser::{AccessFlags, Errno, FileHandle, INodeNo, OpenFlags, RenameFlags, TimeOrNow};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_READLINK: u32 = 5;
const FUSE_SYMLINK: u32 = 6;
const FUSE_MKNOD: u32 = 8;
const FUSE_MKDIR: u32 = 9;
const FUSE_UNLINK: u32 = 10;
const FUSE_RMDIR: u32 = 11;
const FUSE_RENAME: u32 = 12;
const FUSE_LINK: u32 = 13;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_SETXATTR: u32 = 21;
const FUSE_GETXATTR: u32 = 22;
const FUSE_LISTXATTR: u32 = 23;
const FUSE_REMOVEXATTR: u32 = 24;
const FUSE_FLUSH: u32 = 25;
const FUSE_OPENDIR: u32 = 27;
const FUSE_READDIR: u32 = 28;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_FSYNCDIR: u32 = 30;
const FUSE_ACCESS: u32 = 34;
const FUSE_CREATE: u32 = 35;
const FUSE_DESTROY: u32 = 38;
const FUSE_IOCTL: u32 = 39;
const FUSE_FALLOCATE: u32 = 43;
const FUSE_READDIRPLUS: u32 = 44;
const FUSE_RENAME2: u32 = 45;
const FUSE_LSEEK: u32 = 46;

const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
const FATTR_CTIME: u32 = 1 << 10;

/// Little reader over one argument block.
struct Args<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Args<'a> {
    fn new(bytes: &'a [u8]) -> Args<'a> {
        Args { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A NUL-terminated name.
    fn name(&mut self) -> Option<&'a OsStr> {
        let rest = self.bytes.get(self.at..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        self.at += len + 1;
        Some(OsStr::from_bytes(&rest[..len]))
    }
}

/// `struct fuse_in_header`, the fields the adapter uses.
struct InHeader {
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
}

fn in_header(bytes: &[u8]) -> Option<InHeader> {
    let mut a = Args::new(bytes);
    let _len = a.u32()?;
    let opcode = a.u32()?;
    let unique = a.u64()?;
    let nodeid = a.u64()?;
    let (uid, gid, pid) = (a.u32()?, a.u32()?, a.u32()?);
    Some(InHeader {
        opcode,
        unique,
        nodeid,
        uid,
        gid,
        pid,
    })
}

fn time(secs: u64, nsecs: u32) -> SystemTime {
    let secs = secs as i64;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::from_nanos(u64::from(nsecs))
    }
}

/// Decode the request in a slot the kernel completed and hand it to `fs`.
/// Whatever cannot be decoded is answered EINVAL (EIO if even the header is
/// short), an opcode the adapter does not serve ENOSYS, as fuser does.
pub(super) fn dispatch(
    fs: &AgentFs,
    queue: &Arc<Queue>,
    slot: u16,
    header: &[u8],
    op_in: &[u8],
    payload: &[u8],
) {
    let Some(h) = in_header(header) else {
        tracing::error!("a ring request with a short header");
        // Nothing to address an answer to but the slot: answer unique 0,
        // which the kernel rejects; the slot is then fetched again.
        return answer(queue, slot, 0, payload.len()).error(Errno::EIO);
    };
    let answer = answer(queue, slot, h.unique, payload.len());
    let req = Request::new(h.uid, h.gid, h.pid, h.unique);
    let ino = INodeNo(h.nodeid);
    let mut op = Args::new(op_in);
    let mut args = Args::new(payload);
    let device = fs.device();
    // Decode with `?` inside; a short or malformed request is EINVAL.
    macro_rules! or_einval {
        ($reply:expr, $e:expr) => {
            match decoded(|| $e) {
                Some(v) => v,
                None => return $reply.error(Errno::EINVAL),
            }
        };
    }
    match h.opcode {
        FUSE_LOOKUP => {
            let reply = ReplyEntry::ring(answer);
            let name = or_einval!(reply, args.name());
            fs.do_lookup(&req, ino, name, reply)
        }
        FUSE_GETATTR => fs.do_getattr(&req, ino, ReplyAttr::ring(answer)),
        FUSE_SETATTR => {
            let reply = ReplyAttr::ring(answer);
            let set = or_einval!(reply, setattr(&mut op));
            fs.do_setattr(&req, ino, set, reply)
        }
        FUSE_READLINK => fs.do_readlink(&req, ino, ReplyData::ring(answer)),
        FUSE_SYMLINK => {
            let reply = ReplyEntry::ring(answer);
            let name = or_einval!(reply, args.name());
            let target = or_einval!(reply, args.name());
            fs.do_symlink(&req, ino, name, Path::new(target), reply)
        }
        FUSE_MKNOD => {
            let reply = ReplyEntry::ring(answer);
            let (mode, rdev, umask) = or_einval!(reply, Some((op.u32()?, op.u32()?, op.u32()?)));
            let name = or_einval!(reply, args.name());
            fs.do_mknod(&req, ino, name, mode, umask, rdev, reply)
        }
        FUSE_MKDIR => {
            let reply = ReplyEntry::ring(answer);
            let (mode, umask) = or_einval!(reply, Some((op.u32()?, op.u32()?)));
            let name = or_einval!(reply, args.name());
            fs.do_mkdir(&req, ino, name, mode, umask, reply)
        }
        FUSE_UNLINK | FUSE_RMDIR => {
            let reply = ReplyEmpty::ring(answer);
            let name = or_einval!(reply, args.name());
            let kind = if h.opcode == FUSE_UNLINK {
                Op::Unlink
            } else {
                Op::Rmdir
            };
            fs.do_remove(kind, &req, ino, name, reply)
        }
        FUSE_RENAME | FUSE_RENAME2 => {
            let reply = ReplyEmpty::ring(answer);
            let newdir = or_einval!(reply, op.u64());
            let flags = if h.opcode == FUSE_RENAME2 {
                or_einval!(reply, op.u32())
            } else {
                0
            };
            let name = or_einval!(reply, args.name());
            let newname = or_einval!(reply, args.name());
            let flags = RenameFlags::from_bits_retain(flags);
            fs.do_rename(&req, ino, name, INodeNo(newdir), newname, flags, reply)
        }
        FUSE_LINK => {
            let reply = ReplyEntry::ring(answer);
            let old = or_einval!(reply, op.u64());
            let newname = or_einval!(reply, args.name());
            fs.do_link(&req, INodeNo(old), ino, newname, reply)
        }
        FUSE_OPEN | FUSE_OPENDIR => {
            let reply = ReplyOpen::ring(answer, device);
            let flags = or_einval!(reply, op.u32());
            if h.opcode == FUSE_OPEN {
                fs.do_open(&req, ino, OpenFlags(flags as i32), reply)
            } else {
                fs.do_opendir(&req, ino, reply)
            }
        }
        FUSE_READ => {
            let reply = ReplyData::ring(answer);
            let (fh, offset, size) = or_einval!(reply, Some((op.u64()?, op.u64()?, op.u32()?)));
            fs.do_read(&req, ino, FileHandle(fh), offset, size, reply)
        }
        FUSE_WRITE => {
            let reply = ReplyWrite::ring(answer);
            let (fh, offset, size) = or_einval!(reply, Some((op.u64()?, op.u64()?, op.u32()?)));
            let data = or_einval!(reply, args.take(size as usize));
            fs.do_write(&req, ino, FileHandle(fh), offset, data, reply)
        }
        FUSE_STATFS => fs.do_statfs(&req, ino, ReplyStatfs::ring(answer)),
        FUSE_RELEASE | FUSE_RELEASEDIR => {
            let reply = ReplyEmpty::ring(answer);
            let fh = FileHandle(or_einval!(reply, op.u64()));
            if h.opcode == FUSE_RELEASE {
                fs.do_release(&req, ino, fh, reply)
            } else {
                fs.do_releasedir(&req, ino, fh, reply)
            }
        }
        FUSE_FSYNC => {
            let reply = ReplyEmpty::ring(answer);
            let (fh, flags) = or_einval!(reply, Some((op.u64()?, op.u32()?)));
            fs.do_fsync(&req, ino, FileHandle(fh), flags & 1 != 0, reply)
        }
        FUSE_FSYNCDIR => fs.do_fsyncdir(&req, ino, ReplyEmpty::ring(answer)),
        FUSE_FLUSH => {
            // As through fuser: nothing is buffered, and ENOSYS stops FLUSH.
            fs.count_request(Op::Flush, h.nodeid, &req);
            answer.error(Errno::ENOSYS)
        }
        FUSE_SETXATTR => {
            let reply = ReplyEmpty::ring(answer);
            let (size, flags) = or_einval!(reply, Some((op.u32()?, op.u32()?)));
            let name = or_einval!(reply, args.name());
            let value = or_einval!(reply, args.take(size as usize));
            fs.do_setxattr(&req, ino, name, value, flags as i32, 0, reply)
        }
        FUSE_GETXATTR => {
            let reply = ReplyXattr::ring(answer);
            let size = or_einval!(reply, op.u32());
            let name = or_einval!(reply, args.name());
            fs.do_getxattr(&req, ino, name, size, reply)
        }
        FUSE_LISTXATTR => {
            let reply = ReplyXattr::ring(answer);
            let size = or_einval!(reply, op.u32());
            fs.do_listxattr(&req, ino, size, reply)
        }
        FUSE_REMOVEXATTR => {
            let reply = ReplyEmpty::ring(answer);
            let name = or_einval!(reply, args.name());
            fs.do_removexattr(&req, ino, name, reply)
        }
        FUSE_READDIR | FUSE_READDIRPLUS => {
            let parsed = decoded(|| Some((op.u64()?, op.u64()?, op.u32()?)));
            let Some((fh, offset, size)) = parsed else {
                return answer.error(Errno::EINVAL);
            };
            let max = (size as usize).min(queue.payload_len);
            if h.opcode == FUSE_READDIR {
                let reply = ReplyDirectory::ring(answer, max);
                fs.do_readdir(&req, ino, FileHandle(fh), offset, reply)
            } else {
                let reply = ReplyDirectoryPlus::ring(answer, max);
                fs.do_readdirplus(&req, ino, FileHandle(fh), offset, reply)
            }
        }
        FUSE_ACCESS => {
            let reply = ReplyEmpty::ring(answer);
            let mask = or_einval!(reply, op.u32());
            fs.do_access(&req, ino, AccessFlags::from_bits_retain(mask as i32), reply)
        }
        FUSE_CREATE => {
            let reply = ReplyCreate::ring(answer, device);
            let (flags, mode, umask) = or_einval!(reply, Some((op.u32()?, op.u32()?, op.u32()?)));
            let name = or_einval!(reply, args.name());
            fs.do_create(&req, ino, name, mode, umask, flags as i32, reply)
        }
        FUSE_FALLOCATE => {
            let reply = ReplyEmpty::ring(answer);
            let (fh, offset, length, mode) =
                or_einval!(reply, Some((op.u64()?, op.u64()?, op.u64()?, op.u32()?)));
            fs.do_fallocate(
                &req,
                ino,
                FileHandle(fh),
                offset,
                length,
                mode as i32,
                reply,
            )
        }
        FUSE_LSEEK => {
            let reply = ReplyLseek::ring(answer);
            let (fh, offset, whence) = or_einval!(reply, Some((op.u64()?, op.u64()?, op.u32()?)));
            fs.do_lseek(
                &req,
                ino,
                FileHandle(fh),
                offset as i64,
                whence as i32,
                reply,
            )
        }
        FUSE_DESTROY => answer.send(&[]),
        // No ioctls (shells probe TCGETS on every redirect), as through fuser.
        FUSE_IOCTL => answer.error(Errno::ENOTTY),
        // POLL, COPY_FILE_RANGE, locks, BMAP, TMPFILE, STATX, ...: ENOSYS
        // tells the kernel to do without, as fuser's defaults do.
        _ => answer.error(Errno::ENOSYS),
    }
}

/// Run a decoding step written with `?`.
fn decoded<T>(step: impl FnOnce() -> Option<T>) -> Option<T> {
    step()
}

/// `struct fuse_setattr_in` as FsCore's change.
fn setattr(op: &mut Args<'_>) -> Option<agentfs_core::SetAttr> {
    let valid = op.u32()?;
    let _padding = op.u32()?;
    let _fh = op.u64()?;
    let size = op.u64()?;
    let _lock_owner = op.u64()?;
    let (atime, mtime, ctime) = (op.u64()?, op.u64()?, op.u64()?);
    let (atimensec, mtimensec, ctimensec) = (op.u32()?, op.u32()?, op.u32()?);
    let mode = op.u32()?;
    let _unused4 = op.u32()?;
    let (uid, gid) = (op.u32()?, op.u32()?);
    let when = |now: u32, secs, nsecs| {
        if valid & now != 0 {
            TimeOrNow::Now
        } else {
            TimeOrNow::SpecificTime(time(secs, nsecs))
        }
    };
    Some(agentfs_core::SetAttr {
        mode: (valid & FATTR_MODE != 0).then_some(mode),
        uid: (valid & FATTR_UID != 0).then_some(uid),
        gid: (valid & FATTR_GID != 0).then_some(gid),
        size: (valid & FATTR_SIZE != 0).then_some(size),
        atime: (valid & FATTR_ATIME != 0)
            .then(|| crate::attr::set_time(when(FATTR_ATIME_NOW, atime, atimensec))),
        mtime: (valid & FATTR_MTIME != 0)
            .then(|| crate::attr::set_time(when(FATTR_MTIME_NOW, mtime, mtimensec))),
        ctime: (valid & FATTR_CTIME != 0).then(|| time(ctime, ctimensec)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setattr_in(valid: u32, mode: u32, size: u64, mtime: (u64, u32)) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&valid.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&7u64.to_ne_bytes()); // fh
        b.extend_from_slice(&size.to_ne_bytes());
        b.extend_from_slice(&0u64.to_ne_bytes()); // lock owner
        b.extend_from_slice(&0u64.to_ne_bytes()); // atime
        b.extend_from_slice(&mtime.0.to_ne_bytes());
        b.extend_from_slice(&0u64.to_ne_bytes()); // ctime
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&mtime.1.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&mode.to_ne_bytes());
        b.extend_from_slice(&[0; 16]); // unused4, uid, gid, unused5
        assert_eq!(b.len(), 88, "struct fuse_setattr_in");
        b
    }

    #[test]
    fn setattr_takes_only_the_valid_fields() {
        let b = setattr_in(FATTR_MODE | FATTR_MTIME, 0o600, 99, (1_000, 5));
        let set = setattr(&mut Args::new(&b)).unwrap();
        assert_eq!(set.mode, Some(0o600));
        assert_eq!(
            (set.size, set.uid, set.gid, set.atime.is_some()),
            (None, None, None, false)
        );
        assert!(set.mtime.is_some());
        let b = setattr_in(FATTR_SIZE, 0o600, 99, (0, 0));
        let set = setattr(&mut Args::new(&b)).unwrap();
        assert_eq!((set.mode, set.size), (None, Some(99)));
        assert!(setattr(&mut Args::new(&b[..40])).is_none(), "short header");
    }

    #[test]
    fn names_end_at_their_nul_and_a_missing_nul_is_an_error() {
        let mut a = Args::new(b"old\0new\0rest");
        assert_eq!(a.name(), Some(OsStr::new("old")));
        assert_eq!(a.name(), Some(OsStr::new("new")));
        assert_eq!(a.name(), None);
        assert_eq!(a.take(4), Some(&b"rest"[..]));
    }

    #[test]
    fn times_before_the_epoch_decode() {
        assert_eq!(time(5, 1), UNIX_EPOCH + Duration::new(5, 1));
        assert_eq!(
            time((-2i64) as u64, 500),
            UNIX_EPOCH - Duration::new(2, 0) + Duration::from_nanos(500)
        );
    }
}
