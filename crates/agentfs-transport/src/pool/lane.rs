//! One lane of the pool: its queue, its idle protocol, its counters, and the
//! loop its worker threads run.
//!
//! A job enters through the lane's [`Injector`]. Each worker owns a FIFO
//! [`Worker`] deque and finds work the way the crossbeam-deque docs show:
//! its own deque first, then a batch from the injector
//! (`steal_batch_and_pop`), then one job from a sibling's deque. A worker
//! that took a batch while siblings sleep wakes one, so jobs parked behind a
//! slow job in its deque are stolen rather than delayed.
//!
//! # Sleeping without losing a wake-up
//!
//! Idle workers block on a condition variable; `submit` does not take a lock
//! unless someone sleeps. The two sides are
//!
//! ```text
//! submitter:  push job;  fence(SeqCst);  if sleepers > 0 { lock sleep; notify_one }
//! sleeper:    lock sleep;  sleepers += 1;  fence(SeqCst);
//!             while !closed && queues empty { wait (unlocks sleep atomically) }
//!             sleepers -= 1
//! ```
//!
//! No wake-up is lost: the two SeqCst fences are totally ordered. If the
//! sleeper's fence comes first, the submitter's load after its own fence sees
//! `sleepers > 0` and it notifies; otherwise the sleeper's check after its
//! fence sees the pushed job and it does not wait. A notify cannot slip into
//! the gap between the sleeper's check and its wait, because the sleeper holds
//! `sleep` from before its increment until `wait` releases it atomically, and
//! the submitter takes `sleep` before notifying. A woken worker re-checks the
//! queues under the lock, after the push, so it finds the job unless another
//! worker already took it (which is fine: then that worker runs it). Closing
//! stores `closed` and then takes `sleep` to `notify_all`, so it is never
//! missed either. The same "fence, then look at `sleepers`" wakes a sibling
//! when a worker's own deque holds a surplus batch.

use std::any::Any;
use std::iter;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_deque::{Injector, Steal, Stealer, Worker};
use tracing::{debug, error};

use super::PoolJob;
use crate::sync::{
    fence, lock, read, wait, write, Arc, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex,
    Ordering, RwLock,
};
use crate::{Lane, LaneStats};

/// The state one lane's submitters and workers share.
pub(super) struct LaneShared<C> {
    lane: Lane,
    injector: Injector<PoolJob<C>>,
    /// One per worker, by worker index; fixed before the workers start.
    stealers: Vec<Stealer<PoolJob<C>>>,
    /// Held shared by `submit` while it checks `closed` and pushes, and
    /// exclusively by `close` while it sets `closed`: once `close` has it, no
    /// push is half done, so a worker that sees `closed` and empty queues may
    /// exit. Lock order: taken alone; never nested with `sleep`.
    gate: RwLock<()>,
    /// Set once, under `gate` held exclusively. Read by workers without a lock.
    closed: AtomicBool,
    /// Idle workers wait on `wake` holding this. Lock order: a leaf; never
    /// held while a job runs, never nested with `gate`.
    sleep: Mutex<()>,
    wake: Condvar,
    /// Workers between their increment in `sleep_until_work` and their
    /// decrement; written with `sleep` held, read by submitters without it.
    sleepers: AtomicUsize,
    submitted: AtomicU64,
    started: AtomicU64,
    completed: AtomicU64,
    panicked: AtomicU64,
}

impl<C: Send + Sync + 'static> LaneShared<C> {
    /// A lane with one deque per worker; returns the deques to move into the
    /// worker threads.
    pub(super) fn new(lane: Lane, workers: usize) -> (Arc<Self>, Vec<Worker<PoolJob<C>>>) {
        let locals: Vec<Worker<PoolJob<C>>> = (0..workers).map(|_| Worker::new_fifo()).collect();
        let shared = LaneShared {
            lane,
            injector: Injector::new(),
            stealers: locals.iter().map(Worker::stealer).collect(),
            gate: RwLock::new(()),
            closed: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            submitted: AtomicU64::new(0),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        };
        (Arc::new(shared), locals)
    }

    /// Queue `job`, or hand it back if the lane is closed. Never blocks
    /// except on `gate` while `close` holds it (a few instructions).
    pub(super) fn submit(&self, job: PoolJob<C>) -> Result<(), PoolJob<C>> {
        {
            let _open = read(&self.gate);
            // `closed` is only written with `gate` held exclusively.
            if self.closed.load(Ordering::Relaxed) {
                return Err(job);
            }
            // Counted before the push so `completed` never passes `submitted`.
            self.submitted.fetch_add(1, Ordering::Relaxed);
            self.injector.push(job);
        }
        self.wake_one();
        Ok(())
    }

    /// Stop taking jobs and wake every sleeper so the workers drain the
    /// queues and exit.
    pub(super) fn close(&self) {
        {
            let _shut = write(&self.gate);
            self.closed.store(true, Ordering::SeqCst);
        }
        let _sleep = lock(&self.sleep);
        self.wake.notify_all();
    }

    pub(super) fn stats(&self) -> LaneStats {
        // `started` before `submitted`: a job is counted submitted before it
        // can start, so this order never shows more started than submitted.
        let started = self.started.load(Ordering::SeqCst);
        let submitted = self.submitted.load(Ordering::SeqCst);
        LaneStats {
            workers: self.stealers.len(),
            submitted,
            completed: self.completed.load(Ordering::SeqCst),
            panicked: self.panicked.load(Ordering::SeqCst),
            queued: submitted.saturating_sub(started),
        }
    }

    /// The loop of worker `index`: run jobs until the lane is closed and
    /// every queue is empty.
    pub(super) fn run_worker(&self, local: Worker<PoolJob<C>>, ctx: Arc<C>, index: usize) {
        debug!(lane = %self.lane, worker = index, "worker started");
        loop {
            // Read before looking for work: if `closed` was already set, every
            // push happened before it (see `gate`), so finding nothing after
            // this load means nothing is left.
            let closed = self.closed.load(Ordering::SeqCst);
            if let Some(job) = self.find_job(&local, index) {
                if !local.is_empty() {
                    // A batch landed in our deque; let an idle sibling steal it.
                    self.wake_one();
                }
                self.run_job(job, &ctx, index);
            } else if closed {
                break;
            } else {
                self.sleep_until_work();
            }
        }
        debug!(lane = %self.lane, worker = index, "worker stopped");
    }

    /// Wake one sleeping worker, if any; see the module header.
    fn wake_one(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _sleep = lock(&self.sleep);
            self.wake.notify_one();
        }
    }

    /// Block until there may be work or the lane closes; see the module header.
    fn sleep_until_work(&self) {
        let mut guard = lock(&self.sleep);
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        while !self.closed.load(Ordering::SeqCst) && !self.has_work() {
            guard = wait(&self.wake, guard);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Workers currently idle (or on their way in or out of idling).
    #[cfg(test)]
    pub(super) fn sleepers(&self) -> usize {
        self.sleepers.load(Ordering::SeqCst)
    }

    fn has_work(&self) -> bool {
        !self.injector.is_empty() || self.stealers.iter().any(|s| !s.is_empty())
    }

    /// The crossbeam-deque docs' `find_task`, skipping our own stealer.
    fn find_job(&self, local: &Worker<PoolJob<C>>, index: usize) -> Option<PoolJob<C>> {
        local.pop().or_else(|| {
            iter::repeat_with(|| {
                self.injector.steal_batch_and_pop(local).or_else(|| {
                    self.stealers
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != index)
                        .map(|(_, s)| s.steal())
                        .collect::<Steal<_>>()
                })
            })
            .find(|s| !s.is_retry())
            .and_then(Steal::success)
        })
    }

    /// Run one job, containing its panic: the job's captures (its reply
    /// object among them) are dropped by the unwinding, the panic is logged
    /// and counted, and the worker goes on.
    fn run_job(&self, job: PoolJob<C>, ctx: &C, index: usize) {
        self.started.fetch_add(1, Ordering::SeqCst);
        match catch_unwind(AssertUnwindSafe(|| job(ctx))) {
            Ok(()) => {
                self.completed.fetch_add(1, Ordering::SeqCst);
            }
            Err(payload) => {
                self.panicked.fetch_add(1, Ordering::SeqCst);
                error!(
                    lane = %self.lane,
                    worker = index,
                    panic = panic_message(payload.as_ref()),
                    "job panicked; its reply was dropped unsent (EIO) and the worker goes on"
                );
                // A payload whose Drop panics must not take the worker down
                // either; a second-level payload is leaked rather than dropped.
                if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                    std::mem::forget(again);
                }
            }
        }
    }
}

/// The message of a panic payload (`&str` or `String`), or a placeholder.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "<non-string panic payload>"
    }
}
