#!/usr/bin/env python3
"""Crash-loop workload and verifier for AgentFS (scripts/test-crash.sh).

`run`: a random, single-threaded workload on a live mount, in the default
branch and in a work branch (reached as <mount>/.agentfs/branches/<name>):
create/write/truncate/rename/unlink/mkdir, fsync of files and directories,
snapshot-create, branch-create, snapshot-delete, branch-delete and
branch-commit (a child branch of the default or the work branch, changed on
both sides, committed with or without --theirs/--delete). Every
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
temporary branch); every commit acknowledged is there (each file of its
result, and the files it removed are absent), and a commit the kill landed
in left its parent exactly as before it or exactly as after it, never a mix.
Exit 1 with the mismatches on failure.
"""

import argparse
import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import traceback

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
    def fail(e):
        raise e

    # onerror: a directory that cannot be listed is an error, not an empty
    # tree. Without it, a kill aimed at a commit that landed during the
    # read-back after it made the read-back miss whole directories, reported
    # as a wrong commit on the live mount (see selftest).
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = [d for d in dirnames if not (dirpath == root and d in SKIP)]
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                data = fh.read()
                # The size the daemon reports must be the bytes read: with
                # passthrough a read returns the backing object's bytes
                # whatever size the node has, so a wrong size would pass the
                # content check here and show only on a later read through
                # the daemon.
                size = os.fstat(fh.fileno()).st_size
                if size != len(data):
                    raise SizeMismatch("%s: stat says %d bytes, read %d" % (p, size, len(data)))
                files[os.path.relpath(p, root)] = data
    return files


class SizeMismatch(Exception):
    pass


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
            elif r < 0.87 and files and not args.no_commits:
                # branch-commit: snapshot t, branch from it, change both sides
                # (disjoint paths, or one conflict settled with --theirs),
                # make the parent durable, then commit. A kill during the
                # commit must leave t exactly before or exactly after it.
                n = rng.randrange(10**6)
                base_name = "cbase-%d-%d" % (args.iteration, n)
                child = "cw-%d-%d" % (args.iteration, n)
                led.note({"t": "snapshot-creating", "name": base_name})
                cli(args, mount, "snapshot-create", "--name", base_name, "--branch", t)
                led.note({"t": "snapshot", "name": base_name, "files": summary(files)}, True)
                snaps.append(base_name)
                base = dict(files)
                cli(args, mount, "branch-create", "--from", base_name, "--name", child)
                led.note({"t": "branch", "name": child}, True)
                branches.append(child)
                cfiles = dict(base)
                names = sorted(base)
                rng.shuffle(names)
                conflict = rng.random() < 0.2 and len(names) >= 1
                parent_side = [] if rng.random() < 0.3 else names[: rng.randrange(1, 4)]
                child_side = names[len(parent_side): len(parent_side) + rng.randrange(1, 4)]
                if conflict and parent_side:
                    child_side.append(parent_side[0])
                # The parent's side: overwrite (or unlink) a few files.
                for rel in parent_side:
                    dirty(t, rel)
                    if rng.random() < 0.25 and not (conflict and rel == parent_side[0]):
                        os.unlink(path_of(t, rel))
                        del files[rel]
                    else:
                        data = rng.randbytes(rng.randrange(0, 40000))
                        with open(path_of(t, rel), "wb") as fh:
                            fh.write(data)
                        files[rel] = data
                fd = os.open(tree_root(mount, t), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                for tt in trees:
                    for rel in model[tt]:
                        durable(tt, rel)
                # The child's side: overwrite, unlink, create; fsynced or not
                # (an acknowledged commit is durable either way).
                croot = tree_root(mount, child)
                for rel in child_side:
                    if rng.random() < 0.25 and rel not in parent_side:
                        os.unlink(os.path.join(croot, rel))
                        del cfiles[rel]
                    else:
                        data = rng.randbytes(rng.randrange(0, 40000))
                        with open(os.path.join(croot, rel), "wb") as fh:
                            fh.write(data)
                        cfiles[rel] = data
                for _ in range(rng.randrange(0, 3)):
                    rel = new_name(t)
                    if rel in files or rel in cfiles:
                        continue
                    data = rng.randbytes(rng.randrange(0, 40000))
                    with open(os.path.join(croot, rel), "wb") as fh:
                        fh.write(data)
                    cfiles[rel] = data
                if rng.random() < 0.5:
                    fd = os.open(croot, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                # The three-way result: child's changes over the parent's.
                post = dict(files)
                for rel in set(base) | set(cfiles):
                    if cfiles.get(rel) == base.get(rel):
                        continue
                    if rel in cfiles:
                        post[rel] = cfiles[rel]
                    else:
                        post.pop(rel, None)
                delete = rng.random() < 0.3
                cmd = ["branch-commit", child]
                if conflict and parent_side:
                    cmd.append("--theirs")
                if delete:
                    cmd.append("--delete")
                    led.note({"t": "branch-deleting", "name": child})
                led.note({"t": "commit-start", "tree": t, "pre": summary(files), "post": summary(post)}, True)
                try:
                    out = subprocess.run([args.cli, "--mount", mount, "--json", *cmd],
                                         capture_output=True, timeout=60)
                except subprocess.TimeoutExpired:
                    raise Dead()
                try:
                    rep = json.loads(out.stdout)["value"]
                except ValueError:
                    raise Dead(out.stderr.decode(errors="replace"))
                if out.returncode != 0 or not rep["committed"]:
                    led.note({"t": "error", "what": "commit refused: %r" % rep}, True)
                    return 2
                led.note({"t": "commit-done", "tree": t}, True)
                if delete:
                    led.note({"t": "branch-deleted", "name": child}, True)
                    branches.remove(child)
                for rel in files:
                    if rel not in post:
                        led.note({"t": "absent", "tree": t, "path": rel})
                model[t] = files = post
                for rel in post:
                    durable(t, rel)
                # Post-commit read-back: the parent is exactly the merge.
                got = summary(scan(tree_root(mount, t)))
                want = summary(post)
                if got != want:
                    bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                    led.note({"t": "error", "what": "after commit of %s into %s (%s): %d paths differ: %s" % (
                        child, t, " ".join(cmd), len(bad), ["%s: got %s, want %s, base %s, child %s" % (
                            k, got.get(k), want.get(k), summary(base).get(k), summary(cfiles).get(k))
                            for k in bad[:8]])}, True)
                    return 2
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
    except (OSError, Dead, SizeMismatch) as e:
        # An error while the daemon still lives is a bug; report it.
        if isinstance(e, (OSError, SizeMismatch)) and not killed_under(mount):
            led.note({"t": "error", "what": repr(e), "where": traceback.format_exc()[-1500:]},
                     True)
            print("workload error: %r" % (e,), file=sys.stderr)
            return 2
    return 0


def killed_under(mount):
    """Whether an error the workload just got came from the daemon's death.

    Told by the mount, not by the errno: once the daemon is dead, the mount
    root no longer answers (lstat gives ENOTCONN, so it is no mount point
    any more). Taking ENOENT or EIO for a kill whatever the mount said would
    hide a live mount's failures."""
    time.sleep(0.3)  # an error seen as the kill lands: let it land
    return not os.path.ismount(mount)


def verify(args):
    mount = args.mount
    files = {}     # (tree, path) -> ("durable", sha, size) | "dirty"
    snaps = {}     # name -> ("exists", files-or-None) | "maybe" | "gone"
    branches = {}  # name -> "exists" | "maybe" | "gone"
    verified = 0
    pending = None
    commits_done = 0
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
            elif t == "absent":
                files[(rec["tree"], rec["path"])] = "absent"
            elif t == "commit-start":
                # Until it is acknowledged, the tree is checked as a whole:
                # exactly as before the commit, or exactly as after it.
                pending = rec
                for k in [k for k in files if k[0] == rec["tree"]]:
                    files[k] = "dirty"
            elif t == "commit-done":
                pending = None
                commits_done += 1
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
    commits_checked = 0
    if pending is not None:
        got = summary(scan(tree_root(mount, pending["tree"])))
        if got == pending["pre"]:
            commits_checked = 1
        elif got == pending["post"]:
            commits_checked = 2
        else:
            def d(x, y):
                return sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))[:6]
            problems.append("commit into %s killed midway left neither the state before it (differs at %s) "
                            "nor after it (differs at %s)" % (pending["tree"], d(got, pending["pre"]),
                                                              d(got, pending["post"])))
    for (tree, rel), st in sorted(files.items()):
        if st == "dirty" or branches.get(tree, "exists") != "exists":
            continue
        if st == "absent":
            if os.path.lexists(os.path.join(tree_root(mount, tree), rel)):
                problems.append("%s:%s was removed by an acknowledged commit but exists" % (tree, rel))
            verified += 1
            continue
        _, h, n = st
        p = os.path.join(tree_root(mount, tree), rel)
        try:
            with open(p, "rb") as fh:
                data = fh.read()
                size = os.fstat(fh.fileno()).st_size
        except OSError as e:
            problems.append("%s:%s durable (%d bytes) but unreadable: %s" % (tree, rel, n, e))
            continue
        if size != len(data):
            problems.append("%s:%s reads %d bytes but its size is %d" % (tree, rel, len(data), size))
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
                      "commits_acknowledged": commits_done,
                      "commit_in_flight": ["none", "before", "after"][commits_checked]
                      if pending is not None else "none",
                      "problems": len(problems)}))
    for p in problems[:50]:
        print("FAIL: " + p)
    return 1 if problems else 0


def selftest(args):
    """Checks of the workload's own reading, run by test-crash.sh first: a
    directory the scan cannot list fails it (taken for an empty directory, a
    kill during a post-commit read-back once looked like a commit that lost
    files), and an error on a mount that still answers is not taken for a kill."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        os.mkdir(os.path.join(d, "sub"))
        for rel, data in (("a", b"a"), (os.path.join("sub", "b"), b"b")):
            with open(os.path.join(d, rel), "wb") as fh:
                fh.write(data)
        assert scan(d) == {"a": b"a", os.path.join("sub", "b"): b"b"}, scan(d)
        real = os.scandir

        def dead(path="."):
            if os.fspath(path).endswith("sub"):
                raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN), path)
            return real(path)

        os.scandir = dead
        try:
            got = scan(d)
        except OSError as e:
            assert e.errno == errno.ENOTCONN, e
        else:
            print("selftest FAILED: a directory that could not be listed was read as empty: %r"
                  % got, file=sys.stderr)
            return 1
        finally:
            os.scandir = real
        if killed_under("/"):
            print("selftest FAILED: an error on a mount that answers was taken for a kill",
                  file=sys.stderr)
            return 1
        if not killed_under(os.path.join(d, "gone")):
            print("selftest FAILED: a mount that no longer answers was taken for a live one",
                  file=sys.stderr)
            return 1
    print("workload selftest passed")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["run", "verify", "selftest"])
    ap.add_argument("--mount")
    ap.add_argument("--cli")
    ap.add_argument("--ledger")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--iteration", type=int, default=0)
    ap.add_argument("--ops", type=int, default=100000)
    ap.add_argument("--no-commits", action="store_true",
                    help="leave branch-commit out of the mix (see test-crash.sh)")
    args = ap.parse_args()
    if args.mode == "selftest":
        sys.exit(selftest(args))
    if not (args.mount and args.cli and args.ledger):
        ap.error("run and verify need --mount, --cli and --ledger")
    sys.exit(run(args) if args.mode == "run" else verify(args))


if __name__ == "__main__":
    main()
