//! Extended attributes, with the kernel's size protocol for get and list:
//! `size == 0` asks for the length only; a value longer than `size` is ERANGE.

use super::{ctx, resolve, xattr_set_flags, AgentFs};
use crate::inode::Ino;
use crate::metrics::Op;
use crate::reply::Call;
use crate::tri;
use crate::wire::{ReplyEmpty, ReplyXattr, Request};
use agentfs_core::FsError;
use fuser::INodeNo;
use std::ffi::OsStr;
use std::sync::Arc;

impl AgentFs {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Setxattr, ino.0, req);
        if position != 0 {
            return call.fail(FsError::Invalid, reply);
        }
        let how = tri!(call, reply, xattr_set_flags(flags));
        let target = tri!(call, reply, Ino::decode(ino.0));
        let (ctx, name, value) = (ctx(req), name.to_os_string(), value.to_vec());
        let twins = Arc::clone(&self.twins);
        self.submit_meta(call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            tri!(call, reply, core.setxattr(&ctx, b, n, &name, &value, how));
            twins.inode_changed(core, target, b, n, false);
            reply.ok();
        });
    }

    pub(crate) fn do_getxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let call = self.call(Op::Getxattr, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        if target.is_virtual() {
            return call.fail(FsError::NoXattr, reply);
        }
        let (ctx, name) = (ctx(req), name.to_os_string());
        let inject_panic = self.fault_injection && name == super::FAULT_PANIC_XATTR;
        self.submit_meta(call, move |core, call| {
            // The reply moved into this job is dropped by the unwinding, and
            // fuser answers EIO for a dropped reply: only this call fails.
            assert!(
                !inject_panic,
                "fault injection: {}",
                super::FAULT_PANIC_XATTR
            );
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            let value = tri!(call, reply, core.getxattr(&ctx, b, n, &name));
            reply_sized(&call, reply, size, &value);
        });
    }

    pub(crate) fn do_listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let call = self.call(Op::Listxattr, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        if target.is_virtual() {
            return reply_sized(&call, reply, size, &[]);
        }
        let ctx = ctx(req);
        self.submit_meta(call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            let names = tri!(call, reply, core.listxattr(&ctx, b, n));
            reply_sized(&call, reply, size, &names);
        });
    }

    pub(crate) fn do_removexattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Removexattr, ino.0, req);
        let target = tri!(call, reply, Ino::decode(ino.0));
        let (ctx, name) = (ctx(req), name.to_os_string());
        let twins = Arc::clone(&self.twins);
        self.submit_meta(call, move |core, call| {
            let (b, n) = tri!(call, reply, resolve(core, target, call.pid));
            tri!(call, reply, core.removexattr(&ctx, b, n, &name));
            twins.inode_changed(core, target, b, n, false);
            reply.ok();
        });
    }
}

/// How to answer a get/list of `len` bytes into a buffer of `size`.
#[derive(Debug, PartialEq, Eq)]
enum Fit {
    /// The caller asked for the length only.
    Length(u32),
    /// The bytes themselves.
    Data,
    /// The buffer is too small.
    TooSmall,
}

fn sized(size: u32, len: usize) -> Fit {
    match u32::try_from(len) {
        Ok(len) if size == 0 => Fit::Length(len),
        Ok(len) if len <= size => Fit::Data,
        // Too small, or longer than any buffer the kernel can pass.
        Ok(_) | Err(_) => Fit::TooSmall,
    }
}

fn reply_sized(call: &Call, reply: ReplyXattr, size: u32, value: &[u8]) {
    match sized(size, value.len()) {
        Fit::Length(len) => reply.size(len),
        Fit::Data => reply.data(value),
        Fit::TooSmall => call.fail(FsError::Range, reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_protocol() {
        assert_eq!(sized(0, 0), Fit::Length(0));
        assert_eq!(sized(0, 17), Fit::Length(17));
        assert_eq!(sized(17, 17), Fit::Data);
        assert_eq!(sized(100, 17), Fit::Data);
        assert_eq!(sized(16, 17), Fit::TooSmall);
        assert_eq!(sized(10, 0), Fit::Data);
    }
}
