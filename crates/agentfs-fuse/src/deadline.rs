//! Per-request deadlines for jobs that may wait on the backstore.
//!
//! A Data-lane job holds its fuser reply in a shared slot ([`Late`]) instead
//! of owning it. Whoever takes the reply out of the slot first answers the
//! kernel: the job when it finishes (with its result), or the one timer
//! thread of the mount ([`Deadlines`]) when the request's deadline passes
//! (with ETIMEDOUT). The loser finds the slot empty and drops what it had: a
//! late result is logged and thrown away, the kernel has long had its answer.
//!
//! ETIMEDOUT rather than EIO, because the operation was not known to fail: the
//! job keeps running and may still complete. A write answered ETIMEDOUT may
//! therefore still be applied, whole (FsCore applies a write atomically under
//! its locks), after the caller saw the error: the file is consistent either
//! way, and holds either the old or the new bytes of that range, as after a
//! timed-out write on a network filesystem; a caller that retries writes the
//! same bytes again. An open or create whose answer comes too late releases
//! the handle the kernel never learnt of (see the adapter's open and create).
//!
//! The timer keeps the pending deadlines in one ordered map under one mutex;
//! a finished job removes its entry, so the map holds only requests still in
//! flight. All deadlines have the same length, so a new one is never earlier
//! than those already waiting, and adding one does not wake the timer.

use crate::metrics::Metrics;
use crate::reply::ErrorReply;
use crate::wire::{
    BackingId, ReplyAttr, ReplyCreate, ReplyData, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite,
};
use fuser::{Errno, FileAttr, FileHandle, FopenFlags, Generation};
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Something the timer can answer with an error when its deadline passes.
trait Expire: Send + Sync {
    /// Answer ETIMEDOUT if nobody answered yet.
    fn expire(&self);
}

/// Key of one pending deadline: when, and a sequence number for ties.
type Key = (Instant, u64);

struct Timer {
    pending: BTreeMap<Key, Weak<dyn Expire>>,
    next: u64,
    stop: bool,
    /// When the sleeping timer thread wakes by itself; `None` while it is
    /// not asleep. A new deadline wakes it only if it is earlier: waking it
    /// for every request (two context switches on a request that found
    /// nothing pending) cost more than the request itself.
    wakes_at: Option<Instant>,
}

/// The deadlines of one mount: their length and the timer thread.
pub struct Deadlines {
    timeout: Duration,
    timer: Mutex<Timer>,
    wake: Condvar,
}

impl Deadlines {
    /// Deadlines `timeout` after each request; starts the timer thread
    /// (`agentfs-deadline`), which ends when the last `Arc` is dropped.
    pub fn start(timeout: Duration) -> std::io::Result<Arc<Deadlines>> {
        let d = Arc::new(Deadlines {
            timeout,
            timer: Mutex::new(Timer {
                pending: BTreeMap::new(),
                next: 0,
                stop: false,
                wakes_at: None,
            }),
            wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&d);
        std::thread::Builder::new()
            .name("agentfs-deadline".into())
            .spawn(move || run_timer(weak))?;
        Ok(d)
    }

    /// The deadline's length.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Put `reply` of the request `op` in a slot that answers ETIMEDOUT
    /// when the deadline passes before the job takes it.
    pub fn guard<R: ErrorReply + Send + 'static>(
        self: &Arc<Self>,
        reply: R,
        op: &'static str,
        metrics: &Arc<Metrics>,
    ) -> Late<R> {
        let slot = Arc::new(Slot {
            reply: Mutex::new(Some(reply)),
            op,
            metrics: Arc::clone(metrics),
        });
        let mut t = self.timer.lock();
        let key = (Instant::now() + self.timeout, t.next);
        t.next += 1;
        let weak: Weak<dyn Expire> = Arc::downgrade(&(Arc::clone(&slot) as Arc<dyn Expire>));
        t.pending.insert(key, weak);
        let sooner = t.wakes_at.is_some_and(|at| key.0 < at);
        drop(t);
        if sooner {
            self.wake.notify_one();
        }
        Late {
            slot,
            key: Some(key),
            deadlines: Some(Arc::clone(self)),
        }
    }

    fn forget(&self, key: Key) {
        self.timer.lock().pending.remove(&key);
    }

    /// Requests waiting for their answer now.
    pub fn in_flight(&self) -> usize {
        self.timer.lock().pending.len()
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.timer.lock().stop = true;
        self.wake.notify_all();
    }
}

fn run_timer(weak: Weak<Deadlines>) {
    loop {
        let Some(d) = weak.upgrade() else { return };
        let mut t = d.timer.lock();
        if t.stop {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = t.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        if due.is_empty() {
            // Sleep until the earliest deadline, or a while (so a dropped
            // `Deadlines` ends this thread even when nothing is pending).
            let wait = t
                .pending
                .first_key_value()
                .map(|((at, _), _)| at.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            t.wakes_at = Some(now + wait);
            d.wake.wait_for(&mut t, wait);
            t.wakes_at = None;
            continue;
        }
        drop(t);
        drop(d);
        for slot in due {
            if let Some(slot) = slot.upgrade() {
                slot.expire();
            }
        }
    }
}

struct Slot<R> {
    reply: Mutex<Option<R>>,
    op: &'static str,
    metrics: Arc<Metrics>,
}

impl<R: ErrorReply + Send> Expire for Slot<R> {
    fn expire(&self) {
        let Some(reply) = self.reply.lock().take() else {
            return;
        };
        self.metrics.count_error(libc::ETIMEDOUT);
        tracing::warn!(
            op = self.op,
            "request still waiting at its deadline: answered ETIMEDOUT, its late result will be dropped"
        );
        reply.error(Errno::from_i32(libc::ETIMEDOUT));
    }
}

/// A reply in a shared slot: answered by the job or by the deadline timer,
/// whichever comes first. Offers the reply methods the Data-lane jobs use;
/// each answers only if the deadline has not, and says whether it did.
pub struct Late<R> {
    slot: Arc<Slot<R>>,
    key: Option<Key>,
    deadlines: Option<Arc<Deadlines>>,
}

impl<R: ErrorReply + Send + 'static> Late<R> {
    /// A slot without a deadline (deadlines are off).
    pub fn without_deadline(reply: R, op: &'static str, metrics: &Arc<Metrics>) -> Late<R> {
        Late {
            slot: Arc::new(Slot {
                reply: Mutex::new(Some(reply)),
                op,
                metrics: Arc::clone(metrics),
            }),
            key: None,
            deadlines: None,
        }
    }

    /// Take the reply to answer it; `None` when the deadline already did
    /// (the late result is dropped, and logged at debug).
    pub fn take(mut self) -> Option<R> {
        if let (Some(key), Some(d)) = (self.key.take(), self.deadlines.take()) {
            d.forget(key);
        }
        let reply = self.slot.reply.lock().take();
        if reply.is_none() {
            tracing::debug!(op = self.slot.op, "late result dropped (deadline answered)");
        }
        reply
    }

    /// Run `f` on the reply while it is still unanswered (without answering).
    pub fn peek<T>(&self, f: impl FnOnce(&R) -> T) -> Option<T> {
        self.slot.reply.lock().as_ref().map(f)
    }
}

impl<R> Drop for Late<R> {
    fn drop(&mut self) {
        // A job that ends without answering (a panic, a dropped job) still
        // removes its deadline; the reply, dropped with the slot, makes fuser
        // answer EIO.
        if let (Some(key), Some(d)) = (self.key.take(), self.deadlines.take()) {
            d.forget(key);
        }
    }
}

impl<R: ErrorReply + Send + 'static> ErrorReply for Late<R> {
    fn error(self, errno: Errno) {
        if let Some(r) = self.take() {
            r.error(errno);
        }
    }
}

/// A reply that can carry an entry: fuser's [`ReplyEntry`], or one in a slot.
pub trait EntryReply: ErrorReply {
    fn entry_with_ttls(
        self,
        attr_ttl: &Duration,
        entry_ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    );
}

impl EntryReply for ReplyEntry {
    fn entry_with_ttls(
        self,
        attr_ttl: &Duration,
        entry_ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) {
        ReplyEntry::entry_with_ttls(self, attr_ttl, entry_ttl, attr, generation)
    }
}

impl EntryReply for Late<ReplyEntry> {
    fn entry_with_ttls(
        self,
        attr_ttl: &Duration,
        entry_ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) {
        if let Some(r) = self.take() {
            r.entry_with_ttls(attr_ttl, entry_ttl, attr, generation);
        }
    }
}

impl Late<ReplyEntry> {
    pub fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation) -> bool {
        self.take()
            .map(|r| r.entry(ttl, attr, generation))
            .is_some()
    }
}

impl Late<ReplyData> {
    pub fn data(self, data: &[u8]) -> bool {
        self.take().map(|r| r.data(data)).is_some()
    }
}

impl Late<ReplyWrite> {
    pub fn written(self, size: u32) -> bool {
        self.take().map(|r| r.written(size)).is_some()
    }
}

impl Late<ReplyEmpty> {
    pub fn ok(self) -> bool {
        self.take().map(|r| r.ok()).is_some()
    }
}

impl Late<ReplyAttr> {
    pub fn attr(self, ttl: &Duration, attr: &FileAttr) -> bool {
        self.take().map(|r| r.attr(ttl, attr)).is_some()
    }
}

impl Late<ReplyLseek> {
    pub fn offset(self, offset: i64) -> bool {
        self.take().map(|r| r.offset(offset)).is_some()
    }
}

impl Late<ReplyStatfs> {
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
    ) -> bool {
        self.take()
            .map(|r| r.statfs(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize))
            .is_some()
    }
}

impl Late<ReplyOpen> {
    pub fn open_backing(&self, fd: impl std::os::fd::AsFd) -> std::io::Result<BackingId> {
        self.peek(|r| r.open_backing(fd))
            .unwrap_or_else(|| Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT)))
    }

    pub fn opened(self, fh: FileHandle, flags: FopenFlags) -> bool {
        self.take().map(|r| r.opened(fh, flags)).is_some()
    }

    pub fn opened_passthrough(
        self,
        fh: FileHandle,
        flags: FopenFlags,
        backing: &BackingId,
    ) -> bool {
        self.take()
            .map(|r| r.opened_passthrough(fh, flags, backing))
            .is_some()
    }
}

impl Late<ReplyCreate> {
    pub fn open_backing(&self, fd: impl std::os::fd::AsFd) -> std::io::Result<BackingId> {
        self.peek(|r| r.open_backing(fd))
            .unwrap_or_else(|| Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT)))
    }

    pub fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    ) -> bool {
        self.take()
            .map(|r| r.created(ttl, attr, generation, fh, flags))
            .is_some()
    }

    pub fn created_passthrough(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: &BackingId,
    ) -> bool {
        self.take()
            .map(|r| r.created_passthrough(ttl, attr, generation, fh, flags, backing))
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI32, Ordering};

    /// A reply that records the errno (or 0 for success) it was given.
    struct Probe(Arc<AtomicI32>);

    impl ErrorReply for Probe {
        fn error(self, errno: Errno) {
            self.0.store(i32::from(errno), Ordering::SeqCst);
        }
    }

    fn probe() -> (Probe, Arc<AtomicI32>) {
        let seen = Arc::new(AtomicI32::new(-1));
        (Probe(Arc::clone(&seen)), seen)
    }

    #[test]
    fn the_timer_answers_etimedout_and_the_late_job_finds_nothing() {
        let metrics = Arc::new(Metrics::new());
        let d = Deadlines::start(Duration::from_millis(50)).unwrap();
        let (reply, seen) = probe();
        let late = d.guard(reply, "write", &metrics);
        assert_eq!(d.in_flight(), 1);
        let answered = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            seen.load(Ordering::SeqCst) == libc::ETIMEDOUT
        });
        assert!(answered, "the deadline never answered");
        assert!(late.take().is_none(), "the late job must not answer twice");
        assert_eq!(d.in_flight(), 0);
        assert_eq!(metrics.errors(libc::ETIMEDOUT), 1);
    }

    #[test]
    fn a_job_that_answers_first_wins_and_removes_its_deadline() {
        let metrics = Arc::new(Metrics::new());
        let d = Deadlines::start(Duration::from_millis(100)).unwrap();
        let (reply, seen) = probe();
        let late = d.guard(reply, "read", &metrics);
        late.error(Errno::from_i32(libc::ENOSPC));
        assert_eq!(seen.load(Ordering::SeqCst), libc::ENOSPC);
        assert_eq!(d.in_flight(), 0);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(seen.load(Ordering::SeqCst), libc::ENOSPC);
        assert_eq!(metrics.errors(libc::ETIMEDOUT), 0);
        // A job dropped unanswered removes its deadline too.
        let (reply, _) = probe();
        drop(d.guard(reply, "fsync", &metrics));
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn many_deadlines_expire_in_order_from_one_thread() {
        let metrics = Arc::new(Metrics::new());
        let d = Deadlines::start(Duration::from_millis(30)).unwrap();
        let probes: Vec<_> = (0..100).map(|_| probe()).collect();
        let mut lates = Vec::new();
        let mut seen = Vec::new();
        for (reply, s) in probes {
            lates.push(d.guard(reply, "read", &metrics));
            seen.push(s);
        }
        let all = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            seen.iter()
                .all(|s| s.load(Ordering::SeqCst) == libc::ETIMEDOUT)
        });
        assert!(all);
        assert_eq!(d.in_flight(), 0);
        assert!(lates.into_iter().all(|l| l.take().is_none()));
    }
}
