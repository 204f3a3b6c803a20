//! The fuser [`Filesystem`] over FsCore: glue only, no filesystem logic.
//!
//! Every callback decodes its arguments, copies what it needs out of the
//! request (names, write data), moves the reply into a job and hands the job to
//! the [`FsCoreTransport`]; a transport worker runs it against FsCore and sends
//! the reply. A FUSE thread therefore never waits on FsCore or the backstore.
//! If the transport refuses the job (it is shutting down) the job and its reply
//! are dropped, and fuser answers EIO for a reply dropped unsent.
//!
//! Data-lane requests have a deadline ([`crate::deadline`], `--op-timeout-ms`):
//! past it the kernel gets ETIMEDOUT and the job's late answer is dropped.
//!
//! Lanes: [`Lane::Data`] for operations that may touch the backstore (open may
//! copy-on-write; read, write, fsync, release, create, fallocate, lseek,
//! statfs, fsyncdir, and setattr when it changes the size); [`Lane::Meta`] for
//! the in-memory rest.
//!
//! Inode numbers carry the branch ([`crate::inode`]); ino 1 is the root shared
//! by all branches and acts on the calling process's branch, so replies about
//! ino 1, and entries looked up in it, get a zero TTL: the kernel's dentry and
//! attribute caches are shared by every process and must ask again for each.
//! Everything below the root belongs to one branch and is cached for the
//! configured TTL. Locks (`getlk`/`setlk`/`flock`) are not implemented, so the
//! kernel keeps POSIX and flock locks locally per inode, which keeps locks of
//! different branches apart.
//!
//! The operations live in the submodules by topic, as `do_*` methods taking
//! [`crate::wire`]'s request and reply types. Two front ends call them: the
//! `Filesystem` impl at the bottom of this file ([`FuserFs`], fuser's session
//! on `/dev/fuse`), which only forwards, and the io_uring queues
//! ([`crate::ring`]), which decode requests themselves.

mod data_path;
mod dir;
mod exec_opens;
mod file;
mod namespace;
mod snapshots;
mod twins;
mod virtual_nodes;
mod xattr;

pub use twins::Twins;
pub use virtual_nodes::{VirtualNodes, AGENTFS_DIR_NAME, CONTROL_FILE_NAME};

use crate::attr::file_attr;
use crate::deadline::{Deadlines, Late};
use crate::inode::{self, Ino, InodeError, ROOT_INO};
use crate::metrics::{Metrics, Op};
use crate::reply::Call;
use crate::tri;
use crate::wire::{self, FuseDevice};
use agentfs_core::{Attr, BranchId, Ctx, FsCore, FsError, FsResult, NodeId};
use agentfs_transport::{FsCoreTransport, Lane};
use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Default attribute and entry TTL below the root. Long, because nothing
/// changes a branch's tree behind the kernel's back: changes come through
/// the kernel, and a change through one view of a branch invalidates the
/// other's cache (`twins`).
pub const DEFAULT_ATTR_TTL: Duration = Duration::from_secs(60);
/// Largest write the adapter asks the kernel to send (the kernel caps it at
/// `max_pages_limit`, 1 MiB by default).
pub const MAX_WRITE: u32 = 1 << 20;

/// How the adapter is set up.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    /// Attribute and entry TTL for everything below the root.
    pub attr_ttl: Duration,
    /// The bytes of `.agentfs/control` (the control endpoint as JSON).
    pub control_file: Vec<u8>,
    /// Owner of the virtual nodes (the mount owner).
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Testing only: getxattr of [`FAULT_PANIC_XATTR`] panics in its worker.
    pub fault_injection: bool,
    /// Ask the kernel for FUSE passthrough (it is used only if the kernel agrees).
    pub passthrough: bool,
    /// Answer metadata requests that FsCore can answer from memory on the
    /// FUSE thread that read them instead of handing them to a meta worker
    /// (saves two thread hand-offs per request). Requests that may reach the
    /// backstore always go to a worker.
    pub inline_meta: bool,
    /// Whether passthrough is in use now: set at init, cleared if the kernel
    /// later refuses backing files. The control handler reports it.
    pub passthrough_active: Arc<std::sync::atomic::AtomicBool>,
    /// Invalidations between the two views of a branch; started by the host
    /// once the session exists ([`Twins::start`]).
    pub twins: Arc<Twins>,
    /// Deadline of each Data-lane request: past it the kernel gets ETIMEDOUT
    /// and the late result is dropped ([`crate::deadline`]). `None`: no deadline.
    pub op_timeout: Option<Duration>,
    /// Ask the kernel for FUSE over io_uring ([`crate::ring`]); the host
    /// starts the queues if INIT granted it.
    pub uring: bool,
}

/// The xattr whose read panics when fault injection is on.
pub const FAULT_PANIC_XATTR: &str = "user.agentfs.fault.panic";

/// The FUSE filesystem of one mount.
pub struct AgentFs {
    transport: Arc<dyn FsCoreTransport>,
    metrics: Arc<Metrics>,
    ttl: Duration,
    virt: Arc<VirtualNodes>,
    fault_injection: bool,
    want_passthrough: bool,
    /// Run metadata jobs on the FUSE thread instead of a meta worker.
    inline_meta: bool,
    paths: Arc<data_path::DataPaths>,
    exec_opens: Arc<exec_opens::ExecOpens>,
    twins: Arc<Twins>,
    /// Deadlines of Data-lane requests (`None`: off).
    deadlines: Option<Arc<Deadlines>>,
    /// Each branch's share of the data lane.
    fair: Arc<crate::fair::FairShare>,
    /// Data buffers of reads and writes through the transport.
    buffers: Arc<crate::buffers::Buffers>,
    /// Ask the kernel for FUSE over io_uring at INIT.
    want_uring: bool,
    /// Whether the kernel granted it.
    uring_granted: std::sync::atomic::AtomicBool,
    /// The connection's `/dev/fuse`, for registering passthrough backing
    /// files; set once the session exists.
    device: std::sync::OnceLock<Arc<FuseDevice>>,
}

/// [`AgentFs`] as fuser's `Filesystem`: the session's requests, answered by
/// the adapter shared with the io_uring queues ([`crate::ring`]).
pub struct FuserFs(pub Arc<AgentFs>);

impl AgentFs {
    pub fn new(transport: Arc<dyn FsCoreTransport>, config: AdapterConfig) -> AgentFs {
        let deadlines = config.op_timeout.and_then(|t| {
            Deadlines::start(t)
                .map_err(|e| tracing::error!("cannot start the deadline timer, no deadlines: {e}"))
                .ok()
        });
        let virt = VirtualNodes::new(config.control_file, config.owner_uid, config.owner_gid);
        AgentFs {
            fair: crate::fair::FairShare::new(Arc::clone(&transport)),
            // One per data worker and FUSE thread is the steady state; a
            // burst beyond it is unmapped again.
            buffers: crate::buffers::Buffers::new(MAX_WRITE as usize, 16),
            transport,
            metrics: Arc::new(Metrics::new()),
            ttl: config.attr_ttl,
            virt: Arc::new(virt),
            fault_injection: config.fault_injection,
            want_passthrough: config.passthrough,
            inline_meta: config.inline_meta,
            paths: Arc::new(data_path::DataPaths::new(config.passthrough_active)),
            exec_opens: Arc::default(),
            twins: config.twins,
            deadlines,
            want_uring: config.uring,
            uring_granted: std::sync::atomic::AtomicBool::new(false),
            device: std::sync::OnceLock::new(),
        }
    }

    /// Give the adapter the connection's `/dev/fuse` (once the session is
    /// mounted), for passthrough backing files.
    pub fn set_device(&self, device: Arc<FuseDevice>) {
        let _ = self.device.set(device);
    }

    pub(crate) fn device(&self) -> Option<Arc<FuseDevice>> {
        self.device.get().cloned()
    }

    /// Whether INIT granted FUSE over io_uring.
    pub fn uring_granted(&self) -> bool {
        self.uring_granted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The adapter's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Count a request answered without a job (FLUSH on a ring).
    pub(crate) fn count_request(&self, op: Op, ino: u64, req: &wire::Request) {
        let _ = self.call(op, ino, req);
    }

    fn call(&self, op: Op, ino: u64, req: &wire::Request) -> Call {
        Call::new(op, ino, req.pid(), &self.metrics)
    }

    /// Run `job` on a transport worker of `lane`. If the transport refuses it,
    /// the job and the reply it holds are dropped and fuser answers EIO.
    fn submit<F>(&self, lane: Lane, call: Call, job: F)
    where
        F: FnOnce(&FsCore, Call) + Send + 'static,
    {
        let op = call.op;
        let metrics = Arc::clone(call.metrics());
        if let Err(e) = self
            .transport
            .submit(lane, Box::new(move |core| job(core, call)))
        {
            metrics.count_submit_failure();
            metrics.count_error(libc::EIO);
            tracing::warn!(op = op.name(), %lane, "request dropped (EIO): {e}");
        }
    }

    /// `reply` in a slot the request's deadline can answer ETIMEDOUT from
    /// (a plain slot when deadlines are off).
    fn deadline_slot<R>(&self, call: &Call, reply: R) -> Late<R>
    where
        R: crate::reply::ErrorReply + Send + 'static,
    {
        match &self.deadlines {
            Some(d) => d.guard(reply, call.op.name(), call.metrics()),
            None => Late::without_deadline(reply, call.op.name(), call.metrics()),
        }
    }

    /// Run `job`, which may wait on the backstore, on a Data-lane worker with
    /// `reply` in a shared slot: if the request's deadline passes first, the
    /// kernel gets ETIMEDOUT and the job's answer is dropped
    /// ([`crate::deadline`]). The job always runs to its end.
    fn submit_data<R, F>(&self, call: Call, reply: R, job: F)
    where
        R: crate::reply::ErrorReply + Send + 'static,
        F: FnOnce(&FsCore, Call, Late<R>) + Send + 'static,
    {
        let late = self.deadline_slot(&call, reply);
        // The branch's share of the data workers (crate::fair): a branch
        // whose jobs stall never holds up another's.
        let core = self.transport.core();
        let branch = match Ino::decode(call.ino) {
            Ok(Ino::Node(b, _)) => inode::real_branch(b).0,
            Ok(Ino::Root) => core.branch_of(call.pid).0,
            _ => 0,
        };
        let (op, metrics) = (call.op, Arc::clone(call.metrics()));
        let job = Box::new(move |core: &FsCore| job(core, call, late));
        if let Err(e) = self.fair.submit(branch, job) {
            metrics.count_submit_failure();
            metrics.count_error(libc::EIO);
            tracing::warn!(op = op.name(), "request dropped (EIO): {e}");
        }
    }

    /// [`AgentFs::submit_meta_if`] for a job whose reply sits in a slot: when
    /// it goes to a meta worker (it may ask the backstore) it gets the
    /// request deadline, as data-lane jobs do; inline it needs none.
    fn submit_meta_if_late<R, F>(
        &self,
        call: Call,
        reply: R,
        quick: impl FnOnce(&FsCore, u32) -> bool,
        job: F,
    ) where
        R: crate::reply::ErrorReply + Send + 'static,
        F: FnOnce(&FsCore, Call, Late<R>) + Send + 'static,
    {
        let core = self.transport.core();
        let inline = self.inline_meta && quick(core, call.pid);
        let late = match &self.deadlines {
            Some(d) if !inline => d.guard(reply, call.op.name(), call.metrics()),
            _ => Late::without_deadline(reply, call.op.name(), call.metrics()),
        };
        self.submit_meta_if(
            call,
            move |_, _| inline,
            move |core, call| job(core, call, late),
        );
    }

    /// [`AgentFs::submit_data`], except that the job runs on this FUSE thread,
    /// with no deadline, when inline metadata is on and `quick` (given the
    /// core and the caller's pid) says it will not wait on the backstore.
    fn submit_data_unless_quick<R, F>(
        &self,
        call: Call,
        reply: R,
        quick: impl FnOnce(&FsCore, u32) -> bool,
        job: F,
    ) where
        R: crate::reply::ErrorReply + Send + 'static,
        F: FnOnce(&FsCore, Call, Late<R>) + Send + 'static,
    {
        if self.inline_meta && quick(self.transport.core(), call.pid) {
            let late = Late::without_deadline(reply, call.op.name(), call.metrics());
            return self.submit_inline_or(
                Lane::Data,
                call,
                |_, _| true,
                move |core, call| job(core, call, late),
            );
        }
        self.submit_data(call, reply, job);
    }

    /// Run a metadata job that never reaches the backstore: on this FUSE
    /// thread when inline metadata is on (two thread hand-offs saved), else
    /// on a meta worker.
    fn submit_meta<F>(&self, call: Call, job: F)
    where
        F: FnOnce(&FsCore, Call) + Send + 'static,
    {
        self.submit_meta_if(call, |_, _| true, job);
    }

    /// Run a metadata job inline (see [`AgentFs::submit_meta`]) only if
    /// `quick` (given the core and the caller's pid) says FsCore can answer
    /// it without waiting on the storage: from memory, or from an object file
    /// the backstore holds open. A job that may have to wait (the size of a
    /// file the kernel is writing directly, whose object is not open, say)
    /// goes to a meta worker, so a slow backstore never stalls the threads
    /// that take requests from the kernel.
    fn submit_meta_if<F>(&self, call: Call, quick: impl FnOnce(&FsCore, u32) -> bool, job: F)
    where
        F: FnOnce(&FsCore, Call) + Send + 'static,
    {
        self.submit_inline_or(Lane::Meta, call, quick, job);
    }

    /// Run `job` on this FUSE thread if inline metadata is on and `quick`
    /// says it will not wait on the backstore, else on a worker of `lane`.
    fn submit_inline_or<F>(
        &self,
        lane: Lane,
        call: Call,
        quick: impl FnOnce(&FsCore, u32) -> bool,
        job: F,
    ) where
        F: FnOnce(&FsCore, Call) + Send + 'static,
    {
        let core = self.transport.core();
        if !self.inline_meta || !quick(core, call.pid) {
            return self.submit(lane, call, job);
        }
        // A panic still fails this request alone: the reply is dropped by the
        // unwinding and fuser answers EIO.
        let (op, metrics) = (call.op, Arc::clone(call.metrics()));
        let run = std::panic::AssertUnwindSafe(move || job(core, call));
        if let Err(panic) = std::panic::catch_unwind(run) {
            metrics.count_error(libc::EIO);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(op = op.name(), "operation panicked (EIO): {what}");
        }
    }
}

/// Whether FsCore can answer the attributes of `ino` for `pid` without
/// waiting on the storage (an inode it cannot resolve fails from memory).
fn attr_is_quick(core: &FsCore, ino: Ino, pid: u32) -> bool {
    match resolve(core, ino, pid) {
        Ok((b, n)) => core.attr_is_quick(b, n),
        Err(_) => true,
    }
}

/// The TTL of attributes of `ino`: `ttl`, except zero for the shared root
/// while its contents depend on who asks (`root_shared`).
fn ttl_for(ino: u64, ttl: Duration, root_shared: bool) -> Duration {
    if ino == ROOT_INO && root_shared {
        Duration::ZERO
    } else {
        ttl
    }
}

/// The attribute TTL of node `n` of branch `b`, reached as `ino`: zero while
/// the kernel writes the node's object directly (its size and mtime are the
/// object's and change without FsCore seeing them, so the branch's other
/// view must ask each time; the writer's own view knows them anyway), else
/// [`ttl_for`].
fn node_attr_ttl(core: &FsCore, ino: u64, b: BranchId, n: NodeId, ttl: Duration) -> Duration {
    known_attr_ttl(ino, core.attr_in_memory(b, n), ttl, core.root_is_shared())
}

/// [`node_attr_ttl`] where whether the attributes came from memory alone is
/// known already (a readdirplus entry).
fn known_attr_ttl(ino: u64, in_memory: bool, ttl: Duration, root_shared: bool) -> Duration {
    if in_memory {
        ttl_for(ino, ttl, root_shared)
    } else {
        Duration::ZERO
    }
}

/// The TTL of entries in `parent`: zero in the shared root while processes
/// bound through it see different branches there; else `ttl`. While nobody is
/// bound through the root, every caller sees the default branch in it, and the
/// first such binding makes the kernel forget what it cached
/// (`CoreControl::bind`).
fn entry_ttl(core: &FsCore, parent: Ino, ttl: Duration) -> Duration {
    if parent == Ino::Root && core.root_is_shared() {
        Duration::ZERO
    } else {
        ttl
    }
}

/// The caller's credentials.
fn ctx(req: &wire::Request) -> Ctx {
    Ctx::new(req.uid(), req.gid(), req.pid())
}

impl From<InodeError> for FsError {
    fn from(e: InodeError) -> FsError {
        match e {
            InodeError::Invalid(_) => FsError::Stale,
            InodeError::BranchTooLarge(_)
            | InodeError::NodeTooLarge(_)
            | InodeError::SnapshotTooLarge(_) => FsError::Io(io::Error::other(e.to_string())),
        }
    }
}

/// The branch and node a (non-virtual) inode names for process `pid`: ino 1 is
/// the root of the caller's branch; a node of a deleted branch is stale.
/// Virtual nodes never change, so any request that reaches here for one of
/// them is a change to a read-only node.
fn resolve(core: &FsCore, ino: Ino, pid: u32) -> FsResult<(BranchId, NodeId)> {
    match ino {
        Ino::Root => Ok((core.branch_of(pid), NodeId::ROOT)),
        Ino::Node(b, n) if core.tree_exists(inode::real_branch(b)) => {
            Ok((inode::real_branch(b), n))
        }
        Ino::Node(..) => Err(FsError::Stale),
        Ino::AgentfsDir
        | Ino::ControlFile
        | Ino::BranchesDir
        | Ino::SnapshotsDir
        | Ino::ViewAgentfsDir(_) => Err(FsError::ReadOnly),
    }
}

/// Answer an entry for `attr`, a child of `parent` in branch `b`.
fn reply_entry(
    core: &FsCore,
    call: &Call,
    reply: impl crate::deadline::EntryReply,
    parent: Ino,
    b: BranchId,
    attr: &Attr,
    ttl: Duration,
) {
    let in_memory = core.attr_in_memory(b, attr.node);
    reply_entry_known(core, call, reply, parent, b, attr, in_memory, ttl);
}

/// [`reply_entry`] where whether `attr` came from memory alone is known.
#[allow(clippy::too_many_arguments)]
fn reply_entry_known(
    core: &FsCore,
    call: &Call,
    reply: impl crate::deadline::EntryReply,
    parent: Ino,
    b: BranchId,
    attr: &Attr,
    in_memory: bool,
    ttl: Duration,
) {
    let ino = tri!(call, reply, inode::encode_in(parent, b, attr.node));
    let attr_ttl = known_attr_ttl(ino, in_memory, ttl, core.root_is_shared());
    let entry_ttl = entry_ttl(core, parent, ttl);
    reply.entry_with_ttls(&attr_ttl, &entry_ttl, &file_attr(ino, attr), Generation(0));
}

impl AgentFs {
    /// Negotiate the session's capabilities at INIT.
    pub fn configure(&self, config: &mut KernelConfig) {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        // O_TRUNC reaches open (so truncation and copy-on-write are one step).
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
            tracing::warn!("kernel lacks FUSE capability {missing:?}; O_TRUNC arrives as setattr");
        }
        if self.want_passthrough {
            // Backing files live on a plain filesystem (stack depth 0); depth 1
            // also lets this mount sit under an overlayfs.
            let granted = config.set_max_stack_depth(1).is_ok()
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
            self.paths.set_enabled(granted);
            if granted {
                tracing::info!("FUSE passthrough on: file data goes straight to the backstore");
            } else {
                tracing::warn!(
                    "kernel offers no FUSE passthrough: file data goes through the transport"
                );
            }
        }
        // readdirplus where the kernel sees it pays (it falls back to readdir
        // plus lookups by itself otherwise); lookups and readdirs of one
        // directory in parallel (FsCore locks per branch, not per directory);
        // symlink targets cached (a symlink's target never changes in place).
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        if let Err(missing) = config.add_capabilities(wanted) {
            tracing::warn!("kernel lacks FUSE capabilities {missing:?}");
            for one in wanted.iter() {
                let _ = config.add_capabilities(one);
            }
        }
        // FsCore drops setuid/setgid and security.capability itself on every
        // write, truncate and chown it serves, and never passes through the
        // writes of a file that has them (FsCore::open_passthrough). So the
        // kernel need not ask for security.capability before each write(2)
        // (one GETXATTR round trip per write without this: it also marks the
        // superblock SB_NOSEC, so it checks an inode once).
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2) {
            tracing::warn!(
                "kernel lacks FUSE capability {missing:?}: a GETXATTR before each write"
            );
        }
        // No FUSE_WRITEBACK_CACHE: writes reach FsCore before write(2) returns,
        // which snapshots need and passthrough will require.
        if self.want_uring {
            let granted = config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
            self.uring_granted
                .store(granted, std::sync::atomic::Ordering::Relaxed);
            if !granted {
                tracing::warn!("kernel offers no FUSE over io_uring (fuse.enable_uring=N?): requests go through /dev/fuse");
            }
        }
        tracing::info!(abi = %config.kernel_abi(), "FUSE session initialised");
    }
}

#[allow(clippy::too_many_arguments)]
impl Filesystem for FuserFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.0.configure(config);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.0.do_lookup(&req.into(), parent, name, reply.into())
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: fuser::ReplyDirectoryPlus,
    ) {
        self.0
            .do_readdirplus(&req.into(), ino, fh, offset, reply.into())
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // Inode numbers are computed, but FsCore keeps an unlinked file while
        // the kernel holds it (FsCore::remember), and lets it go here.
        if let Ok(Ino::Node(b, n)) = Ino::decode(ino.0) {
            self.0
                .transport
                .core()
                .forget(inode::real_branch(b), n, nlookup);
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.0.do_getattr(&req.into(), ino, reply.into())
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = agentfs_core::SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(crate::attr::set_time),
            mtime: mtime.map(crate::attr::set_time),
            ctime,
        };
        self.0.do_setattr(&req.into(), ino, set, reply.into())
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.0.do_readlink(&req.into(), ino, reply.into())
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.0
            .do_mknod(&req.into(), parent, name, mode, umask, rdev, reply.into())
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.0
            .do_mkdir(&req.into(), parent, name, mode, umask, reply.into())
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.0
            .do_remove(Op::Unlink, &req.into(), parent, name, reply.into())
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.0
            .do_remove(Op::Rmdir, &req.into(), parent, name, reply.into())
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.0
            .do_symlink(&req.into(), parent, link_name, target, reply.into())
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.0.do_rename(
            &req.into(),
            parent,
            name,
            newparent,
            newname,
            flags,
            reply.into(),
        )
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.0
            .do_link(&req.into(), ino, newparent, newname, reply.into())
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.0.do_open(
            &req.into(),
            ino,
            flags,
            wire::ReplyOpen::fuser(reply, self.0.device()),
        )
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.0
            .do_read(&req.into(), ino, fh, offset, size, reply.into())
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.0
            .do_write(&req.into(), ino, fh, offset, data, reply.into())
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered in the adapter (every write reached FsCore, or
        // the backstore through passthrough, before it was answered), so
        // close(2) has nothing to flush. ENOSYS tells the kernel so once: it
        // then stops sending FLUSH, a round trip saved on every close, and
        // close(2) still returns 0.
        self.0.call(Op::Flush, ino.0, &req.into());
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.do_release(&req.into(), ino, fh, reply.into())
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.0
            .do_fsync(&req.into(), ino, fh, datasync, reply.into())
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.0.do_opendir(
            &req.into(),
            ino,
            wire::ReplyOpen::fuser(reply, self.0.device()),
        )
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.0
            .do_readdir(&req.into(), ino, fh, offset, reply.into())
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.do_releasedir(&req.into(), ino, fh, reply.into())
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.0.do_fsyncdir(&req.into(), ino, reply.into())
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.0.do_statfs(&req.into(), ino, reply.into())
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        self.0
            .do_setxattr(&req.into(), ino, name, value, flags, position, reply.into())
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.0
            .do_getxattr(&req.into(), ino, name, size, reply.into())
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.0.do_listxattr(&req.into(), ino, size, reply.into())
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.0.do_removexattr(&req.into(), ino, name, reply.into())
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.0.do_access(&req.into(), ino, mask, reply.into())
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.0.do_create(
            &req.into(),
            parent,
            name,
            mode,
            umask,
            flags,
            wire::ReplyCreate::fuser(reply, self.0.device()),
        )
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.0
            .do_fallocate(&req.into(), ino, fh, offset, length, mode, reply.into())
    }

    /// No ioctls (shells probe TCGETS on every redirect): ENOTTY, quietly.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    /// ENOSYS makes the kernel treat every file as always ready, for good.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS makes the kernel copy through read and write itself, for good.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.0
            .do_lseek(&req.into(), ino, fh, offset, whence, reply.into())
    }
}

/// Map a kernel `setxattr` flag word to FsCore's choice.
fn xattr_set_flags(flags: i32) -> FsResult<agentfs_core::XattrSet> {
    use agentfs_core::XattrSet;
    match flags {
        0 => Ok(XattrSet::Any),
        libc::XATTR_CREATE => Ok(XattrSet::Create),
        libc::XATTR_REPLACE => Ok(XattrSet::Replace),
        _ => Err(FsError::Invalid),
    }
}

/// Map kernel `renameat2` flags to FsCore's; anything but NOREPLACE or
/// EXCHANGE (alone) is EINVAL.
fn rename_flags(flags: RenameFlags) -> FsResult<agentfs_core::RenameFlags> {
    let known = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
    if !known.contains(flags) || flags == known {
        return Err(FsError::Invalid);
    }
    Ok(agentfs_core::RenameFlags {
        noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
        exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_gets_zero_ttl_everything_else_the_configured_one() {
        let ttl = Duration::from_millis(1500);
        assert_eq!(ttl_for(ROOT_INO, ttl, true), Duration::ZERO);
        assert_eq!(ttl_for(ROOT_INO, ttl, false), ttl);
        let ino = inode::encode(BranchId(1), NodeId(7)).unwrap();
        assert_eq!(ttl_for(ino, ttl, true), ttl);
    }

    #[test]
    fn rename_flags_map_or_are_refused() {
        assert_eq!(
            rename_flags(RenameFlags::empty()).unwrap(),
            agentfs_core::RenameFlags::default()
        );
        let nr = rename_flags(RenameFlags::RENAME_NOREPLACE).unwrap();
        assert!(nr.noreplace && !nr.exchange);
        let ex = rename_flags(RenameFlags::RENAME_EXCHANGE).unwrap();
        assert!(ex.exchange && !ex.noreplace);
        assert!(matches!(
            rename_flags(RenameFlags::RENAME_WHITEOUT),
            Err(FsError::Invalid)
        ));
        let both = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
        assert!(matches!(rename_flags(both), Err(FsError::Invalid)));
        assert!(matches!(
            rename_flags(RenameFlags::from_bits_retain(1 << 9)),
            Err(FsError::Invalid)
        ));
    }

    #[test]
    fn xattr_flags_map_or_are_refused() {
        use agentfs_core::XattrSet;
        assert_eq!(xattr_set_flags(0).unwrap(), XattrSet::Any);
        assert_eq!(
            xattr_set_flags(libc::XATTR_CREATE).unwrap(),
            XattrSet::Create
        );
        assert_eq!(
            xattr_set_flags(libc::XATTR_REPLACE).unwrap(),
            XattrSet::Replace
        );
        assert!(matches!(
            xattr_set_flags(libc::XATTR_CREATE | libc::XATTR_REPLACE),
            Err(FsError::Invalid)
        ));
    }

    #[test]
    fn bad_inode_numbers_become_stale_or_internal_errors() {
        let e: FsError = InodeError::Invalid(5).into();
        assert_eq!(e.errno(), libc::ESTALE);
        let e: FsError = InodeError::BranchTooLarge(1 << 30).into();
        assert!(e.is_internal());
        assert_eq!(e.errno(), libc::EIO);
    }
}
