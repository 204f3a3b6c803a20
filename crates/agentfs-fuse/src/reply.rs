//! The one way the adapter answers a request with an error.
//!
//! Every failed request goes through [`Call::fail`]: it logs the error at the
//! level it deserves (debug for the caller's own mistakes such as ENOENT, warn
//! for internal ones such as a failing backstore), counts it by errno in
//! [`Metrics`], and replies with the errno FsCore chose. The `tri!` macro is
//! `?` for job bodies: on `Err` it fails the call and returns from the job.

use crate::metrics::{Metrics, Op};
use crate::wire::{
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};
use agentfs_core::FsError;
use fuser::Errno;
use std::sync::Arc;

/// A fuser reply that can carry an errno.
pub trait ErrorReply {
    fn error(self, errno: Errno);
}

macro_rules! impl_error_reply {
    ($($t:ty),* $(,)?) => {
        $(impl ErrorReply for $t {
            fn error(self, errno: Errno) {
                <$t>::error(self, errno)
            }
        })*
    };
}

impl_error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyLseek,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr,
);

/// What the adapter knows about one request, moved into its job.
#[derive(Clone, Debug)]
pub struct Call {
    pub op: Op,
    /// The inode the request is about (the parent for namespace changes).
    pub ino: u64,
    pub pid: u32,
    metrics: Arc<Metrics>,
}

impl Call {
    /// A request of `op` on `ino` from `pid`; counts it.
    pub fn new(op: Op, ino: u64, pid: u32, metrics: &Arc<Metrics>) -> Call {
        metrics.count_request(op);
        Call {
            op,
            ino,
            pid,
            metrics: Arc::clone(metrics),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Log, count and answer `err`.
    /// Count a lookup answered "no such name" with a cacheable negative entry
    /// (a success on the wire, an ENOENT to the caller).
    pub fn count_negative_entry(&self) {
        self.metrics.count_error(libc::ENOENT);
    }

    pub fn fail<R: ErrorReply>(&self, err: FsError, reply: R) {
        let errno = err.errno();
        self.metrics.count_error(errno);
        if err.is_internal() {
            tracing::warn!(
                op = self.op.name(),
                ino = self.ino,
                pid = self.pid,
                errno,
                "{err}"
            );
        } else {
            tracing::debug!(
                op = self.op.name(),
                ino = self.ino,
                pid = self.pid,
                errno,
                "{err}"
            );
        }
        reply.error(Errno::from_i32(errno));
    }
}

/// `?` for job bodies: the value of `Ok`, or fail `$call` with the error, answer
/// `$reply` and return from the enclosing closure or function.
#[macro_export]
#[doc(hidden)]
macro_rules! tri {
    ($call:expr, $reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => {
                $call.fail(err.into(), $reply);
                return;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply that records the errno it was given.
    struct Probe<'a>(&'a mut Option<i32>);

    impl ErrorReply for Probe<'_> {
        fn error(self, errno: Errno) {
            *self.0 = Some(i32::from(errno));
        }
    }

    #[test]
    fn fail_counts_and_answers_the_core_errno() {
        let metrics = Arc::new(Metrics::new());
        let call = Call::new(Op::Lookup, 1, 42, &metrics);
        let mut got = None;
        call.fail(FsError::NotFound, Probe(&mut got));
        assert_eq!(got, Some(libc::ENOENT));
        let mut got = None;
        call.fail(
            FsError::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            Probe(&mut got),
        );
        assert_eq!(got, Some(libc::ENOSPC));
        let mut got = None;
        call.fail(FsError::Busy("x".into()), Probe(&mut got));
        assert_eq!(got, Some(libc::EBUSY));
        assert_eq!(metrics.errors(libc::ENOENT), 1);
        assert_eq!(metrics.errors(libc::ENOSPC), 1);
        assert_eq!(metrics.requests(Op::Lookup), 1);
    }

    #[test]
    fn tri_returns_early_on_error() {
        fn body(call: &Call, r: Result<u32, FsError>, out: &mut Option<i32>, done: &mut bool) {
            let reply = Probe(out);
            let _v = tri!(call, reply, r);
            *done = true;
        }
        let metrics = Arc::new(Metrics::new());
        let call = Call::new(Op::Read, 5, 1, &metrics);
        let (mut got, mut done) = (None, false);
        body(&call, Ok(3), &mut got, &mut done);
        assert!(done);
        assert_eq!(got, None);
        let (mut got, mut done) = (None, false);
        body(&call, Err(FsError::BadHandle), &mut got, &mut done);
        assert!(!done);
        assert_eq!(got, Some(libc::EBADF));
    }
}
