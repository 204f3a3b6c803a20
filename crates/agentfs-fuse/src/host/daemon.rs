//! Becoming a daemon, and telling the user whether the mount came up.
//!
//! [`daemonize`] forks before any thread exists (a forked child gets only the
//! calling thread, so forking later would leave locks held by threads that no
//! longer exist). The parent waits on a pipe for one line from the child,
//! `ok <message>` or `err <message>`, prints it and exits 0 or 1, so a script
//! that runs `agentfs-fuse-host` finds the mount live when it returns. The
//! child closes the descriptors it inherited, starts its own session, leaves
//! the working directory, and points stdin, stdout and stderr at /dev/null
//! until [`Ready::redirect_output`] sends output to the log file.

use anyhow::Context;
use nix::fcntl::OFlag;
use nix::unistd::{fork, ForkResult};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

/// How the outcome of starting up reaches the user.
#[derive(Debug)]
pub struct Ready {
    /// The pipe to the waiting parent; `None` in the foreground.
    pipe: Option<File>,
}

impl Ready {
    /// Foreground: the outcome is printed by this process.
    pub fn foreground() -> Ready {
        Ready { pipe: None }
    }

    /// Whether this process is the daemon child.
    pub fn is_daemon(&self) -> bool {
        self.pipe.is_some()
    }

    /// The mount is live: print `line` (foreground) or hand it to the parent.
    pub fn ok(&mut self, line: &str) {
        match self.pipe.take() {
            Some(mut pipe) => {
                let _ = writeln!(pipe, "ok {line}");
            }
            None => {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
        }
    }

    /// Starting failed: hand `message` to the parent (in the foreground the
    /// caller prints it).
    pub fn fail(&mut self, message: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let one_line = message.replace('\n', " ");
            let _ = writeln!(pipe, "err {one_line}");
        }
    }

    /// Daemon only: send stdout and stderr to `log` (appending).
    pub fn redirect_output(&self, log: &Path) -> anyhow::Result<()> {
        if !self.is_daemon() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the log file {}", log.display()))?;
        nix::unistd::dup2_stdout(&file).context("cannot redirect stdout")?;
        nix::unistd::dup2_stderr(&file).context("cannot redirect stderr")?;
        Ok(())
    }
}

/// Fork into a daemon. Returns only in the child; the parent waits for the
/// child's outcome line and exits with it.
///
/// Must be called while the process has one thread.
pub fn daemonize() -> anyhow::Result<Ready> {
    let (read_end, write_end) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    // SAFETY: the process is single-threaded here (nothing before this point
    // starts a thread: argument parsing and the preflight checks run on the
    // main thread only), so the child's copy of the address space holds no lock
    // owned by a thread that does not exist in it.
    match unsafe { fork() }.context("cannot fork the daemon")? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut line = String::new();
            let read = File::from(read_end).read_to_string(&mut line);
            let line = line.trim_end();
            if let (Ok(_), Some(msg)) = (&read, line.strip_prefix("ok ")) {
                println!("{msg}");
                std::process::exit(0);
            }
            match line.strip_prefix("err ") {
                Some(msg) => eprintln!("agentfs-fuse-host: error: {msg}"),
                None => eprintln!(
                    "agentfs-fuse-host: error: the daemon (pid {child}) exited before the mount was ready; see agentfs.log in the backstore"
                ),
            }
            std::process::exit(1);
        }
        ForkResult::Child => {
            drop(read_end);
            close_inherited(write_end.as_raw_fd());
            nix::unistd::setsid().context("setsid failed")?;
            // Do not pin the directory we were started in.
            nix::unistd::chdir("/").context("cannot chdir to /")?;
            let null = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .context("cannot open /dev/null")?;
            nix::unistd::dup2_stdin(&null).context("cannot redirect stdin")?;
            nix::unistd::dup2_stdout(&null).context("cannot redirect stdout")?;
            nix::unistd::dup2_stderr(&null).context("cannot redirect stderr")?;
            Ok(Ready {
                pipe: Some(File::from(write_end)),
            })
        }
    }
}

/// Close the descriptors inherited from whoever started us (all above stderr
/// but `keep`), so the daemon does not hold their pipes and files open. Runs
/// right after the fork, when nothing in this process owns any of them.
fn close_inherited(keep: RawFd) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && fd != keep {
            // EBADF for the directory's own (already closed) descriptor is fine.
            let _ = nix::unistd::close(fd);
        }
    }
}
