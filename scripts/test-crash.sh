#!/usr/bin/env bash
# Crash loop: mount AgentFS on one backstore, run a random workload (default
# branch and a work branch, with fsyncs, snapshots and branches) that records
# every acknowledgement in a ledger outside the mount, `kill -9` the daemon at
# a random moment, detach the dead mount, mount the same backstore again and
# verify against the ledger (scripts/crash/workload.py). Repeats N times, then
# one clean unmount + remount and a last verify. Every other iteration mounts
# with a tiny checkpoint threshold (--checkpoint-journal-kib 16), so crashes
# also land around checkpoints taken while mounted.
#
# Usage: scripts/test-crash.sh [--iterations N] [--passthrough auto|off]
#                              [--seed S] [--max-run-ms MS] [--no-build]
#                              [--commit-kill-every K] [--no-commits]
# --no-commits leaves branch-commit out of the workload (and so aims no kill
# at one). The workload checks its own reading first (workload.py selftest):
# its post-commit read-back once took a directory it could not list for an
# empty one, so a kill aimed at a commit that landed during the read-back
# looked like a commit that lost files on the live mount.
# Every K-th iteration (default 3; 0: never) the kill is aimed at a
# branch-commit: 0-12 ms after the workload announces its 1st-3rd commit.
# Logs: logs/crash-<UTC>/ (summary.txt, verify.jsonl with one line per
# verified iteration, and on failure the failing verify output, the daemon log
# and the backstore's meta/ files). Needs root and /dev/fuse.
set -euo pipefail

iterations=200
passthrough=auto
seed=$(( $(date +%s) % 100000 ))
max_run_ms=1500
commit_kill_every=3
commit_flag=""
build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --iterations) iterations=$2; shift 2 ;;
        --passthrough) passthrough=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --max-run-ms) max_run_ms=$2; shift 2 ;;
        --commit-kill-every) commit_kill_every=$2; shift 2 ;;
        --no-commits) commit_flag=--no-commits; commit_kill_every=0; shift ;;
        --no-build) build=0; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [[ $build == 1 ]]; then
    cargo build --workspace --bins
fi
host="$repo/target/debug/agentfs-fuse-host"
cli="$repo/target/debug/agentfs-control-cli"
workload="$repo/scripts/crash/workload.py"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
logdir="$repo/logs/crash-$stamp"
mkdir -p "$logdir"
work=$(mktemp -d /tmp/agentfs-crash.XXXXXX)
mnt="$work/mnt"
store="$work/store"
mkdir -p "$mnt" "$store"
daemon_pid=""
workload_pid=""
status=fail

cleanup() {
    if [[ -n $workload_pid ]]; then kill -9 "$workload_pid" 2>/dev/null || true; fi
    if [[ -n $daemon_pid ]]; then kill -9 "$daemon_pid" 2>/dev/null || true; fi
    if grep -q " $mnt " /proc/mounts; then
        fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    fi
    if [[ $status != pass ]]; then
        cp -r "$store/meta" "$logdir/backstore-meta" 2>/dev/null || true
        cp "$store/agentfs.log" "$work/daemon.log" "$logdir/" 2>/dev/null || true
        echo "crash loop FAILED; logs in $logdir" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mount_it() { # [extra daemon flags...]
    : > "$work/daemon.out"
    "$host" --foreground --allow-other --passthrough "$passthrough" "$@" \
        --backstore "$store" "$mnt" >"$work/daemon.out" 2>>"$work/daemon.log" &
    daemon_pid=$!
    for _ in $(seq 600); do
        if grep -q "mounted at" "$work/daemon.out"; then return 0; fi
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            echo "the daemon exited before mounting (the backstore did not open):" >&2
            tail -20 "$work/daemon.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "the daemon did not mount within 60 s" >&2
    return 1
}

verify_ledger() { # ledger, label
    local out="$work/verify.out"
    python3 "$workload" verify --mount "$mnt" --cli "$cli" --ledger "$1" >"$out" 2>&1 || {
        cp "$out" "$logdir/verify-$2-FAILED.txt"
        cp "$1" "$logdir/ledger-$2.jsonl"
        cat "$out" >&2
        return 1
    }
    echo "{\"iteration\": \"$2\", \"result\": $(head -1 "$out")}" >>"$logdir/verify.jsonl"
}

python3 "$workload" selftest

start=$(date +%s)
files_verified=0
snaps_verified=0
passed=0
commit_aimed=0
echo "crash loop: $iterations iterations, passthrough=$passthrough, seed=$seed, logs $logdir"
for i in $(seq 1 "$iterations"); do
    if (( i % 2 == 1 )); then
        mount_it --checkpoint-journal-kib 16
    else
        mount_it
    fi
    if [[ $i -gt 1 ]]; then
        verify_ledger "$work/ledger-$((i - 1)).jsonl" "$((i - 1))"
        read -r f s < <(python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).readline()); print(d["files_verified"], d["snapshots_verified"])' "$work/verify.out")
        files_verified=$((files_verified + f))
        snaps_verified=$((snaps_verified + s))
        passed=$((passed + 1))
        rm -f "$work/ledger-$((i - 1)).jsonl"
    fi
    python3 "$workload" run --mount "$mnt" --cli "$cli" --ledger "$work/ledger-$i.jsonl" \
        --seed $((seed * 1000 + i)) --iteration "$i" $commit_flag 2>>"$work/workload.err" &
    workload_pid=$!
    # Once the workload has taken its baseline, kill the daemon at a random
    # moment of it.
    for _ in $(seq 600); do
        if grep -q '"t": "start"' "$work/ledger-$i.jsonl" 2>/dev/null; then break; fi
        if ! kill -0 "$workload_pid" 2>/dev/null; then break; fi
        sleep 0.05
    done
    if (( commit_kill_every > 0 && i % commit_kill_every == 0 )); then
        # Aim at a branch-commit: kill 0-12 ms after the workload announces one.
        python3 - "$work/ledger-$i.jsonl" "$daemon_pid" "$workload_pid" $((seed * 1000 + i)) <<'PY' || true
import os, random, sys, time
ledger, daemon, workload, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
want = rng.randrange(1, 4)
deadline = time.monotonic() + 20
seen = 0
with open(ledger, "rb") as f:
    while time.monotonic() < deadline:
        line = f.readline()
        if not line:
            try:
                os.kill(workload, 0)
            except OSError:
                break
            time.sleep(0.0005)
            continue
        if b'"t": "commit-start"' in line:
            seen += 1
            if seen == want:
                time.sleep(rng.uniform(0, 0.012))
                break
PY
        commit_aimed=$((commit_aimed + 1))
    else
        delay_ms=$(( (seed * 7919 + i * 104729) % max_run_ms + 1 ))
        sleep "$(awk -v ms="$delay_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
    fi
    { kill -9 "$daemon_pid"; wait "$daemon_pid"; } 2>/dev/null || true
    daemon_pid=""
    { kill -9 "$workload_pid"; wait "$workload_pid"; } 2>/dev/null || true
    workload_pid=""
    if ! grep -q '"t": "start"' "$work/ledger-$i.jsonl" 2>/dev/null; then
        echo "iteration $i: the workload never started:" >&2
        tail -5 "$work/workload.err" >&2
        exit 1
    fi
    if grep -q '"t": "error"' "$work/ledger-$i.jsonl"; then
        cp "$work/ledger-$i.jsonl" "$logdir/ledger-$i.jsonl"
        echo "iteration $i: the workload failed on a live mount:" >&2
        grep '"t": "error"' "$work/ledger-$i.jsonl" >&2
        exit 1
    fi
    fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt"
    if (( i % 20 == 0 )); then
        echo "  iteration $i: $passed verified so far ($files_verified files, $snaps_verified snapshots)"
    fi
done

# The last crash, then a clean unmount and remount: both must verify.
mount_it
verify_ledger "$work/ledger-$iterations.jsonl" "$iterations"
read -r f s < <(python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).readline()); print(d["files_verified"], d["snapshots_verified"])' "$work/verify.out")
files_verified=$((files_verified + f))
snaps_verified=$((snaps_verified + s))
passed=$((passed + 1))
fusermount3 -u "$mnt"
wait "$daemon_pid"
daemon_pid=""
mount_it
verify_ledger "$work/ledger-$iterations.jsonl" "clean-remount"
fusermount3 -u "$mnt"
wait "$daemon_pid"
daemon_pid=""
status=pass
elapsed=$(( $(date +%s) - start ))
{
    echo "crash loop passed: $passed of $iterations kill -9 iterations recovered and verified, then a clean remount"
    echo "command: scripts/test-crash.sh --iterations $iterations --passthrough $passthrough --seed $seed --max-run-ms $max_run_ms --commit-kill-every $commit_kill_every${commit_flag:+ $commit_flag}"
    echo "durable files checked: $files_verified; snapshots checked file by file: $snaps_verified"
    python3 - "$logdir/verify.jsonl" "$commit_aimed" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r["result"] for r in rows if r["iteration"] != "clean-remount"]
acked = sum(r.get("commits_acknowledged", 0) for r in rows)
fl = [r.get("commit_in_flight", "none") for r in rows]
print("branch-commits acknowledged before a kill and found after it: %d; kills aimed at a commit: %s; "
      "kills that landed in a commit: %d (parent found exactly as before it: %d, exactly as after it: %d)"
      % (acked, sys.argv[2], fl.count("before") + fl.count("after"), fl.count("before"), fl.count("after")))
PY
    echo "checkpoints written while mounted (journal past its threshold): $(grep -c 'checkpoint written' "$work/daemon.log" || true)"
    echo "mounts serving requests over FUSE io_uring: $(grep -c 'FUSE over io_uring: one queue per CPU' "$work/daemon.log" || true) (the others read /dev/fuse)"
    echo "backstore objects at the end: $(find "$store/objects" -type f | wc -l); journal bytes: $(stat -c %s "$store/meta/journal"); checkpoint bytes: $(stat -c %s "$store/meta/checkpoint")"
    echo "elapsed: ${elapsed}s"
} | tee "$logdir/summary.txt"
