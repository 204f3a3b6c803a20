#!/usr/bin/env python3
"""The workloads of `just test-fuse-performance`, run on every target.

scripts/test-fuse-performance.sh builds, installs the tools, mounts AgentFS
and fuse-overlayfs and makes the host directory, then calls this program with
the three target directories. It runs each workload on each target `--runs`
times (runs interleaved across targets, so drift in the machine's load hits
all three alike) and appends one JSON line per workload, target and run to
`--out` (results.jsonl). A failure (non-zero exit, timeout, wrong result) is
recorded as a line with "ok": false and the error; the run goes on. Nothing
here ever fails on a time: it measures and writes numbers.

Workloads (sizes from the flags; `--smoke` makes them tiny):
  seq_write        dd if=/dev/zero bs=1M count=--size/1MiB conv=fdatasync;
                   the time is dd's own (first write to end of fdatasync; no
                   process start-up, which for fio is ~0.5 s here).
  seq_read         dd of the same file to /dev/null, 1 MiB reads, after a
                   cache drop.
  transport_seq_write, transport_seq_read
                   the same two on a second AgentFS mount with
                   --passthrough off (file data through the daemon's
                   transport), against the host again, runs interleaved.
  rand_read        fio (psync), 4 KiB random reads, 2 jobs on that file,
                   O_DIRECT, --rand-seconds per target
                   in 4 slices the targets take in turn, each slice after
                   a read of the whole file and a cache drop (see rand());
                   value: IOs of both jobs over fio's runtime, all slices.
  meta_create      metaops.c: create --meta-files empty files (1,000 a dir).
  meta_stat_cold   lstat them all after a cache drop.
  meta_stat_warm   lstat them all again, caches warm.
  meta_unlink      unlink them all (and rmdir the directories).
  tree_copy        cp -a of a generated ~--tree-files git repository (packed
                   objects) from the host disk into the target; source warm.
  tree_git_refresh git update-index --refresh right after the copy (every
                   stat changed, so git re-reads and hashes every file).
  tree_find        find TREE after a cache drop.
  tree_du          du -s TREE after a cache drop.
  tree_git_status  git status --porcelain after a cache drop (index fresh).
  tree_rm          rm -rf TREE (caches warm from the walks).
  writers4         4 dd writers at once (1 MiB blocks, conv=fdatasync),
                   --writer-size each; value: total MiB / wall time of the
                   group (start of the first to end of the last); on
                   AgentFS each runs in its own branch (agentfs-control-cli
                   branch-exec), elsewhere each in its own directory.
  cow_first_write  open(O_WRONLY) + pwrite 1 byte + close of a --cow-size file
                   after caches are dropped: AgentFS in a branch made from a
                   snapshot holding the file (copy-on-write), fuse-overlayfs
                   on a fresh mount whose lower dir holds it (copy-up), host a
                   plain file (no copy: the floor).
  snapshot_create_N, branch_create_N  (AgentFS only) round trip of the control
                   command on a tree of N empty files, N in 1,000 / 100,000 /
                   1,000,000 up to --max-files; timed on the control socket
                   and, separately, as a whole agentfs-control-cli process.
                   Each is timed max(--runs, --scale-reps) times.
  populate_N       (AgentFS only) time to create the files that take the tree
                   to N, so the cost of the large trees is on record.

Hardware counters: with --perf-events, each external command is wrapped in
`perf stat -a -x, -e EVENTS` (system-wide: a FUSE operation's cost is spread
over the caller, the kernel and the daemon) and the counts, and counts per
operation, are stored in the result line.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
TARGETS = ("host", "agentfs", "overlay")


def dd_seconds(text):
    """The seconds of GNU dd's last statistics line ("N bytes ... copied, S s, R MB/s")."""
    for line in reversed(text.splitlines()):
        if "copied," in line:
            try:
                return float(line.split("copied,")[1].split()[0])
            except (IndexError, ValueError):
                return None
    return None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.out = open(args.out, "a", buffering=1)
        self.dirs = {"host": Path(args.host), "agentfs": Path(args.agentfs), "overlay": Path(args.overlay)}
        self.mount = Path(args.agentfs_mount)
        self.work = Path(args.work)
        self.cli = args.cli
        self.perf_events = args.perf_events or None
        self.failures = 0
        self.passed = 0
        self.env = dict(os.environ, AGENTFS_MOUNT=str(self.mount))
        self.sock_path = json.loads((self.mount / ".agentfs" / "control").read_text())["socket"]
        # The FUSE servers' processes, to charge each command the CPU time
        # its target's server spent meanwhile (polling included).
        self.servers = {}
        for kv in filter(None, (args.server_pids or "").split(",")):
            target, pid = kv.split("=")
            self.servers[target] = int(pid)
        self.server_cpu = {}

    # --- recording ----------------------------------------------------------

    def record(self, workload, target, run, ok, value=None, unit="s", higher_is_better=False,
               seconds=None, ops=None, error=None, perf=None, server=None, **extra):
        line = {
            "workload": workload,
            "target": target,
            "run": run,
            "ok": ok,
            "value": value,
            "unit": unit,
            "higher_is_better": higher_is_better,
            "seconds": seconds,
            "ops": ops,
            "loadavg_1m": os.getloadavg()[0],
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if perf is not None:
            line["perf"] = perf
        if error is not None:
            line["error"] = error[-2000:]
            self.failures += 1
        else:
            self.passed += 1
        # The FUSE server charged: the target's own unless `server` names another.
        if (server or target) in self.server_cpu:
            line["server_cpu_seconds"] = self.server_cpu.pop(server or target)
        line.update(extra)
        self.out.write(json.dumps(line) + "\n")
        if ok:
            shown = f"{value:.6g} {unit}" if isinstance(value, (int, float)) else str(value)
            print(f"  {workload:<22} {target:<8} run {run}: {shown}", flush=True)
        else:
            print(f"  {workload:<22} {target:<8} run {run}: FAILED: {error}", flush=True)

    # --- helpers ------------------------------------------------------------

    def drop_caches(self) -> bool:
        """sync, then drop the page, dentry and inode caches of every
        filesystem, FUSE mounts included (their page cache is the kernel's)."""
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError:
            return False

    def warm_memory(self, mib):
        """Touch `mib` MiB of fresh memory, then free it, just before a
        measured command that fills that much page cache. This machine's
        balloon hands memory that stayed free for a few seconds back to the
        hypervisor (free page reporting), and the first touch of such a page
        is dear: a 1 GiB copy took 2.5-4.4 s into cold memory and 0.37-0.8 s
        into memory freed a moment before. Without this, whichever target
        ran first after an idle pause paid it (the targets then ran in the
        same order every run), not the filesystem being measured. Freed
        pages are reused first, so the command gets warm ones. Returns the
        seconds taken (recorded as warm_seconds), 0 when skipped
        (--no-warm, or not enough free memory)."""
        if self.a.no_warm:
            return 0.0
        try:
            avail = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()
                             if l.startswith("MemAvailable:"))) // 1024
        except (OSError, StopIteration, ValueError):
            return 0.0
        mib = min(mib + 256, avail - 1024)
        if mib <= 0:
            return 0.0
        start = time.monotonic()
        chunk = b"\1" * (64 * MiB)
        with mmap.mmap(-1, mib * MiB) as m:
            for off in range(0, mib * MiB, len(chunk)):
                m[off:off + len(chunk)] = chunk[:mib * MiB - off]
        return time.monotonic() - start

    @staticmethod
    def settle(path, quiet=0.5, limit=10.0):
        """sync, then wait (up to `limit` s) until the block device holding
        `path` has had no request in flight for `quiet` s. Deleting the
        previous run's 2 GiB file sends the disk discards (the host
        filesystem is mounted with `discard`) that a write measured at once
        competes with: one host run wrote at 380 MB/s against 1.5 GB/s after
        a pause."""
        os.sync()
        st = os.stat(path)
        inflight = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/inflight")
        if not inflight.exists():
            return
        start = time.monotonic()
        idle_since = None
        while time.monotonic() - start < limit:
            busy = any(int(x) for x in inflight.read_text().split())
            now = time.monotonic()
            if busy:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= quiet:
                return
            time.sleep(0.05)

    @staticmethod
    def cpu_seconds(pid):
        """User + system CPU time of process pid, all its threads (None if gone)."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run(self, argv, timeout=None, cwd=None, ops=None, env=None):
        """Run argv (under perf stat when enabled); return (ok, seconds,
        stdout, error, perf). The time is the wall time of the command. The
        CPU time each FUSE server spent meanwhile goes with the next record
        of its target (server_cpu_seconds)."""
        servers = dict(self.servers)
        cpu0 = {t: self.cpu_seconds(pid) for t, pid in servers.items()}
        try:
            return self._run(argv, timeout, cwd, ops, env)
        finally:
            for t, pid in servers.items():
                after = self.cpu_seconds(pid)
                if cpu0[t] is not None and after is not None:
                    self.server_cpu[t] = round(after - cpu0[t], 3)

    def _run(self, argv, timeout, cwd, ops, env):
        timeout = timeout or self.a.step_timeout
        perf_file = None
        full = list(argv)
        if self.perf_events:
            fd, perf_file = tempfile.mkstemp(prefix="perf-", dir=self.work)
            os.close(fd)
            full = ["perf", "stat", "-a", "-x,", "-e", self.perf_events, "-o", perf_file, "--"] + full
        t0 = time.perf_counter()
        try:
            p = subprocess.run(full, cwd=cwd, env=env or self.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, time.perf_counter() - t0, "", f"timed out after {timeout} s: {shlex.join(argv)}", None
        secs = time.perf_counter() - t0
        perf = self.read_perf(perf_file, ops) if perf_file else None
        out = p.stdout.decode(errors="replace")
        if p.returncode != 0:
            err = p.stderr.decode(errors="replace").strip()
            return False, secs, out, f"exit {p.returncode}: {shlex.join(argv)}: {err}", perf
        return True, secs, out, None, perf

    def read_perf(self, path, ops):
        counts = {}
        try:
            for line in Path(path).read_text().splitlines():
                parts = line.split(",")
                if len(parts) < 3 or line.startswith("#"):
                    continue
                value, event = parts[0], parts[2]
                try:
                    counts[event] = float(value)
                except ValueError:
                    counts[event] = None  # <not counted> / <not supported>
        finally:
            os.unlink(path)
        res = {"system_wide": True, "counts": counts}
        if ops:
            res["per_op"] = {k: (v / ops if v is not None else None) for k, v in counts.items()}
            res["ops"] = ops
        return res

    def fio(self, name, path, extra, ops, timeout=None):
        argv = ["fio", f"--name={name}", f"--filename={path}", "--ioengine=psync", "--fallocate=none",
                "--output-format=json"] + extra
        ok, secs, out, err, perf = self.run(argv, timeout=timeout, ops=ops)
        js = None
        if ok:
            try:
                js = json.loads(out[out.index("{"):])
            except ValueError as e:
                ok, err = False, f"fio output is not JSON: {e}: {out[:300]}"
        return ok, secs, js, err, perf

    def ctl(self, command: dict):
        """One control-protocol request on the daemon's socket; returns
        (seconds, reply). The time is connect + request + reply."""
        body = json.dumps({"version": 1, "command": command}).encode()
        t0 = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.sock_path)
            s.sendall(struct.pack(">I", len(body)) + body)
            hdr = self._recv(s, 4)
            reply = json.loads(self._recv(s, struct.unpack(">I", hdr)[0]))
        secs = time.perf_counter() - t0
        if "ok" not in reply:
            raise RuntimeError(f"{command['op']}: {reply}")
        return secs, reply["ok"]

    @staticmethod
    def _recv(s, n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("control socket closed")
            buf += chunk
        return buf

    def cli_run(self, *args, timeout=60):
        return self.run([self.cli, "--mount", str(self.mount), *args], timeout=timeout)

    def targets(self, run=None):
        """The targets asked for; for run `run` (1-based) rotated by one per
        run, so that no target is always the first measured after a pause
        (a settle, a cache drop) and pays what the machine does then."""
        ts = [t for t in TARGETS if t in self.a.targets]
        if run is None or not ts:
            return ts
        k = (run - 1) % len(ts)
        return ts[k:] + ts[:k]

    # --- workloads ----------------------------------------------------------

    def seq(self):
        for r in range(1, self.a.runs + 1):
            for t in self.targets(r):
                self.seq_once("", t, self.dirs[t], r)

    def seq_once(self, prefix, target, d, r, server=None):
        """One sequential write, then read after a cache drop, of the file
        d/<prefix>seq.dat, recorded as <prefix>seq_write and <prefix>seq_read
        (charged to FUSE server `server`, default the target's)."""
        mib = self.a.size // MiB
        f = d / f"{prefix}seq.dat"
        if f.exists():
            f.unlink()
        self.settle(self.work)
        self.drop_caches()
        warm = self.warm_memory(mib)
        ok, secs, out, err, perf = self.run(
            ["sh", "-c", f'dd if=/dev/zero of="$1" bs=1M count={mib} conv=fdatasync 2>&1', "dd", str(f)],
            ops=mib)
        dd_s = dd_seconds(out) if ok else None
        self.record(f"{prefix}seq_write", target, r, ok and dd_s is not None, mib / dd_s if dd_s else None,
                    "MiB/s", True, dd_s, mib, err or (None if dd_s else f"no time in dd output: {out!r}"), perf,
                    server=server, wall_seconds=secs, warm_seconds=round(warm, 3))
        if not ok:
            return
        self.drop_caches()
        # Twice the file: a read through the daemon (transport) fills the
        # FUSE file's page cache and the backing object's.
        warm = self.warm_memory(2 * mib)
        ok, secs, out, err, perf = self.run(["sh", "-c", 'dd if="$1" of=/dev/null bs=1M 2>&1', "dd", str(f)],
                                            ops=mib)
        dd_s = dd_seconds(out) if ok else None
        self.record(f"{prefix}seq_read", target, r, ok and dd_s is not None, mib / dd_s if dd_s else None,
                    "MiB/s", True, dd_s, mib, err or (None if dd_s else f"no time in dd output: {out!r}"), perf,
                    server=server, wall_seconds=secs, warm_seconds=round(warm, 3))

    def transport(self):
        """seq_write and seq_read on a second AgentFS mount whose file data
        goes through the daemon (--passthrough off), against the host again
        (runs interleaved), as transport_seq_write / transport_seq_read."""
        if not self.a.agentfs_transport:
            self.record("transport_seq_write", "agentfs", 1, False, error="no --agentfs-transport mount")
            return
        d = Path(self.a.agentfs_transport)
        for r in range(1, self.a.runs + 1):
            for t in ("host", "agentfs"):
                if t not in self.targets():
                    continue
                # The transport mount's daemon is the server to charge.
                server = "transport" if t == "agentfs" else None
                self.seq_once("transport_", t, d if t == "agentfs" else self.dirs["host"], r, server)
        for f in (d / "transport_seq.dat", self.dirs["host"] / "transport_seq.dat"):
            if f.exists():
                f.unlink()

    RAND_SLICES = 4

    def rand(self):
        """4 KiB random reads, O_DIRECT, in time slices: each run's
        --rand-seconds per target are split into RAND_SLICES fio runs, and
        the targets take turns slice by slice, so all three read through
        the same stretch of the disk's own ups and downs. Measured at
        f26215b, one 20 s block per target: the virtual disk's IOPS rose
        from 6,800 to 28,700 over three minutes after the sequential
        workloads, and a 0.53 median ratio came from which target read in
        which minute (the same files read alternately in 5 s slices:
        passthrough 32,160-32,935 IOPS, host 32,397-33,746). The value is
        the IOs of all slices over fio's own runtime of all slices.

        Before each slice the target's file is read once from end to end
        with O_DIRECT (not timed): the virtual disk keeps what was read
        recently where it reads fast, and not all three 2 GiB files at
        once, so without that the file read least recently was slow
        whichever target it belonged to. At e96f4cb, nothing read first,
        run 1: host 14,484 IOPS, AgentFS 7,213; at 9bdb064, each file read
        once before the first run (host first), run 1: host 8,877,
        AgentFS 21,726; from run 3 on all 29,000-34,000."""
        size = self.a.size
        slices = max(1, min(self.RAND_SLICES, self.a.rand_seconds))
        slice_s = max(1, self.a.rand_seconds // slices)
        for r in range(1, self.a.runs + 1):
            ts = [t for t in self.targets(r) if (self.dirs[t] / "seq.dat").exists()]
            for t in self.targets(r):
                if t not in ts:
                    self.record("rand_read", t, r, False, error="no file from seq_write to read")
            acc = {t: {"ios": 0, "runtime": 0.0, "wall": 0.0, "cpu": 0.0, "err": None, "perf": None,
                       "preread": 0.0} for t in ts}
            for _ in range(slices):
                for t in ts:
                    a = acc[t]
                    if a["err"]:
                        continue
                    ok, secs, _, err, _ = self.run(["dd", f"if={self.dirs[t] / 'seq.dat'}", "of=/dev/null",
                                                    "bs=1M", "iflag=direct", "status=none"])
                    a["preread"] += secs
                    if not ok:
                        a["err"] = err
                        continue
                    # The disk's state stays; the page cache goes: a FUSE
                    # server that opens its own file without O_DIRECT
                    # (fuse-overlayfs) would otherwise answer from the
                    # pages the read left (48,000 IOPS against the host's
                    # 34,000 at 261c8c8).
                    self.drop_caches()
                    # O_DIRECT on every target: buffered random reads compare
                    # readahead policies, not data paths. fio's POSIX_FADV_RANDOM
                    # reaches the host file but not a FUSE passthrough backing
                    # file (FUSE has no fadvise request), whose readahead then
                    # caches the whole file in a 20 s run (a 11.5x "speed-up").
                    ok, secs, js, err, perf = self.fio(
                        "randread", self.dirs[t] / "seq.dat",
                        ["--rw=randread", "--bs=4k", "--numjobs=2", "--group_reporting", f"--size={size}",
                         f"--runtime={slice_s}", "--time_based", "--randrepeat=0", "--direct=1"], ops=None)
                    a["wall"] += secs
                    a["cpu"] += self.server_cpu.pop(t, 0.0)
                    if not js:
                        a["err"] = err or "fio gave no result"
                        continue
                    rd = js["jobs"][0]["read"]
                    a["ios"] += rd["total_ios"]
                    a["runtime"] += rd["runtime"] / 1000.0
                    if perf:
                        if a["perf"] is None:
                            a["perf"] = {"system_wide": True, "counts": dict(perf["counts"])}
                        else:
                            for k, v in perf["counts"].items():
                                old = a["perf"]["counts"].get(k)
                                a["perf"]["counts"][k] = None if v is None or old is None else old + v
            for t in ts:
                a = acc[t]
                ok = a["err"] is None and a["runtime"] > 0
                iops = a["ios"] / a["runtime"] if ok else None
                perf = a["perf"]
                if perf and a["ios"]:
                    perf["ops"] = a["ios"]
                    perf["per_op"] = {k: (v / a["ios"] if v is not None else None)
                                      for k, v in perf["counts"].items()}
                if t in self.servers:
                    self.server_cpu[t] = round(a["cpu"], 3)
                self.record("rand_read", t, r, ok, iops, "IOPS", True, round(a["wall"], 3), a["ios"] or None,
                            a["err"], perf, slices=slices, slice_seconds=slice_s,
                            preread_seconds=round(a["preread"], 3))
        for t in self.targets():
            f = self.dirs[t] / "seq.dat"
            if f.exists():
                f.unlink()

    def meta(self):
        n = self.a.meta_files
        m = self.a.metaops
        for r in range(1, self.a.runs + 1):
            for t in self.targets(r):
                d = self.dirs[t] / "meta"
                if d.exists():
                    shutil.rmtree(d)
                d.mkdir()
                self.drop_caches()
                steps = [("meta_create", "create", False), ("meta_stat_cold", "stat", True),
                         ("meta_stat_warm", "stat", False), ("meta_unlink", "unlink", False)]
                for workload, op, drop in steps:
                    if drop:
                        self.drop_caches()
                    ok, secs, out, err, perf = self.run([m, op, str(d), str(n)], ops=n)
                    inner = json.loads(out)["seconds"] if ok else None
                    self.record(workload, t, r, ok, inner, "s", False, inner, n, err, perf,
                                files_per_s=(n / inner) if ok and inner else None, process_seconds=secs)
                    if not ok:
                        break
                shutil.rmtree(d, ignore_errors=True)

    def tree(self):
        src = Path(self.a.tree_src)
        nfiles = sum(len(fs) for _, _, fs in os.walk(src))
        for r in range(1, self.a.runs + 1):
            for t in self.targets(r):
                dst = self.dirs[t] / "tree"
                if dst.exists():
                    shutil.rmtree(dst, ignore_errors=True)
                # Source warm, so the copy measures the destination.
                subprocess.run(f"tar -C {shlex.quote(str(src))} -cf - . | cat > /dev/null", shell=True, check=False)
                ok, secs, _, err, perf = self.run(["cp", "-a", str(src), str(dst)], ops=nfiles)
                self.record("tree_copy", t, r, ok, secs if ok else None, "s", False, secs, nfiles, err, perf)
                if not ok:
                    shutil.rmtree(dst, ignore_errors=True)
                    continue
                git = ["git", "-c", "safe.directory=*", "-C", str(dst)]
                ok, secs, _, err, perf = self.run(git + ["update-index", "--refresh", "-q"], ops=nfiles)
                self.record("tree_git_refresh", t, r, ok, secs if ok else None, "s", False, secs, nfiles, err, perf)
                for workload, argv in (("tree_find", ["find", str(dst)]),
                                       ("tree_du", ["du", "-s", str(dst)]),
                                       ("tree_git_status", git + ["status", "--porcelain"])):
                    self.drop_caches()
                    ok, secs, out, err, perf = self.run(argv, ops=nfiles)
                    extra = {}
                    if ok and workload == "tree_find":
                        extra["entries"] = len(out.splitlines())
                    if ok and workload == "tree_git_status":
                        dirty = out.splitlines()
                        extra["dirty_entries"] = len(dirty)
                        if dirty:
                            ok, err = False, f"git status shows {len(dirty)} changed entries, e.g. {dirty[:3]}"
                    if ok and workload == "tree_du":
                        extra["du_kib"] = int(out.split()[0])
                    self.record(workload, t, r, ok, secs if ok else None, "s", False, secs, nfiles, err, perf, **extra)
                ok, secs, _, err, perf = self.run(["rm", "-rf", str(dst)], ops=nfiles)
                self.record("tree_rm", t, r, ok, secs if ok else None, "s", False, secs, nfiles, err, perf)

    def writers(self):
        size = self.a.writer_size
        total_mib = 4 * size // MiB
        dd_args = ["bs=1M", f"count={size // MiB}", "conv=fdatasync", "status=none"]
        for r in range(1, self.a.runs + 1):
            for t in self.targets(r):
                branches = []
                try:
                    cmds = []
                    if t == "agentfs":
                        snap = f"w-r{r}"
                        self.ctl({"op": "snapshot-create", "name": snap, "branch": None})
                        for k in range(1, 5):
                            name = f"w-r{r}-{k}"
                            self.ctl({"op": "branch-create", "from": snap, "name": name})
                            branches.append(name)
                            ok, _, _, err, _ = self.cli_run("branch-exec", "--branch", name, "--",
                                                            "mkdir", "-p", str(self.mount / f"w{k}"))
                            if not ok:
                                raise RuntimeError(err)
                            cmds.append([self.cli, "--mount", str(self.mount), "branch-exec", "--branch", name,
                                         "--", "dd", "if=/dev/zero", f"of={self.mount / f'w{k}' / 'data'}"]
                                        + dd_args)
                    else:
                        for k in range(1, 5):
                            d = self.dirs[t] / f"w{k}"
                            shutil.rmtree(d, ignore_errors=True)
                            d.mkdir()
                            cmds.append(["dd", "if=/dev/zero", f"of={d / 'data'}"] + dd_args)
                    self.drop_caches()
                    warm = self.warm_memory(total_mib)
                    self.concurrent(t, r, cmds, total_mib, warm)
                except Exception as e:  # noqa: BLE001 - a failed setup is a recorded result
                    self.record("writers4", t, r, False, error=f"setup: {e}")
                finally:
                    if t == "agentfs":
                        for name in branches:
                            self.cli_run("branch-delete", "--force", name)
                        self.cli_run("snapshot-delete", f"w-r{r}")
                    else:
                        for k in range(1, 5):
                            shutil.rmtree(self.dirs[t] / f"w{k}", ignore_errors=True)

    def concurrent(self, t, r, cmds, total_mib, warm=0.0):
        perf_file = None
        perf_proc = None
        if self.perf_events:
            fd, perf_file = tempfile.mkstemp(prefix="perf-", dir=self.work)
            os.close(fd)
            perf_proc = subprocess.Popen(["perf", "stat", "-a", "-x,", "-e", self.perf_events, "-o", perf_file])
        t0 = time.perf_counter()
        procs = [subprocess.Popen(c, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds]
        errs = []
        for p in procs:
            try:
                _, e = p.communicate(timeout=self.a.step_timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                _, e = p.communicate()
                errs.append("timed out")
                continue
            if p.returncode != 0:
                errs.append(f"exit {p.returncode}: {e.decode(errors='replace').strip()[-300:]}")
        secs = time.perf_counter() - t0
        perf = None
        if perf_proc:
            perf_proc.send_signal(2)
            perf_proc.wait()
            perf = self.read_perf(perf_file, total_mib)
        ok = not errs
        self.record("writers4", t, r, ok, total_mib / secs if ok else None, "MiB/s", True, secs, total_mib,
                    "; ".join(errs) if errs else None, perf, warm_seconds=round(warm, 3))

    def cow(self):
        size = self.a.cow_size
        probe = [sys.executable, str(Path(__file__).with_name("cowprobe.py"))]
        # The file every target starts from, written once per target.
        host_big = self.dirs["host"] / "cow.dat"
        lower = self.work / "cow-lower"
        for r in range(1, self.a.runs + 1):
            for t in self.targets(r):
                mounted = None
                branch = snap = None
                try:
                    if t == "host":
                        if not host_big.exists():
                            self.write_file(host_big, size)
                        path, cmd_prefix = host_big, []
                    elif t == "overlay":
                        if not (lower / "cow.dat").exists():
                            lower.mkdir(exist_ok=True)
                            self.write_file(lower / "cow.dat", size)
                        base = Path(tempfile.mkdtemp(prefix="cow-ovl-", dir=self.work))
                        for sub in ("upper", "work", "mnt"):
                            (base / sub).mkdir()
                        subprocess.run(["fuse-overlayfs", "-o",
                                        f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}",
                                        str(base / "mnt")], check=True, timeout=60)
                        mounted = base
                        path, cmd_prefix = base / "mnt" / "cow.dat", []
                    else:
                        big = self.mount / "cow" / "cow.dat"
                        if not big.exists():
                            big.parent.mkdir(exist_ok=True)
                            self.write_file(big, size)
                        snap, branch = f"cow-r{r}", f"cow-r{r}-b"
                        self.ctl({"op": "snapshot-create", "name": snap, "branch": None})
                        self.ctl({"op": "branch-create", "from": snap, "name": branch})
                        path = big
                        cmd_prefix = [self.cli, "--mount", str(self.mount), "branch-exec", "--branch", branch, "--"]
                    self.settle(self.work)
                    self.drop_caches()
                    # The copy reads the file into the page cache and writes a copy.
                    warm = self.warm_memory(2 * size // MiB)
                    ok, secs, out, err, _ = self.run(cmd_prefix + probe + [str(path)])
                    res = json.loads(out) if ok else {}
                    extra = {k: res.get(k) for k in ("open_s", "write_s", "close_s")}
                    extra["warm_seconds"] = round(warm, 3)
                    if ok and t == "agentfs":
                        # The main branch must still see the original first byte.
                        with open(path, "rb") as f:
                            first = f.read(1)
                        extra["original_unchanged"] = first == b"\0"
                        if first != b"\0":
                            ok, err = False, f"write in branch {branch} changed main's file (first byte {first!r})"
                    self.record("cow_first_write", t, r, ok, res.get("total_s"), "s", False, res.get("total_s"),
                                1, err, None, file_bytes=size, **extra)
                except Exception as e:  # noqa: BLE001 - a failed setup is a recorded result
                    self.record("cow_first_write", t, r, False, error=f"setup: {e}")
                finally:
                    if mounted is not None:
                        subprocess.run(["fusermount3", "-u", str(mounted / "mnt")], check=False)
                        shutil.rmtree(mounted, ignore_errors=True)
                    if branch:
                        self.cli_run("branch-delete", "--force", branch)
                    if snap:
                        self.cli_run("snapshot-delete", snap)
        for f in (host_big, self.mount / "cow" / "cow.dat"):
            if f.exists():
                f.unlink()
        shutil.rmtree(lower, ignore_errors=True)

    def write_file(self, path, size):
        """A size-byte file whose first byte is 0 (the probe writes 'x'), synced."""
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size // MiB}", "conv=fdatasync",
                        "status=none"], check=True, timeout=self.a.step_timeout)

    def scale(self):
        sizes = sorted({n for n in (1000, 100_000, 1_000_000) if n <= self.a.max_files} | {self.a.max_files})
        root = self.mount / "scale"
        root.mkdir(exist_ok=True)
        have = 0
        for n in sizes:
            ok, secs, out, err, _ = self.run([self.a.metaops, "create", str(root), str(n), str(have)],
                                             timeout=self.a.populate_timeout)
            self.record(f"populate_{n}", "agentfs", 1, ok, secs if ok else None, "s", False, secs, n - have, err,
                        None, files_per_s=((n - have) / secs) if ok else None)
            if not ok:
                return
            have = n
            os.sync()
            # Cheap operations: more repetitions than --runs for a steadier median.
            for r in range(1, max(self.a.runs, self.a.scale_reps) + 1):
                snap, branch = f"scale-{n}-r{r}", f"scale-{n}-r{r}-b"
                try:
                    secs, _ = self.ctl({"op": "snapshot-create", "name": snap, "branch": None})
                    self.record(f"snapshot_create_{n}", "agentfs", r, True, secs * 1000, "ms", False, secs, 1,
                                tree_files=n)
                    secs, _ = self.ctl({"op": "branch-create", "from": snap, "name": branch})
                    self.record(f"branch_create_{n}", "agentfs", r, True, secs * 1000, "ms", False, secs, 1,
                                tree_files=n)
                    # The same through the CLI, process start-up included.
                    ok, s1, _, err, _ = self.cli_run("snapshot-create", "--name", snap + "c")
                    ok2, s2, _, err2, _ = self.cli_run("branch-create", "--from", snap + "c", "--name", branch + "c")
                    self.record(f"snapshot_create_{n}_cli", "agentfs", r, ok, s1 * 1000 if ok else None, "ms",
                                False, s1, 1, err, tree_files=n)
                    self.record(f"branch_create_{n}_cli", "agentfs", r, ok2, s2 * 1000 if ok2 else None, "ms",
                                False, s2, 1, err2, tree_files=n)
                    # A branch made from the big snapshot must see the tree.
                    last = root / f"d{(n - 1) // 1000:04d}" / f"f{n - 1:07d}"
                    ok3, _, _, err3, _ = self.cli_run("branch-exec", "--branch", branch, "--", "test", "-e",
                                                      str(last))
                    if not ok3:
                        self.record(f"branch_create_{n}", "agentfs", r, False,
                                    error=f"branch {branch} does not show {last}: {err3}")
                except Exception as e:  # noqa: BLE001 - a failed command is a recorded result
                    self.record(f"snapshot_create_{n}", "agentfs", r, False, error=str(e))
                finally:
                    for b in (branch, branch + "c"):
                        self.cli_run("branch-delete", "--force", b)
                    for s in (snap, snap + "c"):
                        self.cli_run("snapshot-delete", s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="scratch dir on the same disk")
    p.add_argument("--host", required=True)
    p.add_argument("--agentfs", required=True, help="a directory inside the AgentFS mount")
    p.add_argument("--agentfs-mount", required=True)
    p.add_argument("--overlay", required=True)
    p.add_argument("--agentfs-transport", default="",
                   help="a directory inside a second AgentFS mount with --passthrough off (transport workloads)")
    p.add_argument("--cli", required=True, help="agentfs-control-cli")
    p.add_argument("--metaops", required=True)
    p.add_argument("--tree-src", required=True)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--workloads", default="seq,transport,rand,meta,tree,writers,cow,scale")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", type=int, default=2048 * MiB)
    p.add_argument("--rand-seconds", type=int, default=20)
    p.add_argument("--meta-files", type=int, default=20_000)
    p.add_argument("--writer-size", type=int, default=512 * MiB)
    p.add_argument("--cow-size", type=int, default=1024 * MiB)
    p.add_argument("--max-files", type=int, default=1_000_000)
    p.add_argument("--scale-reps", type=int, default=10,
                   help="snapshot/branch creations timed per tree size (at least --runs)")
    p.add_argument("--perf-events", default="")
    p.add_argument("--server-pids", default="",
                   help="TARGET=PID,... of the FUSE servers, to record their CPU time per command")
    p.add_argument("--step-timeout", type=int, default=1200)
    p.add_argument("--populate-timeout", type=int, default=7200)
    p.add_argument("--no-warm", action="store_true",
                   help="do not touch fresh memory before the big page-cache workloads (see warm_memory)")
    p.add_argument("--fail-on-error", action="store_true",
                   help="exit 1 if any measurement failed (the CI smoke run); times never fail")
    a = p.parse_args()
    a.targets = a.targets.split(",")
    b = Bench(a)
    for w in a.workloads.split(","):
        t0 = time.monotonic()
        print(f"==> workload group {w}", flush=True)
        getattr(b, {"seq": "seq", "transport": "transport", "rand": "rand", "meta": "meta", "tree": "tree",
                    "writers": "writers", "cow": "cow", "scale": "scale"}[w])()
        print(f"    ({w}: {time.monotonic() - t0:.1f} s)", flush=True)
    # Measurements that completed vs failed (an error or a wrong result, never a slow time).
    print(f"measurements: {b.passed} passed, {b.failures} failed", flush=True)
    return 1 if a.fail_on_error and b.failures else 0


if __name__ == "__main__":
    sys.exit(main())
