//! Running one mount: build everything, mount, wait, tear down in order.
//!
//! Signals: SIGINT, SIGTERM and SIGHUP are blocked in every thread (the mask
//! is set before the first thread starts, and threads inherit it) and taken
//! with `sigwait` by the main thread alone, so no handler ever runs inside
//! FUSE or FsCore code. The session thread sends SIGUSR1 to the process when
//! the FUSE session ends on its own (an external `fusermount3 -u` or
//! `umount`), which wakes the same `sigwait`.
//!
//! Teardown: unmount (lazily if the mount is busy) and wait for the session
//! to end, stop the control server (removes the socket), shut the transport
//! down (queued jobs still run), then `FsCore::checkpoint` (the whole state
//! in one file and an empty journal: the next mount replays nothing).
//!
//! Startup opens FsCore from the backstore's checkpoint and journal
//! (`FsCore::open_persisted`), recovering after a crash; a backstore whose
//! metadata this build cannot read is refused with the reason.

use super::cli::{Cli, Passthrough};
use super::daemon::Ready;
use agentfs_control::{prepare_socket_path, ControlServer, Endpoint, PROTOCOL_VERSION};
use agentfs_core::{Backstore, CoreConfig, FsCore, MetaStore, ProcFs};
use agentfs_fuse::adapter::FuserFs;
use agentfs_fuse::wire::FuseDevice;
use agentfs_fuse::{AdapterConfig, AgentFs, CoreControl, MountFacts};
use agentfs_hostfs::{HostFs, HostFsOptions};
use agentfs_transport::{FsCoreTransport, InProcessTransport, TransportConfig};
use anyhow::{anyhow, Context};
use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use nix::sys::signal::{SigSet, Signal};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// How long teardown waits for the FUSE session to end after unmounting.
const SESSION_END_WAIT: Duration = Duration::from_secs(10);
/// Payload buffer of a ring slot: the largest write or read (max_write)
/// and its headers, at least what the kernel asks (max_pages pages).
const RING_PAYLOAD: usize = agentfs_fuse::adapter::MAX_WRITE as usize + 4096;

/// The signals the main thread waits for.
fn wait_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        set.add(s);
    }
    set
}

/// Mount at `mountpoint` (canonical) over the backstore at `backstore`, and
/// serve until a signal or an external unmount.
pub fn serve(
    cli: &Cli,
    mountpoint: &Path,
    backstore: &Path,
    ready: &mut Ready,
) -> anyhow::Result<()> {
    // Before any thread exists: every thread inherits this mask.
    let signals = wait_set();
    signals.thread_block().context("cannot block signals")?;

    let hostfs = HostFs::open(backstore, HostFsOptions::default()).map_err(|e| anyhow!("{e}"))?;
    let backstore = hostfs.root().to_path_buf();
    let hostfs = Arc::new(hostfs);
    ready.redirect_output(&backstore.join("agentfs.log"))?;
    init_logging(cli);

    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let mut content: Arc<dyn Backstore> = Arc::clone(&hostfs) as Arc<dyn Backstore>;
    if let Some(control) = &cli.fault_slow_backstore {
        tracing::warn!(control = %control.display(), "testing only: backstore calls sleep while this file exists");
        content = Arc::new(super::slow::SlowBackstore::new(content, control.clone()));
    }
    let (core, recovery) = FsCore::open_persisted(
        content,
        hostfs as Arc<dyn MetaStore>,
        CoreConfig {
            process_table: Box::new(ProcFs),
            default_branch_name: cli.default_branch.clone(),
        },
    )
    .map_err(|e| anyhow!("cannot load the backstore {}: {e}", backstore.display()))?;
    tracing::info!(?recovery, "metadata loaded");
    super::overlay::attach(
        &core,
        cli.lower.as_deref(),
        cli.lower_isolation,
        &backstore,
        mountpoint,
    )?;
    core.set_checkpoint_threshold(cli.checkpoint_journal_kib.saturating_mul(1024));
    let core = Arc::new(core);
    let transport = InProcessTransport::try_new(
        Arc::clone(&core),
        TransportConfig {
            meta_workers: cli.meta_workers.into(),
            data_workers: cli.data_workers.into(),
        },
    )
    .map_err(|e| anyhow!("cannot start the transport workers: {e}"))?;

    // In a runtime directory every user of the mount can reach (not the
    // owner-only backstore); named after the mountpoint.
    let euid = nix::unistd::geteuid().as_raw();
    let socket =
        prepare_socket_path(mountpoint, euid).context("cannot place the control socket")?;
    let facts = MountFacts {
        mountpoint: mountpoint.to_path_buf(),
        backstore: backstore.clone(),
    };
    let passthrough_active = Arc::new(AtomicBool::new(false));
    let handler = Arc::new(
        CoreControl::new(Arc::clone(&core), uid, facts)
            .with_passthrough_flag(Arc::clone(&passthrough_active))
            .with_other_users(cli.allow_other),
    );
    let control = ControlServer::bind(&socket, Arc::clone(&handler) as Arc<_>)
        .with_context(|| format!("cannot serve the control socket {}", socket.display()))?;
    let endpoint = Endpoint {
        protocol: PROTOCOL_VERSION,
        socket,
        mountpoint: mountpoint.to_path_buf(),
    };

    let twins = Arc::new(agentfs_fuse::adapter::Twins::default());
    let fs = Arc::new(AgentFs::new(
        Arc::clone(&transport) as Arc<dyn FsCoreTransport>,
        AdapterConfig {
            attr_ttl: Duration::from_millis(cli.attr_ttl_ms),
            control_file: endpoint.to_json_bytes(),
            owner_uid: uid,
            owner_gid: gid,
            fault_injection: cli.fault_injection,
            passthrough: cli.passthrough == Passthrough::Auto,
            inline_meta: cli.inline_meta,
            passthrough_active,
            twins: Arc::clone(&twins),
            op_timeout: (cli.op_timeout_ms > 0).then(|| Duration::from_millis(cli.op_timeout_ms)),
            uring: cli.fuse_uring,
        },
    ));
    let metrics = Arc::clone(fs.metrics());
    let mut session = Session::new(FuserFs(Arc::clone(&fs)), mountpoint, &session_config(cli))
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    // INIT is done: the kernel has the capabilities Session::new negotiated.
    let device = FuseDevice::duplicate(&session).context("cannot duplicate /dev/fuse")?;
    fs.set_device(Arc::clone(&device));
    // A ring that cannot start leaves the kernel on /dev/fuse: it switches
    // to the rings only once every CPU's queue has registered.
    let _rings = if fs.uring_granted() {
        let poll = Duration::from_micros(cli.ring_poll_us);
        match agentfs_fuse::ring::start(Arc::clone(&fs), device, RING_PAYLOAD, poll) {
            Ok(rings) => {
                tracing::info!(
                    queues = rings.queues(),
                    "FUSE over io_uring: one queue per CPU"
                );
                handler.set_request_channel_uring();
                Some(rings)
            }
            Err(e) => {
                tracing::warn!(
                    "cannot start the FUSE io_uring queues ({e}): requests go through /dev/fuse"
                );
                None
            }
        }
    } else {
        None
    };
    let mut unmounter = session.unmount_callable();
    handler.set_root_invalidator(root_invalidator(session.notifier()));
    handler.set_commit_invalidator(commit_invalidator(session.notifier()));
    twins
        .start(session.notifier())
        .context("cannot start the invalidation thread")?;
    let (ended_tx, ended_rx) = mpsc::channel();
    let main_pid = nix::unistd::getpid();
    let session_thread = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = ended_tx.send(result);
            // Wake the main thread's sigwait.
            let _ = nix::sys::signal::kill(main_pid, Signal::SIGUSR1);
        })
        .context("cannot start the FUSE session thread")?;

    let pid = std::process::id();
    ready.ok(&format!(
        "AgentFS mounted at {m} (backstore {b}, daemon pid {pid}). Unmount: fusermount3 -u {m}",
        m = mountpoint.display(),
        b = backstore.display()
    ));
    tracing::info!(mountpoint = %mountpoint.display(), backstore = %backstore.display(), pid, "mounted");

    let ended_by_itself = loop {
        match signals.wait() {
            Ok(Signal::SIGUSR1) => break true,
            Ok(sig) => {
                tracing::info!("{sig}: unmounting");
                break false;
            }
            Err(e) => tracing::warn!("sigwait failed: {e}"),
        }
    };
    if ended_by_itself {
        tracing::info!("the FUSE session ended (unmounted from outside)");
    } else {
        unmount(&mut unmounter, mountpoint);
    }
    match ended_rx.recv_timeout(SESSION_END_WAIT) {
        Ok(result) => {
            if let Err(e) = result {
                tracing::warn!("FUSE session ended with an error: {e}");
            }
            if session_thread.join().is_err() {
                tracing::error!("FUSE session thread panicked");
            }
        }
        Err(_) => tracing::warn!(
            "FUSE session still open {}s after unmount (busy mount, detached lazily); exiting without it",
            SESSION_END_WAIT.as_secs()
        ),
    }

    control.shutdown();
    transport.shutdown();
    for (name, value) in metrics.snapshot() {
        tracing::info!(metric = name, value, "final count");
    }
    core.close_clean()
        .map_err(|e| anyhow!("final checkpoint of the backstore failed: {e}"))?;
    tracing::info!("unmounted cleanly");
    Ok(())
}

fn session_config(cli: &Cli) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("agentfs".into()),
        MountOption::Subtype("agentfs".into()),
        // Kernel permission checks (pjdfstest expects them; FsCore checks too).
        MountOption::DefaultPermissions,
    ];
    if cli.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(cli.fuse_threads.into());
    config.clone_fd = true;
    config
}

/// Unmount; if the mount is busy, detach it lazily so new lookups fail
/// while open files finish.
fn unmount(unmounter: &mut SessionUnmounter, mountpoint: &Path) {
    let Err(e) = unmounter.unmount() else {
        return;
    };
    if e.raw_os_error() == Some(libc::EINVAL) {
        // Not a mount point any more: someone already unmounted it, lazily
        // if it was busy (`fusermount3 -u -z`); the session ends when the
        // last open file on it closes.
        tracing::info!("already unmounted or detached; waiting for the session to end");
        return;
    }
    tracing::warn!("unmount failed ({e}); detaching lazily");
    let detached = if nix::unistd::geteuid().is_root() {
        nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(|e| e.to_string())
    } else {
        std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mountpoint)
            .status()
            .map_err(|e| e.to_string())
            .and_then(|s| {
                if s.success() {
                    Ok(())
                } else {
                    Err(format!("fusermount3 -u -z: {s}"))
                }
            })
    };
    if let Err(e) = detached {
        tracing::error!("lazy unmount failed too: {e}");
    }
}

fn init_logging(cli: &Cli) {
    let filter = EnvFilter::new(cli.log_level.filter());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true)
        .try_init();
}

/// Make the kernel forget the mount root's entries `names` and its attributes:
/// at once, and once more a moment later for lookups that were answered
/// (cacheable) while the first binding through the root was being made.
fn root_invalidator(notifier: fuser::Notifier) -> agentfs_fuse::RootInvalidator {
    use std::os::unix::ffi::OsStrExt;
    let forget = move |names: &[Vec<u8>]| {
        for name in names {
            let _ = notifier.inval_entry(fuser::INodeNo(1), std::ffi::OsStr::from_bytes(name));
        }
        let _ = notifier.inval_inode(fuser::INodeNo(1), 0, 0);
    };
    let forget = Arc::new(forget);
    Box::new(move |names: Vec<Vec<u8>>| {
        forget(&names);
        let again = Arc::clone(&forget);
        let _ = std::thread::Builder::new()
            .name("root-invalidate".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                again(&names);
            });
    })
}

/// What a commit into a branch changed, forgotten by the kernel in both views
/// of that branch: through the mount root (ino 1 for its root directory) and
/// through `.agentfs/branches/<b>`. Written from the control thread, which
/// answers no FUSE request, so the kernel's directory locks cannot wait on it.
fn commit_invalidator(notifier: fuser::Notifier) -> agentfs_fuse::CommitInvalidator {
    use agentfs_core::{BranchId, NodeId};
    use agentfs_fuse::inode::{self, Ino, VIEW_FLAG};
    use std::os::unix::ffi::OsStrExt;
    Box::new(
        move |b: BranchId, entries: &[(NodeId, Vec<u8>)], nodes: &[NodeId]| {
            let view_parent = Ino::Node(BranchId(b.0 | VIEW_FLAG), NodeId::ROOT);
            let inos = |n: NodeId| {
                [
                    inode::encode(b, n).ok(),
                    inode::encode_in(view_parent, b, n).ok(),
                ]
                .into_iter()
                .flatten()
            };
            // ENOENT (nothing cached) is the common answer and fine.
            for (dir, name) in entries {
                for ino in inos(*dir) {
                    let _ = notifier
                        .inval_entry(fuser::INodeNo(ino), std::ffi::OsStr::from_bytes(name));
                }
            }
            for &n in nodes {
                for ino in inos(n) {
                    let _ = notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
                }
            }
        },
    )
}
