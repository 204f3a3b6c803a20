// fuse-floor: the least any FUSE server can cost for the harness's metadata
// workloads (scripts/perf/metaops.c: create, stat and unlink of files in
// subdirectories) on this machine and kernel.
//
// It serves a filesystem held in a hash table in memory and does nothing per
// request but find or change one entry and build the reply: no storage, no
// journal, no permission checks of its own. It asks the kernel for what
// AgentFS asks that shapes the requests a workload costs: FUSE over io_uring
// (one queue per CPU, its thread pinned there, looking for the next request
// for POLL_US after each answer before it sleeps, as AgentFS's rings do),
// `default_permissions`, and names, negative names and attributes cached for
// 60 s. So the kernel sends it the same requests per file it sends AgentFS
// (a create is LOOKUP, CREATE, GETATTR of the directory and RELEASE; a cold
// stat one LOOKUP; an unlink UNLINK and GETATTR of the directory), and its
// time per file is the kernel's and the transport's alone: a ceiling on the
// ratio to the host that no FUSE server can pass here.
//
// Usage: fuse-floor MOUNTPOINT [POLL_US]
// Mounts, serves until unmounted (umount MOUNTPOINT), prints "ready" on
// stdout once the rings serve. Needs root and Linux 6.14+ with
// fuse.enable_uring=Y (scripts/perf/fuse-floor.sh sets it and puts it back).
// Build: gcc -O2 -pthread -o fuse-floor fuse-floor.c
#define TOOL "fuse-floor"
#include "fuse-ring.h"

#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <time.h>

#define ENTRIES 4         // ring entries per queue
#define TTL 60            // seconds names and attributes are cached
#define MAX_NODES (1u << 20)
#define TABLE (1u << 21)  // hash slots, a power of two above MAX_NODES

static long poll_us = 200;

// ---- the filesystem: nodes, and a hash table from (parent, name) to node.

struct node {
    uint64_t parent;
    char *name;   // NULL: free or removed
    uint32_t mode;
};
static struct node *nodes;     // index = node id; 1 is the root
static uint32_t *table;        // node ids; 0 empty, UINT32_MAX removed
static uint32_t next_id = 2;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t hash(uint64_t parent, const char *name) {
    uint64_t h = 1469598103934665603ULL ^ parent;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

// The slot holding (parent, name), or the free slot where it would go.
static uint32_t *slot_of(uint64_t parent, const char *name, int for_insert) {
    uint32_t *reuse = NULL;
    for (uint64_t i = hash(parent, name) & (TABLE - 1);; i = (i + 1) & (TABLE - 1)) {
        uint32_t id = table[i];
        if (id == 0)
            return for_insert && reuse ? reuse : &table[i];
        if (id == UINT32_MAX) {
            if (!reuse)
                reuse = &table[i];
            continue;
        }
        if (nodes[id].parent == parent && strcmp(nodes[id].name, name) == 0)
            return &table[i];
    }
}

static uint32_t find(uint64_t parent, const char *name) {
    uint32_t id = *slot_of(parent, name, 0);
    return id == UINT32_MAX ? 0 : id;
}

static void fill_attr(struct fuse_attr *a, uint64_t id) {
    memset(a, 0, sizeof(*a));
    a->ino = id;
    a->mode = id == FUSE_ROOT_ID ? (S_IFDIR | 0755) : nodes[id].mode;
    a->nlink = S_ISDIR(a->mode) ? 2 : 1;
    a->blksize = 4096;
}

static int entry(void *out, uint64_t id) {
    struct fuse_entry_out *e = out;
    memset(e, 0, sizeof(*e));
    e->nodeid = id; // 0: a negative entry, cached like a positive one
    e->entry_valid = TTL;
    e->attr_valid = TTL;
    if (id)
        fill_attr(&e->attr, id);
    return sizeof(*e);
}

// Answer one request into `out`: `op_in` is the opcode's own header, `args`
// the rest (names). Returns the reply's length, or a negative errno.
static int handle(const struct fuse_in_header *ih, const void *op_in, const char *args, void *out) {
    switch (ih->opcode) {
    case FUSE_LOOKUP:
        return entry(out, find(ih->nodeid, args));
    case FUSE_GETATTR: {
        struct fuse_attr_out *a = out;
        memset(a, 0, sizeof(*a));
        a->attr_valid = TTL;
        fill_attr(&a->attr, ih->nodeid);
        return sizeof(*a);
    }
    case FUSE_MKDIR:
    case FUSE_CREATE: {
        uint32_t mode = ih->opcode == FUSE_MKDIR
                            ? S_IFDIR | (((const struct fuse_mkdir_in *)op_in)->mode & 07777)
                            : ((const struct fuse_create_in *)op_in)->mode;
        uint32_t *slot = slot_of(ih->nodeid, args, 1);
        if (*slot != 0 && *slot != UINT32_MAX)
            return -EEXIST;
        if (next_id >= MAX_NODES)
            return -ENOSPC;
        uint32_t id = next_id++;
        nodes[id] = (struct node){ih->nodeid, strdup(args), mode};
        *slot = id;
        int len = entry(out, id);
        if (ih->opcode == FUSE_CREATE) {
            struct fuse_open_out *o = (void *)((char *)out + len);
            memset(o, 0, sizeof(*o));
            o->fh = id;
            len += sizeof(*o);
        }
        return len;
    }
    case FUSE_UNLINK:
    case FUSE_RMDIR: {
        uint32_t *slot = slot_of(ih->nodeid, args, 0);
        if (*slot == 0 || *slot == UINT32_MAX)
            return -ENOENT;
        free(nodes[*slot].name);
        nodes[*slot].name = NULL;
        *slot = UINT32_MAX;
        return 0;
    }
    case FUSE_OPENDIR: {
        struct fuse_open_out *o = out;
        memset(o, 0, sizeof(*o));
        return sizeof(*o);
    }
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
    case FUSE_DESTROY:
        return 0;
    case FUSE_STATFS: {
        struct fuse_statfs_out *s = out;
        memset(s, 0, sizeof(*s));
        s->st.bsize = 4096;
        s->st.namelen = 255;
        return sizeof(*s);
    }
    default:
        return -ENOSYS;
    }
}

static int handle_locked(const struct fuse_in_header *ih, const void *op_in, const char *args, void *out) {
    pthread_mutex_lock(&lock);
    int res = handle(ih, op_in, args, out);
    pthread_mutex_unlock(&lock);
    return res;
}

// FORGET and INTERRUPT still come through read(2); nodes are never dropped.
static void *read_loop(void *arg) {
    (void)arg;
    char *buf = malloc(READ_BUF);
    char out[512];
    for (;;) {
        if (read_request(buf) == 0)
            _exit(0); // unmounted
        struct fuse_in_header *ih = (void *)buf;
        if (ih->opcode == FUSE_FORGET || ih->opcode == FUSE_BATCH_FORGET ||
            ih->opcode == FUSE_INTERRUPT)
            continue;
        // Before the rings serve (and never after, but for the above): the
        // opcode's own header follows the request header, then the names.
        size_t op_len = ih->opcode == FUSE_CREATE  ? sizeof(struct fuse_create_in)
                        : ih->opcode == FUSE_MKDIR ? sizeof(struct fuse_mkdir_in)
                                                   : 0;
        char *op_in = buf + sizeof(*ih);
        int res = handle_locked(ih, op_in, op_in + op_len, out);
        reply(ih->unique, res, out);
    }
}

static int has_completions(struct ring *r) {
    return *r->cq_head != __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct queue {
    int cpu;
    struct iovec iov[ENTRIES][2];
    struct ring_req_header *hdr[ENTRIES];
    char *payload[ENTRIES];
};

static volatile int registered;

static void *uring_loop(void *argp) {
    struct queue *q = argp;
    pin_to_cpu(q->cpu);
    struct ring r;
    ring_setup(&r, 2 * ENTRIES);
    for (int e = 0; e < ENTRIES; e++) {
        q->hdr[e] = aligned_alloc(4096, 4096);
        q->payload[e] = aligned_alloc(4096, PAYLOAD);
        q->iov[e][0] = (struct iovec){q->hdr[e], sizeof(struct ring_req_header)};
        q->iov[e][1] = (struct iovec){q->payload[e], PAYLOAD};
        ring_push(&r, RING_CMD_REGISTER, q->iov[e], (uint64_t)e, (uint16_t)q->cpu, 0);
    }
    ring_enter(&r, 0);
    __atomic_fetch_add(&registered, 1, __ATOMIC_RELEASE);
    char out[512];
    for (;;) {
        // Look for the next request for a moment after answering, then sleep.
        double until = now() + (double)poll_us / 1e6;
        for (;;) {
            ring_enter(&r, 0);
            if (has_completions(&r) || now() >= until)
                break;
            sched_yield();
        }
        if (!has_completions(&r))
            ring_enter(&r, 1);
        unsigned head = *r.cq_head;
        unsigned tail = __atomic_load_n(r.cq_tail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &r.cqes[head & *r.cq_mask];
            int e = (int)cqe->user_data;
            if (cqe->res < 0 && ring_unmounted(cqe->res))
                _exit(0);
            struct fuse_in_header ih;
            memcpy(&ih, q->hdr[e]->in_out, sizeof(ih));
            int res = handle_locked(&ih, q->hdr[e]->op_in, q->payload[e], out);
            ring_answer(q->hdr[e], q->payload[e], ih.unique, res, out);
            ring_push(&r, RING_CMD_COMMIT_AND_FETCH, q->iov[e], (uint64_t)e, (uint16_t)q->cpu,
                      q->hdr[e]->ent.commit_id);
        }
        __atomic_store_n(r.cq_head, head, __ATOMIC_RELEASE);
    }
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s MOUNTPOINT [POLL_US]\n", argv[0]);
        return 2;
    }
    const char *mnt = argv[1];
    if (argc == 3)
        poll_us = atol(argv[2]);
    nodes = calloc(MAX_NODES, sizeof(*nodes));
    table = calloc(TABLE, sizeof(*table));
    if (!nodes || !table)
        die("calloc");
    long ncpu = sysconf(_SC_NPROCESSORS_CONF);

    mount_fuse(mnt, ",default_permissions");
    init_session(1);
    pthread_t t;
    if (pthread_create(&t, NULL, read_loop, NULL))
        die("spawn reader");
    for (long c = 0; c < ncpu; c++) {
        struct queue *q = calloc(1, sizeof(*q));
        q->cpu = (int)c;
        if (pthread_create(&t, NULL, uring_loop, q))
            die("spawn queue");
    }
    while (__atomic_load_n(&registered, __ATOMIC_ACQUIRE) < ncpu)
        usleep(1000);
    // The kernel takes the rings once every queue has its entries.
    usleep(100 * 1000);
    printf("ready\n");
    fflush(stdout);
    pause();
    return 0;
}
