//! Directory handles: opendir, readdir, releasedir, fsyncdir.
//!
//! readdir asks FsCore for entries after the kernel's cookie and adds them to
//! the reply until the kernel's buffer is full; each entry carries FsCore's
//! own cookie, so the next call resumes exactly after the last entry the
//! kernel kept. Entry inode numbers are encoded with the branch the handle was
//! opened on (not the caller's current branch), so a listing stays coherent
//! even if the caller is re-bound while reading it.

use super::{ctx, resolve, AgentFs};
use crate::attr::file_type;
use crate::inode::{self, Ino};
use crate::metrics::Op;
use crate::tri;
use agentfs_core::{FsError, HandleId};
use agentfs_transport::Lane;
use fuser::{
    FileHandle, FileType, FopenFlags, INodeNo, ReplyDirectory, ReplyEmpty, ReplyOpen, Request,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Entries asked of FsCore per round. A 4 KiB kernel buffer holds at most 128
/// entries (32 bytes each at least), so one round usually fills it.
const READDIR_BATCH: usize = 128;

impl AgentFs {
    pub(super) fn do_opendir(&self, req: &Request, ino: INodeNo, reply: ReplyOpen) {
        let call = self.call(Op::Opendir, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        match target {
            Ino::AgentfsDir | Ino::BranchesDir => {
                return reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ino::ControlFile => return call.fail(FsError::NotDir, reply),
            Ino::Root | Ino::Node(..) => {}
        }
        let ctx = ctx(req);
        self.submit(Lane::Meta, call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            let fh = tri!(call, reply, core.opendir(&ctx, b, n));
            reply.opened(FileHandle(fh.0), FopenFlags::empty());
        });
    }

    pub(super) fn do_readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let call = self.call(Op::Readdir, ino.0, req);
        if ino.0 == inode::AGENTFS_DIR_INO {
            for (e_ino, cookie, kind, name) in self.virt.entries(offset) {
                if reply.add(INodeNo(e_ino), cookie, kind, name) {
                    break;
                }
            }
            return reply.ok();
        }
        let target = tri!(call, reply, Ino::decode(ino.0));
        if target == Ino::BranchesDir {
            // One directory per branch, by name; cookies 1 and 2 are . and ..
            return self.submit(Lane::Meta, call, move |core, call| {
                let mut entries = vec![
                    (
                        inode::BRANCHES_DIR_INO,
                        FileType::Directory,
                        ".".to_string(),
                    ),
                    (
                        inode::AGENTFS_DIR_INO,
                        FileType::Directory,
                        "..".to_string(),
                    ),
                ];
                for b in core.branch_list() {
                    let b_ino = tri!(call, reply, inode::view_root(b.id));
                    entries.push((b_ino, FileType::Directory, b.name));
                }
                for (i, (e_ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*e_ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            });
        }
        self.submit(Lane::Meta, call, move |core, call| {
            let fh = HandleId(fh.0);
            let (b, _) = tri!(call, reply, core.handle_target(fh));
            let mut offset = offset;
            loop {
                let entries = tri!(call, reply, core.readdir(fh, offset, READDIR_BATCH));
                let complete = entries.len() < READDIR_BATCH;
                for e in &entries {
                    let e_ino = tri!(call, reply, inode::encode_in(target, b, e.node));
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(INodeNo(e_ino), e.offset, file_type(e.kind), name) {
                        return reply.ok();
                    }
                    offset = e.offset;
                }
                if complete {
                    return reply.ok();
                }
            }
        });
    }

    pub(super) fn do_releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Releasedir, ino.0, req);
        if ino.0 == inode::AGENTFS_DIR_INO {
            return reply.ok();
        }
        self.submit(Lane::Meta, call, move |core, call| {
            tri!(call, reply, core.releasedir(HandleId(fh.0)));
            reply.ok();
        });
    }

    /// fsync of a directory makes the whole filesystem's metadata durable
    /// (`FsCore::sync_all`): FsCore keeps one journal for all directories, so
    /// there is nothing narrower to flush.
    pub(super) fn do_fsyncdir(&self, req: &Request, ino: INodeNo, reply: ReplyEmpty) {
        let call = self.call(Op::Fsyncdir, ino.0, req);
        if ino.0 == inode::AGENTFS_DIR_INO {
            return reply.ok();
        }
        self.submit(Lane::Data, call, move |core, call| {
            tri!(call, reply, core.sync_all());
            reply.ok();
        });
    }
}
