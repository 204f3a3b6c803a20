//! Regular-file operations: open, create, read, write, release, fsync,
//! fallocate, lseek, and the filesystem-wide statfs.
//!
//! The control file (`.agentfs/control`) is answered here without FsCore: it
//! opens read-only with file handle 0 and reads from the adapter's copy.

use super::data_path::Route;
use super::exec_opens::{truncates_read_only, FMODE_EXEC};
use super::virtual_nodes::is_reserved;
use super::{ctx, resolve, AgentFs};
use crate::attr::file_attr;
use crate::inode::{self, Ino};
use crate::metrics::Op;
use crate::tri;
use crate::wire::{
    ReplyCreate, ReplyData, ReplyEmpty, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
};
use agentfs_core::{FsCore, FsError, HandleId, OpenFlags as CoreOpenFlags};
use fuser::{FileHandle, FopenFlags, Generation, INodeNo, OpenFlags};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The file handle of every open of a virtual node (they need no state).
const VIRTUAL_FH: FileHandle = FileHandle(0);

impl AgentFs {
    pub(crate) fn do_open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let call = self.call(Op::Open, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        let core_flags = CoreOpenFlags::from_raw(flags.0);
        match target {
            Ino::ControlFile if core_flags.write || core_flags.truncate => {
                return call.fail(FsError::ReadOnly, reply);
            }
            Ino::ControlFile => return reply.opened(VIRTUAL_FH, FopenFlags::empty()),
            Ino::AgentfsDir | Ino::BranchesDir | Ino::SnapshotsDir | Ino::ViewAgentfsDir(_) => {
                return call.fail(FsError::IsDir, reply)
            }
            Ino::Root | Ino::Node(..) => {}
        }
        let ctx = ctx(req);
        let exec = flags.0 & FMODE_EXEC != 0;
        let truncates_read_only = truncates_read_only(flags.0);
        // Data lane: opening for writing may copy shared content first.
        let (paths, exec_opens) = (Arc::clone(&self.paths), Arc::clone(&self.exec_opens));
        let twins = Arc::clone(&self.twins);
        let writes = core_flags.write;
        // A read-only open that FsCore answers from memory runs on this FUSE
        // thread: on a stream of small-file opens (git reading a tree) the
        // hand-off to a data worker and back cost more than the open.
        let read_only = !writes && !core_flags.truncate && !truncates_read_only;
        let probe = Arc::clone(&self.paths);
        let quick = move |core: &FsCore, pid| {
            read_only
                && match resolve(core, target, pid) {
                    Ok((b, n)) => {
                        core.read_open_is_quick(b, n, probe.enabled())
                            && inode::encode_in(target, b, n).is_ok_and(|ino| !probe.deciding(ino))
                    }
                    Err(_) => true,
                }
        };
        self.submit_data_unless_quick(call, reply, quick, move |core, call, reply| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            let ino = tri!(
                call,
                reply,
                inode::encode_in(target, b, n).map_err(FsError::from)
            );
            if truncates_read_only && exec_opens.executing(ino) {
                // What the kernel answers for a write open of a running program.
                let busy = std::io::Error::from_raw_os_error(libc::ETXTBSY);
                return call.fail(FsError::Io(busy), reply);
            }
            let fh = tri!(call, reply, core.open(&ctx, b, n, core_flags));
            if exec {
                exec_opens.opened(fh.0, ino);
            }
            let answered = match paths.route(core, ino, fh, true, |file| reply.open_backing(file)) {
                Route::Direct(backing) => {
                    reply.opened_passthrough(FileHandle(fh.0), FopenFlags::empty(), &backing)
                }
                Route::Transport => reply.opened(FileHandle(fh.0), transport_flags(core_flags)),
            };
            if !answered {
                // The deadline answered: the kernel never learns of this handle.
                let _ = core.release(fh);
                paths.release(ino);
                exec_opens.released(fh.0);
            } else if writes {
                // The branch's other view may hold this file's attributes for
                // the whole TTL; while the kernel writes the object directly
                // they come with TTL 0 (node_attr_ttl), so have it ask again.
                twins.handle_changed(core, ino, fh, false);
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let call = self.call(Op::Create, parent.0, req);
        let p = tri!(call, reply, Ino::decode(parent.0));
        if is_reserved(p, name) {
            return call.fail(FsError::Exists, reply);
        }
        let exclusive = flags & libc::O_EXCL != 0;
        let core_flags = CoreOpenFlags::from_raw(flags);
        let (ctx, name) = (ctx(req), name.to_os_string());
        let ttl = self.ttl;
        let (paths, twins) = (Arc::clone(&self.paths), Arc::clone(&self.twins));
        // A new name is in memory but for the content object a passthrough
        // open needs at once: it is answered inline, through passthrough when
        // the backstore has an object ready, else, while it makes objects
        // ahead (a burst of creates outran that), through the transport: the
        // object is made at the file's first write, on a data worker, so a
        // burst never waits for the disk on a worker. The first create of a
        // mount (nothing made ahead yet) and an existing name (O_TRUNC may
        // copy or cut its object) go to a data worker.
        let direct = self.paths.enabled();
        let probe = name.clone();
        let inline = Arc::new(AtomicBool::new(false));
        let answered_inline = Arc::clone(&inline);
        let quick = move |core: &FsCore, pid| {
            let inline_now = match resolve(core, p, pid) {
                Ok((b, n)) => {
                    let name = std::os::unix::ffi::OsStrExt::as_bytes(probe.as_os_str());
                    !core.has_entry(b, n, name)
                        && (!direct || core.create_is_quick() || core.makes_objects_ahead())
                }
                Err(_) => true,
            };
            answered_inline.store(inline_now, Ordering::Relaxed);
            inline_now
        };
        self.submit_data_unless_quick(call, reply, quick, move |core, call, reply| {
            let (b, n) = tri!(call, reply, resolve(core, p, call.pid));
            let created = core.create(&ctx, b, n, &name, mode, umask, core_flags, exclusive);
            let (attr, fh) = tri!(call, reply, created);
            twins.entry_changed(core, p, b, n, &name);
            core.remember(b, attr.node);
            let ino = match inode::encode_in(p, b, attr.node) {
                Ok(ino) => ino,
                Err(e) => {
                    // Do not leak the handle the kernel will never release.
                    let _ = core.release(fh);
                    return call.fail(e.into(), reply);
                }
            };
            // One TTL for entry and attributes: zero for names in the shared root
            // while it is shared.
            let ttl = super::entry_ttl(core, p, ttl);
            let fattr = file_attr(ino, &attr);
            let (gen, handle) = (Generation(0), FileHandle(fh.0));
            // Inline with no object ready: the transport, whose create needs none.
            let direct_ok = !inline.load(Ordering::Relaxed) || core.create_is_quick();
            let open_backing = |file: &std::fs::File| reply.open_backing(file);
            let answered = match paths.route(core, ino, fh, direct_ok, open_backing) {
                Route::Direct(backing) => reply.created_passthrough(
                    &ttl,
                    &fattr,
                    gen,
                    handle,
                    FopenFlags::empty(),
                    &backing,
                ),
                Route::Transport => {
                    reply.created(&ttl, &fattr, gen, handle, transport_flags(core_flags))
                }
            };
            if !answered {
                // The deadline answered: the file exists, but the kernel holds
                // neither its handle nor its inode.
                let _ = core.release(fh);
                paths.release(ino);
                core.forget(b, attr.node, 1);
            }
        });
    }

    pub(crate) fn do_read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        let call = self.call(Op::Read, ino.0, req);
        if ino.0 == inode::CONTROL_FILE_INO {
            return reply.data(self.virt.read(offset, size));
        }
        let buffers = Arc::clone(&self.buffers);
        self.submit_data(call, reply, move |core, call, reply| {
            let mut buf = buffers.take(size as usize);
            let n = tri!(
                call,
                reply,
                core.read_into(HandleId(fh.0), offset, &mut buf)
            );
            reply.data(&buf[..n]);
        });
    }

    pub(crate) fn do_write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        reply: ReplyWrite,
    ) {
        let call = self.call(Op::Write, ino.0, req);
        if ino.0 == inode::CONTROL_FILE_INO {
            return call.fail(FsError::BadHandle, reply);
        }
        // Off fuser's request buffer before the job changes threads.
        let (ctx, data) = (ctx(req), self.buffers.copy_of(data));
        let twins = Arc::clone(&self.twins);
        self.submit_data(call, reply, move |core, call, reply| {
            let written = tri!(call, reply, core.write(&ctx, HandleId(fh.0), offset, &data));
            reply.written(written);
            twins.handle_changed(core, ino.0, HandleId(fh.0), true);
        });
    }

    pub(crate) fn do_release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Release, ino.0, req);
        if ino.0 == inode::CONTROL_FILE_INO {
            return reply.ok();
        }
        let (paths, exec_opens) = (Arc::clone(&self.paths), Arc::clone(&self.exec_opens));
        let twins = Arc::clone(&self.twins);
        // Releasing a handle that did not write is in memory: inline (as a
        // read-only open), so closing a file costs no thread hand-off.
        let quick = move |core: &FsCore, _| core.release_is_quick(HandleId(fh.0));
        self.submit_data_unless_quick(call, reply, quick, move |core, call, reply| {
            // Writes through passthrough reached the object without FsCore:
            // the other view learns the new size now.
            twins.handle_changed(core, ino.0, HandleId(fh.0), false);
            let released = core.release(HandleId(fh.0));
            // The kernel is done with this open whatever FsCore answered.
            paths.release(ino.0);
            exec_opens.released(fh.0);
            tri!(call, reply, released);
            reply.ok();
        });
    }

    pub(crate) fn do_fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Fsync, ino.0, req);
        if ino.0 == inode::CONTROL_FILE_INO {
            return reply.ok();
        }
        self.submit_data(call, reply, move |core, call, reply| {
            tri!(call, reply, core.fsync(HandleId(fh.0), datasync));
            reply.ok();
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Fallocate, ino.0, req);
        if ino.0 == inode::CONTROL_FILE_INO {
            return call.fail(FsError::BadHandle, reply);
        }
        let ctx = ctx(req);
        let twins = Arc::clone(&self.twins);
        self.submit_data(call, reply, move |core, call, reply| {
            tri!(
                call,
                reply,
                core.fallocate(&ctx, HandleId(fh.0), mode, offset, length)
            );
            reply.ok();
            twins.handle_changed(core, ino.0, HandleId(fh.0), true);
        });
    }

    /// The kernel sends only SEEK_DATA and SEEK_HOLE here; it answers
    /// SEEK_SET/CUR/END itself from the file size. (Answering ENOSYS would make
    /// the kernel stop asking for the whole connection, so others get EINVAL.)
    pub(crate) fn do_lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let call = self.call(Op::Lseek, ino.0, req);
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return call.fail(FsError::Invalid, reply);
        }
        let Ok(offset) = u64::try_from(offset) else {
            return call.fail(FsError::Invalid, reply);
        };
        if ino.0 == inode::CONTROL_FILE_INO {
            // No holes: data up to the end, the only hole at the end.
            let len = self.virt.control_len();
            if offset >= len {
                return call.fail(
                    FsError::Io(std::io::Error::from_raw_os_error(libc::ENXIO)),
                    reply,
                );
            }
            let at = if whence == libc::SEEK_DATA {
                offset
            } else {
                len
            };
            return reply.offset(at as i64);
        }
        self.submit_data(call, reply, move |core, call, reply| {
            let at = tri!(call, reply, core.lseek(HandleId(fh.0), offset, whence));
            match i64::try_from(at) {
                Ok(at) => {
                    reply.offset(at);
                }
                Err(_) => call.fail(FsError::FileTooBig, reply),
            }
        });
    }

    pub(crate) fn do_statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let call = self.call(Op::Statfs, ino.0, req);
        self.submit_data(call, reply, move |core, call, reply| {
            let s = tri!(call, reply, core.statfs());
            reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            );
        });
    }
}

/// Open flags for a handle whose data goes through the daemon. A write-only
/// handle bypasses the kernel's page cache (`FOPEN_DIRECT_IO`): its writes go
/// from the writer's memory straight into the request the daemon reads, one
/// copy of each byte fewer than a cached write, which first copies it into
/// the FUSE inode's page cache only to send it on. A write-only descriptor
/// can be neither read nor mapped, so nothing is lost by skipping the cache;
/// the kernel drops the written range from the cache before each direct
/// write (Linux 6.6+), so other handles of the file that read through the
/// cache see the new bytes. Handles that read keep the cache (readahead,
/// `mmap`).
fn transport_flags(flags: CoreOpenFlags) -> FopenFlags {
    if flags.write && !flags.read {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}
