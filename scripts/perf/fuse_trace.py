#!/usr/bin/env python3
"""Where a FUSE metadata workload's time goes, from the kernel's own view.

    fuse_trace.py TRACE_FILE FILES

Reads a tracefs dump taken with the `fuse:fuse_request_send` and
`fuse:fuse_request_end` events on (Linux 6.15+), as
`scripts/perf/fuse-trace.sh` takes it, and prints per opcode:

- requests per file of the workload (FILES files),
- latency from the kernel queuing the request to the daemon's answer
  (median, 90th percentile, mean), split by the daemon thread that answered
  (`fuser-N`: on the thread that read `/dev/fuse`; `agentfs-data-N` /
  `agentfs-meta-N`: handed off to a worker),

and the time between the answer to one request the workload waited on and
its next request (the workload's thread waking up, returning to user space
and making its next call), which no daemon change can remove.
"""

import collections
import re
import sys

LINE = re.compile(
    r"^\s*(?P<comm>.+?)-\d+\s+\[\d+\].*?\s(?P<t>\d+\.\d+): fuse_request_(?P<kind>send|end): "
    r"connection \d+ req (?P<req>\d+)(?: opcode \d+ \((?P<op>\w+)\))?"
)
# Requests the kernel sends without the caller waiting for them.
ASYNC = {"FUSE_RELEASE", "FUSE_RELEASEDIR", "FUSE_FORGET", "FUSE_BATCH_FORGET"}


def stats(values):
    v = sorted(values)
    n = len(v)
    return f"n={n:7d} p50={v[n // 2]:7.1f} p90={v[int(n * 0.9)]:7.1f} mean={sum(v) / n:7.1f} us"


def main():
    path, files = sys.argv[1], int(sys.argv[2])
    sent = {}
    latency = collections.defaultdict(list)
    by_thread = collections.defaultdict(list)
    gaps = []
    last_end = None
    for line in open(path, encoding="utf-8", errors="replace"):
        m = LINE.search(line)
        if not m:
            continue
        t, req = float(m["t"]), m["req"]
        if m["kind"] == "send":
            sent[req] = (t, m["op"])
            # The workload's own thread sends what it waits for.
            if m["op"] not in ASYNC and last_end is not None and "fuser" not in m["comm"]:
                gaps.append((t - last_end) * 1e6)
            continue
        if req not in sent:
            continue
        t0, op = sent.pop(req)
        us = (t - t0) * 1e6
        latency[op].append(us)
        thread = re.sub(r"\d+$", "N", m["comm"].strip())
        by_thread[(op, thread)].append(us)
        if op not in ASYNC:
            last_end = t
    if not latency:
        print("no FUSE requests (all answered from the kernel's caches)")
        return
    print(f"{'opcode':16s} {'per file':>8s}  latency (queued to answered)")
    for op in sorted(latency, key=lambda o: -len(latency[o])):
        print(f"{op:16s} {len(latency[op]) / files:8.2f}  {stats(latency[op])}")
        threads = sorted((t, v) for (o, t), v in by_thread.items() if o == op)
        for thread, v in threads if len(threads) > 1 else []:
            print(f"  answered by {thread:18s} {stats(v)}")
    if gaps:
        print(f"{'between requests':16s} {'':8s}  {stats(gaps)}")


if __name__ == "__main__":
    main()
