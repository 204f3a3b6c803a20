//! Directory handles: opendir, readdir, readdirplus, releasedir, fsyncdir.
//!
//! readdir asks FsCore for entries after the kernel's cookie and adds them to
//! the reply until the kernel's buffer is full; each entry carries FsCore's
//! own cookie, so the next call resumes exactly after the last entry the
//! kernel kept. Entry inode numbers are encoded with the branch the handle was
//! opened on (not the caller's current branch), so a listing stays coherent
//! even if the caller is re-bound while reading it.
//!
//! readdirplus answers each entry with its attributes, so `ls -l`, `find`,
//! `du` and `git status` get a directory's names and attributes in one
//! request instead of a lookup per name. The kernel decides when to use it
//! (FUSE_READDIRPLUS_AUTO); the virtual directories answer it like readdir,
//! with their own attributes.

use super::{ctx, entry_ttl, resolve, AgentFs};
use crate::attr::{file_attr, file_type};
use crate::inode::{self, Ino};
use crate::metrics::Op;
use crate::tri;
use crate::wire::{ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyOpen, Request};
use agentfs_core::{DirEntryPlus, FsCore, FsError, HandleId};
use fuser::{FileHandle, FileType, FopenFlags, Generation, INodeNo};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

/// Entries asked of FsCore per round. A 4 KiB kernel buffer holds at most 128
/// entries (32 bytes each at least), so one round usually fills it.
const READDIR_BATCH: usize = 128;
/// Bytes a readdirplus entry takes in the reply besides its name
/// (`fuse_entry_out` and `fuse_dirent`, which pads the name to 8 bytes).
const DIRENTPLUS_HEADER: usize = 128 + 24 + 8;
/// The largest buffer the kernel hands readdirplus (it asks for one page;
/// newer kernels may ask for up to 128 KiB).
const READDIRPLUS_MAX_BUFFER: usize = 128 * 1024;

impl AgentFs {
    pub(crate) fn do_opendir(&self, req: &Request, ino: INodeNo, reply: ReplyOpen) {
        let call = self.call(Op::Opendir, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        match target {
            Ino::AgentfsDir | Ino::BranchesDir | Ino::SnapshotsDir | Ino::ViewAgentfsDir(_) => {
                return reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ino::ControlFile => return call.fail(FsError::NotDir, reply),
            Ino::Root | Ino::Node(..) => {}
        }
        let ctx = ctx(req);
        self.submit_meta(call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            let fh = tri!(call, reply, core.opendir(&ctx, b, n));
            reply.opened(FileHandle(fh.0), FopenFlags::empty());
        });
    }

    pub(crate) fn do_readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let call = self.call(Op::Readdir, ino.0, req);
        let agentfs = Ino::decode(ino.0)
            .ok()
            .filter(|d| matches!(d, Ino::AgentfsDir | Ino::ViewAgentfsDir(_)));
        if let Some(dir) = agentfs {
            for (e_ino, cookie, kind, name) in self.virt.entries_of(dir, offset) {
                if reply.add(INodeNo(e_ino), cookie, kind, name) {
                    break;
                }
            }
            return reply.ok();
        }
        let target = tri!(call, reply, Ino::decode(ino.0));
        if target == Ino::SnapshotsDir {
            return self.readdir_snapshots(call, offset, reply);
        }
        if target == Ino::BranchesDir {
            // One directory per branch, by name; cookies 1 and 2 are . and ..
            return self.submit_meta(call, move |core, call| {
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
        self.submit_meta(call, move |core, call| {
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

    pub(crate) fn do_readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let call = self.call(Op::Readdirplus, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        if target == Ino::SnapshotsDir {
            return self.readdirplus_snapshots(call, offset, reply);
        }
        if matches!(
            target,
            Ino::AgentfsDir | Ino::BranchesDir | Ino::ViewAgentfsDir(_)
        ) {
            // Few entries that change rarely: their attributes, uncached, like
            // their lookups.
            let (virt, twins) = (Arc::clone(&self.virt), Arc::clone(&self.twins));
            let zero = std::time::Duration::ZERO;
            return self.submit_meta(call, move |core, call| {
                let mut entries: Vec<(u64, std::ffi::OsString, fuser::FileAttr)> = Vec::new();
                if target != Ino::BranchesDir {
                    for (e_ino, cookie, _, name) in virt.entries_of(target, 0) {
                        let attr = match Ino::decode(e_ino) {
                            Ok(Ino::Root) => {
                                let b = core.branch_of(call.pid);
                                let root = core.getattr(b, agentfs_core::NodeId::ROOT);
                                file_attr(e_ino, &tri!(call, reply, root))
                            }
                            // `..` of a view's own `.agentfs`: the view's root.
                            Ok(Ino::Node(b, n)) => {
                                let root = core.getattr(inode::real_branch(b), n);
                                file_attr(e_ino, &tri!(call, reply, root))
                            }
                            Ok(t) => tri!(call, reply, virt.attr(t).ok_or(FsError::NotFound)),
                            Err(e) => return call.fail(FsError::from(e), reply),
                        };
                        entries.push((cookie, name.into(), attr));
                    }
                } else {
                    let own = |t: Ino| virt.attr(t).ok_or(FsError::NotFound);
                    let dot = tri!(call, reply, own(Ino::BranchesDir));
                    let dotdot = tri!(call, reply, own(Ino::AgentfsDir));
                    entries.push((1, ".".into(), dot));
                    entries.push((2, "..".into(), dotdot));
                    for b in core.branch_list() {
                        let Ok(attr) = core.getattr(b.id, agentfs_core::NodeId::ROOT) else {
                            continue;
                        };
                        let b_ino = tri!(call, reply, inode::view_root(b.id));
                        twins.mark_viewed(b.id);
                        let cookie = entries.len() as u64 + 1;
                        entries.push((cookie, b.name.into(), file_attr(b_ino, &attr)));
                    }
                }
                for (cookie, name, attr) in entries.into_iter().filter(|e| e.0 > offset) {
                    if reply.add(attr.ino, cookie, &name, &zero, &attr, Generation(0)) {
                        break;
                    }
                }
                reply.ok();
            });
        }
        if target == Ino::ControlFile {
            return call.fail(FsError::NotDir, reply);
        }
        let ttl = self.ttl;
        let fh = HandleId(fh.0);
        // Answered on this thread when FsCore has the whole batch in memory
        // (the usual case): `quick` gathers it and leaves it for `job`. When
        // the listing must read a lower directory, or an entry's attributes
        // must be asked of the backstore (a file the kernel writes directly),
        // `quick` does nothing and the listing runs on a meta worker with the
        // request deadline, so a stalled backstore makes it fail with
        // ETIMEDOUT instead of hanging `ls`.
        let found = Arc::new(parking_lot::Mutex::new(None));
        let left = Arc::clone(&found);
        let quick = move |core: &FsCore, _| {
            let gathered = gather_plus(core, fh, offset, true);
            let quick = gathered.is_some();
            *left.lock() = gathered;
            quick
        };
        self.submit_meta_if_late(call, reply, quick, move |core, call, late| {
            let gathered = match found.lock().take() {
                Some(gathered) => gathered,
                None => gather_plus(core, fh, offset, false)
                    .expect("a readdirplus that may wait always answers"),
            };
            let (b, _) = tri!(call, late, core.handle_target(fh));
            let gathered = tri!(call, late, gathered);
            let Some(mut reply) = late.take() else {
                return;
            };
            let entry_ttl = entry_ttl(core, target, ttl);
            let root_shared = core.root_is_shared();
            let mut handed = Vec::with_capacity(gathered.len());
            for plus in &gathered {
                let e = &plus.entry;
                // `..` of a branch's root is the mount's parent: the kernel
                // never makes a dentry of `.` or `..` from readdirplus.
                let e_ino = tri!(call, reply, inode::encode_in(target, b, e.node));
                let attr_ttl =
                    super::known_attr_ttl(e_ino, plus.attr_in_memory, entry_ttl, root_shared);
                let name = OsStr::from_bytes(&e.name);
                let fattr = file_attr(e_ino, &plus.attr);
                if reply.add(
                    INodeNo(e_ino),
                    e.offset,
                    name,
                    &attr_ttl,
                    &fattr,
                    Generation(0),
                ) {
                    break;
                }
                // The kernel takes a lookup of every entry but . and ..
                if e.name != b"." && e.name != b".." {
                    handed.push(e.node);
                }
            }
            // Before the reply leaves: a FORGET of these may follow at once.
            core.remember_all(b, &handed);
            reply.ok();
        });
    }

    pub(crate) fn do_releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Releasedir, ino.0, req);
        if Ino::decode(ino.0).is_ok_and(Ino::is_virtual) {
            return reply.ok();
        }
        self.submit_meta(call, move |core, call| {
            tri!(call, reply, core.releasedir(HandleId(fh.0)));
            reply.ok();
        });
    }

    /// fsync of a directory makes the whole filesystem's metadata durable
    /// (`FsCore::sync_all`): FsCore keeps one journal for all directories, so
    /// there is nothing narrower to flush.
    pub(crate) fn do_fsyncdir(&self, req: &Request, ino: INodeNo, reply: ReplyEmpty) {
        let call = self.call(Op::Fsyncdir, ino.0, req);
        if Ino::decode(ino.0).is_ok_and(Ino::is_virtual) {
            return reply.ok();
        }
        self.submit_data(call, reply, move |core, call, reply| {
            tri!(call, reply, core.sync_all());
            reply.ok();
        });
    }
}

/// The entries of directory handle `fh` after cookie `offset` for one
/// readdirplus reply: at least as many as the largest buffer the kernel asks
/// it to fill, gathered before the reply leaves its slot. With `quick`,
/// `None` when FsCore would have to wait on the storage for them
/// ([`FsCore::readdir_plus_quick`]); never `None` without.
fn gather_plus(
    core: &FsCore,
    fh: HandleId,
    mut offset: u64,
    quick: bool,
) -> Option<agentfs_core::FsResult<Vec<DirEntryPlus>>> {
    let mut gathered = Vec::new();
    let mut bytes = 0;
    loop {
        let entries = if quick {
            core.readdir_plus_quick(fh, offset, READDIR_BATCH)?
        } else {
            core.readdir_plus(fh, offset, READDIR_BATCH)
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => return Some(Err(e)),
        };
        let complete = entries.len() < READDIR_BATCH;
        for e in &entries {
            bytes += DIRENTPLUS_HEADER + e.entry.name.len();
            offset = e.entry.offset;
        }
        gathered.extend(entries);
        if complete || bytes >= READDIRPLUS_MAX_BUFFER {
            return Some(Ok(gathered));
        }
    }
}
