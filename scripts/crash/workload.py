#!/usr/bin/env python3
"""Crash-loop workload and verifier for AgentFS (scripts/test-crash.sh).

`run`: a random, single-threaded workload on a live mount, in the default
branch and in a work branch (reached as <mount>/.agentfs/branches/<name>):
create/write/truncate/rename/unlink/mkdir, fsync of files and directories,
snapshot-create, branch-create, snapshot-delete and branch-delete. Every
acknowledgement is appended to a ledger outside the mount (fsynced), and
every change is announced there *before* it is made, so a verifier knows
which files were left exactly as they were when last made durable.
It runs until the daemon is killed under it (then every call fails and it
exits 0) or until --ops operations are done.

`verify`: on the remounted filesystem, replay a ledger and check: every file
whose last record is "durable" has exactly that content and size; every
snapshot and branch whose creation was acknowledged exists (and every acknowledged
delete is gone); every snapshot created in that ledger has exactly the files
and contents the workload had in its tree when it was taken (checked through a
temporary branch). Exit 1 with the mismatches on failure.
"""

import argparse
import errno
import hashlib
import json
import os
import random
import subprocess
import sys

SKIP = {".agentfs"}


def sha(data):
    return hashlib.sha256(data).hexdigest()[:32]


class Dead(Exception):
    """The mount went away under the workload (the daemon was killed)."""


class Ledger:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(self, rec, durable=False):
        os.write(self.fd, (json.dumps(rec, sort_keys=True) + "\n").encode())
        if durable:
            os.fsync(self.fd)


def cli(args, mount, *cmd):
    try:
        out = subprocess.run(
            [args.cli, "--mount", mount, "--json", *cmd],
            capture_output=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        raise Dead()
    if out.returncode != 0:
        raise Dead(out.stderr.decode(errors="replace"))
    return json.loads(out.stdout)["value"]


def scan(root):
    """{relative path: bytes} of every regular file under root."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (dirpath == root and d in SKIP)]
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                files[os.path.relpath(p, root)] = fh.read()
    return files


def tree_root(mount, tree):
    if tree == "main":
        return mount
    return os.path.join(mount, ".agentfs", "branches", tree)


def summary(files):
    return {p: [sha(d), len(d)] for p, d in sorted(files.items())}


def run(args):
    rng = random.Random(args.seed)
    mount = args.mount
    led = Ledger(args.ledger)
    try:
        snaps = [s["name"] for s in cli(args, mount, "snapshot-list")]
        branches = [b["name"] for b in cli(args, mount, "branch-list") if not b["is_default"]]
        if not branches:
            cli(args, mount, "snapshot-create", "--name", "crash-base")
            led.note({"t": "snapshot", "name": "crash-base", "files": None}, True)
            cli(args, mount, "branch-create", "--from", "crash-base", "--name", "work-0")
            led.note({"t": "branch", "name": "work-0"}, True)
            snaps.append("crash-base")
            branches.append("work-0")
        branches = [b for b in branches if not b.startswith("v-")]
        work = branches[-1]
        trees = ["main", work]
        model = {}
        dirs = {}
        # What recovery gave us is durable (recovery writes a checkpoint).
        for t in trees:
            model[t] = scan(tree_root(mount, t))
            dirs[t] = sorted(
                {os.path.dirname(p) for p in model[t] if os.path.dirname(p)}
                | {d for d in os.listdir(tree_root(mount, t))
                   if d not in SKIP and os.path.isdir(os.path.join(tree_root(mount, t), d))}
            )
            led.note({"t": "base", "tree": t, "files": summary(model[t])})
        for s in snaps:
            led.note({"t": "snapshot", "name": s, "files": None})
        for b in branches:
            led.note({"t": "branch", "name": b})
        led.note({"t": "start"}, True)

        def path_of(t, rel):
            return os.path.join(tree_root(mount, t), rel)

        def new_name(t):
            d = rng.choice([""] + dirs[t])
            return os.path.join(d, "f%d" % rng.randrange(10**6))

        def dirty(t, rel):
            led.note({"t": "dirty", "tree": t, "path": rel})

        def durable(t, rel):
            d = model[t][rel]
            led.note({"t": "durable", "tree": t, "path": rel, "sha": sha(d), "size": len(d)}, True)

        for _ in range(args.ops):
            t = rng.choice(trees)
            files = model[t]
            r = rng.random()
            if len(files) > 120 and r < 0.40:
                r = 0.60  # keep trees small: unlink instead of growing
            if r < 0.40 or not files:
                rel = rng.choice(sorted(files)) if files and rng.random() < 0.5 else new_name(t)
                old = files.get(rel, b"")
                dirty(t, rel)
                fd = os.open(path_of(t, rel), os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    if rng.random() < 0.3:
                        data = rng.randbytes(rng.randrange(0, 65536))
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, data, 0)
                        new = data
                    else:
                        off = rng.randrange(0, len(old) + 4096)
                        data = rng.randbytes(rng.randrange(1, 32768))
                        os.pwrite(fd, data, off)
                        buf = bytearray(old)
                        if len(buf) < off:
                            buf.extend(b"\0" * (off - len(buf)))
                        buf[off:off + len(data)] = data
                        new = bytes(buf)
                    files[rel] = new
                    if rng.random() < 0.6:
                        os.fsync(fd) if rng.random() < 0.5 else os.fdatasync(fd)
                        durable(t, rel)
                finally:
                    os.close(fd)
            elif r < 0.48:
                rel = rng.choice(sorted(files))
                size = rng.randrange(0, 2 * len(files[rel]) + 10)
                dirty(t, rel)
                os.truncate(path_of(t, rel), size)
                d = files[rel]
                files[rel] = d[:size] + b"\0" * max(0, size - len(d))
                if rng.random() < 0.6:
                    fd = os.open(path_of(t, rel), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    durable(t, rel)
            elif r < 0.56:
                src = rng.choice(sorted(files))
                dst = rng.choice(sorted(files)) if rng.random() < 0.3 else new_name(t)
                if src == dst:
                    continue
                dirty(t, src)
                dirty(t, dst)
                os.rename(path_of(t, src), path_of(t, dst))
                files[dst] = files.pop(src)
                if rng.random() < 0.5:
                    fd = os.open(path_of(t, dst), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    durable(t, dst)
            elif r < 0.63:
                rel = rng.choice(sorted(files))
                dirty(t, rel)
                os.unlink(path_of(t, rel))
                del files[rel]
            elif r < 0.66:
                d = "d%d" % rng.randrange(1000)
                if d not in dirs[t]:
                    os.mkdir(path_of(t, d))
                    dirs[t].append(d)
            elif r < 0.72:
                # fsync of a directory: every change so far is durable, in every tree.
                fd = os.open(tree_root(mount, t), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                for tt in trees:
                    for rel in model[tt]:
                        durable(tt, rel)
            elif r < 0.80:
                name = "snap-%d-%d" % (args.iteration, rng.randrange(10**6))
                led.note({"t": "snapshot-creating", "name": name})
                cli(args, mount, "snapshot-create", "--name", name, "--branch", t)
                # Durable when it returns, with the tree exactly as the workload left it.
                led.note({"t": "snapshot", "name": name, "files": summary(files)}, True)
                snaps.append(name)
            elif r < 0.85:
                name = "work-%d-%d" % (args.iteration, rng.randrange(10**6))
                src = rng.choice(snaps)
                cli(args, mount, "branch-create", "--from", src, "--name", name)
                led.note({"t": "branch", "name": name}, True)
                branches.append(name)
                if rng.random() < 0.5:
                    # Work in the new branch from now on.
                    work = name
                    trees[1] = work
                    model[work] = scan(tree_root(mount, work))
                    dirs[work] = sorted(
                        d for d in os.listdir(tree_root(mount, work))
                        if d not in SKIP and os.path.isdir(os.path.join(tree_root(mount, work), d))
                    )
                    led.note({"t": "base", "tree": work, "files": summary(model[work])}, True)
            elif r < 0.90 and len(snaps) > 6:
                name = snaps.pop(rng.randrange(len(snaps)))
                led.note({"t": "snapshot-deleting", "name": name})
                cli(args, mount, "snapshot-delete", name)
                led.note({"t": "snapshot-deleted", "name": name}, True)
            elif r < 0.93 and len(branches) > 4:
                cands = [b for b in branches if b != work]
                name = rng.choice(cands)
                branches.remove(name)
                model.pop(name, None)
                led.note({"t": "branch-deleting", "name": name})
                cli(args, mount, "branch-delete", "--force", name)
                led.note({"t": "branch-deleted", "name": name}, True)
        led.note({"t": "done"}, True)
    except (OSError, Dead) as e:
        if isinstance(e, OSError) and e.errno not in (
            errno.ENOTCONN, errno.ECONNABORTED, errno.ENOENT, errno.EIO, errno.ECONNREFUSED,
        ):
            # An error while the daemon still lives is a bug; report it.
            if os.path.ismount(mount):
                led.note({"t": "error", "what": repr(e)}, True)
                print("workload error: %r" % (e,), file=sys.stderr)
                return 2
    return 0


def verify(args):
    mount = args.mount
    files = {}     # (tree, path) -> ("durable", sha, size) | "dirty"
    snaps = {}     # name -> ("exists", files-or-None) | "maybe" | "gone"
    branches = {}  # name -> "exists" | "maybe" | "gone"
    verified = 0
    with open(args.ledger) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                break  # the workload was killed mid-line
            t = rec["t"]
            if t == "base":
                for p, (h, n) in rec["files"].items():
                    files[(rec["tree"], p)] = ("durable", h, n)
            elif t == "dirty":
                files[(rec["tree"], rec["path"])] = "dirty"
            elif t == "durable":
                files[(rec["tree"], rec["path"])] = ("durable", rec["sha"], rec["size"])
            elif t == "snapshot-creating":
                snaps[rec["name"]] = "maybe"
            elif t == "snapshot":
                snaps[rec["name"]] = ("exists", rec["files"])
            elif t == "snapshot-deleting":
                snaps[rec["name"]] = "maybe"
            elif t == "snapshot-deleted":
                snaps[rec["name"]] = "gone"
            elif t == "branch":
                branches[rec["name"]] = "exists"
            elif t == "branch-deleting":
                branches[rec["name"]] = "maybe"
                for k in [k for k in files if k[0] == rec["name"]]:
                    del files[k]
            elif t == "branch-deleted":
                branches[rec["name"]] = "gone"
            elif t == "error":
                print("FAIL: the workload hit an error on a live mount: %s" % rec["what"])
                return 1
    problems = []
    have_snaps = {s["name"] for s in cli(args, mount, "snapshot-list")}
    have_branches = {b["name"] for b in cli(args, mount, "branch-list")}
    for name, st in snaps.items():
        if st == "gone" and name in have_snaps:
            problems.append("snapshot %s was deleted but exists" % name)
        if isinstance(st, tuple) and name not in have_snaps:
            problems.append("snapshot %s was created but is missing" % name)
    for name, st in branches.items():
        if st == "gone" and name in have_branches:
            problems.append("branch %s was deleted but exists" % name)
        if st == "exists" and name not in have_branches:
            problems.append("branch %s was created but is missing" % name)
    for (tree, rel), st in sorted(files.items()):
        if st == "dirty" or branches.get(tree, "exists") != "exists":
            continue
        _, h, n = st
        p = os.path.join(tree_root(mount, tree), rel)
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except OSError as e:
            problems.append("%s:%s durable (%d bytes) but unreadable: %s" % (tree, rel, n, e))
            continue
        if len(data) != n or sha(data) != h:
            problems.append("%s:%s has %d bytes sha %s, durable was %d bytes sha %s"
                            % (tree, rel, len(data), sha(data), n, h))
        verified += 1
    checked_snaps = 0
    for name, st in snaps.items():
        if not (isinstance(st, tuple) and st[1] is not None and name in have_snaps):
            continue
        v = "v-%s" % name
        cli(args, mount, "branch-create", "--from", name, "--name", v)
        got = summary(scan(tree_root(mount, v)))
        cli(args, mount, "branch-delete", "--force", v)
        if got != st[1]:
            want = {(k, tuple(x)) for k, x in st[1].items()}
            diff = sorted({(k, tuple(x)) for k, x in got.items()} ^ want)
            problems.append("snapshot %s differs from the tree it was taken of: %s"
                            % (name, diff[:6]))
        checked_snaps += 1
    print(json.dumps({"files_verified": verified, "snapshots_verified": checked_snaps,
                      "snapshots": len(have_snaps), "branches": len(have_branches),
                      "problems": len(problems)}))
    for p in problems[:50]:
        print("FAIL: " + p)
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["run", "verify"])
    ap.add_argument("--mount", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--ledger", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--iteration", type=int, default=0)
    ap.add_argument("--ops", type=int, default=100000)
    args = ap.parse_args()
    sys.exit(run(args) if args.mode == "run" else verify(args))


if __name__ == "__main__":
    main()
