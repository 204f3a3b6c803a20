#!/usr/bin/env python3
"""Add the backstore figures to a fuse-stress summary.json and write summary.md."""

import argparse
import json


def kib(n):
    return "{:,} KiB".format(n)


def main():
    ap = argparse.ArgumentParser()
    for x in ("--json", "--md", "--command", "--commit", "--kernel", "--cores"):
        ap.add_argument(x, required=True)
    ap.add_argument("--du-kib", type=int, required=True)
    ap.add_argument("--object-files", type=int, required=True)
    a = ap.parse_args()
    with open(a.json) as f:
        r = json.load(f)
    r["backstore"] = {"du_kib": a.du_kib, "object_files": a.object_files}
    r["command"] = a.command
    r["commit"] = a.commit
    r["machine"] = {"kernel": a.kernel, "cores": int(a.cores)}
    with open(a.json, "w") as f:
        json.dump(r, f, indent=1, sort_keys=True)
    c = r["config"]
    s0, w, s1, pk = r["start"], r.get("warm") or r["start"], r["end"], r["peak"]
    sb, se = r["status_before_cleanup"], r["status_end"]
    lines = [
        "# AgentFS stress run",
        "",
        "`%s` at %s, Linux %s, %s cores, data path `%s`." % (a.command, a.commit, a.kernel, a.cores, se["data_path"]),
        "",
        "%d threads for %ss on branches %s; %d operations; **%d errors**." % (
            c["threads"], r["workload_s"], ", ".join(c["branches"]), r["ops_total"], r["errors"]),
        "",
        "| operation | count |",
        "|---|---|",
    ]
    lines += ["| %s | %d |" % kv for kv in sorted(r["ops"].items())]
    lines += [
        "",
        "Checkpoints (all branches paused, every tree compared byte for byte, every live snapshot "
        "checked through a branch): " + ", ".join("%ss (%ss)" % (x["t"], x["took_s"]) for x in r["checkpoints"])
        + "; final verification %ss." % r["final_verify_s"],
        "",
        "| daemon | start | after warm-up | end of workload | after deleting throwaways and snapshots | peak |",
        "|---|---|---|---|---|---|",
        "| open fds (all) | %d | %d | %d | %d | %d |" % (s0["fds"], w["fds"], r["before_cleanup"]["fds"], s1["fds"], pk["fds"]),
        "| fds on content objects (bounded cache, 1024) | %d | %d | %d | %d | %d |" % (
            s0["object_fds"], w["object_fds"], r["before_cleanup"]["object_fds"], s1["object_fds"], pk["object_fds"]),
        "| other fds | %d | %d | %d | %d | |" % (s0["other_fds"], w["other_fds"], r["before_cleanup"]["other_fds"], s1["other_fds"]),
        "| threads | %d | %d | %d | %d | |" % (s0["threads"], w["threads"], r["before_cleanup"]["threads"], s1["threads"]),
        "| VmRSS | %s | %s | %s | %s | %s |" % (kib(s0["rss_kib"]), kib(w["rss_kib"]), kib(r["before_cleanup"]["rss_kib"]),
                                            kib(s1["rss_kib"]), kib(pk["rss_kib"])),
        "",
        "| state | before cleanup | after cleanup |",
        "|---|---|---|",
        "| branches / snapshots | %d / %d | %d / %d |" % (sb["branches"], sb["snapshots"], se["branches"], se["snapshots"]),
        "| content objects | {:,} | {:,} |".format(sb["content_objects"], se["content_objects"]),
        "| content bytes | {:,} | {:,} |".format(sb["content_bytes"], se["content_bytes"]),
        "| copy-on-write clones | {:,} | {:,} |".format(sb["cow_clones"], se["cow_clones"]),
        "| open handles / bindings | %d / %d | %d / %d |" % (sb["open_handles"], sb["bindings"], se["open_handles"], se["bindings"]),
        "",
        "Model at the end: {:,} files, {:,} bytes in {} branches. Backstore after the run: {} on disk "
        "(`du -sk`), {:,} object files.".format(r["final_tree"]["files"], r["final_tree"]["bytes"],
                                                  len(c["branches"]), kib(a.du_kib), a.object_files),
    ]
    if r["errors"]:
        lines += ["", "## Errors (first 20)", ""] + ["- %s" % e["error"] for e in r["error_list"][:20]]
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
