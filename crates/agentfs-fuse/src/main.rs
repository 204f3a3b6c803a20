//! `agentfs-fuse-host`: mount AgentFS at a directory.
//!
//! Checks what can be checked before mounting (mountpoint, /dev/fuse,
//! fusermount3), forks into a daemon unless `--foreground`, opens the
//! backstore, builds FsCore and the transport, serves the control socket, and
//! mounts. It stays until SIGINT/SIGTERM or an external unmount, then
//! unmounts, drains the transport, syncs the core and removes the socket.
//! See `host.rs` for the sequence and why the fork comes first.
#![deny(clippy::undocumented_unsafe_blocks)]

mod host;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = host::cli::Cli::parse();
    match host::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentfs-fuse-host: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
