#!/usr/bin/env python3
"""Medians and ratios of a `just test-fuse-performance` run.

    summarize.py RUN_DIR

Reads RUN_DIR/results.jsonl (one line per workload, target and run) and
RUN_DIR/meta.json (machine, sizes, load), writes RUN_DIR/summary.json and
RUN_DIR/summary.md, and prints the table. For each workload and target: the
median of the successful runs. Ratios are speeds relative to the host in the
same run, so > 1 is faster than the host and < 1 slower whatever the unit:
value/host for throughputs (MiB/s, IOPS), host/value for times. AgentFS-only
workloads (snapshot and branch creation, populate) have no ratio.
"""

import json
import statistics
import sys
from pathlib import Path

ORDER = ["seq_write", "seq_read", "transport_seq_write", "transport_seq_read", "rand_read", "meta_create",
         "meta_stat_cold", "meta_stat_warm", "meta_unlink", "tree_copy", "tree_git_refresh", "tree_find", "tree_du",
         "tree_git_status", "tree_rm", "writers4", "cow_first_write"]
TARGETS = ("host", "agentfs", "overlay")


def sort_key(name):
    if name in ORDER:
        return (0, ORDER.index(name), 0, name)
    # populate_N, snapshot_create_N[_cli], branch_create_N[_cli]
    digits = [p for p in name.split("_") if p.isdigit()]
    n = int(digits[0]) if digits else 0
    kind = ["populate", "snapshot", "branch"]
    k = next((i for i, p in enumerate(kind) if name.startswith(p)), 9)
    return (1, n, k, name)


def ratio(host, other, higher_is_better):
    if host is None or other is None or host == 0 or other == 0:
        return None
    return other / host if higher_is_better else host / other


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4g}"


def main() -> int:
    run_dir = Path(sys.argv[1])
    lines = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines() if x.strip()]
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    by = {}
    failures = []
    for ln in lines:
        w = by.setdefault(ln["workload"], {"unit": None, "higher_is_better": False, "targets": {}})
        if ln["ok"]:
            w["unit"] = ln["unit"]
            w["higher_is_better"] = ln["higher_is_better"]
        t = w["targets"].setdefault(ln["target"], {"values": [], "failed": 0, "perf_per_op": [], "cpu": []})
        if ln["ok"] and ln["value"] is not None:
            t["values"].append(ln["value"])
            if ln.get("server_cpu_seconds") is not None:
                t["cpu"].append(ln["server_cpu_seconds"])
            per_op = (ln.get("perf") or {}).get("per_op")
            if per_op:
                t["perf_per_op"].append(per_op)
        else:
            t["failed"] += 1
            failures.append({k: ln.get(k) for k in ("workload", "target", "run", "error")})
    rows = []
    for name in sorted(by, key=sort_key):
        w = by[name]
        row = {"workload": name, "unit": w["unit"], "higher_is_better": w["higher_is_better"]}
        for t, d in w["targets"].items():
            med = statistics.median(d["values"]) if d["values"] else None
            entry = {"median": med, "runs": d["values"], "failed_runs": d["failed"]}
            if d["cpu"]:
                entry["server_cpu_seconds_median"] = statistics.median(d["cpu"])
            if d["perf_per_op"]:
                events = d["perf_per_op"][0].keys()
                entry["perf_per_op_median"] = {
                    e: statistics.median([p[e] for p in d["perf_per_op"] if p.get(e) is not None] or [0])
                    for e in events}
            row[t] = entry
        host = row.get("host", {}).get("median")
        if "host" in row:
            row["ratio_agentfs_host"] = ratio(host, row.get("agentfs", {}).get("median"), w["higher_is_better"])
            row["ratio_overlay_host"] = ratio(host, row.get("overlay", {}).get("median"), w["higher_is_better"])
        rows.append(row)
    summary = {
        "meta": meta,
        "ratio_definition": "speed relative to the host directory in the same run: >1 faster, <1 slower "
                            "(value/host for MiB/s and IOPS, host/value for seconds)",
        "workloads": rows,
        "failures": failures,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    out = ["| workload | unit | host | AgentFS | fuse-overlayfs | AgentFS/host | fuse-overlayfs/host |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        def med(t):
            e = r.get(t)
            if e is None:
                return "n/a"
            if e["median"] is None:
                return "FAILED"
            s = fmt(e["median"])
            return s + (f" ({e['failed_runs']} failed)" if e["failed_runs"] else "")
        out.append(f"| {r['workload']} | {r['unit'] or '-'} | {med('host')} | {med('agentfs')} | {med('overlay')} "
                   f"| {fmt(r.get('ratio_agentfs_host'))} | {fmt(r.get('ratio_overlay_host'))} |")
    events = sorted({e for r in rows for t in TARGETS for e in (r.get(t) or {}).get("perf_per_op_median", {})})
    if events:
        out += ["", "Counters per operation (perf stat -a, medians; an operation is 1 MiB for sequential and "
                "writer workloads, one I/O for random reads, one file otherwise):", "",
                "| workload | event | host | AgentFS | fuse-overlayfs |", "|---|---|---:|---:|---:|"]
        for r in rows:
            for e in events:
                vals = [(r.get(t) or {}).get("perf_per_op_median", {}).get(e) for t in TARGETS]
                if any(v is not None for v in vals):
                    out.append(f"| {r['workload']} | {e} | " + " | ".join(fmt(v) for v in vals) + " |")
    if any((r.get(t) or {}).get("server_cpu_seconds_median") is not None for r in rows for t in TARGETS):
        out += ["", "CPU time of the FUSE server process during each workload's command (user + system, "
                "all threads, medians; the AgentFS daemon's ring threads' polling included):", "",
                "| workload | AgentFS daemon s | fuse-overlayfs s |", "|---|---:|---:|"]
        for r in rows:
            vals = [(r.get(t) or {}).get("server_cpu_seconds_median") for t in ("agentfs", "overlay")]
            if any(v is not None for v in vals):
                out.append(f"| {r['workload']} | " + " | ".join(fmt(v) for v in vals) + " |")
    table = "\n".join(out)
    head = []
    if meta:
        head.append(f"Run {meta.get('timestamp')} on {meta.get('fs_dir')} ({meta.get('fs_type')}, "
                    f"{meta.get('fs_source')}); kernel {meta.get('kernel')}; {meta.get('cpus')} CPUs; "
                    f"load average before {meta.get('loadavg_before')}, after {meta.get('loadavg_after')}; "
                    f"runs {meta.get('runs')}; AgentFS data path {meta.get('agentfs_data_path')}, "
                    f"requests over {meta.get('agentfs_request_channel', 'dev-fuse')}; "
                    f"perf counters: {meta.get('perf')}.")
        head.append(f"Command: `{meta.get('command')}`")
        head.append("Ratios are speeds relative to the host (>1 faster, <1 slower). Medians of the runs.")
    if failures:
        table += "\n\nFailures:\n" + "\n".join(
            f"- {f['workload']} on {f['target']} run {f['run']}: {f['error']}" for f in failures)
    text = "\n\n".join(head + [table]) + "\n"
    (run_dir / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
