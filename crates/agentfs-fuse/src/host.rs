//! The mount binary's sequence: check, fork, serve.
//!
//! 1. [`preflight`]: the mountpoint exists, is a directory and is not mounted;
//!    /dev/fuse opens; fusermount3 is there if a non-root user needs it.
//! 2. [`daemon`]: unless `--foreground`, fork now, while the process has one
//!    thread; the parent waits for the child's "ready" or error line.
//! 3. [`serve`]: open the backstore, build FsCore, the transport, the control
//!    server and the FUSE session; wait for a signal or an external unmount;
//!    tear down in order.

pub mod cli;
pub mod daemon;
pub mod overlay;
pub mod preflight;
pub mod serve;
pub mod slow;

use anyhow::Context;

/// Run the mount binary with parsed flags.
pub fn run(mut cli: cli::Cli) -> anyhow::Result<()> {
    if let Some(lower) = &cli.lower {
        // Before the daemon leaves the working directory.
        cli.lower =
            Some(std::path::absolute(lower).with_context(|| {
                format!("cannot make the lower path {} absolute", lower.display())
            })?);
    }
    let euid = nix::unistd::geteuid().as_raw();
    let mountpoint = preflight::check(&cli.mountpoint, euid)?;
    let backstore = match &cli.backstore {
        Some(dir) => std::path::absolute(dir).with_context(|| {
            format!("cannot make the backstore path {} absolute", dir.display())
        })?,
        None => agentfs_hostfs::default_root(),
    };
    let mut ready = if cli.foreground {
        daemon::Ready::foreground()
    } else {
        daemon::daemonize()?
    };
    let result = serve::serve(&cli, &mountpoint, &backstore, &mut ready);
    if let Err(e) = &result {
        ready.fail(&format!("{e:#}"));
    }
    result
}
