//! Namespace operations: lookup, attributes, creating, removing, renaming and
//! linking names, and `access`.

use super::virtual_nodes::is_reserved;
use super::{ctx, rename_flags, reply_entry, reply_entry_known, resolve, AgentFs};
use crate::attr::file_attr;
use crate::deadline::Late;
use crate::inode::{self, Ino};
use crate::metrics::Op;
use crate::tri;
use crate::wire::{ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry, Request};
use agentfs_core::{Attr, BranchId, Ctx, FsCore, FsError, FsResult, NodeId, SetAttr};
use fuser::{AccessFlags, Generation, INodeNo, RenameFlags};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

impl AgentFs {
    pub(crate) fn do_lookup(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
    ) {
        let call = self.call(Op::Lookup, parent.0, req);
        let p = tri!(call, reply, Ino::decode(parent.0));
        if let Some(found) = self.virt.lookup(p, name) {
            let attr = tri!(call, reply, found);
            // The virtual nodes are the same in every branch: cacheable.
            reply.entry(&self.ttl, &attr, Generation(0));
            return;
        }
        if p == Ino::SnapshotsDir {
            return self.lookup_snapshot(call, name, reply);
        }
        let (ctx, name, ttl) = (ctx(req), name.to_os_string(), self.ttl);
        if p == Ino::BranchesDir {
            // `.agentfs/branches/<name>`: the root of that branch, as its own
            // directory. Not cached: branches come and go.
            let twins = Arc::clone(&self.twins);
            return self.submit_meta(call, move |core, call| {
                let found = name.to_str().map(|n| core.find_branch(n));
                let b = match found {
                    Some(Ok(b)) => b,
                    _ => return call.fail(FsError::NotFound, reply),
                };
                twins.mark_viewed(b);
                let attr = tri!(call, reply, core.getattr(b, NodeId::ROOT));
                let ino = tri!(call, reply, inode::view_root(b));
                let zero = std::time::Duration::ZERO;
                reply.entry_with_ttls(&zero, &zero, &file_attr(ino, &attr), Generation(0));
            });
        }
        // Answered on this thread in one pass when FsCore can do it from
        // memory (the usual case): `quick` does the lookup itself and leaves
        // its answer for `job`. A file the kernel writes directly asks the
        // backstore for its size: then `quick` does nothing and the whole
        // lookup runs on a worker, with the request deadline (unless the
        // object's file is open in the backstore already: an fstat).
        let found = Arc::new(parking_lot::Mutex::new(None));
        let (probe, ctx_probe, left) = (name.clone(), ctx.clone(), Arc::clone(&found));
        let quick = move |core: &FsCore, pid| match resolve(core, p, pid) {
            Ok((b, n)) => {
                let answer = core.lookup_for_kernel_quick(&ctx_probe, b, n, &probe);
                let quick = answer.is_some();
                *left.lock() = answer.map(|a| (b, a));
                quick
            }
            Err(_) => true,
        };
        self.submit_meta_if_late(call, reply, quick, move |core, call, reply| {
            let answer = match found.lock().take() {
                Some((b, answer)) => answer.map(|(attr, in_memory)| (b, attr, in_memory)),
                None => {
                    let (b, n) = tri!(call, reply, resolve(core, p, call.pid));
                    core.lookup_for_kernel(&ctx, b, n, &name).map(|attr| {
                        let in_memory = core.attr_in_memory(b, attr.node);
                        (b, attr, in_memory)
                    })
                }
            };
            match answer {
                Ok((b, attr, in_memory)) => {
                    reply_entry_known(core, &call, reply, p, b, &attr, in_memory, ttl)
                }
                // A name that does not exist is cached as such (a negative
                // entry) wherever its answer does not depend on the caller:
                // it can only appear through a create the kernel sees.
                Err(FsError::NotFound) if !super::entry_ttl(core, p, ttl).is_zero() => {
                    call.count_negative_entry();
                    reply.entry(&ttl, &negative_entry(), Generation(0));
                }
                Err(e) => call.fail(e, reply),
            }
        });
    }

    pub(crate) fn do_getattr(&self, req: &Request, ino: INodeNo, reply: ReplyAttr) {
        let call = self.call(Op::Getattr, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        if let Some(attr) = self.virt.attr(target) {
            reply.attr(&self.ttl, &attr);
            return;
        }
        let ttl = self.ttl;
        let quick = move |core: &FsCore, pid| super::attr_is_quick(core, target, pid);
        // A file the kernel writes directly asks the backstore for its size:
        // on a worker, with the request deadline, unless the object's file
        // is open in the backstore already (an fstat).
        self.submit_meta_if_late(call, reply, quick, move |core, call, reply| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            let attr = tri!(call, reply, core.getattr(b, n));
            let ttl = super::node_attr_ttl(core, ino.0, b, n, ttl);
            reply.attr(&ttl, &file_attr(ino.0, &attr));
        });
    }

    pub(crate) fn do_setattr(&self, req: &Request, ino: INodeNo, set: SetAttr, reply: ReplyAttr) {
        let call = self.call(Op::Setattr, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        let (ctx, ttl) = (ctx(req), self.ttl);
        let (resize, sets_mtime) = (set.size.is_some(), set.mtime.is_some());
        let twins = Arc::clone(&self.twins);
        let job = move |core: &FsCore, call: crate::reply::Call, reply: Late<ReplyAttr>| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            let attr = tri!(call, reply, core.setattr(&ctx, b, n, &set));
            twins.inode_changed(core, target, b, n, resize);
            let ttl = super::node_attr_ttl(core, ino.0, b, n, ttl);
            reply.attr(&ttl, &file_attr(ino.0, &attr));
        };
        if resize {
            // A size change may clone or truncate content in the backstore:
            // the data lane, with a deadline.
            return self.submit_data(call, reply, job);
        }
        // A new mtime for a file the kernel writes directly is set on its
        // object too (a futimens, which waits for the object's inode lock and
        // the host's journal): on a worker. Anything else is FsCore's alone,
        // read back with an fstat.
        let quick = move |core: &FsCore, pid| match resolve(core, target, pid) {
            Ok((b, n)) if sets_mtime => core.attr_in_memory(b, n),
            Ok((b, n)) => core.attr_is_quick(b, n),
            Err(_) => true,
        };
        self.submit_meta_if_late(call, reply, quick, job);
    }

    pub(crate) fn do_readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let call = self.call(Op::Readlink, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        if target.is_virtual() {
            return call.fail(FsError::Invalid, reply);
        }
        self.submit_meta(call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            let link = tri!(call, reply, core.readlink(b, n));
            reply.data(&link);
        });
    }

    /// The shared skeleton of mknod, mkdir and symlink: refuse the reserved
    /// name, resolve the parent's branch, let `make` create the node, and
    /// answer its entry.
    fn new_entry<F>(
        &self,
        op: Op,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
        make: F,
    ) where
        F: FnOnce(&FsCore, &Ctx, BranchId, NodeId, &OsStr) -> FsResult<Attr> + Send + 'static,
    {
        let call = self.call(op, parent.0, req);
        let p = tri!(call, reply, Ino::decode(parent.0));
        if is_reserved(p, name) {
            return call.fail(FsError::Exists, reply);
        }
        let (ctx, name, ttl) = (ctx(req), name.to_os_string(), self.ttl);
        let twins = Arc::clone(&self.twins);
        self.submit_meta(call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, p, call.pid));
            let attr = tri!(call, reply, make(core, &ctx, b, n, &name));
            twins.entry_changed(core, p, b, n, &name);
            core.remember(b, attr.node);
            reply_entry(core, &call, reply, p, b, &attr, ttl);
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.new_entry(
            Op::Mknod,
            req,
            parent,
            name,
            reply,
            move |core, ctx, b, n, name| core.mknod(ctx, b, n, name, mode, umask, rdev),
        );
    }

    pub(crate) fn do_mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.new_entry(
            Op::Mkdir,
            req,
            parent,
            name,
            reply,
            move |core, ctx, b, n, name| core.mkdir(ctx, b, n, name, mode, umask),
        );
    }

    pub(crate) fn do_symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        self.new_entry(
            Op::Symlink,
            req,
            parent,
            name,
            reply,
            move |core, ctx, b, n, name| core.symlink(ctx, b, n, name, &target),
        );
    }

    /// `unlink` (op Unlink) or `rmdir` (op Rmdir).
    pub(crate) fn do_remove(
        &self,
        op: Op,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
    ) {
        let call = self.call(op, parent.0, req);
        let p = tri!(call, reply, Ino::decode(parent.0));
        if is_reserved(p, name) {
            return call.fail(FsError::Perm, reply);
        }
        let (ctx, name) = (ctx(req), name.to_os_string());
        // In memory: a freed content object is removed by the reaper thread.
        let twins = Arc::clone(&self.twins);
        self.submit_meta(call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, p, call.pid));
            if op == Op::Rmdir {
                tri!(call, reply, core.rmdir(&ctx, b, n, &name));
                twins.entry_changed(core, p, b, n, &name);
            } else {
                let gone = tri!(call, reply, core.unlink_node(&ctx, b, n, &name));
                // The other view's inode learns it lost a link, so the kernel
                // lets it go (and FsCore the file) once nothing holds it.
                twins.entry_deleted(core, p, b, n, gone, &name);
            }
            reply.ok();
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Rename, parent.0, req);
        let flags = tri!(call, reply, rename_flags(flags));
        let p = tri!(call, reply, Ino::decode(parent.0));
        let np = tri!(call, reply, Ino::decode(newparent.0));
        if is_reserved(p, name) || is_reserved(np, newname) {
            return call.fail(FsError::Perm, reply);
        }
        let (ctx, name, newname) = (ctx(req), name.to_os_string(), newname.to_os_string());
        let twins = Arc::clone(&self.twins);
        self.submit_meta(call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, p, call.pid));
            let (nb, nn) = tri!(call, reply, resolve(core, np, call.pid));
            if b != nb {
                return call.fail(FsError::CrossDevice, reply);
            }
            tri!(
                call,
                reply,
                core.rename(&ctx, b, n, &name, nn, &newname, flags)
            );
            twins.entry_changed(core, p, b, n, &name);
            twins.entry_changed(core, np, b, nn, &newname);
            reply.ok();
        });
    }

    pub(crate) fn do_link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let call = self.call(Op::Link, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        let np = tri!(call, reply, Ino::decode(newparent.0));
        if target.is_virtual() {
            return call.fail(FsError::Perm, reply);
        }
        if is_reserved(np, newname) {
            return call.fail(FsError::Exists, reply);
        }
        let (ctx, newname, ttl) = (ctx(req), newname.to_os_string(), self.ttl);
        let quick = move |core: &FsCore, pid| super::attr_is_quick(core, target, pid);
        let twins = Arc::clone(&self.twins);
        self.submit_meta_if(call, quick, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            let (nb, nn) = tri!(call, reply, resolve(core, np, call.pid));
            if b != nb {
                return call.fail(FsError::CrossDevice, reply);
            }
            let attr = tri!(call, reply, core.link(&ctx, b, n, nn, &newname));
            core.remember(b, attr.node);
            twins.entry_changed(core, np, b, nn, &newname);
            twins.inode_changed(core, target, b, n, false);
            reply_entry(core, &call, reply, np, b, &attr, ttl);
        });
    }

    pub(crate) fn do_access(
        &self,
        req: &Request,
        ino: INodeNo,
        mask: AccessFlags,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Access, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        if target.is_virtual() {
            if mask.contains(AccessFlags::W_OK) {
                return call.fail(FsError::ReadOnly, reply);
            }
            return reply.ok();
        }
        let ctx = ctx(req);
        self.submit_meta(call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            tri!(call, reply, core.access(&ctx, b, n, mask.bits()));
            reply.ok();
        });
    }
}

/// A lookup answer that says "no such name" and may be cached: node id 0.
fn negative_entry() -> fuser::FileAttr {
    let never = std::time::UNIX_EPOCH;
    fuser::FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: never,
        mtime: never,
        ctime: never,
        crtime: never,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}
