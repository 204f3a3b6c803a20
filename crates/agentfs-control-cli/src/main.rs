//! `agentfs-control-cli`: snapshots, branches and process bindings of a
//! mounted AgentFS, for people and scripts.
//!
//! It speaks only the control protocol (`agentfs-control`): it finds the
//! daemon's socket through `<mount>/.agentfs/control`, sends one command, and
//! prints the reply, as text for a person or as JSON (`--json`) for a script.
//! The mount is `--mount`, else `$AGENTFS_MOUNT`, else the nearest directory
//! at or above the current one that holds `.agentfs/control`.
//!
//! Errors are one line on stderr, `agentfs-control-cli: <message>`, and exit
//! status 1 (usage errors keep clap's status 2; a failed `branch-exec` exec is 127).
#![deny(clippy::undocumented_unsafe_blocks)]

mod export;
mod render;

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentfs_control::client::{self, Client};
use agentfs_control::protocol::{path_to_wire, DetachView};
use agentfs_control::{control_file_path, Command, CommitResolve, Reply};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use render::{BranchNames, Verb};

const NAME: &str = "agentfs-control-cli";

#[derive(Parser, Debug)]
#[command(name = NAME, version, about = "Control a mounted AgentFS: snapshots, branches, process bindings")]
struct Cli {
    /// The AgentFS mount [default: $AGENTFS_MOUNT, else the mount containing the current directory]
    #[arg(long, global = true, value_name = "PATH")]
    mount: Option<PathBuf>,
    /// Print the daemon's reply as one JSON document
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Snapshot a branch (default: the branch this process sees)
    SnapshotCreate {
        #[arg(long)]
        name: Option<String>,
        /// Branch id or name
        #[arg(long)]
        branch: Option<String>,
    },
    /// List snapshots
    SnapshotList,
    /// Delete a snapshot (id or name)
    SnapshotDelete { snapshot: String },
    /// Create a writable branch from a snapshot
    BranchCreate {
        /// Snapshot id or name
        #[arg(long)]
        from: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List branches
    BranchList,
    /// Delete a branch (id or name)
    BranchDelete {
        branch: String,
        /// Delete even if processes are bound to it or hold files open
        #[arg(long)]
        force: bool,
    },
    /// Bind a process, and the processes it starts afterwards, to a branch
    BranchBind {
        #[arg(long)]
        branch: String,
        /// Process to bind [default: the parent of this command, e.g. your shell]
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Return a process to the default branch
    BranchUnbind {
        /// Process to unbind [default: the parent of this command, e.g. your shell]
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Run a command bound to a branch: binds this process, then execs CMD in its place
    BranchExec {
        #[arg(long)]
        branch: String,
        /// The command and its arguments (after `--`)
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "CMD"
        )]
        command: Vec<OsString>,
    },
    /// Show the daemon's state
    Status,
    /// What changed from A to B (each a branch or a snapshot, by name or
    /// id): added, deleted, modified, renamed and type-changed paths, sorted
    /// by path; `--json` prints {"a", "b", "changes": [..]}
    Diff {
        /// The first view (e.g. the snapshot a branch was made from)
        a: String,
        /// The second view
        b: String,
        /// Also print, on stderr, the work the daemon did: changes, changed
        /// nodes, nodes read, its time in milliseconds
        #[arg(long)]
        stats: bool,
    },
    /// Apply a branch's changes since its branch point onto its parent branch,
    /// atomically; refused (exit status 1) with the list of conflicts when the
    /// parent changed the same paths
    BranchCommit {
        /// Branch id or name
        branch: String,
        /// On a conflict the branch's change wins
        #[arg(long, conflicts_with = "ours")]
        theirs: bool,
        /// On a conflict the parent's state wins
        #[arg(long)]
        ours: bool,
        /// Delete the branch once committed
        #[arg(long)]
        delete: bool,
    },
    /// Write a branch's changes (since its branch point, or --base) onto a
    /// host directory: files atomically (temp file, fsync, rename), deletions
    /// applied, directories created, modes and symlinks kept
    Export {
        /// Branch id or name
        branch: String,
        /// The host directory to write into (e.g. the checkout under --lower)
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// List what would be done; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Snapshot to compare against [default: the one the branch was made from]
        #[arg(long, value_name = "SNAPSHOT")]
        base: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            fail_line(&format!("{err:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Print `agentfs-control-cli: <message>` as exactly one line.
fn fail_line(message: &str) {
    let one_line = message.replace(['\n', '\r'], " ");
    eprintln!("{NAME}: {one_line}");
}

fn run(cli: Cli) -> Result<ExitCode> {
    let mount = resolve_mount(cli.mount)?;
    let endpoint = client::discover(&mount)?;
    let mut conn = Client::connect(&endpoint)?;
    let parent = || nix::unistd::getppid().as_raw() as u32;
    let (verb, command) = match cli.command {
        Cmd::SnapshotCreate { name, branch } => {
            (Verb::Create, Command::SnapshotCreate { name, branch })
        }
        Cmd::SnapshotList => (Verb::Show, Command::SnapshotList),
        Cmd::SnapshotDelete { snapshot } => (Verb::Delete, Command::SnapshotDelete { snapshot }),
        Cmd::BranchCreate { from, name } => (Verb::Create, Command::BranchCreate { from, name }),
        Cmd::BranchList => (Verb::Show, Command::BranchList),
        Cmd::BranchDelete { branch, force } => {
            (Verb::Delete, Command::BranchDelete { branch, force })
        }
        Cmd::BranchBind { branch, pid } => (
            Verb::Create,
            Command::BranchBind {
                branch,
                pid: pid.unwrap_or_else(parent),
            },
        ),
        Cmd::BranchUnbind { pid } => (
            Verb::Delete,
            Command::BranchUnbind {
                pid: pid.unwrap_or_else(parent),
            },
        ),
        Cmd::BranchExec { branch, command } => return branch_exec(conn, &mount, branch, command),
        Cmd::Export {
            branch,
            to,
            dry_run,
            base,
        } => return export(conn, &mount, &branch, &to, dry_run, base, cli.json),
        Cmd::Status => (Verb::Show, Command::Status),
        Cmd::Diff { a, b, stats } => return diff(&mut conn, a, b, cli.json, stats),
        Cmd::BranchCommit {
            branch,
            theirs,
            ours,
            delete,
        } => {
            let resolve = match (theirs, ours) {
                (true, _) => Some(CommitResolve::Theirs),
                (_, true) => Some(CommitResolve::Ours),
                _ => None,
            };
            (
                Verb::Create,
                Command::BranchCommit {
                    branch,
                    resolve,
                    delete,
                },
            )
        }
    };
    let reply = conn.call(command)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        let names = if needs_branch_names(&reply) {
            branch_names(&mut conn)
        } else {
            BranchNames::new()
        };
        print!("{}", render::render(verb, &reply, &names));
    }
    if let Reply::Commit(c) = &reply {
        if !c.committed {
            // The reply (with the conflicts) is printed; the status says it was refused.
            if !cli.json {
                fail_line(&format!(
                    "commit of {} into {} refused: {} conflicting path(s); use --theirs or --ours to settle them",
                    c.branch,
                    c.parent,
                    c.conflicts.len()
                ));
            }
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `diff A B`: every page of the daemon's answer, printed as one.
fn diff(conn: &mut Client, a: String, b: String, json: bool, stats: bool) -> Result<ExitCode> {
    let mut changes = Vec::new();
    let mut offset = 0;
    let (mut pages, mut millis) = (0, 0.0);
    let (ida, idb, work) = loop {
        let command = Command::Diff {
            a: a.clone(),
            b: b.clone(),
            offset,
        };
        let Reply::Diff(page) = conn.call(command)? else {
            bail!("the daemon answered diff with another reply");
        };
        changes.extend(page.changes);
        pages += 1;
        millis += page.millis;
        match page.next {
            Some(next) if next > offset => offset = next,
            _ => break (page.a, page.b, (page.changed_nodes, page.nodes_read)),
        }
    };
    if json {
        let doc = serde_json::json!({ "a": ida, "b": idb, "changes": changes });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render::diff_lines(&changes));
    }
    if stats {
        eprintln!(
            "diff {ida} {idb}: {} change(s) in {pages} page(s), {} changed node(s), {} node(s) read, daemon {millis:.3} ms",
            changes.len(),
            work.0,
            work.1
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--mount`, else `$AGENTFS_MOUNT`, else the nearest ancestor of the current
/// directory (itself included) holding `.agentfs/control`.
fn resolve_mount(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(mount) = flag {
        return Ok(mount);
    }
    if let Some(mount) = std::env::var_os("AGENTFS_MOUNT").filter(|m| !m.is_empty()) {
        return Ok(PathBuf::from(mount));
    }
    let cwd = std::env::current_dir().context("cannot determine the current directory")?;
    if let Some(mount) = cwd.ancestors().find(|dir| control_file_path(dir).is_file()) {
        return Ok(mount.to_path_buf());
    }
    bail!(
        "{} is not inside an AgentFS mount (no .agentfs/control here or above; use --mount or AGENTFS_MOUNT)",
        cwd.display()
    )
}

fn needs_branch_names(reply: &Reply) -> bool {
    matches!(
        reply,
        Reply::Snapshot(_) | Reply::Snapshots(_) | Reply::Bound { .. }
    )
}

/// Branch names for nicer output; best effort, an empty map on any error.
fn branch_names(conn: &mut Client) -> BranchNames {
    match conn.call(Command::BranchList) {
        Ok(Reply::Branches(list)) => list.into_iter().map(|b| (b.id, b.name)).collect(),
        _ => BranchNames::new(),
    }
}

/// Bind this very process to `branch`, then replace it with `command`, so the
/// command keeps our pid (and start time) and it and its children see the branch.
fn branch_exec(
    mut conn: Client,
    mount: &Path,
    branch: String,
    command: Vec<OsString>,
) -> Result<ExitCode> {
    let Some((program, args)) = command.split_first() else {
        bail!("branch-exec needs a command to run");
    };
    let pid = std::process::id();
    // In its own view the process never looks names up in the shared root; the
    // daemon still needs the binding to know the caller's branch.
    let command = if enter_branch_view(mount, &branch) {
        Command::BranchBindPrivate { branch, pid }
    } else {
        Command::BranchBind { branch, pid }
    };
    conn.call(command)?;
    let err = std::process::Command::new(program).args(args).exec();
    // Still here: the exec failed. Undo the binding, best effort; the daemon
    // also drops bindings of dead processes.
    let _ = conn.call(Command::BranchUnbind { pid });
    fail_line(&format!(
        "cannot run {}: {err}",
        display(Path::new(program))
    ));
    Ok(ExitCode::from(127))
}

/// Give this process (and what it runs) a private mount namespace in which
/// the branch's own root, `<mount>/.agentfs/branches/<branch>`, is bind-mounted
/// over the mount path. The kernel then caches that tree like any other, and
/// what the process sees no longer depends on its pid: a daemonized grandchild
/// keeps the branch, and another branch's lookups at the mount root cannot
/// disturb its working directory. Needs CAP_SYS_ADMIN; without it (or if any
/// step fails) the process keeps the pid binding alone, which is still correct
/// for everything it and its attached children do. The mount's `.agentfs` is
/// bind-mounted over the view's own, so snapshots, branches and the control
/// file are reached by path inside as outside.
fn enter_branch_view(mount: &Path, branch: &str) -> bool {
    use nix::mount::{mount as sys_mount, MsFlags};
    let mount = &mount.canonicalize().unwrap_or_else(|_| mount.to_path_buf());
    let view = mount.join(".agentfs").join("branches").join(branch);
    if !nix::unistd::geteuid().is_root() || !view.is_dir() {
        return false;
    }
    let cwd = std::env::current_dir().ok();
    let entered = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .and_then(|()| {
            // Our mounts must not propagate back to the namespace we came from.
            sys_mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
        })
        .and_then(|()| {
            // The mount's own `.agentfs`, taken before the view covers the
            // mount path: bind-mounted over the view's `.agentfs` below, so
            // `control`, `branches` and `snapshots` are there inside too.
            let agentfs = agentfs_dir(mount);
            sys_mount(
                Some(&view),
                mount,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            if let Some(dir) = agentfs {
                let source = format!("/proc/self/fd/{}", dir.as_raw_fd());
                let target = mount.join(".agentfs");
                let _ = sys_mount(
                    Some(source.as_str()),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                );
            }
            Ok(())
        });
    if entered.is_err() {
        return false;
    }
    // A working directory inside the mount still names the old view: walk to it again.
    if let Some(cwd) = cwd.filter(|c| c.starts_with(mount)) {
        let _ = std::env::set_current_dir(&cwd);
    }
    true
}

/// `<mount>/.agentfs`, opened as a path only (no FUSE open), if it is there.
fn agentfs_dir(mount: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY)
        .open(mount.join(".agentfs"))
        .ok()
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `export`: the branch's diff against its base, carried out (or listed) on `to`.
fn export(
    mut conn: Client,
    mount: &Path,
    branch: &str,
    to: &Path,
    dry_run: bool,
    base: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let Reply::Branches(list) = conn.call(Command::BranchList)? else {
        bail!("the daemon answered branch-list with something else");
    };
    let Some(view) = list.iter().find(|b| b.name == branch || b.id == branch) else {
        bail!("no branch named or numbered {branch:?}");
    };
    let base = match base.or_else(|| view.from.clone()) {
        Some(base) => base,
        None => bail!(
            "branch {} was not made from a snapshot: give the base with --base SNAPSHOT",
            view.id
        ),
    };
    if !to.is_dir() {
        bail!("{} is not a directory", to.display());
    }
    // Inside the mount, DIR is a branch (the caller's), not the host directory.
    let (canon_to, canon_mount) = (to.canonicalize()?, mount.canonicalize()?);
    if canon_to.starts_with(&canon_mount) {
        bail!(
            "{} is inside the mount {}: export writes a host directory (to bring a branch's changes into another branch, use branch-commit)",
            to.display(),
            mount.display()
        );
    }
    let src = mount.join(".agentfs").join("branches").join(&view.name);
    if !src.is_dir() {
        bail!(
            "cannot read the branch through the mount at {}",
            src.display()
        );
    }
    let items = diff_items(&mut conn, &base, &view.id)?;
    let steps = export::plan(&items, &src)?;
    let (detached, summary) = if dry_run {
        (None, None)
    } else {
        let detached = detach_lower(&mut conn, &canon_to, &steps)?;
        (Some(detached), Some(export::apply(&steps, &src, to)?))
    };
    if json {
        let steps: Vec<String> = steps.iter().map(ToString::to_string).collect();
        let doc = serde_json::json!({
            "branch": view.id,
            "base": base,
            "to": to.display().to_string(),
            "dry_run": dry_run,
            "steps": steps,
            "done": summary.as_ref().map(|s| serde_json::json!({
                "written": s.written, "removed": s.removed, "renamed": s.renamed,
                "dirs": s.dirs, "symlinks": s.symlinks, "skipped": s.skipped,
            })),
            "detached": detached.as_ref().filter(|d| d.lower),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if dry_run { "would do" } else { "did" };
    println!(
        "export of branch {} (against {base}) to {}: {verb} {} step(s)",
        view.id,
        to.display(),
        steps.len()
    );
    for step in &steps {
        println!("  {step}");
    }
    if let Some(d) = detached.filter(|d| d.lower) {
        println!(
            "{} is this mount's lower directory: first copied up {} lower file(s) ({} bytes) and read {} lower director(ies) that branches and snapshots still named",
            to.display(),
            d.files_copied,
            d.bytes_copied,
            d.dirs_read
        );
    }
    if let Some(s) = summary {
        println!(
            "written {}, deleted {}, renamed {}, directories {}, symlinks {}, skipped {}",
            s.written, s.removed, s.renamed, s.dirs, s.symlinks, s.skipped
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Before `export` changes host directory `dir` (canonical): if it is this
/// mount's lower directory (or inside it, or holds it), the daemon makes
/// every branch and snapshot stop naming the lower paths `steps` will
/// rename, replace or delete (it copies those files up, and reads the lower
/// directories above them), durably, before it answers; anywhere else it
/// answers at once that there is nothing to do. Long lists go in several
/// requests, each well under the protocol's message limit.
fn detach_lower(conn: &mut Client, dir: &Path, steps: &[export::Step]) -> Result<DetachView> {
    use std::os::unix::ffi::OsStrExt;
    const BATCH_BYTES: usize = 256 << 10;
    let mut total = DetachView {
        lower: false,
        dirs_read: 0,
        files_copied: 0,
        bytes_copied: 0,
        millis: 0.0,
    };
    let (paths, touched) = export::detach_lists(steps, dir);
    let mut left: Vec<(bool, String)> = paths
        .iter()
        .map(|p| (true, path_to_wire(p)))
        .chain(touched.iter().map(|p| (false, path_to_wire(p))))
        .collect();
    left.reverse();
    let dir = path_to_wire(dir.as_os_str().as_bytes());
    while !left.is_empty() {
        let (mut paths, mut touched, mut budget) = (Vec::new(), Vec::new(), BATCH_BYTES);
        while let Some((whole, p)) = left.pop() {
            // JSON writes a byte as at most 6 (`\u00XX`).
            let cost = 8 + 6 * p.len();
            if !(paths.is_empty() && touched.is_empty()) && cost > budget {
                left.push((whole, p));
                break;
            }
            budget = budget.saturating_sub(cost);
            if whole {
                paths.push(p);
            } else {
                touched.push(p);
            }
        }
        let command = Command::LowerDetach {
            dir: dir.clone(),
            paths,
            touched,
        };
        let Reply::Detached(d) = conn.call(command).context(
            "the daemon could not make its branches and snapshots independent of the paths this export changes; nothing was exported",
        )?
        else {
            bail!("the daemon answered lower-detach with another reply");
        };
        if !d.lower {
            return Ok(d); // Not the lower directory: nothing to do for any path.
        }
        total.lower = true;
        total.dirs_read += d.dirs_read;
        total.files_copied += d.files_copied;
        total.bytes_copied += d.bytes_copied;
        total.millis += d.millis;
    }
    Ok(total)
}

/// What changed from snapshot `base` to branch `branch`, by the daemon's
/// `diff`, every page of it.
fn diff_items(conn: &mut Client, base: &str, branch: &str) -> Result<Vec<export::Item>> {
    let mut items = Vec::new();
    let mut offset = 0u64;
    loop {
        let command: Command = serde_json::from_value(
            serde_json::json!({"op": "diff", "a": base, "b": branch, "offset": offset}),
        )
        .context("this CLI has no diff command to ask the daemon")?;
        let reply = serde_json::to_value(conn.call(command)?)?;
        let value = &reply["value"];
        items.extend(export::items_from_json(&value["changes"])?);
        match value["next"].as_u64() {
            Some(next) if next > offset => offset = next,
            _ => return Ok(items),
        }
    }
}
