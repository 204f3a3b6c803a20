// fuse-ring.h: what the minimal FUSE servers of the performance tools share
// (scripts/perf/fuse-uring-probe.c, scripts/perf/fuse-floor.c): answering
// through /dev/fuse, INIT, and one io_uring carrying FUSE-over-io_uring
// commands (Linux 6.14+). Each tool is one translation unit that defines
// TOOL (its name, for error messages) and includes this once.
#ifndef FUSE_RING_H
#define FUSE_RING_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <sched.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

// The FUSE-over-io_uring uapi (include/uapi/linux/fuse.h since 6.14); the
// system's <linux/fuse.h> may predate it.
#define RING_FUSE_OVER_IO_URING (1ULL << 41)
#define RING_CMD_REGISTER 1
#define RING_CMD_COMMIT_AND_FETCH 2
struct ring_ent_in_out {
    uint64_t flags;
    uint64_t commit_id;
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};
// One ring entry's header buffer: the request's in/out header, the
// opcode's own header (its first argument), the entry's bookkeeping.
struct ring_req_header {
    char in_out[128];
    char op_in[128];
    struct ring_ent_in_out ent;
};
struct ring_cmd_req {
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

#define PAYLOAD (1u << 20) // >= max_write and max_pages * 4 KiB
#define READ_BUF (PAYLOAD + 4096)

static int fuse_fd;

static void die(const char *what) {
    fprintf(stderr, TOOL ": %s: %s\n", what, strerror(errno));
    exit(1);
}

// Open /dev/fuse as fuse_fd and mount it at `mnt` as filesystem type
// fuse.TOOL, root-owned, with `extra` appended to the mount options ("" or
// e.g. ",default_permissions").
static void mount_fuse(const char *mnt, const char *extra) {
    fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fuse_fd < 0)
        die("open /dev/fuse");
    char opts[192];
    snprintf(opts, sizeof(opts), "fd=%d,rootmode=40755,user_id=0,group_id=0%s", fuse_fd, extra);
    if (mount(TOOL, mnt, "fuse." TOOL, MS_NOSUID | MS_NODEV, opts) < 0)
        die("mount");
}

// Answer request `unique` through /dev/fuse: `res` bytes of `payload`, or
// the error -`res`.
static void reply(uint64_t unique, int res, const void *payload) {
    struct fuse_out_header oh = {.unique = unique};
    struct iovec iov[2] = {{&oh, sizeof(oh)}, {(void *)payload, 0}};
    if (res < 0)
        oh.error = res;
    else
        iov[1].iov_len = (size_t)res;
    oh.len = (uint32_t)(sizeof(oh) + iov[1].iov_len);
    if (writev(fuse_fd, iov, 2) < 0 && errno != ENOENT)
        die("writev /dev/fuse");
}

// Read the next request from /dev/fuse into `buf` (READ_BUF bytes); 0 once
// the mount is gone.
static ssize_t read_request(char *buf) {
    for (;;) {
        ssize_t n = read(fuse_fd, buf, READ_BUF);
        if (n >= 0)
            return n;
        if (errno != EINTR && errno != EAGAIN && errno != ENOENT)
            return 0; // ENODEV: unmounted
    }
}

// Pin the calling thread to `cpu` (a queue's thread serves that CPU's ring).
static void pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
        die("pin queue thread");
}

// The first request is INIT; ask for io_uring when `want_uring` (and fail
// if the kernel does not offer it).
static void init_session(int want_uring) {
    char *buf = malloc(READ_BUF);
    ssize_t n = read(fuse_fd, buf, READ_BUF);
    if (n < 0)
        die("read INIT");
    struct fuse_in_header *ih = (void *)buf;
    struct fuse_init_in *in = (void *)(ih + 1);
    if (ih->opcode != FUSE_INIT)
        die("first request is not INIT");
    uint64_t offered = in->flags | ((uint64_t)in->flags2 << 32);
    if (want_uring && !(offered & RING_FUSE_OVER_IO_URING)) {
        errno = EOPNOTSUPP;
        die("the kernel does not offer FUSE over io_uring (fuse.enable_uring=N?)");
    }
    struct fuse_init_out out = {0};
    out.major = FUSE_KERNEL_VERSION;
    out.minor = in->minor;
    out.max_readahead = in->max_readahead;
    uint64_t flags = FUSE_INIT_EXT | FUSE_MAX_PAGES | (want_uring ? RING_FUSE_OVER_IO_URING : 0);
    out.flags = (uint32_t)flags;
    out.flags2 = (uint32_t)(flags >> 32);
    out.max_background = 16;
    out.congestion_threshold = 12;
    out.max_write = 128 * 1024;
    out.time_gran = 1;
    out.max_pages = 32;
    reply(ih->unique, sizeof(out), &out);
    free(buf);
}

// One io_uring with 128-byte SQEs, owned by one thread.
struct ring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes; // 128 bytes each (SQE128)
    struct io_uring_cqe *cqes;
    unsigned to_submit; // pushed and not yet submitted
};

static void ring_setup(struct ring *r, unsigned entries) {
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0)
        die("io_uring_setup");
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t len = sq_len > cq_len ? sq_len : cq_len;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (m == MAP_FAILED)
        die("mmap ring");
    r->sq_tail = (unsigned *)(m + p.sq_off.tail);
    r->sq_mask = (unsigned *)(m + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(m + p.sq_off.array);
    r->cq_head = (unsigned *)(m + p.cq_off.head);
    r->cq_tail = (unsigned *)(m + p.cq_off.tail);
    r->cq_mask = (unsigned *)(m + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(m + p.cq_off.cqes);
    r->sqes = mmap(NULL, p.sq_entries * 128, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        die("mmap sqes");
    r->to_submit = 0;
}

// Queue one FUSE uring command `op` for the ring entry whose buffers are
// `iov` (header, payload), on queue `qid`.
static void ring_push(struct ring *r, uint32_t op, struct iovec *iov, uint64_t user_data, uint16_t qid,
                      uint64_t commit_id) {
    unsigned tail = *r->sq_tail;
    unsigned idx = tail & *r->sq_mask;
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)((char *)r->sqes + (size_t)idx * 128);
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fuse_fd;
    sqe->cmd_op = op;
    sqe->addr = (uint64_t)(uintptr_t)iov;
    sqe->len = 2;
    sqe->user_data = user_data;
    struct ring_cmd_req *cmd = (void *)sqe->cmd;
    cmd->qid = qid;
    cmd->commit_id = commit_id;
    r->sq_array[idx] = idx;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    r->to_submit++;
}

// Submit what was pushed; wait for at least `wait` completions.
static void ring_enter(struct ring *r, unsigned wait) {
    for (;;) {
        int n = (int)syscall(__NR_io_uring_enter, r->fd, r->to_submit, wait, IORING_ENTER_GETEVENTS, NULL, 0);
        if (n >= 0) {
            r->to_submit -= (unsigned)n < r->to_submit ? (unsigned)n : r->to_submit;
            return;
        }
        if (errno != EINTR)
            die("io_uring_enter");
    }
}

// Whether a failed ring command (`res` < 0) means the mount is gone; any
// other failure ends the tool.
static int ring_unmounted(int res) {
    if (res == -ENOTCONN || res == -ECANCELED || res == -ENODEV)
        return 1;
    errno = -res;
    die("FUSE uring command");
    return 0;
}

// Write the answer to request `unique` into its ring entry: `res` bytes of
// `out` as the reply's payload, or the error -`res`.
static void ring_answer(struct ring_req_header *hdr, char *payload, uint64_t unique, int res, const void *out) {
    struct fuse_out_header oh = {.unique = unique};
    if (res < 0) {
        oh.error = res;
        res = 0;
    }
    oh.len = (uint32_t)(sizeof(oh) + (unsigned)res);
    memcpy(payload, out, (size_t)res);
    memcpy(hdr->in_out, &oh, sizeof(oh));
    hdr->ent.payload_sz = (uint32_t)res;
}

#endif
