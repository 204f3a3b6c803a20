#!/usr/bin/env bash
# The harness's metadata loops (scripts/perf/metaops.c: create, stat after a
# cache drop, stat again, unlink) on three targets side by side, the order
# turning each round: the host directory, AgentFS (release build, daemon
# mode, defaults) and scripts/perf/fuse-floor.c, a FUSE server that keeps
# its tree in a hash table and does nothing else, over the same transport
# and with the same caching as AgentFS. The floor's time per file is what
# the kernel and the transport cost alone: its ratio to the host is the
# best any FUSE server can reach here, and AgentFS's distance from it is
# AgentFS's own cost.
#
# Usage: scripts/perf/fuse-floor.sh [--files N] [--rounds N] [--no-build]
# Defaults: 20,000 files (the harness's), 5 rounds. Prints each round's
# seconds, then per target the median seconds, microseconds per file and
# the ratio to the host (host seconds / target seconds: >1 faster).
#
# Needs root and Linux 6.14+ with FUSE over io_uring: it sets
# /sys/module/fuse/parameters/enable_uring to Y for its mounts and puts the
# old value back on exit. Prints numbers only; fails only if it cannot set up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD
files=20000 rounds=5 build=1
while [ $# -gt 0 ]; do
    case $1 in
        --files) files=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --no-build) build=0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

param=/sys/module/fuse/parameters/enable_uring
[ -w "$param" ] || { echo "fuse-floor: $param is not writable (kernel without FUSE over io_uring, or not root)" >&2; exit 1; }
if [ "$build" = 1 ]; then
    cargo build --release -q -p agentfs-fuse
fi
metaops=$(bash scripts/perf/metaops.sh)

work=$(mktemp -d /var/tmp/agentfs-fuse-floor.XXXXXX)
old=$(cat "$param")
floor_pid=""
cleanup() {
    for m in "$work/floor" "$work/agentfs"; do
        mountpoint -q "$m" && { umount "$m" 2>/dev/null || umount -l "$m"; }
    done
    [ -z "$floor_pid" ] || kill "$floor_pid" 2>/dev/null || true
    echo "$old" > "$param"
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/host" "$work/floor" "$work/agentfs" "$work/store"
gcc -O2 -Wall -Wextra -pthread -o "$work/fuse-floor" scripts/perf/fuse-floor.c
echo Y > "$param"

# Each server in a session of its own, as AgentFS's daemon is (the
# scheduler groups a session's threads: see specs/performance.md).
setsid "$work/fuse-floor" "$work/floor" > "$work/floor.out" 2>&1 &
floor_pid=$!
for _ in $(seq 100); do
    grep -q ready "$work/floor.out" && break
    sleep 0.1
done
grep -q ready "$work/floor.out" || { cat "$work/floor.out" >&2; exit 1; }
# Daemon mode, as the harness mounts it; it exits when unmounted.
"$repo/target/release/agentfs-fuse-host" --backstore "$work/store" "$work/agentfs" > /dev/null

seconds() { "$metaops" "$@" | sed 's/.*"seconds":\([0-9.]*\).*/\1/'; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; sleep 0.5; }
targets=(host floor agentfs)
for r in $(seq "$rounds"); do
    n=${#targets[@]}
    for i in $(seq 0 $((n - 1))); do
        t=${targets[$(((i + r) % n))]}
        d=$work/$t/r$r
        mkdir "$d"
        sync; sleep 1
        c=$(seconds create "$d" "$files")
        cold; sc=$(seconds stat "$d" "$files")
        sw=$(seconds stat "$d" "$files")
        sync; sleep 1
        u=$(seconds unlink "$d" "$files")
        rmdir "$d"
        echo "round $r $t create $c stat_cold $sc stat_warm $sw unlink $u"
    done
done | tee "$work/rounds.txt"

python3 - "$work/rounds.txt" "$files" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    for k, v in zip(p[3::2], p[4::2]):
        runs[(p[2], k)].append(float(v))
files = int(sys.argv[2])
print(f"{'workload':10} {'target':8} {'median s':>9} {'us/file':>8} {'host/target':>11}")
for k in ["create", "stat_cold", "stat_warm", "unlink"]:
    host = statistics.median(runs[("host", k)])
    for t in ["host", "floor", "agentfs"]:
        m = statistics.median(runs[(t, k)])
        print(f"{k:10} {t:8} {m:9.4f} {m * 1e6 / files:8.2f} {host / m:11.2f}")
EOF
