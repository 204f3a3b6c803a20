//! FUSE over io_uring: the kernel's per-CPU request queues (Linux 6.14+).
//!
//! With `read(2)` of `/dev/fuse` (fuser's session) the kernel wakes whichever
//! daemon thread has waited longest and the scheduler runs it on an idle CPU,
//! so nearly every request crosses CPUs twice. Over io_uring the kernel
//! queues a request on the ring of the CPU its caller runs on; one thread per
//! CPU, pinned to it, serves that ring, so a request and its answer stay on
//! the caller's CPU. On the 2-CPU machines AgentFS is measured on, a round
//! trip costs about 11 µs this way against 28 µs through `read(2)`
//! (`just fuse-uring-probe`, specs/performance.md).
//!
//! How it runs, per CPU ([`start`]):
//! - a thread pinned to the CPU owns one io_uring (128-byte entries) and
//!   registers [`SLOTS`] ring entries with `FUSE_IO_URING_CMD_REGISTER`: each
//!   a header buffer (`struct fuse_uring_req_header`) and a payload buffer as
//!   large as the biggest request or reply;
//! - the kernel completes a registration when it puts a request in it; the
//!   thread decodes it (`dispatch`) and calls the adapter, which answers
//!   through an `Answer` (inside [`crate::wire`]'s reply types), at once on
//!   this thread or later from a transport worker;
//! - an answer writes the reply into the slot's buffers and queues the slot
//!   on the thread's done list, waking it through an eventfd when it came
//!   from another thread; the thread commits each done slot with
//!   `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also makes it ready for the
//!   next request;
//! - after committing, the thread looks for the next request for a moment
//!   before it sleeps (`poll`, `--ring-poll-us`), so that its CPU is not
//!   idle when the answer wakes the caller.
//!
//! The kernel still sends FORGET and INTERRUPT, and takes notifications,
//! through `/dev/fuse`: fuser's session keeps running beside the rings (it
//! also did the mount and INIT, where `FUSE_OVER_IO_URING` was asked for).
//! When the mount goes away the kernel ends every registered slot with
//! ENOTCONN and the threads exit.

mod dispatch;

use crate::adapter::AgentFs;
use crate::wire::FuseDevice;
use fuser::Errno;
use memmap2::MmapMut;
use parking_lot::Mutex;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// Ring entries (requests in flight) per CPU.
pub const SLOTS: usize = 16;

const IORING_SETUP_SQE128: u32 = 1 << 10;
const IORING_SETUP_SINGLE_ISSUER: u32 = 1 << 12;
const IORING_SETUP_DEFER_TASKRUN: u32 = 1 << 13;
const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_SQES: i64 = 0x1000_0000;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_OP_READ: u8 = 22;
const IORING_OP_URING_CMD: u8 = 46;

const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// `user_data` of the eventfd read; slots use their index.
const EVENT: u64 = u64::MAX;

/// `struct io_sqring_offsets`.
#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_cqring_offsets` (not the same order as the SQ's).
#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_uring_params`.
#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

/// A 128-byte `struct io_uring_sqe` (IORING_SETUP_SQE128).
#[repr(C)]
struct Sqe {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    cmd_op: u32,
    pad1: u32,
    addr: u64,
    len: u32,
    op_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    splice_fd_in: i32,
    cmd: [u8; 80],
}

/// `struct io_uring_cqe`.
#[repr(C)]
struct Cqe {
    user_data: u64,
    res: i32,
    flags: u32,
}

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
struct EntInOut {
    flags: u64,
    commit_id: u64,
    payload_sz: u32,
    padding: u32,
    reserved: u64,
}

/// `struct fuse_uring_req_header`: the in/out header, the opcode's own
/// header (the first in-argument), and the entry's bookkeeping.
#[repr(C)]
struct ReqHeader {
    in_out: [u8; 128],
    op_in: [u8; 128],
    ent: EntInOut,
}

/// `struct fuse_uring_cmd_req`, in the SQE's command area.
fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    cmd
}

/// One io_uring, owned by one thread.
struct Ring {
    fd: OwnedFd,
    _rings: MmapMut,
    _sqes_map: MmapMut,
    sq_tail: *const AtomicU32,
    sq_mask: u32,
    sq_array: *mut u32,
    sqes: *mut Sqe,
    cq_head: *const AtomicU32,
    cq_tail: *const AtomicU32,
    cq_mask: u32,
    cqes: *const Cqe,
    to_submit: u32,
}

impl Ring {
    fn new(entries: u32) -> io::Result<Ring> {
        let mut last = io::Error::from_raw_os_error(libc::EINVAL);
        // DEFER_TASKRUN (6.1+) runs completions only when this thread waits
        // for them; without it they interrupt whatever the thread is doing.
        for flags in [
            IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
            IORING_SETUP_SQE128,
        ] {
            match Ring::with_flags(entries, flags) {
                Ok(ring) => return Ok(ring),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn with_flags(entries: u32, flags: u32) -> io::Result<Ring> {
        let mut p = Params {
            flags,
            ..Params::default()
        };
        // SAFETY: io_uring_setup reads and fills the params struct we own.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, entries, &mut p as *mut Params) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor the kernel just returned to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
        let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * size_of::<Cqe>();
        let rings = map(&fd, sq_len.max(cq_len), IORING_OFF_SQ_RING)?;
        let mut sqes_map = map(
            &fd,
            p.sq_entries as usize * size_of::<Sqe>(),
            IORING_OFF_SQES,
        )?;
        let base = rings.as_ptr();
        // SAFETY: the offsets come from the kernel and lie inside the mapping
        // of the length it asked for (IORING_FEAT_SINGLE_MMAP, Linux 5.4+).
        unsafe {
            let at = |off: u32| base.add(off as usize);
            Ok(Ring {
                sq_tail: at(p.sq_off.tail).cast(),
                sq_mask: *at(p.sq_off.ring_mask).cast::<u32>(),
                sq_array: at(p.sq_off.array).cast_mut().cast(),
                sqes: sqes_map.as_mut_ptr().cast(),
                cq_head: at(p.cq_off.head).cast(),
                cq_tail: at(p.cq_off.tail).cast(),
                cq_mask: *at(p.cq_off.ring_mask).cast::<u32>(),
                cqes: at(p.cq_off.cqes).cast(),
                fd,
                _rings: rings,
                _sqes_map: sqes_map,
                to_submit: 0,
            })
        }
    }

    /// Queue one SQE (submitted by the next [`Ring::enter`]).
    fn push(&mut self, sqe: Sqe) {
        // SAFETY: only this thread writes the SQ tail and SQEs
        // (SINGLE_ISSUER); the ring has room: at most SLOTS + 1 commands are
        // ever outstanding, and the ring has more entries than that.
        unsafe {
            let tail = (*self.sq_tail).load(Ordering::Relaxed);
            let idx = tail & self.sq_mask;
            self.sqes.add(idx as usize).write(sqe);
            *self.sq_array.add(idx as usize) = idx;
            (*self.sq_tail).store(tail.wrapping_add(1), Ordering::Release);
        }
        self.to_submit += 1;
    }

    /// Submit what was pushed; wait for at least `wait` completions.
    fn enter(&mut self, wait: u32) -> io::Result<()> {
        let flags = if wait > 0 { IORING_ENTER_GETEVENTS } else { 0 };
        self.enter_with(wait, flags)
    }

    /// Submit what was pushed and run the completions the kernel deferred to
    /// this thread (DEFER_TASKRUN), without waiting for any.
    fn enter_nowait_getevents(&mut self) -> io::Result<()> {
        self.enter_with(0, IORING_ENTER_GETEVENTS)
    }

    fn enter_with(&mut self, wait: u32, flags: u32) -> io::Result<()> {
        loop {
            // SAFETY: plain syscall on our ring descriptor, no pointers.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_enter,
                    self.fd.as_raw_fd(),
                    self.to_submit,
                    wait,
                    flags,
                    std::ptr::null::<u8>(),
                    0usize,
                )
            };
            if n >= 0 {
                self.to_submit -= (n as u32).min(self.to_submit);
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// Take the completions there are, as (user_data, res).
    fn completions(&mut self, out: &mut Vec<(u64, i32)>) {
        // SAFETY: the kernel writes CQEs and the tail; this thread alone
        // reads them and moves the head (acquire/release as the ABI asks).
        unsafe {
            let mut head = (*self.cq_head).load(Ordering::Relaxed);
            let tail = (*self.cq_tail).load(Ordering::Acquire);
            while head != tail {
                let cqe = &*self.cqes.add((head & self.cq_mask) as usize);
                out.push((cqe.user_data, cqe.res));
                head = head.wrapping_add(1);
            }
            (*self.cq_head).store(head, Ordering::Release);
        }
    }
}

fn map(fd: &OwnedFd, len: usize, offset: i64) -> io::Result<MmapMut> {
    // SAFETY: the io_uring descriptor's mmap offsets name the kernel's ring
    // memory, shared with it for the ring's life; MmapMut unmaps on drop.
    unsafe {
        memmap2::MmapOptions::new()
            .len(len)
            .offset(offset as u64)
            .populate()
            .map_mut(fd)
    }
}

/// One slot's buffers: the header the kernel reads and writes, and the
/// payload (request arguments in, reply data out).
struct Slot {
    header: *mut ReqHeader,
    payload: *mut u8,
    iov: [libc::iovec; 2],
}

/// What a queue's thread shares with the [`Answer`]s of its requests.
pub(crate) struct Queue {
    qid: u16,
    slots: Vec<Slot>,
    payload_len: usize,
    _memory: Vec<MmapMut>,
    /// Answers not yet written into their slots and committed.
    done: Mutex<Vec<Done>>,
    /// Written by an answer from another thread to wake the queue's thread.
    wake: OwnedFd,
    owner: ThreadId,
}

/// One answer waiting for its queue's thread.
struct Done {
    slot: u16,
    unique: u64,
    error: i32,
    data: Data,
}

/// Where an answer's data is.
enum Data {
    /// Here, to be copied into the slot by the queue's thread.
    Staged(Vec<u8>),
    /// Already in the slot's payload buffer: this many bytes.
    InSlot(usize),
}

/// Replies larger than this, made on a worker for a request that carried no
/// payload (a READ through the transport), are written straight into the
/// slot instead of being staged: one copy of the data instead of two.
const STAGE_MAX: usize = 4096;

// SAFETY: the raw pointers name memory owned by `_memory` for the queue's
// whole life, and only the queue's own thread touches it: it reads a slot
// after the kernel completed it, and writes the answer into it (from `done`)
// before handing it back to the kernel. Answers made on other threads only
// queue their bytes on `done`.
unsafe impl Send for Queue {}
// SAFETY: as above.
unsafe impl Sync for Queue {}

impl Queue {
    fn new(qid: u16, payload_len: usize) -> io::Result<Queue> {
        let mut memory = Vec::with_capacity(SLOTS * 2);
        let mut slots = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            let mut header = MmapMut::map_anon(size_of::<ReqHeader>())?;
            let mut payload = MmapMut::map_anon(payload_len)?;
            let (h, p) = (header.as_mut_ptr(), payload.as_mut_ptr());
            slots.push(Slot {
                header: h.cast(),
                payload: p,
                iov: [
                    libc::iovec {
                        iov_base: h.cast(),
                        iov_len: size_of::<ReqHeader>(),
                    },
                    libc::iovec {
                        iov_base: p.cast(),
                        iov_len: payload_len,
                    },
                ],
            });
            memory.push(header);
            memory.push(payload);
        }
        // SAFETY: eventfd takes no pointers; the result is checked.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Queue {
            qid,
            slots,
            payload_len,
            _memory: memory,
            done: Mutex::new(Vec::with_capacity(SLOTS)),
            // SAFETY: a fresh descriptor from eventfd.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
            owner: std::thread::current().id(),
        })
    }

    fn finished(&self, done: Done) {
        self.done.lock().push(done);
        if std::thread::current().id() != self.owner {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a local array to our eventfd.
            let _ = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }

    /// Write an answer into its slot (the queue's thread only, the slot
    /// being ours: completed by the kernel and not yet committed).
    fn write_answer(&self, done: &Done) {
        let slot = &self.slots[done.slot as usize];
        let (error, len) = match &done.data {
            Data::Staged(data) if data.len() > self.payload_len => {
                tracing::error!(len = data.len(), "reply larger than the ring's buffer");
                (-libc::EIO, 0)
            }
            Data::Staged(data) => {
                // SAFETY: see `Queue`: this thread owns the slot until it
                // commits it; `data` fits the payload buffer (checked above).
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), slot.payload, data.len()) };
                (done.error, data.len())
            }
            Data::InSlot(len) => (done.error, *len),
        };
        let mut out_header = [0u8; 16];
        out_header[0..4].copy_from_slice(&((16 + len) as u32).to_ne_bytes());
        out_header[4..8].copy_from_slice(&error.to_ne_bytes());
        out_header[8..16].copy_from_slice(&done.unique.to_ne_bytes());
        // SAFETY: as above.
        unsafe {
            let header = &mut *slot.header;
            header.in_out[..16].copy_from_slice(&out_header);
            header.ent.payload_sz = len as u32;
        }
    }
}

/// The way back to the kernel for one request taken from a ring: the reply
/// goes to the queue's thread, which writes it into the slot and commits it.
/// Dropped unsent (a job refused, a panic), it answers EIO, as fuser does.
pub(crate) struct Answer {
    queue: Arc<Queue>,
    slot: u16,
    unique: u64,
    sent: bool,
    /// The request carried no payload, so nothing of the slot's payload
    /// buffer can still be borrowed by its decoding: a worker may write the
    /// reply's data there itself.
    payload_free: bool,
}

impl Answer {
    /// Answer with `payload` as the reply's data.
    pub(crate) fn send(mut self, payload: &[u8]) {
        let off_thread = std::thread::current().id() != self.queue.owner;
        if self.payload_free
            && off_thread
            && payload.len() > STAGE_MAX
            && payload.len() <= self.queue.payload_len
        {
            let slot = &self.queue.slots[self.slot as usize];
            // SAFETY: the slot is this request's until `finished` hands it
            // to the queue's thread (see `Queue`); the request had no
            // payload, so no decoded argument borrows this buffer, and the
            // queue's thread does not touch the slot before `finished`.
            unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), slot.payload, payload.len()) };
            return self.finish(0, Data::InSlot(payload.len()));
        }
        self.finish(0, Data::Staged(payload.to_vec()))
    }

    /// Answer with an error.
    pub(crate) fn error(mut self, err: Errno) {
        self.finish(-err.code(), Data::Staged(Vec::new()))
    }

    fn finish(&mut self, error: i32, data: Data) {
        self.sent = true;
        self.queue.finished(Done {
            slot: self.slot,
            unique: self.unique,
            error,
            data,
        });
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.sent {
            self.finish(-libc::EIO, Data::Staged(Vec::new()));
        }
    }
}

/// The rings of one mount: one thread per CPU.
pub struct Rings {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Rings {
    /// How many queue threads run.
    pub fn queues(&self) -> usize {
        self.threads.len()
    }
}

/// The CPUs the kernel may run a caller on (`/sys/devices/system/cpu/possible`):
/// it wants a queue for each before it uses any.
fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
                .max()
        })
        .map(|max| max + 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Start a queue per CPU serving `fs` over the connection `device`, whose
/// INIT granted `FUSE_OVER_IO_URING`. `payload_len` must hold the largest
/// request and reply (max_write plus headroom); `poll` is how long a queue's
/// thread looks for the next request before it sleeps (see `poll`).
/// Returns once every queue has registered its slots, or the first error.
pub fn start(
    fs: Arc<AgentFs>,
    device: Arc<FuseDevice>,
    payload_len: usize,
    poll: Duration,
) -> io::Result<Rings> {
    let cpus = possible_cpus();
    let mut threads = Vec::with_capacity(cpus);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for cpu in 0..cpus {
        let (fs, device, ready) = (Arc::clone(&fs), Arc::clone(&device), ready_tx.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("fuse-ring-{cpu}"))
                .spawn(move || serve_queue(fs, device, cpu, payload_len, poll, ready))?,
        );
    }
    drop(ready_tx);
    for _ in 0..cpus {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a ring thread ended before it was ready")),
        }
    }
    Ok(Rings { threads })
}

fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!(cpu, error = %io::Error::last_os_error(), "cannot pin a ring thread");
        }
    }
}

fn uring_cmd(device: &FuseDevice, op: u32, slot: usize, queue: &Queue, commit_id: u64) -> Sqe {
    Sqe {
        opcode: IORING_OP_URING_CMD,
        flags: 0,
        ioprio: 0,
        fd: device.fd().as_raw_fd(),
        cmd_op: op,
        pad1: 0,
        addr: queue.slots[slot].iov.as_ptr() as u64,
        len: 2,
        op_flags: 0,
        user_data: slot as u64,
        buf_index: 0,
        personality: 0,
        splice_fd_in: 0,
        cmd: cmd_req(commit_id, queue.qid),
    }
}

fn wake_read(queue: &Queue, buf: &mut u64) -> Sqe {
    Sqe {
        opcode: IORING_OP_READ,
        flags: 0,
        ioprio: 0,
        fd: queue.wake.as_raw_fd(),
        cmd_op: 0,
        pad1: 0,
        addr: buf as *mut u64 as u64,
        len: 8,
        op_flags: 0,
        user_data: EVENT,
        buf_index: 0,
        personality: 0,
        splice_fd_in: 0,
        cmd: [0; 80],
    }
}

fn serve_queue(
    fs: Arc<AgentFs>,
    device: Arc<FuseDevice>,
    cpu: usize,
    payload_len: usize,
    poll_window: Duration,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    pin_to(cpu);
    let setup = Ring::new((SLOTS * 2) as u32).and_then(|ring| {
        let qid = u16::try_from(cpu).map_err(|_| io::Error::other("too many CPUs"))?;
        Ok((ring, Arc::new(Queue::new(qid, payload_len)?)))
    });
    let (mut ring, queue) = match setup {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut wake_buf = Box::new(0u64);
    for slot in 0..SLOTS {
        ring.push(uring_cmd(
            &device,
            FUSE_IO_URING_CMD_REGISTER,
            slot,
            &queue,
            0,
        ));
    }
    ring.push(wake_read(&queue, &mut wake_buf));
    if let Err(e) = ring.enter(0) {
        let _ = ready.send(Err(e));
        return;
    }
    // A registration the kernel refuses completes at once with an error.
    let mut cqes = Vec::with_capacity(SLOTS * 2);
    ring.completions(&mut cqes);
    if let Some(&(_, res)) = cqes.iter().find(|(_, res)| *res < 0) {
        let _ = ready.send(Err(io::Error::from_raw_os_error(-res)));
        return;
    }
    let _ = ready.send(Ok(()));
    drop(ready);

    let mut commit_ids = [0u64; SLOTS];
    let mut paused_until: Option<Instant> = None;
    let mut pressure = Pressure::open();
    let mut live = SLOTS;
    let mut done = Vec::with_capacity(SLOTS);
    loop {
        for (user_data, res) in cqes.drain(..) {
            if user_data == EVENT {
                ring.push(wake_read(&queue, &mut wake_buf));
                continue;
            }
            let slot = user_data as usize;
            if slot >= SLOTS {
                tracing::error!(
                    cpu,
                    user_data,
                    res,
                    "a completion this ring never asked for"
                );
                continue;
            }
            if res < 0 {
                // ENOTCONN: the mount is gone (or the daemon is ending).
                if res != -libc::ENOTCONN {
                    tracing::warn!(cpu, slot, error = %io::Error::from_raw_os_error(-res), "ring slot ended");
                }
                live -= 1;
                continue;
            }
            // SAFETY: the kernel completed the slot, so its buffers are ours
            // until we commit it; the header was written before the CQE.
            let (header, op_in, ent_payload) = unsafe {
                fence(Ordering::Acquire);
                let h = &*queue.slots[slot].header;
                (h.in_out, h.op_in, h.ent.payload_sz as usize)
            };
            // SAFETY: as above; the kernel wrote `payload_sz` bytes.
            let payload = unsafe {
                std::slice::from_raw_parts(queue.slots[slot].payload, ent_payload.min(payload_len))
            };
            // SAFETY: as above.
            commit_ids[slot] = unsafe { (*queue.slots[slot].header).ent.commit_id };
            // A panic in one request answers it EIO (its Answer is dropped
            // unsent) and leaves the ring serving the others.
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                dispatch::dispatch(&fs, &queue, slot as u16, &header, &op_in, payload)
            }));
            if served.is_err() {
                tracing::error!(cpu, slot, "a request panicked on the ring; answered EIO");
            }
        }
        if live == 0 {
            return;
        }
        std::mem::swap(&mut done, &mut *queue.done.lock());
        for answer in done.drain(..) {
            queue.write_answer(&answer);
            let slot = answer.slot as usize;
            ring.push(uring_cmd(
                &device,
                FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
                slot,
                &queue,
                commit_ids[slot],
            ));
        }
        // Commit the answers and look for the next requests for a moment
        // (unless the CPU was found busy lately), then, if none came, sleep
        // until one does.
        let now = Instant::now();
        let window = if paused_until.is_some_and(|t| now < t) {
            Duration::ZERO
        } else {
            poll_window
        };
        let found = poll(&mut ring, &mut cqes, window, &mut pressure).and_then(|looked| {
            if looked == Looked::Contended {
                paused_until = Some(Instant::now() + POLL_PAUSE);
            }
            if looked != Looked::Found {
                ring.enter(1)?;
                ring.completions(&mut cqes);
            }
            Ok(())
        });
        if let Err(e) = found {
            tracing::error!(cpu, error = %e, "io_uring_enter failed; this CPU's ring stops");
            return;
        }
    }
}

/// What [`poll`] found.
#[derive(Debug, PartialEq, Eq)]
enum Looked {
    /// Completions: requests or worker answers to serve.
    Found,
    /// Nothing within the window.
    Nothing,
    /// A yield gave the CPU away for [`BUSY_YIELD`] or more on a machine
    /// [`Pressure`] finds busy.
    Contended,
}

/// A yield that gave the CPU away this long means some other thread ran:
/// either the caller computing between requests (git hashing a file) or a
/// thread that has nothing to do with us. [`Pressure`] tells which.
const BUSY_YIELD: Duration = Duration::from_micros(50);

/// After [`poll`] finds the CPU busy, a ring thread sleeps at once after
/// each answer for this long before it looks again. Shorter pauses, or
/// pauses ended by the first look that finds the CPU free, let a CPU kept
/// busy by other threads see looks often enough to slow a metadata loop
/// there to half (specs/performance.md).
const POLL_PAUSE: Duration = Duration::from_millis(200);

/// Whether threads wait for a CPU on this machine, judged from the
/// kernel's CPU pressure (/proc/pressure/cpu, "some": the time in which at
/// least one runnable thread waited for a CPU).
///
/// A long yield alone cannot tell a caller that computes between its
/// requests (which then finds the ring thread still looking, as wanted)
/// from threads that keep the CPU busy (where looking makes every request
/// wait its turn behind them). Neither can the length of the yield, nor
/// whether a request is there after it, nor the count of runnable threads
/// at that moment (which counts the other ring thread while it looks, and
/// jumps whenever a kernel thread runs). Measured (specs/performance.md):
/// during `git update-index --refresh` and a loop
/// of cold `lstat`s on an idle machine, threads waited for a CPU 15-19% of
/// the time (the looking itself accounts for part of it); with three
/// CPU-bound threads beside the loop, 70%.
struct Pressure {
    /// /proc/pressure/cpu, kept open and re-read from offset 0; `None`
    /// where the kernel has no pressure accounting, and then every long
    /// yield counts as a busy CPU (as if the pressure were high).
    file: Option<std::fs::File>,
    /// The last reading: when, and the "some" total in microseconds.
    last: Option<(Instant, u64)>,
    /// The verdict of the last span of at least [`PRESSURE_SPAN`].
    busy: bool,
}

/// The shortest span a verdict is drawn from; a long yield within it of
/// the last reading keeps the last verdict.
const PRESSURE_SPAN: Duration = Duration::from_millis(10);

/// The longest span a verdict is drawn from: a reading after a longer
/// quiet spell starts a new span, with the CPU taken as free until then.
const PRESSURE_STALE: Duration = Duration::from_secs(1);

/// The share of a span in which threads waited for a CPU above which the
/// CPU counts as busy.
const PRESSURE_BUSY: f64 = 0.4;

impl Pressure {
    fn open() -> Pressure {
        Pressure {
            file: std::fs::File::open("/proc/pressure/cpu").ok(),
            last: None,
            busy: false,
        }
    }

    /// Take a reading after a long yield; whether the CPU counts as busy.
    fn busy(&mut self) -> bool {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.file else {
            return true;
        };
        let mut buf = [0u8; 256];
        let Some(total) = file
            .read_at(&mut buf, 0)
            .ok()
            .and_then(|n| some_total(&buf[..n]))
        else {
            return true;
        };
        self.note(Instant::now(), total)
    }

    /// Feed one reading (its time, the "some" total in microseconds).
    fn note(&mut self, now: Instant, total: u64) -> bool {
        let since = self
            .last
            .map(|(then, before)| (now.duration_since(then), total.saturating_sub(before)));
        match since {
            Some((span, _)) if span < PRESSURE_SPAN => return self.busy,
            Some((span, waited)) if span <= PRESSURE_STALE => {
                self.busy = waited as f64 / span.as_micros() as f64 >= PRESSURE_BUSY;
            }
            _ => self.busy = false,
        }
        self.last = Some((now, total));
        self.busy
    }
}

/// The "some" total (microseconds) of a /proc/pressure/cpu text.
fn some_total(pressure: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(pressure).ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Submit what `ring` has queued (the answers), then look for completions
/// (new requests, worker answers) for up to `window` without sleeping,
/// yielding the CPU between looks.
///
/// Why: the answer wakes the caller while this thread still runs on the
/// caller's CPU, and the scheduler then moves the caller to an idle CPU if
/// there is one (`select_idle_sibling` prefers the CPU the caller used
/// before, which is idle). On virtual machines that halt idle vCPUs
/// without polling, waking that CPU costs more than the whole request, and
/// the caller's next request goes to that CPU's ring, whose answer moves it
/// back: every request then crosses CPUs. While this thread looks for work,
/// its CPU is busy and the other ring's CPU too if it answered a moment
/// ago, so the caller stays where it is, runs at this thread's next yield,
/// and its next request is found here without a wake-up.
///
/// On a CPU other threads want, looking is worse than sleeping: a thread
/// that yielded waits its turn behind them (a slice each), while a request
/// that wakes a sleeping thread gets the CPU at once. So when one yield
/// gives the CPU away for [`BUSY_YIELD`] or more and [`Pressure`] finds
/// threads waiting for a CPU much of the time, `Contended`, and the ring thread sleeps at
/// once for [`POLL_PAUSE`] before looking again. See specs/performance.md.
fn poll(
    ring: &mut Ring,
    cqes: &mut Vec<(u64, i32)>,
    window: Duration,
    pressure: &mut Pressure,
) -> io::Result<Looked> {
    if window.is_zero() {
        return Ok(Looked::Nothing);
    }
    let start = Instant::now();
    loop {
        ring.enter_nowait_getevents()?;
        ring.completions(cqes);
        if !cqes.is_empty() {
            return Ok(Looked::Found);
        }
        if start.elapsed() >= window {
            return Ok(Looked::Nothing);
        }
        let yielded = Instant::now();
        std::thread::yield_now();
        if yielded.elapsed() >= BUSY_YIELD && pressure.busy() {
            return Ok(Looked::Contended);
        }
    }
}

/// Make an Answer for `slot`, whose request carried `payload_len` bytes of
/// payload (used by `dispatch`).
fn answer(queue: &Arc<Queue>, slot: u16, unique: u64, payload_len: usize) -> Answer {
    Answer {
        queue: Arc::clone(queue),
        slot,
        unique,
        sent: false,
        payload_free: payload_len == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{some_total, Pressure, PRESSURE_SPAN};
    use std::time::{Duration, Instant};

    #[test]
    fn some_total_is_read_from_pressure() {
        let text = b"some avg10=8.88 avg60=11.91 avg300=9.49 total=23537709084\n\
                     full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_total(text), Some(23_537_709_084));
        assert_eq!(some_total(b"full avg10=0.00 total=5\n"), None);
        assert_eq!(some_total(b"some avg10=0.00 total=x\n"), None);
    }

    #[test]
    fn the_cpu_is_busy_while_threads_wait_for_it_most_of_a_span() {
        let mut p = Pressure {
            file: None,
            last: None,
            busy: false,
        };
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // The first reading starts a span.
        assert!(!p.note(ms(0), 1_000));
        // 20 ms with 3 ms of waiting: free.
        assert!(!p.note(ms(20), 4_000));
        // 20 ms with 15 ms of waiting: busy, and the verdict holds for
        // readings closer than a span.
        assert!(p.note(ms(40), 19_000));
        assert!(p.note(ms(40) + PRESSURE_SPAN / 2, 19_000));
        // Free again after a span with little waiting.
        assert!(!p.note(ms(70), 21_000));
        // A reading after a long quiet spell starts a new span, free.
        assert!(p.note(ms(90), 40_000));
        assert!(!p.note(ms(5_000), 4_000_000));
    }
}
