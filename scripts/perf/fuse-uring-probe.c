// fuse-uring-probe: what one FUSE round trip costs on this machine, through
// the classic /dev/fuse read loop (what fuser, and so AgentFS, uses today)
// and through FUSE over io_uring (Linux 6.14+, `fuse.enable_uring=Y`).
//
// It mounts a tiny filesystem of its own (a root directory holding NFILES
// empty files f0, f1, ...; names cached for 0 s, attributes for an hour, so
// every lstat(2) of a name costs exactly one LOOKUP round trip) and lstat()s
// all names PASSES times from its main thread, then prints one JSON line:
// microseconds per lstat and the requests served. The server does no work
// beyond building the reply, so the figure is the transport's own cost.
//
//   read   THREADS server threads, unpinned, each blocked in read(/dev/fuse)
//          (fuser's model: the kernel wakes one of them per request)
//   uring  one server thread per CPU, pinned to it, each with its own
//          io_uring and one ring entry; the kernel queues a request on the
//          ring of the CPU the caller runs on
//
// Usage: fuse-uring-probe read|uring MOUNTPOINT NFILES PASSES [THREADS] [CLIENT_CPU]
// CLIENT_CPU pins the lstat loop to one CPU (-1, the default: not pinned).
// Needs root (mount(2)). Build: gcc -O2 -pthread -o fuse-uring-probe fuse-uring-probe.c
// Run through scripts/perf/fuse-uring-probe.sh, which sets enable_uring and
// puts it back.
#define TOOL "fuse-uring-probe"
#include "fuse-ring.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>

static unsigned nfiles;
static atomic_ulong served_read, served_ring;

static void fill_attr(struct fuse_attr *a, uint64_t ino) {
    memset(a, 0, sizeof(*a));
    a->ino = ino;
    a->mode = ino == FUSE_ROOT_ID ? (S_IFDIR | 0755) : (S_IFREG | 0644);
    a->nlink = ino == FUSE_ROOT_ID ? 2 : 1;
    a->blksize = 4096;
}

// Answer one request into `out`; return its length, or a negative errno.
static int handle(const struct fuse_in_header *ih, const char *name, void *out) {
    switch (ih->opcode) {
    case FUSE_LOOKUP: {
        unsigned i;
        char end;
        if (ih->nodeid != FUSE_ROOT_ID || sscanf(name, "f%u%c", &i, &end) != 1 || i >= nfiles)
            return -ENOENT;
        struct fuse_entry_out *e = out;
        memset(e, 0, sizeof(*e));
        e->nodeid = 2 + (uint64_t)i;
        e->attr_valid = 3600;
        fill_attr(&e->attr, e->nodeid);
        return sizeof(*e);
    }
    case FUSE_GETATTR: {
        struct fuse_attr_out *a = out;
        memset(a, 0, sizeof(*a));
        a->attr_valid = 3600;
        fill_attr(&a->attr, ih->nodeid);
        return sizeof(*a);
    }
    case FUSE_DESTROY:
        return 0;
    default:
        return -ENOSYS;
    }
}

// Classic: block in read(2), answer with writev(2).
static void *read_loop(void *arg) {
    (void)arg;
    char *buf = malloc(READ_BUF);
    char out[512];
    for (;;) {
        if (read_request(buf) == 0)
            return NULL; // unmounted
        struct fuse_in_header *ih = (void *)buf;
        if (ih->opcode == FUSE_FORGET || ih->opcode == FUSE_BATCH_FORGET)
            continue;
        // LOOKUP's name follows the header; no other op here reads past it.
        int res = handle(ih, buf + sizeof(*ih), out);
        atomic_fetch_add(&served_read, 1);
        reply(ih->unique, res, out);
    }
}

struct queue_arg {
    int cpu;
};

static void *uring_loop(void *argp) {
    struct queue_arg *qa = argp;
    pin_to_cpu(qa->cpu);
    struct ring r;
    ring_setup(&r, 8);
    struct iovec *iov = calloc(2, sizeof(*iov));
    struct ring_req_header *hdr = aligned_alloc(4096, 4096);
    char *payload = aligned_alloc(4096, PAYLOAD);
    iov[0] = (struct iovec){hdr, sizeof(*hdr)};
    iov[1] = (struct iovec){payload, PAYLOAD};
    ring_push(&r, RING_CMD_REGISTER, iov, (uint64_t)(uintptr_t)iov, (uint16_t)qa->cpu, 0);
    char out[512];
    for (;;) {
        ring_enter(&r, 1);
        unsigned head = *r.cq_head;
        unsigned tail = __atomic_load_n(r.cq_tail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &r.cqes[head & *r.cq_mask];
            if (cqe->res < 0 && ring_unmounted(cqe->res))
                return NULL;
            struct fuse_in_header ih;
            memcpy(&ih, hdr->in_out, sizeof(ih));
            // LOOKUP's zero-size first argument leaves the name in the payload.
            int res = handle(&ih, payload, out);
            atomic_fetch_add(&served_ring, 1);
            ring_answer(hdr, payload, ih.unique, res, out);
            ring_push(&r, RING_CMD_COMMIT_AND_FETCH, iov, (uint64_t)(uintptr_t)iov, (uint16_t)qa->cpu,
                      hdr->ent.commit_id);
        }
        __atomic_store_n(r.cq_head, head, __ATOMIC_RELEASE);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s read|uring MOUNTPOINT NFILES PASSES [THREADS] [CLIENT_CPU]\n", argv[0]);
        return 2;
    }
    int uring = strcmp(argv[1], "uring") == 0;
    const char *mnt = argv[2];
    nfiles = (unsigned)atoi(argv[3]);
    int passes = atoi(argv[4]);
    int threads = argc > 5 ? atoi(argv[5]) : 2;
    int client_cpu = argc > 6 ? atoi(argv[6]) : -1;
    long ncpu = sysconf(_SC_NPROCESSORS_CONF);

    mount_fuse(mnt, "");
    // INIT arrives once the mount exists; the kernel queues other requests
    // until it is answered.
    init_session(uring);

    pthread_t t;
    // Requests the ring does not carry (FORGET, INTERRUPT) still come through
    // read(2), so a reader runs in both modes.
    for (int i = 0; i < (uring ? 1 : threads); i++)
        if (pthread_create(&t, NULL, read_loop, NULL))
            die("spawn reader");
    if (uring) {
        for (long c = 0; c < ncpu; c++) {
            struct queue_arg *qa = malloc(sizeof(*qa));
            qa->cpu = (int)c;
            if (pthread_create(&t, NULL, uring_loop, qa))
                die("spawn queue");
        }
        // The ring takes requests once every queue has an entry; until then
        // they go through read(2). A moment is plenty for a few REGISTERs;
        // the counts printed at the end show which path served the loop.
        usleep(200 * 1000);
    }
    if (client_cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(client_cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set))
            die("pin client");
    }
    char path[4096];
    struct stat st;
    // One warm-up pass: the dentries then exist and every later lstat is a
    // single revalidating LOOKUP.
    for (unsigned i = 0; i < nfiles; i++) {
        snprintf(path, sizeof(path), "%s/f%u", mnt, i);
        if (lstat(path, &st) < 0)
            die("lstat (warm-up)");
    }
    unsigned long read0 = atomic_load(&served_read), ring0 = atomic_load(&served_ring);
    double t0 = now();
    for (int p = 0; p < passes; p++)
        for (unsigned i = 0; i < nfiles; i++) {
            snprintf(path, sizeof(path), "%s/f%u", mnt, i);
            if (lstat(path, &st) < 0)
                die("lstat");
        }
    double secs = now() - t0;
    unsigned long by_read = atomic_load(&served_read) - read0;
    unsigned long by_ring = atomic_load(&served_ring) - ring0;
    unsigned long stats = (unsigned long)passes * nfiles;
    printf("{\"mode\":\"%s\",\"threads\":%d,\"client_cpu\":%d,\"lstats\":%lu,\"by_read\":%lu,\"by_ring\":%lu,"
           "\"seconds\":%.4f,\"us_per_lstat\":%.2f}\n",
           argv[1], uring ? (int)ncpu : threads, client_cpu, stats, by_read, by_ring, secs, secs * 1e6 / (double)stats);
    fflush(stdout);
    if (umount2(mnt, MNT_DETACH) < 0)
        die("umount");
    _exit(0);
}
