#!/usr/bin/env python3
"""Summarise pjdfstest runs, compare them with the baseline, optionally rewrite it.

Used by scripts/test-pjdfstest.sh. Each RUN=LOG argument names one run (ext4,
default-branch, snapshot-branch, and the -transport twins of the last two) and the raw pjdfstest output it produced. The
runner prints one line per test case, `NAME ok|FAILED|skipped|...`, followed for
a failure by the panic message on tab-indented lines, and ends with
`Summary: F failed, S skipped, P passed, E expected failures, T total`.

Writes SUMMARY (JSON): per run the counts, the failed tests (with the first line
of each failure message), the failures grouped by syscall group, and the tests
that pass on ext4 but not in that run, and the supplementary tests run beside
pjdfstest (NAME.link-max.log next to NAME.log: link::link_count_max with
LINK_MAX given, which pjdfstest itself skips on FUSE). Then compares every AgentFS run with the
baseline (specs/pjdfstest.baseline.json: per branch state, the tests that must
pass) and exits 1 when a baseline test does not pass (a regression) or when a
run did not reach its Summary line. With --update-baseline it writes the
baseline from this run instead of comparing. The last line printed is the plain
summary line.
"""

import argparse
import json
import os
import re
import sys
from collections import OrderedDict

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RESULT = re.compile(
    r"^(?P<name>\S+)\s+(?P<status>ok|FAILED|skipped|PASSED UNEXPECTEDLY|failed as expected)\s*$"
)
SUMMARY = re.compile(
    r"^Summary: (?P<failed>\d+) failed, (?P<skipped>\d+) skipped, (?P<passed>\d+) passed, "
    r"(?P<expected>\d+) expected failures, (?P<total>\d+) total"
)
REFERENCE = "ext4"
LABELS = {
    "ext4": "ext4",
    "default-branch": "agentfs main",
    "snapshot-branch": "agentfs snapshot-branch",
    "default-branch-transport": "agentfs main (transport)",
    "snapshot-branch-transport": "agentfs snapshot-branch (transport)",
}


def group_of(name):
    """`chmod::errno::...` belongs to group `chmod`."""
    return name.split("::", 1)[0]


def parse(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [ANSI.sub("", line.rstrip("\n")) for line in f]
    status = OrderedDict()
    messages = {}
    summary = None
    current = None
    for line in lines:
        m = RESULT.match(line)
        if m:
            current = m.group("name")
            status[current] = m.group("status")
            continue
        m = SUMMARY.match(line)
        if m:
            summary = {k: int(v) for k, v in m.groupdict().items()}
            current = None
            continue
        if current and status.get(current) == "FAILED" and line.startswith("\t"):
            messages.setdefault(current, []).append(line.strip())
    passed = sorted(n for n, s in status.items() if s == "ok")
    failed = sorted(n for n, s in status.items() if s in ("FAILED", "PASSED UNEXPECTEDLY"))
    skipped = sorted(n for n, s in status.items() if s == "skipped")
    by_group = OrderedDict()
    for name in failed:
        by_group.setdefault(group_of(name), []).append(name)
    run = OrderedDict(
        [
            ("complete", summary is not None),
            ("passed", len(passed)),
            ("failed", len(failed)),
            ("skipped", len(skipped)),
            ("total", len(status)),
            ("summary_line", summary),
            ("failed_tests", failed),
            ("failed_by_group", OrderedDict((g, len(v)) for g, v in sorted(by_group.items()))),
            ("failures", OrderedDict(
                (n, " | ".join(messages.get(n, [])[:3])[:400]) for n in failed
            )),
            ("skipped_tests", skipped),
        ]
    )
    if summary is not None:
        counted = (run["failed"], run["skipped"], run["passed"])
        reported = (summary["failed"], summary["skipped"], summary["passed"])
        if counted != reported:
            run["parse_mismatch"] = "parsed %s, Summary line says %s" % (counted, reported)
    return run, set(passed), set(status)


SUPPLEMENTARY = {"link-max": ("link::link_count_max(LINK_MAX=65000)", "link_count_max: ok")}


def supplementary(log):
    """Results of the supplementary tests run beside pjdfstest: name -> "ok" or why not."""
    results = OrderedDict()
    stem = log[: -len(".log")] if log.endswith(".log") else log
    for suffix, (name, ok_prefix) in SUPPLEMENTARY.items():
        try:
            with open("%s.%s.log" % (stem, suffix), errors="replace") as f:
                lines = [l.strip() for l in f if l.strip()]
        except FileNotFoundError:
            continue
        last = lines[-1] if lines else "no output"
        results[name] = "ok" if last.startswith(ok_prefix) else last
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--summary", required=True, help="summary.json to write")
    ap.add_argument("--baseline", required=True, help="baseline JSON to check or write")
    ap.add_argument("--update-baseline", action="store_true")
    ap.add_argument("--filtered", action="store_true",
                    help="only some tests ran: check the baseline on those only")
    ap.add_argument("--meta", default="{}", help="JSON object merged into the summary")
    ap.add_argument("runs", nargs="+", metavar="RUN=LOG")
    args = ap.parse_args()

    runs = OrderedDict()
    passed = {}
    ran = {}
    sup_passed = {}
    for spec in args.runs:
        name, _, log = spec.partition("=")
        runs[name], passed[name], ran[name] = parse(log)
        runs[name]["log"] = log.rsplit("/", 1)[-1]
        runs[name]["supplementary"] = supplementary(log)
        sup_passed[name] = {t for t, r in runs[name]["supplementary"].items() if r == "ok"}

    problems = []
    for name, run in runs.items():
        if not run["complete"]:
            problems.append("%s: run did not finish (no Summary line in %s)" % (name, run["log"]))
        if "parse_mismatch" in run:
            problems.append("%s: %s" % (name, run["parse_mismatch"]))
    if REFERENCE in passed:
        for name in runs:
            if name != REFERENCE:
                runs[name]["pass_on_ext4_not_here"] = sorted(passed[REFERENCE] - passed[name])
                runs[name]["pass_here_not_on_ext4"] = sorted(passed[name] - passed[REFERENCE])
                # What still differs once the supplementary stand-ins count.
                covered = {t.split("(", 1)[0] for t in sup_passed[name]}
                runs[name]["gap_to_ext4"] = sorted(passed[REFERENCE] - passed[name] - covered)

    agentfs = [n for n in runs if n != REFERENCE]
    regressions = OrderedDict()
    newly_passing = OrderedDict()
    if args.update_baseline:
        if problems:
            for p in problems:
                print("pjdfstest: " + p, file=sys.stderr)
            print("pjdfstest: not writing the baseline from an incomplete run", file=sys.stderr)
            return 1
        baseline = OrderedDict(
            [
                ("about", "Tests that must pass on AgentFS, per branch state; written by "
                 "`scripts/test-pjdfstest.sh --update-baseline` from a run in which ext4 "
                 "passed the ext4_passed count. A test listed here that does not pass fails CI."),
                ("pjdfstest", "0.2.2"),
                ("ext4_passed", runs.get(REFERENCE, {}).get("passed")),
                ("must_pass", OrderedDict((n, sorted(passed[n])) for n in agentfs)),
                ("supplementary_must_pass", OrderedDict((n, sorted(sup_passed[n])) for n in agentfs)),
            ]
        )
        with open(args.baseline, "w") as f:
            json.dump(baseline, f, indent=1)
            f.write("\n")
        print("pjdfstest: wrote %s (%s)" % (
            args.baseline,
            ", ".join("%s %d" % (n, len(passed[n])) for n in agentfs),
        ))
    else:
        try:
            with open(args.baseline) as f:
                baseline = json.load(f)
        except FileNotFoundError:
            problems.append("no baseline at %s (run with --update-baseline)" % args.baseline)
            baseline = {"must_pass": {}}
        for name in agentfs:
            must = set(baseline["must_pass"].get(name, []))
            if args.filtered:
                must &= ran[name]
            lost = sorted(must - passed[name])
            # A supplementary test that did not run (--no-link-max) is no regression.
            sup_ran = set(runs[name]["supplementary"])
            must_sup = set(baseline.get("supplementary_must_pass", {}).get(name, [])) & sup_ran
            lost += sorted(must_sup - sup_passed[name])
            if lost:
                regressions[name] = lost
            gained = sorted(passed[name] - set(baseline["must_pass"].get(name, [])))
            if gained:
                newly_passing[name] = gained

    summary = OrderedDict(json.loads(args.meta))
    summary["runs"] = runs
    summary["baseline"] = OrderedDict(
        [
            ("file", os.path.relpath(args.baseline)),
            ("updated", args.update_baseline),
            ("regressions", regressions),
            ("newly_passing", newly_passing),
        ]
    )
    with open(args.summary, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")

    for name, run in runs.items():
        if run["failed"]:
            groups = ", ".join("%s %d" % kv for kv in run["failed_by_group"].items())
            print("pjdfstest: %s failures by group: %s" % (name, groups))
            for t in run["failed_tests"]:
                print("    FAILED %s: %s" % (t, run["failures"].get(t, "")))
    for name, lost in regressions.items():
        problems.append("%s: %d baseline test(s) no longer pass:\n    %s" % (
            name, len(lost), "\n    ".join(lost)))
    for name, gained in newly_passing.items():
        print("pjdfstest: %s: %d test(s) pass that the baseline does not list "
              "(run with --update-baseline to record them): %s" % (name, len(gained), " ".join(gained)))
    for p in problems:
        print("pjdfstest: REGRESSION/ERROR: " + p)
    def describe(n, r):
        text = "%s %d passed %d failed %d skipped" % (LABELS.get(n, n), r["passed"], r["failed"], r["skipped"])
        sup = r["supplementary"]
        if sup:
            text += " (+%d/%d supplementary passed)" % (sum(v == "ok" for v in sup.values()), len(sup))
        return text

    for name, run in runs.items():
        for t, r in run["supplementary"].items():
            if r != "ok":
                print("    FAILED %s (%s, supplementary): %s" % (t, name, r))
    line = "; ".join(describe(n, r) for n, r in runs.items())
    gaps = ["%s %d" % (LABELS.get(n, n), len(r["gap_to_ext4"])) for n, r in runs.items() if "gap_to_ext4" in r]
    if gaps:
        line += "; passing on ext4 but not on: " + ", ".join(gaps)
    print("pjdfstest: %s%s" % (line, "; %d problem(s)" % len(problems) if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
