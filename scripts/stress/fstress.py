#!/usr/bin/env python3
"""Multi-threaded stress workload for a live AgentFS mount (scripts/test-fuse-stress.sh).

`run`: N worker threads for D seconds. Worker `wNN` owns the directory `wNN`
in every branch under test (the default branch `main` and `br1`..`brK`), so the
expected state of each subtree is exact; it keeps an in-memory model (path ->
bytes, set of directories) per branch. Each step is one of

- a file operation (create, write, read, append, truncate, rename, unlink,
  mkdir, rmdir, rename of a directory, write+fsync, readdir) on one branch,
  made through one of the branch's views: the mount path (default branch),
  `<mount>/.agentfs/branches/<b>/`;
- a batch of such operations run by a short-lived process on a branch's view
  at the mount path: `agentfs-control-cli branch-exec --branch B -- python3
  fstress.py apply ...` (a private mount namespace as root) or a process that
  binds itself with `branch-bind`, works, and unbinds (or just exits, leaving
  a dead binding to be pruned);
- a control operation: snapshot-create of a branch (taken while that branch is
  quiescent, so the model at that instant is recorded exactly), branch-create
  of a throwaway branch from a snapshot (its whole tree is compared with the
  snapshot's recorded model, then written to), branch-delete of throwaway
  branches, snapshot-delete.

Reads compare with the model at once. At checkpoints every branch is paused
and its whole tree is compared byte for byte with the model, and every live
snapshot is checked through a temporary branch; at the end also through a
`branch-exec` view of each branch. Any unexpected errno or mismatch is an error;
the run fails if there is one. The daemon's descriptors and VmRSS are sampled
throughout. `apply` and `bindapply` are the helper processes' entry points.
"""

import argparse
import collections
import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time

SELF = os.path.abspath(__file__)
MAX_FILES = 40
BIG = 256 * 1024
# Control-connection threads the daemon keeps waiting for the next
# connection (agentfs-control's server::IDLE_THREADS).
IDLE_CONTROL_THREADS = 2


def sha(data):
    return hashlib.sha256(data).hexdigest()[:24]


def gen_bytes(seed, n):
    return random.Random(seed).randbytes(n)


class Mismatch(Exception):
    pass


# ---------------------------------------------------------------- operations


def read_all(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        return size, b"".join(chunks)
    finally:
        os.close(fd)


def execute(root, op):
    """Make `op` on the subtree at `root`; raise OSError or Mismatch."""
    k = op["k"]
    p = os.path.join(root, op["p"])
    if k == "create":
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            data = gen_bytes(op["seed"], op["n"])
            if os.write(fd, data) != len(data):
                raise Mismatch("short write")
        finally:
            os.close(fd)
    elif k in ("write", "fsync"):
        fd = os.open(p, os.O_WRONLY)
        try:
            data = gen_bytes(op["seed"], op["n"])
            if os.pwrite(fd, data, op["off"]) != len(data):
                raise Mismatch("short write")
            if k == "fsync":
                (os.fsync if op["seed"] % 2 else os.fdatasync)(fd)
        finally:
            os.close(fd)
    elif k == "append":
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            data = gen_bytes(op["seed"], op["n"])
            if os.write(fd, data) != len(data):
                raise Mismatch("short write")
        finally:
            os.close(fd)
    elif k == "read":
        size, data = read_all(p)
        if size != op["len"] or len(data) != op["len"] or sha(data) != op["sha"]:
            raise Mismatch(
                "read %s: size %d, %d bytes read, sha %s; expected %d bytes, sha %s"
                % (op["p"], size, len(data), sha(data), op["len"], op["sha"])
            )
    elif k == "truncate":
        os.truncate(p, op["size"])
    elif k in ("rename", "renamedir"):
        os.rename(p, os.path.join(root, op["q"]))
    elif k == "unlink":
        os.unlink(p)
    elif k == "mkdir":
        os.mkdir(p, 0o755)
    elif k == "rmdir":
        os.rmdir(p)
    elif k == "readdir":
        got = sorted(os.listdir(p))
        if got != op["names"]:
            raise Mismatch("readdir %s: %s, expected %s" % (op["p"] or ".", got, op["names"]))
    else:
        raise ValueError(k)


class Model:
    """One worker's subtree in one branch: files {rel: bytes}, dirs {rel}."""

    def __init__(self):
        self.files = {}
        self.dirs = set()
        # A file its worker keeps open for writing between operations (and
        # across snapshots); never renamed, replaced or unlinked while open.
        self.held = None

    def copy(self):
        m = Model()
        m.files = dict(self.files)
        m.dirs = set(self.dirs)
        return m

    def names_in(self, d):
        out = set()
        for p in list(self.files) + list(self.dirs):
            if os.path.dirname(p) == d:
                out.add(os.path.basename(p))
        return sorted(out)

    def apply(self, op):
        k = op["k"]
        p = op["p"]
        f = self.files
        if k == "create":
            f[p] = gen_bytes(op["seed"], op["n"])
        elif k in ("write", "fsync"):
            d = bytearray(f[p])
            off = op["off"]
            if len(d) < off:
                d.extend(b"\0" * (off - len(d)))
            data = gen_bytes(op["seed"], op["n"])
            d[off : off + len(data)] = data
            f[p] = bytes(d)
        elif k == "append":
            f[p] = f[p] + gen_bytes(op["seed"], op["n"])
        elif k == "truncate":
            d = f[p]
            f[p] = d[: op["size"]] + b"\0" * max(0, op["size"] - len(d))
        elif k == "rename":
            f[op["q"]] = f.pop(p)
        elif k == "renamedir":
            q = op["q"]
            for old in [x for x in f if x.startswith(p + "/")]:
                f[q + old[len(p) :]] = f.pop(old)
            for old in [x for x in self.dirs if x == p or x.startswith(p + "/")]:
                self.dirs.discard(old)
                self.dirs.add(q + old[len(p) :])
        elif k == "unlink":
            del f[p]
        elif k == "mkdir":
            self.dirs.add(p)
        elif k == "rmdir":
            self.dirs.discard(p)


def gen_op(rng, m, names):
    """A random operation valid in model `m` (applied to it), or None."""
    files = sorted(m.files)
    dirs = sorted(m.dirs)

    def new_path(prefix):
        d = rng.choice([""] + [x for x in dirs if x.count("/") < 1])
        return os.path.join(d, "%s%d" % (prefix, next(names)))

    choices = [("create", 14), ("read", 18), ("readdir", 5), ("mkdir", 3)]
    if files:
        choices += [("write", 14), ("append", 8), ("truncate", 6), ("rename", 8),
                    ("unlink", 8 if len(files) < MAX_FILES else 40), ("fsync", 6)]
    if dirs:
        choices += [("rmdir", 3), ("renamedir", 2)]
    if len(files) >= MAX_FILES:
        choices = [c for c in choices if c[0] != "create"]
    if len(dirs) >= 6:
        choices = [c for c in choices if c[0] != "mkdir"]
    total = sum(w for _, w in choices)
    x = rng.uniform(0, total)
    for k, w in choices:
        x -= w
        if x <= 0:
            break
    op = {"k": k}
    if k == "create":
        n = rng.randrange(0, 32768) if rng.random() < 0.95 else rng.randrange(BIG // 2, BIG)
        op.update(p=new_path("f"), seed=rng.getrandbits(48), n=n)
    elif k == "read":
        if not files:
            op = {"k": "readdir", "p": ""}
            op["names"] = m.names_in("")
            return op
        p = rng.choice(files)
        op.update(p=p, len=len(m.files[p]), sha=sha(m.files[p]))
        return op  # reads change nothing
    elif k == "readdir":
        d = rng.choice([""] + dirs)
        op.update(p=d, names=m.names_in(d))
        return op
    elif k in ("write", "fsync"):
        p = rng.choice(files)
        size = len(m.files[p])
        if size > BIG:
            op = {"k": "truncate", "p": p, "size": rng.randrange(0, 4096)}
        else:
            op.update(p=p, off=rng.randrange(0, size + 4096), seed=rng.getrandbits(48),
                      n=rng.randrange(1, 16384))
    elif k == "append":
        p = rng.choice(files)
        if len(m.files[p]) > BIG:
            op = {"k": "truncate", "p": p, "size": rng.randrange(0, 4096)}
        else:
            op.update(p=p, seed=rng.getrandbits(48), n=rng.randrange(1, 8192))
    elif k == "truncate":
        p = rng.choice(files)
        op.update(p=p, size=rng.randrange(0, min(2 * len(m.files[p]) + 10, BIG)))
    elif k == "rename":
        p = rng.choice(files)
        q = rng.choice(files) if rng.random() < 0.3 else new_path("f")
        if q == p or m.held in (p, q):
            return None
        op.update(p=p, q=q)
    elif k == "unlink":
        op.update(p=rng.choice(files))
        if op["p"] == m.held:
            return None
    elif k == "mkdir":
        op.update(p=new_path("d"))
    elif k == "rmdir":
        empty = [d for d in dirs if not m.names_in(d)]
        if not empty:
            return None
        op.update(p=rng.choice(empty))
    elif k == "renamedir":
        top = [d for d in dirs if "/" not in d]
        if not top:
            return None
        p = rng.choice(top)
        if m.held and m.held.startswith(p + "/"):
            return None
        op.update(p=p, q="d%d" % next(names))
    m.apply(op)
    return op


# ---------------------------------------------------------------- helpers


def apply_main(args):
    """Helper process: apply the JSON list of ops on stdin below --root."""
    ops = json.load(sys.stdin)
    errors = []
    done = 0
    for op in ops:
        try:
            execute(args.root, op)
            done += 1
        except (OSError, Mismatch) as e:
            errors.append({"op": op.get("k"), "path": op.get("p"), "error": describe(e)})
    json.dump({"done": done, "errors": errors, "pid": os.getpid()}, sys.stdout)
    return 0


def bindapply_main(args):
    """Helper process: bind itself to --branch, apply ops, maybe unbind."""
    ops = json.loads(args.ops_json) if args.ops_json else json.load(sys.stdin)
    base = [args.cli, "--mount", args.mount, "--json"]
    out = subprocess.run(base + ["branch-bind", "--branch", args.branch], capture_output=True)
    if out.returncode != 0:
        json.dump({"done": 0, "errors": [{"op": "branch-bind", "error": out.stderr.decode()}]}, sys.stdout)
        return 0
    bound = json.loads(out.stdout)["value"]
    errors = []
    if bound["pid"] != os.getpid():
        errors.append({"op": "branch-bind", "error": "bound pid %s, not %d" % (bound["pid"], os.getpid())})
    st = subprocess.run(base + ["status"], capture_output=True)
    if st.returncode != 0 or json.loads(st.stdout)["value"]["caller_branch"] != args.branch_id:
        errors.append({"op": "status", "error": "caller_branch is not %s: %s" % (args.branch_id, st.stdout[-300:])})
    done = 0
    for op in ops:
        try:
            execute(args.root, op)
            done += 1
        except (OSError, Mismatch) as e:
            errors.append({"op": op.get("k"), "path": op.get("p"), "error": describe(e)})
    unbound = False
    if args.unbind:
        u = subprocess.run(base + ["branch-unbind", "--pid", str(os.getpid())], capture_output=True)
        if u.returncode != 0 or not json.loads(u.stdout)["value"]["was_bound"]:
            errors.append({"op": "branch-unbind", "error": (u.stdout + u.stderr).decode()[-300:]})
        unbound = True
    json.dump({"done": done, "errors": errors, "pid": os.getpid(), "unbound": unbound}, sys.stdout)
    return 0


def describe(e):
    if isinstance(e, OSError):
        return "%s (%s)" % (errno.errorcode.get(e.errno, e.errno), e)
    return str(e)


# ---------------------------------------------------------------- the run


class RWLock:
    """Many readers (file operations on a branch) or one writer (a snapshot of
    it, a checkpoint); a waiting writer stops new readers."""

    def __init__(self):
        self.cv = threading.Condition()
        self.readers = 0
        self.writer = False
        self.waiting = 0

    def rlock(self):
        with self.cv:
            while self.writer or self.waiting:
                self.cv.wait()
            self.readers += 1

    def runlock(self):
        with self.cv:
            self.readers -= 1
            if self.readers == 0:
                self.cv.notify_all()

    def wlock(self):
        with self.cv:
            self.waiting += 1
            while self.writer or self.readers:
                self.cv.wait()
            self.waiting -= 1
            self.writer = True

    def wunlock(self):
        with self.cv:
            self.writer = False
            self.cv.notify_all()


def raise_it(e):
    """os.walk's onerror: a directory that cannot be listed is an error."""
    raise e


def scan(root, skip_agentfs):
    """({rel: bytes}, {rel dirs}) of everything under root."""
    files, dirs = {}, set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=raise_it):
        if skip_agentfs and dirpath == root:
            dirnames[:] = [d for d in dirnames if d != ".agentfs"]
        for d in dirnames:
            dirs.add(os.path.relpath(os.path.join(dirpath, d), root))
        for f in filenames:
            p = os.path.join(dirpath, f)
            files[os.path.relpath(p, root)] = read_all(p)[1]
    return files, dirs


def digest_main(args):
    """Helper process: print {rel: [sha, len]} and dirs of --root (branch-exec view)."""
    files, dirs = scan(args.root, True)
    json.dump({"files": {p: [sha(d), len(d)] for p, d in files.items()}, "dirs": sorted(dirs)}, sys.stdout)
    return 0


def compare(label, files, dirs, want_files, want_dirs, limit=10):
    """Differences between a scanned tree and a model, as strings."""
    out = []
    for p in sorted(set(files) | set(want_files)):
        if p not in files:
            out.append("%s: missing file %s" % (label, p))
        elif p not in want_files:
            out.append("%s: unexpected file %s (%d bytes)" % (label, p, len(files[p])))
        elif files[p] != want_files[p]:
            a, b = files[p], want_files[p]
            first = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            out.append("%s: %s differs: %d bytes, expected %d, first difference at %d"
                       % (label, p, len(a), len(b), first))
        if len(out) >= limit:
            return out
    for d in sorted(dirs ^ want_dirs):
        out.append("%s: directory %s %s" % (label, d, "missing" if d in want_dirs else "unexpected"))
        if len(out) >= limit:
            break
    return out


class ChildWriter(threading.Thread):
    """Writes into a branch while it is committed: a new directory `root`,
    a file written through one descriptor held open all along (FUSE
    passthrough where the mount offers it), new files and appends. `states[k]`
    is the directory's content after k operations completed (None: not made
    yet), so the parent must hold exactly one of the states between the
    operations done when the commit began and those begun when it returned."""

    def __init__(self, root, seed):
        super().__init__(daemon=True)
        self.root = root
        self.rng = random.Random(seed)
        self.states = [None]
        # The file operation k changed (its write may reach the daemon in
        # several requests: the kernel sends a write that starts inside a
        # page not cached as one request up to the page's end, then the
        # rest, so a commit can land between them).
        self.targets = [None]
        self.started = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        rng = self.rng
        cur = {}
        fd = None
        try:
            k = 0
            while not self.stop.is_set() and k < 400:
                self.started += 1
                target = "held"
                if k == 0:
                    target = None
                    os.mkdir(self.root)
                elif k == 1:
                    fd = os.open(os.path.join(self.root, "held"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                    cur["held"] = b""
                elif rng.random() < 0.6:
                    data = rng.randbytes(rng.randrange(1, 8192))
                    off = rng.randrange(0, len(cur["held"]) + 4096)
                    if os.pwrite(fd, data, off) != len(data):
                        raise Mismatch("short write")
                    d = bytearray(cur["held"])
                    if len(d) < off:
                        d.extend(b"\0" * (off - len(d)))
                    d[off:off + len(data)] = data
                    cur["held"] = bytes(d)
                else:
                    name = "n%d" % rng.randrange(6)
                    target = name
                    if name not in cur:
                        # Creating is one step (an empty file), appending the next.
                        os.close(os.open(os.path.join(self.root, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                        cur[name] = b""
                    else:
                        data = rng.randbytes(rng.randrange(1, 6000))
                        fd2 = os.open(os.path.join(self.root, name), os.O_WRONLY | os.O_APPEND)
                        try:
                            if os.write(fd2, data) != len(data):
                                raise Mismatch("short write")
                        finally:
                            os.close(fd2)
                        cur[name] = cur[name] + data
                k += 1
                self.targets.append(target)
                self.states.append(dict(cur))
        except (OSError, Mismatch) as e:
            self.error = describe(e)
        finally:
            if fd is not None:
                os.close(fd)

    def done(self):
        return len(self.states) - 1

    def matches(self, got, lo, hi):
        """Whether `got` is the directory as of some k in lo..hi, allowing the
        file that operation k+1 (in flight at that moment) was writing to
        hold anything."""
        for k in range(lo, min(hi, len(self.states) - 1) + 1):
            st = self.states[k]
            if got == st:
                return True
            if got is None or st is None or k + 1 >= len(self.states):
                continue
            t = self.targets[k + 1]
            if t is None or set(got) - {t} != set(st) - {t}:
                continue
            if all(got[f] == st[f] for f in got if f != t):
                return True
        return False


class Stress:
    def __init__(self, args):
        self.a = args
        self.mount = args.mount
        self.branches = ["main"] + ["br%d" % i for i in range(1, args.branches + 1)]
        self.branch_ids = {}
        self.locks = {b: RWLock() for b in self.branches}
        self.workers = ["w%02d" % i for i in range(args.threads)]
        self.models = {w: {b: Model() for b in self.branches} for w in self.workers}
        self.ops = collections.Counter()
        self.ops_lock = threading.Lock()
        self.errors = []
        self.ctl = threading.Lock()  # guards snapshots, throwaways, counters below
        self.snapshots = {}  # name -> {"branch", "files", "dirs", "verified", "busy"}
        self.throwaways = []  # names of live throwaway branches
        self.seq = 0
        self.stop = threading.Event()
        self.samples = []
        self.t0 = time.time()
        self.last = {}  # (worker, branch) -> (view, monotonic time of its last operation)
        self.held_fds = {}  # (worker, branch) -> (fd, view) of the file in Model.held
        self.history = {}  # (worker, branch) -> recent operations

    # -- plumbing

    def count(self, kind, n=1):
        with self.ops_lock:
            self.ops[kind] += n

    def error(self, what):
        with self.ops_lock:
            self.errors.append({"t": round(time.time() - self.t0, 2), "error": what})
            n = len(self.errors)
        if n <= 50:
            print("ERROR: %s" % what, file=sys.stderr, flush=True)

    def cli(self, *cmd, check=True):
        out = subprocess.run([self.a.cli, "--mount", self.mount, "--json", *cmd],
                             capture_output=True, timeout=120)
        if out.returncode != 0:
            if check:
                raise RuntimeError("agentfs-control-cli %s: %s" % (" ".join(cmd), out.stderr.decode().strip()))
            return None
        return json.loads(out.stdout)["value"]

    def next_seq(self):
        with self.ctl:
            self.seq += 1
            return self.seq

    def view(self, rng, b, w):
        if b == "main" and rng.random() < 0.6:
            return "mount", os.path.join(self.mount, w)
        return "agentfs", os.path.join(self.mount, ".agentfs", "branches", b, w)

    def switch_view(self, w, b, view):
        """A branch has two kernel inodes per node (reached from the mount root,
        or through .agentfs/branches and branch-exec); a change through one
        invalidates the other's cache a moment after it is answered, and a
        passthrough write only at the writer's release (specs/mount.md). Before
        a worker uses another view of its subtree, it closes its held file and
        lets --view-switch-ms pass since its last operation there."""
        last_view, last_t = self.last.get((w, b), (view, 0.0))
        if last_view != view:
            self.count("view-switch")
            # Writes through passthrough reach the other view's attributes only
            # at the writer's release (specs/mount.md): close the held file first.
            if (w, b) in self.held_fds:
                self.close_held(w, b)
                last_t = time.monotonic()
            wait = self.a.view_switch_ms / 1000 - (time.monotonic() - last_t)
            if wait > 0:
                time.sleep(wait)

    def done_view(self, w, b, view):
        self.last[(w, b)] = (view, time.monotonic())

    def note(self, w, b, view, what):
        """Recent history of a worker's subtree, quoted with its errors."""
        h = self.history.setdefault((w, b), collections.deque(maxlen=12))
        h.append("%.3f %s %s" % (time.time() - self.t0, view, what))

    def recent(self, w, b):
        return " | history: " + "; ".join(self.history.get((w, b), ()))

    def union(self, b):
        files, dirs = {}, set()
        for w in self.workers:
            m = self.models[w][b]
            dirs.add(w)
            for p, d in m.files.items():
                files[w + "/" + p] = d
            for d in m.dirs:
                dirs.add(w + "/" + d)
        return files, dirs

    def resync(self, w, b):
        """After an error the model may be wrong: take the tree as it is now."""
        self.close_held(w, b)
        # Through a snapshot of it, read by path: the daemon's state through
        # inodes the kernel never cached (a stale view must not become the
        # model, or one stale read turns into errors for the rest of the run).
        name = "rs-%d" % self.next_seq()
        try:
            self.cli("snapshot-create", "--branch", b, "--name", name)
            try:
                files, dirs = scan(os.path.join(self.mount, ".agentfs", "snapshots", name, w), False)
            finally:
                self.cli("snapshot-delete", name)
            m = self.models[w][b]
            view_files, _ = scan(os.path.join(self.mount, ".agentfs", "branches", b, w), False)
            for p in sorted(set(files) | set(view_files)):
                if files.get(p) != view_files.get(p):
                    self.error("resync %s/%s: %s through .agentfs/branches is %s bytes, the daemon has %s"
                               % (b, w, p, len(view_files[p]) if p in view_files else None,
                                  len(files[p]) if p in files else None))
            for p in sorted(set(files) | set(m.files)):
                if files.get(p) != m.files.get(p):
                    self.count("resync-model-differed")
            m.files, m.dirs = files, dirs
        except (OSError, RuntimeError) as e:
            self.error("resync %s/%s: %s" % (b, w, describe(e)))

    # -- daemon figures

    def daemon_figures(self):
        pid = self.a.daemon_pid
        fds = objs = lower = 0
        others = []
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                fds += 1
                try:
                    target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if "/objects/" in target:
                    objs += 1
                elif self.a.lower and target.startswith(self.a.lower.rstrip("/") + "/"):
                    # Lower files read: a cache of at most 256 (core lower.rs).
                    lower += 1
                else:
                    others.append(target)
            rss = threads = 0
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
            # Control-connection threads ("agentfs-ctl-conn", 15 characters
            # of it in comm): one per open connection, and up to
            # IDLE_CONTROL_THREADS more waiting for the next connection.
            ctl = 0
            for tid in os.listdir("/proc/%d/task" % pid):
                try:
                    with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                        if f.read().startswith("agentfs-ctl-con"):
                            ctl += 1
                except OSError:
                    continue
        except OSError as e:
            self.error("daemon /proc: %s" % describe(e))
            return None
        return {"t": round(time.time() - self.t0, 1), "fds": fds, "object_fds": objs,
                "lower_fds": lower, "other_fds": fds - objs - lower, "other_fd_targets": sorted(others),
                "rss_kib": rss,
                "threads": threads, "control_threads": ctl}

    def status(self):
        st = self.cli("status")
        return {"content_objects": st["content_objects"], "content_bytes": st["content_bytes"],
                "cow_clones": st["cow_clones"], "open_handles": st["open_handles"],
                "branches": len(st["branches"]), "snapshots": st["snapshots"],
                "bindings": len(st["bindings"]), "data_path": st["data_path"]}

    # -- setup

    def setup(self):
        for w in self.workers:
            if self.a.lower:
                # An overlay mount: wNN and its files come from the lower
                # directory; every branch starts from them.
                files, dirs = scan(os.path.join(self.a.lower, w), False)
                for b in self.branches:
                    m = self.models[w][b]
                    m.files, m.dirs = dict(files), set(dirs)
                continue
            os.mkdir(os.path.join(self.mount, w))
        self.cli("snapshot-create", "--branch", "main", "--name", "stress-base")
        self.branch_ids["main"] = self.cli("status")["default_branch"]
        for b in self.branches[1:]:
            self.branch_ids[b] = self.cli("branch-create", "--from", "stress-base", "--name", b)["id"]
        self.cli("snapshot-delete", "stress-base")

    # -- one worker

    def worker(self, idx):
        w = self.workers[idx]
        rng = random.Random(self.a.seed * 1000 + idx)
        names = iter(range(10**9))
        a = self.a
        while not self.stop.is_set():
            r = rng.random()
            try:
                if r < a.p_control:
                    self.control(rng, w)
                elif r < a.p_control + a.p_commit:
                    self.commit_episode(rng, w, names)
                elif r < a.p_control + a.p_commit + a.p_helper:
                    self.helper_batch(rng, w, names)
                elif r < a.p_control + a.p_commit + a.p_helper + a.p_held:
                    self.held_op(rng, w)
                else:
                    self.file_op(rng, w, names)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.error("%s: %s: %s" % (w, type(e).__name__, describe(e)))
        for b in self.branches:
            self.close_held(w, b)

    def close_held(self, w, b):
        fd = self.held_fds.pop((w, b), None)
        if fd is not None:
            self.note(w, b, fd[1], "held-close %s" % self.models[w][b].held)
        self.models[w][b].held = None
        if fd is not None:
            try:
                os.close(fd[0])
                self.count("held-close")
            except OSError as e:
                self.error("%s %s close of a held file: %s" % (w, b, describe(e)))

    def held_op(self, rng, w):
        """Write through a descriptor kept open between operations, so that
        snapshots are taken with files open for writing in the branch."""
        b = rng.choice(self.branches)
        lock = self.locks[b]
        lock.rlock()
        try:
            m = self.models[w][b]
            if m.held is None:
                if not m.files:
                    return
                p = rng.choice(sorted(m.files))
                view, root = self.view(rng, b, w)
                self.switch_view(w, b, view)
                self.held_fds[(w, b)] = (os.open(os.path.join(root, p), os.O_WRONLY), view)
                m.held = p
                self.note(w, b, view, "held-open %s" % p)
                self.count("held-open")
                self.done_view(w, b, view)
            fd, view = self.held_fds[(w, b)]
            p = m.held
            if len(m.files[p]) > BIG:
                op = {"k": "truncate", "p": p, "size": rng.randrange(0, 4096)}
            else:
                op = {"k": "write", "p": p, "off": rng.randrange(0, len(m.files[p]) + 4096),
                      "seed": rng.getrandbits(48), "n": rng.randrange(1, 16384)}
            self.switch_view(w, b, view)
            try:
                if op["k"] == "truncate":
                    os.ftruncate(fd, op["size"])
                else:
                    data = gen_bytes(op["seed"], op["n"])
                    if os.pwrite(fd, data, op["off"]) != len(data):
                        raise Mismatch("short write")
                m.apply(op)
                self.count("held-" + op["k"])
                self.note(w, b, view, "held-%s %s" % (op["k"], p))
            except (OSError, Mismatch) as e:
                self.error("%s %s held-%s on %s (%s view): %s" % (w, b, op["k"], p, view, describe(e)))
                self.close_held(w, b)
                self.resync(w, b)
            self.done_view(w, b, view)
            if rng.random() < 0.15:
                self.close_held(w, b)
        finally:
            lock.runlock()

    def file_op(self, rng, w, names):
        b = rng.choice(self.branches)
        lock = self.locks[b]
        lock.rlock()
        try:
            op = gen_op(rng, self.models[w][b], names)
            if op is None:
                return
            view, root = self.view(rng, b, w)
            self.switch_view(w, b, view)
            try:
                execute(root, op)
                self.count(op["k"])
            except (OSError, Mismatch) as e:
                self.error("%s %s %s on %s (%s view): %s%s"
                           % (w, b, op["k"], os.path.join(root, op["p"]), view, describe(e), self.recent(w, b)))
                self.resync(w, b)
            self.note(w, b, view, "%s %s" % (op["k"], op["p"]))
            self.done_view(w, b, view)
            if self.a.p_resync and rng.random() < self.a.p_resync:
                self.resync(w, b)  # a self-test of the resync path
                self.count("resync-self-test")
        finally:
            lock.runlock()

    def helper_batch(self, rng, w, names):
        b = rng.choice(self.branches)
        how = "exec" if rng.random() < 0.5 else "bind"
        lock = self.locks[b]
        lock.rlock()
        try:
            m = self.models[w][b]
            ops = [op for op in (gen_op(rng, m, names) for _ in range(rng.randrange(5, 25))) if op]
            root = os.path.join(self.mount, w)
            if how == "exec":
                cmd = [self.a.cli, "--mount", self.mount, "branch-exec", "--branch", b, "--",
                       sys.executable, SELF, "apply", "--root", root]
            else:
                unbind = rng.random() < 0.5
                cmd = [sys.executable, SELF, "bindapply", "--cli", self.a.cli, "--mount", self.mount,
                       "--branch", b, "--branch-id", self.branch_ids[b], "--root", root]
                if unbind:
                    cmd.append("--unbind")
            # branch-exec (as root) sees the branch's .agentfs/branches inodes.
            view = "agentfs" if how == "exec" else "bind"
            self.switch_view(w, b, view)
            out = subprocess.run(cmd, input=json.dumps(ops).encode(), capture_output=True, timeout=120)
            self.done_view(w, b, view)
            if out.returncode != 0:
                self.error("%s %s %s helper exited %d: %s" % (w, b, how, out.returncode, out.stderr.decode()[-500:]))
                self.resync(w, b)
                return
            res = json.loads(out.stdout)
            for e in res["errors"]:
                self.error("%s %s via %s: %s%s" % (w, b, how, e, self.recent(w, b)))
            self.note(w, b, view, "%s batch of %d (%s) ended" % (how, len(ops), ",".join(
                "%s %s" % (o["k"], o["p"]) for o in ops)))
            if res["errors"]:
                self.resync(w, b)
            self.count("helper-" + how)
            if how == "bind" and res.get("unbound"):
                self.count("branch-unbind")
            if how == "bind":
                self.count("branch-bind")
            for op in ops:
                self.count(op["k"])
        finally:
            lock.runlock()

    def control(self, rng, w):
        r = rng.random()
        with self.ctl:
            live = [n for n, s in self.snapshots.items() if not s["busy"]]
            nthrow = len(self.throwaways)
        if r < 0.35 and len(self.snapshots) < self.a.max_snapshots:
            self.snapshot(rng.choice(self.branches))
        elif r < 0.70 and live:
            self.throwaway(rng, rng.choice(live), w)
        elif r < 0.85 and nthrow:
            with self.ctl:
                name = self.throwaways.pop(rng.randrange(len(self.throwaways))) if self.throwaways else None
            if name:
                self.cli("branch-delete", name)
                self.count("branch-delete")
        else:
            with self.ctl:
                done = [n for n, s in self.snapshots.items() if s["verified"] and not s["busy"]]
                name = rng.choice(done) if done else None
                if name:
                    self.snapshots[name]["busy"] = True
            if name:
                self.cli("snapshot-delete", name)
                with self.ctl:
                    del self.snapshots[name]
                self.count("snapshot-delete")

    def snapshot(self, b):
        name = "s-%s-%d" % (b, self.next_seq())
        lock = self.locks[b]
        lock.wlock()
        try:
            self.cli("snapshot-create", "--branch", b, "--name", name)
            files, dirs = self.union(b)
            # Files its workers hold open for writing at this moment.
            self.count("snapshot-open-writers", sum(1 for (_, hb) in self.held_fds if hb == b))
        finally:
            lock.wunlock()
        with self.ctl:
            self.snapshots[name] = {"branch": b, "files": files, "dirs": dirs, "verified": 0,
                                    "busy": False, "t": round(time.time() - self.t0, 1)}
        self.count("snapshot-create")

    def verify_snapshot(self, name, keep=None):
        """Check snapshot `name` through a new branch; delete it unless `keep`."""
        s = self.snapshots[name]
        br = keep or "v-%d" % self.next_seq()
        self.cli("branch-create", "--from", name, "--name", br)
        self.count("branch-create")
        root = os.path.join(self.mount, ".agentfs", "branches", br)
        files, dirs = scan(root, False)
        diffs = compare("snapshot %s (of %s at %.1fs) via branch %s" % (name, s["branch"], s["t"], br),
                        files, dirs, s["files"], s["dirs"])
        for d in diffs:
            self.error(d)
        # The same snapshot browsed by path (read-only, .agentfs/snapshots/<name>/).
        files, dirs = scan(os.path.join(self.mount, ".agentfs", "snapshots", name), False)
        for d in compare("snapshot %s (of %s at %.1fs) by path" % (name, s["branch"], s["t"]),
                         files, dirs, s["files"], s["dirs"]):
            self.error(d)
        self.count("snapshot-browse")
        with self.ctl:
            s["verified"] += 1
        self.count("snapshot-verify")
        if keep is None:
            self.cli("branch-delete", br)
            self.count("branch-delete")
        return root

    def throwaway(self, rng, name, w):
        with self.ctl:
            if name not in self.snapshots or self.snapshots[name]["busy"]:
                return
            self.snapshots[name]["busy"] = True
        try:
            br = "t-%d" % self.next_seq()
            root = self.verify_snapshot(name, keep=br)
        finally:
            with self.ctl:
                self.snapshots[name]["busy"] = False
        # Write into the throwaway branch, check, and leave it for a later delete.
        m = Model()
        sub = os.path.join(root, "scratch-" + w)
        os.mkdir(sub)
        names = iter(range(10**6))
        for _ in range(rng.randrange(3, 12)):
            op = gen_op(rng, m, names)
            if op:
                execute(sub, op)
                self.count(op["k"])
        files, dirs = scan(sub, False)
        for d in compare("throwaway %s" % br, files, dirs, m.files, m.dirs):
            self.error(d)
        with self.ctl:
            self.throwaways.append(br)
        if len(self.throwaways) > self.a.max_throwaways:
            with self.ctl:
                old = self.throwaways.pop(0) if self.throwaways else None
            if old:
                self.cli("branch-delete", old)
                self.count("branch-delete")

    # -- branch-commit episodes

    def episode_ops(self, rng, names, pm, cm, corigin, cwritten, base):
        """Restricted op lists for a commit episode on one worker's subtree:
        parent ops (create, write, append, unlink) applied to model `pm`, then
        child ops (create, write, append, unlink, rename to a new name, mkdir)
        applied to `cm`, tracking each child file's origin (its base path) so
        that the three-way result is exact. A child rename of a file the
        parent wrote merges (the parent's data at the child's name) as long as
        the child never writes it. Excluded (left unspecified by the spec or
        ambiguous): a child rename of a file the parent deleted or of one both
        wrote, a delete on both sides, rmdir and directory renames."""
        pops, cops = [], []
        moved_modified = set()  # origins the child renamed and the parent wrote
        for _ in range(rng.randrange(0, 6)):
            files = sorted(pm.files)
            k = rng.choice(["create", "write", "append", "unlink"] if files else ["create"])
            if k == "create":
                d = rng.choice([""] + sorted(pm.dirs))
                op = {"k": k, "p": os.path.join(d, "f%d" % next(names)), "seed": rng.getrandbits(48),
                      "n": rng.randrange(0, 16384)}
            elif k == "unlink":
                op = {"k": k, "p": rng.choice(files)}
            else:
                p = rng.choice(files)
                if len(pm.files[p]) > BIG:
                    op = {"k": "truncate", "p": p, "size": rng.randrange(0, 4096)}
                elif k == "write":
                    op = {"k": k, "p": p, "off": rng.randrange(0, len(pm.files[p]) + 4096),
                          "seed": rng.getrandbits(48), "n": rng.randrange(1, 16384)}
                else:
                    op = {"k": k, "p": p, "seed": rng.getrandbits(48), "n": rng.randrange(1, 8192)}
            pm.apply(op)
            pops.append(op)

        def pstatus(p):
            if p not in pm.files:
                return "deleted"
            return "unchanged" if pm.files[p] == base.files[p] else "modified"

        for _ in range(rng.randrange(1, 8)):
            files = sorted(cm.files)
            k = rng.choice(["create", "write", "append", "unlink", "rename", "mkdir"] if files else ["create", "mkdir"])
            if k in ("create", "mkdir"):
                d = rng.choice([""] + [x for x in sorted(cm.dirs) if x.count("/") < 2])
                q = os.path.join(d, "%s%d" % ("f" if k == "create" else "d", next(names)))
                if k == "create":
                    op = {"k": k, "p": q, "seed": rng.getrandbits(48), "n": rng.randrange(0, 16384)}
                    corigin[q] = None
                else:
                    op = {"k": k, "p": q}
            else:
                p = rng.choice(files)
                o = corigin[p]
                if k == "unlink":
                    if o is not None and pstatus(o) == "deleted":
                        continue  # deleted on both sides: left out
                    op = {"k": k, "p": p}
                    del corigin[p]
                elif k == "rename":
                    if o is not None and (pstatus(o) == "deleted" or
                                          (pstatus(o) == "modified" and o in cwritten)):
                        continue  # a move of a file the parent deleted, or both wrote: left out
                    if o is not None and pstatus(o) == "modified":
                        moved_modified.add(o)
                    d = rng.choice([""] + sorted(cm.dirs))
                    q = os.path.join(d, "f%d" % next(names))
                    op = {"k": k, "p": p, "q": q}
                    corigin[q] = corigin.pop(p)
                else:
                    if o in moved_modified:
                        continue  # renamed over the parent's write: the child keeps off its data
                    if len(cm.files[p]) > BIG:
                        op = {"k": "truncate", "p": p, "size": rng.randrange(0, 4096)}
                    elif k == "write":
                        op = {"k": k, "p": p, "off": rng.randrange(0, len(cm.files[p]) + 4096),
                              "seed": rng.getrandbits(48), "n": rng.randrange(1, 16384)}
                    else:
                        op = {"k": k, "p": p, "seed": rng.getrandbits(48), "n": rng.randrange(1, 8192)}
                    if o is not None:
                        cwritten.add(o)
            cm.apply(op)
            cops.append(op)
        return pops, cops

    @staticmethod
    def predict_commit(base, pm, cm, corigin, cwritten, resolve):
        """(conflicts {path: (child, parent)}, merged Model or None if refused)."""
        where = {o: q for q, o in corigin.items() if o is not None}
        conflicts = {}
        merged = Model()
        merged.dirs = set(pm.dirs) | set(cm.dirs)
        for p, d in pm.files.items():
            if p not in base.files:
                merged.files[p] = d  # added in the parent
        for q, o in corigin.items():
            if o is None:
                merged.files[q] = cm.files[q]  # added in the branch
        for p in base.files:
            if p not in pm.files:
                ps = "deleted"
            else:
                ps = "unchanged" if pm.files[p] == base.files[p] else "modified"
            q = where.get(p)
            if q is None:
                cs = "deleted"
            elif q != p:
                cs = "moved"
            else:
                cs = "modified" if p in cwritten else "unchanged"
            if cs == "moved" and ps == "modified" and p not in cwritten:
                merged.files[q] = pm.files[p]  # a rename and a write merge
            elif cs == "unchanged":
                if ps != "deleted":
                    merged.files[p] = pm.files[p]
            elif ps == "unchanged":
                if cs != "deleted":
                    merged.files[q] = cm.files[q]
            else:
                conflicts[p] = (cs, ps)
                if resolve == "theirs":
                    if cs != "deleted":
                        merged.files[q] = cm.files[q]
                elif resolve == "ours":
                    if ps != "deleted":
                        merged.files[p] = pm.files[p]
        if conflicts and resolve is None:
            return conflicts, None
        return conflicts, merged

    @staticmethod
    def model_diff(base, cm, corigin, cwritten, w):
        """Expected `diff BASE CHILD` entries as a set of (change, path, from)."""
        out = set()
        where = {o: q for q, o in corigin.items() if o is not None}
        for p in base.files:
            q = where.get(p)
            if q is None:
                out.add(("deleted", w + "/" + p, None))
            elif q != p:
                out.add(("renamed", w + "/" + q, w + "/" + p))
            elif p in cwritten and cm.files[p] != base.files[p]:
                out.add(("modified", w + "/" + p, None))
        for q, o in corigin.items():
            if o is None:
                out.add(("added", w + "/" + q, None))
        for d in cm.dirs - base.dirs:
            out.add(("added", w + "/" + d, None))
        return out

    def check_tree(self, label, root, model):
        files, dirs = scan(root, False)
        for d in compare(label, files, dirs, model.files, model.dirs):
            self.error(d)

    def check_child_writer(self, what, P, xname, cw, lo, hi, committed):
        """The parent holds exactly one state of the writer's directory from
        the commit's window (none if the commit was refused); later writes in
        the child never reach it. Then the directory is removed from the
        parent (no worker's model has it)."""
        if cw.error:
            self.error("%s: writer in the child: %s" % (what, cw.error))
        proot = os.path.join(self.mount, ".agentfs", "branches", P, xname)
        if os.path.lexists(proot):
            files, dirs = scan(proot, False)
            got = files if not dirs else None
        else:
            got = None
        if (cw.matches(got, lo, hi) if committed else got is None):
            pass
        else:
            # Which states each file the parent holds matches (a file matching
            # only states before `lo` lost a write that returned before the
            # commit began).
            per = {}
            for k, v in (got or {}).items():
                ks = [i for i, st in enumerate(cw.states) if st is not None and st.get(k) == v]
                per[k] = "%d bytes, states %s" % (len(v), ("%d..%d" % (ks[0], ks[-1])) if ks else "none")
            self.error("%s: writer's directory %s, per file: %s" % (what, xname, per))
            near = ["%d: %s" % (i, {k: len(v) for k, v in st.items()} if st is not None else None)
                    for i, st in enumerate(cw.states[max(0, lo - 2):hi + 3], max(0, lo - 2))]
            self.error("%s: writer's directory %s in the parent: %s, not one of the states %d..%d of the "
                       "commit's window (%s)" % (what, xname, {k: len(v) for k, v in got.items()} if got is not None
                                                else None, lo, hi, "; ".join(near)))
        self.count("commit-concurrent-writer")
        self.count("commit-writer-ops", cw.done())
        if got is not None:
            import shutil
            shutil.rmtree(proot)

    def commit_episode(self, rng, w, names):
        """Branch `c-N` from a snapshot of branch P; this worker changes its
        subtree in both P and the child while the other workers keep writing
        theirs in P; `diff` of the child against the snapshot, the snapshot
        through .agentfs/snapshots/, then `branch-commit` (plain, --theirs or
        --ours, maybe --delete), whose outcome (refused with exactly the
        predicted conflicts, or P's subtree equal to the three-way result) is
        checked; the other workers' subtrees of P are checked at checkpoints
        (a lost concurrent write shows there). Sometimes a second round
        commits the kept branch again against its commit point."""
        P = rng.choice(self.branches)
        n = self.next_seq()
        snap, child = "cb-%d" % n, "c-%d" % n
        lock = self.locks[P]
        lock.wlock()
        try:
            self.close_held(w, P)
            self.cli("snapshot-create", "--branch", P, "--name", snap)
            base = self.models[w][P].copy()
            all_files, all_dirs = self.union(P)
        finally:
            lock.wunlock()
        self.cli("branch-create", "--from", snap, "--name", child)
        self.count("commit-branch-create")
        cm = base.copy()
        croot = os.path.join(self.mount, ".agentfs", "branches", child, w)
        # The snapshot, browsed by path, holds the whole of P at that instant.
        # (all of it now and then, else this worker's part).
        sroot = os.path.join(self.mount, ".agentfs", "snapshots", snap)
        if rng.random() < 0.2:
            files, dirs = scan(sroot, False)
            for d in compare("snapshot %s by path" % snap, files, dirs, all_files, all_dirs):
                self.error(d)
        else:
            self.check_tree("snapshot %s/%s by path" % (snap, w), os.path.join(sroot, w), base)
        self.count("snapshot-browse")
        deleted = False
        rounds = 2 if rng.random() < 0.3 else 1
        try:
            for rnd in range(rounds):
                lock.rlock()
                try:
                    pm = self.models[w][P]
                    corigin = {p: p for p in cm.files}
                    cwritten = set()
                    pops, cops = self.episode_ops(rng, names, pm, cm, corigin, cwritten, base)
                    view, proot = self.view(rng, P, w)
                    self.switch_view(w, P, view)
                    for op in pops:
                        execute(proot, op)
                        self.count("commit-parent-" + op["k"])
                    self.done_view(w, P, view)
                    for op in cops:
                        execute(croot, op)
                        self.count("commit-child-" + op["k"])
                    self.check_tree("branch %s/%s before commit" % (child, w), croot, cm)
                    # diff of the child against its base: only this worker's changes.
                    dbase = snap if rnd == 0 else child + "@committed"
                    dout = subprocess.run([self.a.cli, "--mount", self.mount, "--json", "diff", dbase, child],
                                          capture_output=True, timeout=120)
                    if dout.returncode != 0:
                        raise RuntimeError("diff %s %s: %s" % (dbase, child, dout.stderr.decode().strip()))
                    got = json.loads(dout.stdout)
                    want = self.model_diff(base, cm, corigin, cwritten, w)
                    have = set()
                    for e in got["changes"]:
                        if e["type"] == "dir" and e["change"] == "modified" and set(e.get("what", [])) <= {"times"}:
                            continue
                        have.add((e["change"], e["path"], e.get("from")))
                    if have != want:
                        self.error("diff %s %s (%s): unexpected %s; missing %s; ops %s"
                                   % (dbase, child, w, sorted(have - want, key=str)[:6],
                                      sorted(want - have, key=str)[:6], cops))
                    self.count("diff")
                    resolve = rng.choice([None, None, "theirs", "ours"])
                    delete = rnd == rounds - 1 and rng.random() < 0.3
                    conflicts, merged = self.predict_commit(base, pm, cm, corigin, cwritten, resolve)
                    cmd = [self.a.cli, "--mount", self.mount, "--json", "branch-commit", child]
                    if resolve:
                        cmd.append("--" + resolve)
                    if delete:
                        cmd.append("--delete")
                    # A writer in the child while it is committed (not with
                    # --delete: refused while files are open in the branch).
                    cw = None
                    if rnd == rounds - 1 and not delete and rng.random() < 0.5:
                        xname = "x-%s-%d" % (w, n)
                        cw = ChildWriter(os.path.join(self.mount, ".agentfs", "branches", child, xname),
                                         rng.getrandbits(48))
                        cw.start()
                        time.sleep(rng.uniform(0, 0.01))
                        lo = cw.done()
                    try:
                        for _ in range(40):
                            out = subprocess.run(cmd, capture_output=True, timeout=120)
                            # close(2) returns before the kernel sends the
                            # handle's RELEASE, so --delete may still see the
                            # child's last file open for a moment; it refuses
                            # before changing anything: try again, as a script
                            # would.
                            if not (delete and out.returncode != 0
                                    and b" 0 bound process(es) and " in out.stderr
                                    and b"open handle(s)" in out.stderr):
                                break
                            self.count("commit-delete-busy-retry")
                            time.sleep(0.05)
                    finally:
                        if cw is not None:
                            hi = cw.started
                            time.sleep(0.02)
                            cw.stop.set()
                            cw.join(timeout=60)
                    try:
                        rep = json.loads(out.stdout)["value"]
                    except ValueError:
                        rep = None
                    what = "branch-commit %s into %s (round %d, %s%s)" % (
                        child, P, rnd + 1, resolve or "plain", ", --delete" if delete else "")
                    if rep is None:
                        self.error("%s: exit %d, no reply: %s" % (what, out.returncode, out.stderr.decode()[-400:]))
                        self.resync(w, P)
                        return
                    got_conf = {c["path"]: (c["child"], c["parent"]) for c in rep["conflicts"]}
                    want_conf = {w + "/" + p: c for p, c in conflicts.items()}
                    # a "moved" child side is only excluded from conflicts, so
                    # compare the conflicting paths and what each side did.
                    if got_conf != want_conf:
                        self.error("%s: conflicts %s, expected %s; parent ops %s; child ops %s"
                                   % (what, got_conf, want_conf, pops, cops))
                    ok = merged is not None
                    if rep["committed"] != ok or (out.returncode == 0) != ok:
                        self.error("%s: committed %s exit %d, expected committed %s"
                                   % (what, rep["committed"], out.returncode, ok))
                        self.resync(w, P)
                        return
                    self.note(w, P, view, "%s: parent ops %s; child ops %s; %s" % (
                        what, ",".join("%s %s" % (o["k"], o["p"]) for o in pops),
                        ",".join("%s %s" % (o["k"], o["p"]) for o in cops),
                        "committed" if ok else "refused"))
                    if ok:
                        self.models[w][P] = merged
                        merged.held = None
                        deleted = rep["deleted"]
                        if deleted != delete:
                            self.error("%s: deleted %s" % (what, deleted))
                        self.count("branch-commit" + ("-fast" if rep["fast_path"] else "")
                                   + ("-" + resolve if resolve else ""))
                    else:
                        self.count("branch-commit-refused")
                    if cw is not None:
                        self.check_child_writer(what, P, xname, cw, lo, hi, ok)
                    # The parent's subtree through the same view (the commit drops its caches).
                    files, dirs = scan(proot, False)
                    bad = compare("%s: parent %s/%s" % (what, P, w), files, dirs,
                                  self.models[w][P].files, self.models[w][P].dirs)
                    for d in bad:
                        self.error(d)
                    if bad:
                        self.error("%s: conflicts %s; parent ops %s; child ops %s; base files %s dirs %s"
                                   % (what, got_conf, pops, cops, sorted(base.files), sorted(base.dirs)))
                        self.resync(w, P)
                    self.done_view(w, P, view)
                    if not ok or deleted:
                        break
                    # The next round compares against the commit point: the child as committed.
                    base = cm.copy()
                finally:
                    lock.runlock()
        finally:
            if not deleted:
                self.cli("branch-delete", child, check=False)
            self.cli("snapshot-delete", child + "@committed", check=False)
            self.cli("snapshot-delete", snap)

    # -- checkpoints

    def verify_branches(self, label, via_exec=False):
        for b in self.branches:
            self.locks[b].wlock()
        try:
            # The scans use every view: release the files held open for writing
            # (their workers are paused by the locks) and let the views settle.
            for w, b in list(self.held_fds):
                self.close_held(w, b)
            time.sleep(self.a.view_switch_ms / 1000)
            for b in self.branches:
                want_files, want_dirs = self.union(b)
                files, dirs = scan(os.path.join(self.mount, ".agentfs", "branches", b), False)
                for d in compare("%s: branch %s" % (label, b), files, dirs, want_files, want_dirs):
                    self.error(d)
                if b == "main":
                    files, dirs = scan(self.mount, True)
                    for d in compare("%s: mount path (main)" % label, files, dirs, want_files, want_dirs):
                        self.error(d)
                if via_exec:
                    out = subprocess.run([self.a.cli, "--mount", self.mount, "branch-exec", "--branch", b, "--",
                                          sys.executable, SELF, "digest", "--root", self.mount],
                                         capture_output=True, timeout=300)
                    if out.returncode != 0:
                        self.error("%s: branch-exec digest of %s: %s" % (label, b, out.stderr.decode()[-500:]))
                    else:
                        got = json.loads(out.stdout)
                        want = {p: [sha(d), len(d)] for p, d in want_files.items()}
                        bad = [p for p in set(got["files"]) | set(want) if got["files"].get(p) != want.get(p)]
                        bad += [d for d in set(got["dirs"]) ^ want_dirs]
                        for p in sorted(bad)[:10]:
                            self.error("%s: branch-exec view of %s differs at %s" % (label, b, p))
                self.count("branch-verify")
        finally:
            for b in self.branches:
                self.locks[b].wunlock()

    def verify_snapshots(self):
        with self.ctl:
            names = [n for n, s in self.snapshots.items() if not s["busy"]]
            for n in names:
                self.snapshots[n]["busy"] = True
        try:
            for n in names:
                self.verify_snapshot(n)
        finally:
            with self.ctl:
                for n in names:
                    self.snapshots[n]["busy"] = False

    def corrupt(self):
        """--self-test-corrupt: change one byte of a file in br1 behind the
        model's back, to show that verification catches it."""
        b = self.branches[-1]
        self.locks[b].wlock()
        try:
            for w in self.workers:
                m = self.models[w][b]
                for p, d in m.files.items():
                    if d:
                        path = os.path.join(self.mount, ".agentfs", "branches", b, w, p)
                        with open(path, "r+b") as f:
                            f.write(bytes([d[0] ^ 1]))
                        print("self-test: flipped a bit of %s" % path, flush=True)
                        return
        finally:
            self.locks[b].wunlock()

    def sample(self, label):
        f = self.daemon_figures()
        if f:
            f["label"] = label
            self.samples.append(f)
        return f

    def run(self):
        a = self.a
        res = {"config": {"threads": a.threads, "duration_s": a.duration, "branches": self.branches,
                          "seed": a.seed, "checkpoints": a.checkpoints, "passthrough": a.passthrough,
                          "view_switch_ms": a.view_switch_ms, "lower": bool(a.lower)}}
        res["start"] = self.sample("start")
        res["status_start"] = self.status()
        self.setup()
        threads = [threading.Thread(target=self.worker, args=(i,), name=self.workers[i], daemon=True)
                   for i in range(a.threads)]
        t_start = time.time()
        self.t0 = t_start
        for t in threads:
            t.start()
        warm = min(30.0, a.duration / 5)
        marks = [a.duration * (k + 1) / (a.checkpoints + 1) for k in range(a.checkpoints)]
        res["checkpoints"] = []
        warmed = False
        last_sample = 0.0
        last_print = 0.0
        while True:
            el = time.time() - t_start
            if el >= a.duration:
                break
            if not warmed and el >= warm:
                res["warm"] = self.sample("after warm-up")
                warmed = True
            if marks and el >= marks[0]:
                marks.pop(0)
                c0 = time.time()
                self.verify_branches("checkpoint at %.0fs" % el)
                self.verify_snapshots()
                res["checkpoints"].append({"t": round(el, 1), "took_s": round(time.time() - c0, 2),
                                           "errors_so_far": len(self.errors)})
            if el - last_sample >= 5:
                self.sample("run")
                last_sample = el
            if el - last_print >= 30:
                with self.ops_lock:
                    n = sum(self.ops.values())
                print("  %4.0fs: %d operations, %d errors, %d snapshots live"
                      % (el, n, len(self.errors), len(self.snapshots)), flush=True)
                last_print = el
            time.sleep(0.5)
        self.stop.set()
        for t in threads:
            t.join(timeout=300)
            if t.is_alive():
                self.error("worker %s did not stop within 300 s" % t.name)
        res["workload_s"] = round(time.time() - t_start, 1)
        res["before_cleanup"] = self.sample("end of workload")
        res["status_before_cleanup"] = self.status()
        if a.self_test_corrupt:
            self.corrupt()
        # Final verification: every branch through its .agentfs path, the mount
        # path and a branch-exec view; every live snapshot through a branch.
        c0 = time.time()
        self.verify_branches("final", via_exec=True)
        self.verify_snapshots()
        res["final_verify_s"] = round(time.time() - c0, 1)
        # Delete every throwaway branch and snapshot, then measure.
        for br in list(self.throwaways):
            self.cli("branch-delete", br)
            self.count("branch-delete")
        self.throwaways = []
        for n in list(self.snapshots):
            self.cli("snapshot-delete", n)
            self.count("snapshot-delete")
        self.snapshots = {}
        # The reaper frees objects asynchronously: wait until the count is stable.
        prev = None
        for _ in range(40):
            st = self.status()
            if prev and st["content_objects"] == prev["content_objects"]:
                break
            prev = st
            time.sleep(0.5)
        res["status_end"] = self.status()
        res["end"] = self.sample("after cleanup")
        left = [b["name"] for b in self.cli("branch-list")]
        if sorted(left) != sorted(self.branches):
            self.error("branches left after cleanup: %s" % left)
        if self.cli("snapshot-list"):
            self.error("snapshots left after cleanup")
        if res["status_end"]["bindings"]:
            self.error("bindings left after cleanup: %d" % res["status_end"]["bindings"])
        if res["status_end"]["open_handles"] != res["status_start"]["open_handles"]:
            self.error("open handles %d at the end, %d at the start"
                       % (res["status_end"]["open_handles"], res["status_start"]["open_handles"]))
        files = sum(len(self.models[w][b].files) for w in self.workers for b in self.branches)
        nbytes = sum(len(d) for w in self.workers for b in self.branches for d in self.models[w][b].files.values())
        res["final_tree"] = {"files": files, "bytes": nbytes}
        res["ops"] = dict(sorted(self.ops.items()))
        res["ops_total"] = sum(v for k, v in self.ops.items() if k not in ("view-switch", "snapshot-open-writers"))
        res["errors"] = len(self.errors)
        res["error_list"] = self.errors[:200]
        res["samples"] = self.samples
        s0, s1 = res["start"], res["end"]
        peak_obj = max(s["object_fds"] for s in self.samples)
        # Leak check: the descriptors that are not cached content objects come
        # back to their start count (within 2); object descriptors stay within
        # the backstore's fd cache (1024).
        if s1["other_fds"] > s0["other_fds"] + a.fd_margin:
            self.error("leak: daemon holds %d non-object descriptors at the end, %d at the start"
                       % (s1["other_fds"], s0["other_fds"]))
        if peak_obj > 1024 + a.fd_margin:
            self.error("object descriptors peaked at %d, over the 1024 cache bound" % peak_obj)
        peak_lower = max(s.get("lower_fds", 0) for s in self.samples)
        if peak_lower > 256 + a.fd_margin:
            self.error("lower-file descriptors peaked at %d, over the 256 cache bound" % peak_lower)
        # Threads: the control server keeps up to IDLE_CONTROL_THREADS
        # connection threads waiting (agentfs-control's IDLE_THREADS); no
        # connection is open when the end is sampled. Every other thread
        # comes back to its start count (within the margin).
        # (Within the margin: a thread whose client just left may be on its
        # way out; a leak here would be one per CLI call, thousands.)
        if s1["control_threads"] > IDLE_CONTROL_THREADS + a.fd_margin:
            self.error("control-connection threads %d at the end with no connection open (at most %d wait)"
                       % (s1["control_threads"], IDLE_CONTROL_THREADS))
        other0 = s0["threads"] - s0["control_threads"]
        other1 = s1["threads"] - s1["control_threads"]
        if other1 > other0 + a.fd_margin:
            self.error("threads other than control connections: %d at the end, %d at the start" % (other1, other0))
        res["errors"] = len(self.errors)
        res["error_list"] = self.errors[:200]
        res["peak"] = {"fds": max(s["fds"] for s in self.samples), "object_fds": peak_obj,
                       "lower_fds": peak_lower,
                       "rss_kib": max(s["rss_kib"] for s in self.samples)}
        return res


def run_main(args):
    st = Stress(args)
    res = st.run()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    print("operations: %d (%s)" % (res["ops_total"], ", ".join("%s %d" % kv for kv in res["ops"].items())))
    print("errors: %d" % res["errors"])
    for e in res["error_list"][:20]:
        print("  %s" % e["error"])
    return 1 if res["errors"] else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--mount", required=True)
    r.add_argument("--cli", required=True)
    r.add_argument("--daemon-pid", type=int, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, default=16)
    r.add_argument("--duration", type=float, default=300)
    r.add_argument("--branches", type=int, default=3)
    r.add_argument("--checkpoints", type=int, default=3)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--passthrough", default="auto")
    r.add_argument("--p-control", type=float, default=0.004)
    r.add_argument("--p-helper", type=float, default=0.006)
    r.add_argument("--p-commit", type=float, default=0.003)
    r.add_argument("--p-resync", type=float, default=0.0)
    r.add_argument("--p-held", type=float, default=0.05)
    r.add_argument("--max-snapshots", type=int, default=8)
    r.add_argument("--max-throwaways", type=int, default=3)
    r.add_argument("--fd-margin", type=int, default=2)
    r.add_argument("--self-test-corrupt", action="store_true")
    r.add_argument("--lower", default="", help="the mount's --lower directory (holds wNN/ already)")
    r.add_argument("--view-switch-ms", type=float, default=100)
    h = sub.add_parser("apply")
    h.add_argument("--root", required=True)
    b = sub.add_parser("bindapply")
    for x in ("--cli", "--mount", "--branch", "--branch-id", "--root"):
        b.add_argument(x, required=True)
    b.add_argument("--unbind", action="store_true")
    b.add_argument("--ops-json", default="")
    d = sub.add_parser("digest")
    d.add_argument("--root", required=True)
    args = ap.parse_args()
    return {"run": run_main, "apply": apply_main, "bindapply": bindapply_main, "digest": digest_main}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
