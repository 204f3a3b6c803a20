//! The worker pool behind the in-process transport, generic over the
//! context its jobs run against.
//!
//! [`Pool<C>`] owns one `lane` per [`Lane`]: an injector queue
//! feeding a fixed set of named worker threads, each job run as
//! `job(&*ctx)` under `catch_unwind`. [`crate::InProcessTransport`] is a
//! `Pool<FsCore>`; being generic is what lets the queueing, panic isolation
//! and shutdown be tested without an FsCore (and lets the adapter's tests use
//! a stand-in context).
//!
//! Lifecycle: workers start in [`Pool::try_new`]; [`Pool::shutdown`] (also
//! run by `Drop`) closes both lanes, lets the workers drain what was queued,
//! and joins them. Workers hold only the lane state and an `Arc<C>`, never
//! the pool, so there is no reference cycle; and a pool dropped on one of its
//! own worker threads (the last `Arc` released inside a job) does not join
//! that thread, which finishes its job and exits by itself.

mod lane;

#[cfg(test)]
mod tests;

use std::thread::{self, JoinHandle};

use tracing::error;

use self::lane::LaneShared;
use crate::sync::{lock, Arc, Mutex};
use crate::{Lane, TransportConfig, TransportError, TransportStats};

/// A job of a [`Pool<C>`]: runs once, on a worker, against the context.
pub type PoolJob<C> = Box<dyn FnOnce(&C) + Send + 'static>;

/// A worker thread could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start worker thread agentfs-{lane}-{index}")]
pub struct SpawnError {
    pub lane: Lane,
    pub index: usize,
    #[source]
    pub source: std::io::Error,
}

/// A two-lane worker pool running [`PoolJob<C>`]s against an `Arc<C>`.
pub struct Pool<C: Send + Sync + 'static> {
    ctx: Arc<C>,
    /// Indexed by [`Lane::index`].
    lanes: [LaneHandle<C>; 2],
}

struct LaneHandle<C> {
    shared: Arc<LaneShared<C>>,
    /// Join handles of the lane's workers, taken (emptied) by the first
    /// `shutdown`. Lock order: taken alone, and released before joining, so a
    /// worker calling `shutdown` cannot deadlock with a thread joining it.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<C: Send + Sync + 'static> Pool<C> {
    /// Start `config.meta_workers` and `config.data_workers` threads (each at
    /// least 1: a lane without workers would never run its jobs), named
    /// `agentfs-meta-N` and `agentfs-data-N`.
    pub fn try_new(ctx: Arc<C>, config: TransportConfig) -> Result<Pool<C>, SpawnError> {
        let (meta, meta_locals) = LaneShared::new(Lane::Meta, config.meta_workers.max(1));
        let (data, data_locals) = LaneShared::new(Lane::Data, config.data_workers.max(1));
        let pool = Pool {
            ctx,
            lanes: [
                LaneHandle {
                    shared: meta,
                    threads: Mutex::new(Vec::new()),
                },
                LaneHandle {
                    shared: data,
                    threads: Mutex::new(Vec::new()),
                },
            ],
        };
        for (lane, locals) in [(Lane::Meta, meta_locals), (Lane::Data, data_locals)] {
            let handle = &pool.lanes[lane.index()];
            for (index, local) in locals.into_iter().enumerate() {
                let shared = Arc::clone(&handle.shared);
                let ctx = Arc::clone(&pool.ctx);
                let spawned = thread::Builder::new()
                    .name(format!("agentfs-{lane}-{index}"))
                    .spawn(move || shared.run_worker(local, ctx, index));
                match spawned {
                    Ok(thread) => lock(&handle.threads).push(thread),
                    // Dropping `pool` shuts down and joins the workers
                    // already started; the deques not handed out are dropped
                    // empty.
                    Err(source) => {
                        return Err(SpawnError {
                            lane,
                            index,
                            source,
                        })
                    }
                }
            }
        }
        Ok(pool)
    }

    /// Queue `job` on `lane` and return at once. After shutdown the job is
    /// dropped unrun (before this returns) and `ShutDown` returned.
    pub fn submit(&self, lane: Lane, job: PoolJob<C>) -> Result<(), TransportError> {
        match self.lanes[lane.index()].shared.submit(job) {
            Ok(()) => Ok(()),
            Err(rejected) => {
                // Dropped here, with no lock held: its Drop may do I/O (a
                // fuser reply answers EIO when dropped unsent).
                drop(rejected);
                Err(TransportError::ShutDown)
            }
        }
    }

    /// The context every job runs against.
    pub fn context(&self) -> &Arc<C> {
        &self.ctx
    }

    pub fn stats(&self) -> TransportStats {
        TransportStats {
            meta: self.lanes[Lane::Meta.index()].shared.stats(),
            data: self.lanes[Lane::Data.index()].shared.stats(),
        }
    }

    /// Stop taking jobs, let the workers run everything already queued, and
    /// join them. Idempotent. A concurrent second caller returns without
    /// waiting for the first caller's joins. Called on one of the pool's own
    /// workers (from inside a job) it joins every other worker and leaves its
    /// own thread to exit after the current job; it then waits for every
    /// other queued job, so a job must not call it while holding something a
    /// queued job waits for.
    pub fn shutdown(&self) {
        // Close both lanes first, so they drain in parallel.
        for handle in &self.lanes {
            handle.shared.close();
        }
        let me = thread::current().id();
        for (handle, lane) in self.lanes.iter().zip(Lane::ALL) {
            let threads = std::mem::take(&mut *lock(&handle.threads));
            for thread in threads {
                if thread.thread().id() == me {
                    continue;
                }
                if thread.join().is_err() {
                    // Jobs run under catch_unwind, so only a bug in the
                    // worker loop itself gets here.
                    error!(lane = %lane, "worker thread panicked outside a job");
                }
            }
        }
    }
}

#[cfg(test)]
impl<C: Send + Sync + 'static> Pool<C> {
    fn sleepers(&self, lane: Lane) -> usize {
        self.lanes[lane.index()].shared.sleepers()
    }
}

impl<C: Send + Sync + 'static> Drop for Pool<C> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
