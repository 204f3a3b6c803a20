//! agentfs-fuse: the FUSE face of AgentFS.
//!
//! This crate is glue between the kernel and FsCore, and holds no filesystem
//! state of its own beyond what a request carries:
//! - [`adapter`]: [`AgentFs`], the fuser `Filesystem` that hands every
//!   request to an [`agentfs_transport::FsCoreTransport`] and answers from a
//!   transport worker;
//! - [`inode`]: how a FUSE inode number names a (branch, node) pair;
//! - [`control`]: [`CoreControl`], the control-protocol handler over FsCore;
//! - [`metrics`]: the adapter's counters and their names;
//! - [`reply`], [`attr`]: the one error path and the type conversions;
//! - [`deadline`]: per-request deadlines of jobs that may wait on the backstore;
//! - [`wire`], [`ring`]: one request and its reply whichever way the kernel
//!   sent it, and FUSE over io_uring (per-CPU queues beside fuser's session).
//!
//! The mount binary `agentfs-fuse-host` (src/main.rs) wires these together with
//! HostFs, the in-process transport and the control server.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod adapter;
pub mod attr;
pub mod buffers;
pub mod control;
pub mod deadline;
pub mod fair;
pub mod inode;
pub mod metrics;
pub mod reply;
pub mod ring;
pub mod wire;

pub use adapter::{AdapterConfig, AgentFs, DEFAULT_ATTR_TTL};
pub use control::{CommitInvalidator, CoreControl, MountFacts, RootInvalidator};
