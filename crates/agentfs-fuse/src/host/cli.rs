//! Command-line flags of `agentfs-fuse-host`.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// Mount AgentFS, a branching snapshot filesystem, at MOUNTPOINT.
#[derive(Debug, Clone, Parser)]
#[command(name = "agentfs-fuse-host", version, about, args_override_self = true)]
pub struct Cli {
    /// Directory holding the file contents and state [default: $XDG_DATA_HOME/agentfs/default,
    /// else ~/.local/share/agentfs/default].
    #[arg(long, value_name = "DIR")]
    pub backstore: Option<PathBuf>,

    /// Stay in the foreground and log to stderr (default: become a daemon logging to
    /// DIR/agentfs.log, DIR being the backstore).
    #[arg(long)]
    pub foreground: bool,

    /// Let users other than the mount owner use the mount (non-root owners need
    /// user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,

    /// Least severe log level written.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Transport workers for in-memory metadata operations.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub meta_workers: u16,

    /// Transport workers for operations that touch the backstore.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub data_workers: u16,

    /// Threads reading requests from the kernel.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub fuse_threads: u16,

    /// How long the kernel may cache attributes and names below the root, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub attr_ttl_ms: u64,

    /// File data path: `auto` uses FUSE passthrough where the kernel allows
    /// it (Linux 6.9+, CAP_SYS_ADMIN), `off` always serves data through the daemon.
    #[arg(long, value_enum, default_value_t = Passthrough::Auto)]
    pub passthrough: Passthrough,

    /// Request channel: `auto` asks the kernel for FUSE over io_uring (Linux
    /// 6.14+, with the fuse module's `enable_uring` parameter set to Y) and
    /// serves requests on one pinned thread per CPU where it is granted;
    /// `off` reads every request from /dev/fuse.
    #[arg(long, value_name = "auto|off", default_value = "auto", value_parser = auto_off, action = clap::ArgAction::Set)]
    pub fuse_uring: bool,

    /// Over FUSE io_uring: how long, in microseconds, a CPU's ring thread
    /// keeps looking for the next request after answering one before it
    /// sleeps (yielding to any other runnable thread meanwhile). While it
    /// looks, its CPU is not idle, so the scheduler leaves the woken caller
    /// on its CPU instead of moving it to a halted one. A CPU found busy
    /// (one yield away 50 us or more) stops the looking there for 200 ms.
    /// 0: sleep at once.
    #[arg(long, value_name = "US", default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub ring_poll_us: u64,

    /// Where metadata requests FsCore can answer from memory (lookup, getattr,
    /// readdir, mkdir, unlink, rename, xattrs, ...) run: `on` answers them on
    /// the threads reading /dev/fuse (two thread hand-offs fewer per request),
    /// `off` hands them to the meta workers. Requests that may reach the
    /// backstore go to the workers either way.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pub inline_meta: bool,

    /// Testing only: reading the xattr `user.agentfs.fault.panic` panics inside
    /// the worker that serves it, to prove one failing operation fails alone.
    #[arg(long, hide = true)]
    pub fault_injection: bool,

    /// Deadline of a request that waits on the backstore (open, create, read,
    /// write, fsync, fallocate, lseek, statfs, fsyncdir, truncate through the daemon), in
    /// milliseconds: past it the caller gets ETIMEDOUT and the operation's
    /// late result is dropped (it may still complete). 0: no deadline.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub op_timeout_ms: u64,

    /// Testing only: while FILE exists, every backstore call first sleeps the
    /// number of milliseconds written in FILE (a slow-disk storm).
    #[arg(long, hide = true, value_name = "FILE")]
    pub fault_slow_backstore: Option<PathBuf>,

    /// Write a checkpoint of all metadata (and restart the journal) whenever
    /// the journal grows past this many KiB; mount and clean unmount always
    /// write one.
    #[arg(long, value_name = "KIB", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(4..))]
    pub checkpoint_journal_kib: u64,

    /// Mount as an overlay over this existing directory (a checkout): the
    /// default branch starts as its content, read in place and never written;
    /// the first write of a file copies it into the backstore. Needs a new
    /// backstore; later mounts of that backstore must pass the same directory.
    /// It may be the mountpoint itself.
    #[arg(long, value_name = "DIR")]
    pub lower: Option<PathBuf>,

    /// What branches see when the lower directory changes underneath:
    /// `shared` reads it in place (unread directories and unwritten files
    /// follow it, see specs/overlay.md); `copy` copies (reflinks where
    /// possible) every lower file into the backstore at the first mount, so
    /// every branch and snapshot is point-in-time. Only at a backstore's
    /// first mount.
    #[arg(long, value_enum, default_value_t = LowerIsolation::Shared, requires = "lower")]
    pub lower_isolation: LowerIsolation,

    /// Name of the branch unbound processes see.
    #[arg(long, value_name = "NAME", default_value = "main")]
    pub default_branch: String,

    /// Directory to mount at.
    pub mountpoint: PathBuf,
}

/// `--lower-isolation` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LowerIsolation {
    Shared,
    Copy,
}

/// `--passthrough` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Passthrough {
    Auto,
    Off,
}

/// `--log-level` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The tracing filter for this level. fuser's own per-request chatter is
    /// kept at warn unless debug or trace is asked for.
    pub fn filter(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info,fuser=warn",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Parse `on` / `off` (also `true` / `false`).
fn on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

fn auto_off(value: &str) -> Result<bool, String> {
    match value {
        "auto" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected auto or off, not {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_flags_parse() {
        let cli = Cli::try_parse_from(["agentfs-fuse-host", "/mnt/x"]).unwrap();
        assert_eq!(cli.mountpoint, PathBuf::from("/mnt/x"));
        assert!(!cli.foreground && !cli.allow_other);
        assert_eq!(
            (cli.meta_workers, cli.data_workers, cli.fuse_threads),
            (4, 8, 2)
        );
        assert_eq!(cli.attr_ttl_ms, 60_000);
        assert_eq!(cli.op_timeout_ms, 30_000);
        assert_eq!(cli.fault_slow_backstore, None);
        assert_eq!(cli.lower, None);
        assert_eq!(cli.lower_isolation, LowerIsolation::Shared);
        assert_eq!(cli.default_branch, "main");
        assert_eq!(cli.log_level, LogLevel::Info);
        assert!(cli.inline_meta);
        assert!(cli.fuse_uring, "--fuse-uring auto by default");
        assert_eq!(cli.ring_poll_us, 200);
        let cli = Cli::try_parse_from([
            "agentfs-fuse-host",
            "--backstore",
            "/b",
            "--foreground",
            "--log-level",
            "debug",
            "--fuse-threads",
            "4",
            "--attr-ttl-ms",
            "0",
            "--default-branch",
            "trunk",
            "--inline-meta",
            "off",
            "--fuse-uring",
            "auto",
            "--fuse-uring",
            "off",
            "--ring-poll-us",
            "0",
            "--lower",
            "/src",
            "--lower-isolation",
            "copy",
            "/m",
        ])
        .unwrap();
        assert_eq!(cli.backstore, Some(PathBuf::from("/b")));
        assert!(cli.foreground);
        assert_eq!(cli.log_level, LogLevel::Debug);
        assert_eq!((cli.fuse_threads, cli.attr_ttl_ms), (4, 0));
        assert_eq!(cli.default_branch, "trunk");
        assert!(!cli.inline_meta);
        assert!(!cli.fuse_uring, "the last of a repeated flag wins");
        assert_eq!(cli.ring_poll_us, 0);
        assert_eq!(cli.lower, Some(PathBuf::from("/src")));
        assert_eq!(cli.lower_isolation, LowerIsolation::Copy);
        assert!(
            Cli::try_parse_from(["agentfs-fuse-host", "--lower-isolation", "copy", "/m"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["agentfs-fuse-host", "--inline-meta", "maybe", "/m"]).is_err()
        );
        assert!(Cli::try_parse_from(["agentfs-fuse-host", "--fuse-threads", "0", "/m"]).is_err());
        assert!(Cli::try_parse_from(["agentfs-fuse-host", "--fuse-uring", "on", "/m"]).is_err());
        assert!(
            Cli::try_parse_from(["agentfs-fuse-host", "--ring-poll-us", "100001", "/m"]).is_err()
        );
        assert!(Cli::try_parse_from(["agentfs-fuse-host"]).is_err());
    }
}
