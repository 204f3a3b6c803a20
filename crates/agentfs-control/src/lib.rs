//! agentfs-control: the control protocol between the AgentFS daemon and its
//! clients (the `agentfs-control-cli` binary, scripts, tests).
//!
//! It owns the wire format and nothing else: it never sees FsCore types, so the
//! CLI can speak it without linking the filesystem, and the daemon converts its
//! own types into the views defined here.
//!
//! - [`protocol`]: requests, commands, replies, errors and their JSON shapes.
//! - [`frame`]: 4-byte big-endian length + JSON body, several per connection.
//! - [`endpoint`]: `<mount>/.agentfs/control` names the socket; where the socket
//!   goes (a runtime directory every user of the mount can reach).
//! - [`server`]: [`ControlServer`], threads over a Unix socket, answering via a
//!   [`ControlHandler`] with the caller's [`PeerCred`] from `SO_PEERCRED`.
//! - [`client`]: [`client::discover`] and [`client::call`].
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod client;
pub mod endpoint;
pub mod frame;
pub mod protocol;
pub mod server;

pub use client::ClientError;
pub use endpoint::{
    control_file_path, prepare_socket_path, socket_path_for, Endpoint, ROOT_SOCKET_DIR,
};
pub use frame::FrameError;
pub use protocol::{
    BindingView, BranchView, Command, CommitResolve, CommitView, ConflictView, ControlError,
    DiffEntryView, DiffView, ErrorKind, Reply, Request, Response, SnapshotView, StatusView,
    WireResponse, MAX_ERROR_MESSAGE_CHARS, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
pub use server::{ControlHandler, ControlServer, PeerCred, ServerConfig};
