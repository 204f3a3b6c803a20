//! agentfs-transport: how the FUSE adapter reaches FsCore without making a
//! kernel thread wait on slow work.
//!
//! FUSE callbacks run on threads the kernel is waiting on. The adapter never
//! does FsCore work there: it moves the fuser reply object into a [`Job`],
//! hands it to [`FsCoreTransport::submit`] and returns. The job later runs on
//! a transport worker, calls FsCore, and sends the reply.
//!
//! Work goes to one of two [`Lane`]s. [`Lane::Meta`] is for operations that
//! stay in memory (lookup, getattr, readdir, ...); [`Lane::Data`] is for
//! anything that may touch the backstore (read, write, fsync, copy-on-write).
//! Each lane has its own queue and its own workers, so a slow or stuck disk
//! delays data operations only, never a lookup.
//!
//! A job that panics fails only itself: the panic is caught, logged and
//! counted, the reply it captured is dropped by the unwinding (fuser answers
//! EIO for a reply dropped unsent), and the worker takes the next job.
//!
//! [`InProcessTransport`] is the in-process implementation: a
//! [`pool::Pool`] over `FsCore`. The pool is generic over its context so the
//! machinery is tested without an FsCore.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod pool;
mod sync;

use std::fmt;
use std::sync::Arc;

use agentfs_core::FsCore;
use serde::{Deserialize, Serialize};

pub use pool::{Pool, PoolJob, SpawnError};

/// Which queue and which workers a job uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// In-memory metadata work; must never wait on the backstore.
    Meta,
    /// Work that may do backstore I/O.
    Data,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Meta, Lane::Data];

    /// "meta" or "data": the name in thread names, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Meta => "meta",
            Lane::Data => "data",
        }
    }

    fn index(self) -> usize {
        match self {
            Lane::Meta => 0,
            Lane::Data => 1,
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One operation for a worker to run against the core.
pub type Job = Box<dyn FnOnce(&FsCore) + Send + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("transport is shut down")]
    ShutDown,
}

/// The adapter's only way to FsCore.
pub trait FsCoreTransport: Send + Sync + 'static {
    /// Queue `job` on `lane` and return at once; never blocks on backstore I/O.
    /// After shutdown the job is dropped unrun and ShutDown returned.
    fn submit(&self, lane: Lane, job: Job) -> Result<(), TransportError>;
    /// The core (for the rare calls that are pure in-memory and need no queue).
    fn core(&self) -> &Arc<FsCore>;
    fn stats(&self) -> TransportStats;
    /// Stop taking jobs, run what is queued, join the workers. Idempotent.
    fn shutdown(&self);
}

/// Counters of both lanes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportStats {
    pub meta: LaneStats,
    pub data: LaneStats,
}

/// Counters of one lane. Every submitted job is, at any moment, exactly one
/// of queued, running, completed (returned normally) or panicked, so
/// `running = submitted - queued - completed - panicked` (the fields are read
/// one by one, so a snapshot taken under load may be off by the jobs that
/// moved in between).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneStats {
    /// Worker threads the lane started.
    pub workers: usize,
    /// Jobs accepted (rejected submits after shutdown are not counted).
    pub submitted: u64,
    /// Jobs that returned normally.
    pub completed: u64,
    /// Jobs that panicked (each answered EIO by its dropped reply).
    pub panicked: u64,
    /// Jobs accepted and not yet started.
    pub queued: u64,
}

/// Worker counts of the in-process transport. A count of 0 is taken as 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransportConfig {
    pub meta_workers: usize,
    pub data_workers: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            meta_workers: 4,
            data_workers: 8,
        }
    }
}

/// The in-process transport: jobs run on worker threads of this process,
/// straight against the `FsCore`.
pub struct InProcessTransport {
    pool: Pool<FsCore>,
}

impl InProcessTransport {
    /// Start the workers.
    ///
    /// # Panics
    ///
    /// If the OS refuses to start a thread, like `std::thread::spawn`; use
    /// [`InProcessTransport::try_new`] to get the error instead.
    pub fn new(core: Arc<FsCore>, config: TransportConfig) -> Arc<Self> {
        match Self::try_new(core, config) {
            Ok(transport) => transport,
            Err(e) => panic!("agentfs-transport: {e}: {}", e.source),
        }
    }

    /// Start the workers, or say which one could not be started (the ones
    /// already started are shut down and joined).
    pub fn try_new(core: Arc<FsCore>, config: TransportConfig) -> Result<Arc<Self>, SpawnError> {
        Ok(Arc::new(InProcessTransport {
            pool: Pool::try_new(core, config)?,
        }))
    }
}

impl FsCoreTransport for InProcessTransport {
    fn submit(&self, lane: Lane, job: Job) -> Result<(), TransportError> {
        self.pool.submit(lane, job)
    }

    fn core(&self) -> &Arc<FsCore> {
        self.pool.context()
    }

    fn stats(&self) -> TransportStats {
        self.pool.stats()
    }

    fn shutdown(&self) {
        self.pool.shutdown();
    }
}

impl Drop for InProcessTransport {
    /// Shuts down as [`FsCoreTransport::shutdown`] does. Safe on one of the
    /// transport's own workers (the last `Arc` dropped inside a job): that
    /// worker is not joined, it exits after its job.
    fn drop(&mut self) {
        self.pool.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The adapter holds the transport as `Arc<dyn FsCoreTransport>`.
    #[test]
    fn transport_is_object_safe_and_shareable() {
        fn takes(_: Option<Arc<dyn FsCoreTransport>>) {}
        fn send_sync<T: Send + Sync + 'static>() {}
        takes(None);
        send_sync::<InProcessTransport>();
        send_sync::<TransportStats>();
    }

    #[test]
    fn config_defaults_and_partial_config() {
        assert_eq!(
            TransportConfig::default(),
            TransportConfig {
                meta_workers: 4,
                data_workers: 8
            }
        );
        let partial: TransportConfig =
            serde_json::from_str(r#"{"data_workers": 3}"#).expect("parse");
        assert_eq!(
            partial,
            TransportConfig {
                meta_workers: 4,
                data_workers: 3
            }
        );
    }

    #[test]
    fn lane_names() {
        assert_eq!(Lane::Meta.to_string(), "meta");
        assert_eq!(Lane::Data.to_string(), "data");
        assert_eq!(
            serde_json::to_string(&Lane::Data).expect("json"),
            r#""data""#
        );
        assert_eq!(
            TransportError::ShutDown.to_string(),
            "transport is shut down"
        );
    }
}
