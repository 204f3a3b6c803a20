//! One request and its reply, whichever channel the kernel sent it on.
//!
//! The kernel hands AgentFS requests through `fuser`'s session (`read(2)` of
//! `/dev/fuse`) or, where the kernel offers it and the mount asks for it,
//! through AgentFS's own FUSE-over-io_uring queues ([`crate::ring`]). The
//! adapter answers both through the types here, which have the names and
//! methods of `fuser`'s reply types: each wraps either `fuser`'s reply or a
//! ring `Answer`, which encodes the same reply into the ring entry.
//!
//! Backing files for passthrough ([`BackingId`]) are registered by AgentFS
//! itself on the connection's `/dev/fuse` descriptor, so one id serves opens
//! from both channels.

use crate::ring::Answer;
use fuser::{Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who asked: what the adapter reads from a request's header.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    uid: u32,
    gid: u32,
    pid: u32,
    unique: u64,
}

impl Request {
    pub(crate) fn new(uid: u32, gid: u32, pid: u32, unique: u64) -> Request {
        Request {
            uid,
            gid,
            pid,
            unique,
        }
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn gid(&self) -> u32 {
        self.gid
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn unique(&self) -> u64 {
        self.unique
    }
}

impl From<&fuser::Request> for Request {
    fn from(req: &fuser::Request) -> Request {
        Request::new(req.uid(), req.gid(), req.pid(), req.unique().0)
    }
}

/// The connection's `/dev/fuse` descriptor, for registering backing files.
#[derive(Debug)]
pub struct FuseDevice(OwnedFd);

impl FuseDevice {
    /// A duplicate of `fd`, the session's `/dev/fuse`.
    pub fn duplicate(fd: impl AsFd) -> std::io::Result<Arc<FuseDevice>> {
        Ok(Arc::new(FuseDevice(fd.as_fd().try_clone_to_owned()?)))
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

nix::ioctl_write_ptr!(backing_close, 229, 2, u32);

/// A backing file registered with the kernel for passthrough; closed (the
/// kernel's reference dropped) when the last handle using it is dropped.
#[derive(Debug)]
pub struct BackingId {
    id: u32,
    device: Arc<FuseDevice>,
}

impl BackingId {
    /// Register `file` as a backing file on `device`.
    pub fn open(device: &Arc<FuseDevice>, file: impl AsFd) -> std::io::Result<BackingId> {
        let id = fuser::BackingId::create_raw(device.fd(), file)?;
        Ok(BackingId {
            id,
            device: Arc::clone(device),
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for BackingId {
    fn drop(&mut self) {
        // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE reads one u32 from the pointer,
        // which points at our own field for the duration of the call.
        if let Err(e) = unsafe { backing_close(self.device.0.as_raw_fd(), &self.id) } {
            // ENODEV/ENOTCONN once the connection is gone: nothing to close.
            tracing::debug!(backing_id = self.id, error = %e, "closing a backing id failed");
        }
    }
}

/// Where a reply goes.
enum To<F> {
    Fuser(F),
    Ring(Answer),
}

macro_rules! reply_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(To<fuser::$name>);

        impl From<fuser::$name> for $name {
            fn from(r: fuser::$name) -> $name {
                $name(To::Fuser(r))
            }
        }

        impl $name {
            pub(crate) fn ring(answer: Answer) -> $name {
                $name(To::Ring(answer))
            }

            pub fn error(self, err: Errno) {
                match self.0 {
                    To::Fuser(r) => r.error(err),
                    To::Ring(a) => a.error(err),
                }
            }
        }
    };
}

reply_type!(
    /// The answer to LOOKUP, MKNOD, MKDIR, SYMLINK and LINK.
    ReplyEntry
);
reply_type!(
    /// The answer to GETATTR and SETATTR.
    ReplyAttr
);
reply_type!(
    /// The answer to READ and READLINK.
    ReplyData
);
reply_type!(
    /// The answer to WRITE and COPY_FILE_RANGE.
    ReplyWrite
);
reply_type!(
    /// An answer without data.
    ReplyEmpty
);
/// The answer to OPEN and OPENDIR.
pub struct ReplyOpen(To<fuser::ReplyOpen>, Option<Arc<FuseDevice>>);

/// The answer to CREATE.
pub struct ReplyCreate(To<fuser::ReplyCreate>, Option<Arc<FuseDevice>>);

macro_rules! open_reply_type {
    ($name:ident) => {
        impl $name {
            /// `device`: the connection, for registering backing files
            /// (`None` where passthrough cannot be used).
            pub fn fuser(r: fuser::$name, device: Option<Arc<FuseDevice>>) -> $name {
                $name(To::Fuser(r), device)
            }

            pub(crate) fn ring(answer: Answer, device: Option<Arc<FuseDevice>>) -> $name {
                $name(To::Ring(answer), device)
            }

            pub fn error(self, err: Errno) {
                match self.0 {
                    To::Fuser(r) => r.error(err),
                    To::Ring(a) => a.error(err),
                }
            }

            /// Register `fd` as a backing file for a passthrough answer.
            pub fn open_backing(&self, fd: impl AsFd) -> std::io::Result<BackingId> {
                match &self.1 {
                    Some(device) => BackingId::open(device, fd),
                    None => Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
                }
            }
        }
    };
}

open_reply_type!(ReplyOpen);
open_reply_type!(ReplyCreate);
reply_type!(
    /// The answer to STATFS.
    ReplyStatfs
);
reply_type!(
    /// The answer to GETXATTR and LISTXATTR.
    ReplyXattr
);
reply_type!(
    /// The answer to LSEEK.
    ReplyLseek
);

impl ReplyEntry {
    pub fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation) {
        self.entry_with_ttls(ttl, ttl, attr, generation)
    }

    pub fn entry_with_ttls(
        self,
        attr_ttl: &Duration,
        entry_ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) {
        match self.0 {
            To::Fuser(r) => r.entry_with_ttls(attr_ttl, entry_ttl, attr, generation),
            To::Ring(a) => {
                let mut out = Out::default();
                out.entry(attr, generation, entry_ttl, attr_ttl);
                a.send(&out.0)
            }
        }
    }
}

impl ReplyAttr {
    pub fn attr(self, ttl: &Duration, attr: &FileAttr) {
        match self.0 {
            To::Fuser(r) => r.attr(ttl, attr),
            To::Ring(a) => {
                let mut out = Out::default();
                let (secs, nsecs) = ttl_parts(ttl);
                out.u64(secs).u32(nsecs).u32(0).attr(attr);
                a.send(&out.0)
            }
        }
    }
}

impl ReplyData {
    pub fn data(self, data: &[u8]) {
        match self.0 {
            To::Fuser(r) => r.data(data),
            To::Ring(a) => a.send(data),
        }
    }
}

impl ReplyWrite {
    pub fn written(self, size: u32) {
        match self.0 {
            To::Fuser(r) => r.written(size),
            To::Ring(a) => a.send(Out::default().u32(size).u32(0).bytes()),
        }
    }
}

impl ReplyEmpty {
    pub fn ok(self) {
        match self.0 {
            To::Fuser(r) => r.ok(),
            To::Ring(a) => a.send(&[]),
        }
    }
}

impl ReplyOpen {
    pub fn opened(self, fh: FileHandle, flags: FopenFlags) {
        match self.0 {
            To::Fuser(r) => r.opened(fh, flags),
            To::Ring(a) => a.send(Out::default().open(fh, flags, 0).bytes()),
        }
    }

    pub fn opened_passthrough(self, fh: FileHandle, flags: FopenFlags, backing: &BackingId) {
        let flags = flags | FopenFlags::FOPEN_PASSTHROUGH;
        match self.0 {
            To::Fuser(r) => {
                // SAFETY: `backing.id` is a live id registered on this
                // connection; the wrapper is turned back into a raw id below
                // so that it never closes it (`backing` does, when dropped).
                let wrapped = unsafe { r.wrap_backing(backing.id) };
                r.opened_passthrough(fh, flags, &wrapped);
                let _ = wrapped.into_raw();
            }
            To::Ring(a) => a.send(Out::default().open(fh, flags, backing.id).bytes()),
        }
    }
}

impl ReplyCreate {
    pub fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    ) {
        match self.0 {
            To::Fuser(r) => r.created(ttl, attr, generation, fh, flags),
            To::Ring(a) => {
                let mut out = Out::default();
                out.entry(attr, generation, ttl, ttl).open(fh, flags, 0);
                a.send(&out.0)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn created_passthrough(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: &BackingId,
    ) {
        let flags = flags | FopenFlags::FOPEN_PASSTHROUGH;
        match self.0 {
            To::Fuser(r) => {
                // SAFETY: as in `ReplyOpen::opened_passthrough`.
                let wrapped = unsafe { r.wrap_backing(backing.id) };
                r.created_passthrough(ttl, attr, generation, fh, flags, &wrapped);
                let _ = wrapped.into_raw();
            }
            To::Ring(a) => {
                let mut out = Out::default();
                out.entry(attr, generation, ttl, ttl)
                    .open(fh, flags, backing.id);
                a.send(&out.0)
            }
        }
    }
}

impl ReplyStatfs {
    #[allow(clippy::too_many_arguments)]
    pub fn statfs(
        self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    ) {
        match self.0 {
            To::Fuser(r) => r.statfs(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize),
            To::Ring(a) => {
                let mut out = Out::default();
                out.u64(blocks).u64(bfree).u64(bavail).u64(files).u64(ffree);
                out.u32(bsize).u32(namelen).u32(frsize).u32(0);
                for _ in 0..6 {
                    out.u32(0);
                }
                a.send(&out.0)
            }
        }
    }
}

impl ReplyXattr {
    pub fn size(self, size: u32) {
        match self.0 {
            To::Fuser(r) => r.size(size),
            To::Ring(a) => a.send(Out::default().u32(size).u32(0).bytes()),
        }
    }

    pub fn data(self, data: &[u8]) {
        match self.0 {
            To::Fuser(r) => r.data(data),
            To::Ring(a) => a.send(data),
        }
    }
}

impl ReplyLseek {
    pub fn offset(self, offset: i64) {
        match self.0 {
            To::Fuser(r) => r.offset(offset),
            To::Ring(a) => a.send(Out::default().u64(offset as u64).bytes()),
        }
    }
}

/// The answer to READDIR: entries added until the caller's buffer is full.
pub struct ReplyDirectory(Dir<fuser::ReplyDirectory>);

/// The answer to READDIRPLUS.
pub struct ReplyDirectoryPlus(Dir<fuser::ReplyDirectoryPlus>);

enum Dir<F> {
    Fuser(F),
    Ring {
        answer: Answer,
        buf: Out,
        max: usize,
    },
}

macro_rules! dir_reply_type {
    ($name:ident) => {
        impl From<fuser::$name> for $name {
            fn from(r: fuser::$name) -> $name {
                $name(Dir::Fuser(r))
            }
        }

        impl $name {
            /// A ring answer holding at most `max` bytes of entries.
            pub(crate) fn ring(answer: Answer, max: usize) -> $name {
                $name(Dir::Ring {
                    answer,
                    buf: Out::default(),
                    max,
                })
            }

            pub fn ok(self) {
                match self.0 {
                    Dir::Fuser(r) => r.ok(),
                    Dir::Ring { answer, buf, .. } => answer.send(&buf.0),
                }
            }

            pub fn error(self, err: Errno) {
                match self.0 {
                    Dir::Fuser(r) => r.error(err),
                    Dir::Ring { answer, .. } => answer.error(err),
                }
            }
        }
    };
}

dir_reply_type!(ReplyDirectory);
dir_reply_type!(ReplyDirectoryPlus);

impl ReplyDirectory {
    /// Add an entry; `true` when it did not fit (the reply is full).
    pub fn add<T: AsRef<OsStr>>(
        &mut self,
        ino: INodeNo,
        offset: u64,
        kind: FileType,
        name: T,
    ) -> bool {
        match &mut self.0 {
            Dir::Fuser(r) => r.add(ino, offset, kind, name),
            Dir::Ring { buf, max, .. } => {
                let name = name.as_ref().as_bytes();
                if buf.0.len() + dirent_len(name) > *max {
                    return true;
                }
                buf.dirent(ino.0, offset, kind, name);
                false
            }
        }
    }
}

impl ReplyDirectoryPlus {
    /// Add an entry; `true` when it did not fit (the reply is full).
    pub fn add<T: AsRef<OsStr>>(
        &mut self,
        ino: INodeNo,
        offset: u64,
        name: T,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) -> bool {
        match &mut self.0 {
            Dir::Fuser(r) => r.add(ino, offset, name, ttl, attr, generation),
            Dir::Ring { buf, max, .. } => {
                let name = name.as_ref().as_bytes();
                if buf.0.len() + ENTRY_OUT_LEN + dirent_len(name) > *max {
                    return true;
                }
                buf.entry(attr, generation, ttl, ttl);
                buf.dirent(ino.0, offset, attr.kind, name);
                false
            }
        }
    }
}

/// Size of `struct fuse_entry_out`.
const ENTRY_OUT_LEN: usize = 128;

/// Bytes `struct fuse_dirent` takes for `name`, padded to 8.
fn dirent_len(name: &[u8]) -> usize {
    (24 + name.len()).div_ceil(8) * 8
}

/// A reply's bytes, built field by field in the kernel's layout (native
/// endian, as `struct fuse_*_out` in `<linux/fuse.h>`).
#[derive(Default)]
pub(crate) struct Out(Vec<u8>);

impl Out {
    fn u64(&mut self, v: u64) -> &mut Out {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Out {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// `struct fuse_attr`.
    fn attr(&mut self, a: &FileAttr) -> &mut Out {
        let (atime, atime_ns) = time_parts(a.atime);
        let (mtime, mtime_ns) = time_parts(a.mtime);
        let (ctime, ctime_ns) = time_parts(a.ctime);
        self.u64(a.ino.0).u64(a.size).u64(a.blocks);
        self.u64(atime as u64).u64(mtime as u64).u64(ctime as u64);
        self.u32(atime_ns).u32(mtime_ns).u32(ctime_ns);
        self.u32(mode_bits(a.kind) | u32::from(a.perm)).u32(a.nlink);
        self.u32(a.uid)
            .u32(a.gid)
            .u32(a.rdev)
            .u32(a.blksize)
            // `flags` on Linux (FUSE_ATTR_SUBMOUNT, _DAX), not FileAttr's
            // BSD flags; like fuser, AgentFS sets none.
            .u32(0)
    }

    /// `struct fuse_entry_out`.
    fn entry(
        &mut self,
        attr: &FileAttr,
        generation: Generation,
        entry_ttl: &Duration,
        attr_ttl: &Duration,
    ) -> &mut Out {
        let (entry_secs, entry_ns) = ttl_parts(entry_ttl);
        let (attr_secs, attr_ns) = ttl_parts(attr_ttl);
        self.u64(attr.ino.0).u64(generation.0);
        self.u64(entry_secs)
            .u64(attr_secs)
            .u32(entry_ns)
            .u32(attr_ns);
        self.attr(attr)
    }

    /// `struct fuse_open_out`.
    fn open(&mut self, fh: FileHandle, flags: FopenFlags, backing_id: u32) -> &mut Out {
        self.u64(fh.0).u32(flags.bits()).u32(backing_id)
    }

    /// `struct fuse_dirent` and its name, padded to 8 bytes.
    fn dirent(&mut self, ino: u64, offset: u64, kind: FileType, name: &[u8]) -> &mut Out {
        self.u64(ino)
            .u64(offset)
            .u32(name.len() as u32)
            .u32(mode_bits(kind) >> 12);
        self.0.extend_from_slice(name);
        let padded = self.0.len().div_ceil(8) * 8;
        self.0.resize(padded, 0);
        self
    }
}

/// A TTL as the kernel's seconds and nanoseconds.
fn ttl_parts(ttl: &Duration) -> (u64, u32) {
    (ttl.as_secs(), ttl.subsec_nanos())
}

/// A time as seconds and nanoseconds since the epoch, before it negative.
fn time_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                ns => (-(d.as_secs() as i64) - 1, 1_000_000_000 - ns),
            }
        }
    }
}

/// The `S_IF*` bits of a file type.
fn mode_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr() -> FileAttr {
        FileAttr {
            ino: INodeNo(7),
            size: 5,
            blocks: 1,
            atime: UNIX_EPOCH + Duration::new(10, 1),
            mtime: UNIX_EPOCH + Duration::new(11, 2),
            ctime: UNIX_EPOCH - Duration::new(1, 500),
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o640,
            nlink: 1,
            uid: 1000,
            gid: 100,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn entry_out_has_the_kernel_layout() {
        let mut out = Out::default();
        out.entry(
            &attr(),
            Generation(3),
            &Duration::new(60, 5),
            &Duration::new(1, 0),
        );
        let b = out.bytes();
        assert_eq!(b.len(), ENTRY_OUT_LEN);
        assert_eq!((u64_at(b, 0), u64_at(b, 8)), (7, 3));
        assert_eq!((u64_at(b, 16), u64_at(b, 24)), (60, 1));
        assert_eq!((u32_at(b, 32), u32_at(b, 36)), (5, 0));
        // fuse_attr at 40: ino, size, blocks, atime, mtime, ctime, ...
        assert_eq!((u64_at(b, 40), u64_at(b, 48), u64_at(b, 56)), (7, 5, 1));
        assert_eq!((u64_at(b, 64), u64_at(b, 72)), (10, 11));
        assert_eq!(u64_at(b, 80) as i64, -2, "a time before the epoch");
        assert_eq!(
            (u32_at(b, 88), u32_at(b, 92), u32_at(b, 96)),
            (1, 2, 999_999_500)
        );
        assert_eq!(u32_at(b, 100), libc::S_IFREG | 0o640);
        assert_eq!(
            (u32_at(b, 104), u32_at(b, 108), u32_at(b, 112)),
            (1, 1000, 100)
        );
        assert_eq!(u32_at(b, 120), 4096);
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes() {
        let mut out = Out::default();
        out.dirent(9, 1, FileType::Directory, b"abc");
        assert_eq!(out.bytes().len(), dirent_len(b"abc"));
        assert_eq!(out.bytes().len(), 32);
        assert_eq!(u32_at(out.bytes(), 16), 3);
        assert_eq!(u32_at(out.bytes(), 20), libc::DT_DIR as u32);
        out.dirent(10, 2, FileType::RegularFile, b"12345678");
        assert_eq!(out.bytes().len(), 32 + 32);
    }
}
