#!/usr/bin/env bash
# The FUSE requests behind the metadata workloads of test-fuse-performance,
# traced by the kernel: which requests each file costs, how long each took
# from the kernel queuing it to the daemon's answer, which daemon thread
# answered, and the time between requests (the workload's own thread).
#
# Usage: scripts/perf/fuse-trace.sh [--files N] [--no-build] [AGENTFS FLAGS...]
#   e.g. scripts/perf/fuse-trace.sh --files 20000 --passthrough off
#
# Mounts AgentFS (release build) on a fresh backstore under /var/tmp, runs
# metaops create, stat after a cache drop, stat again, and unlink over N files
# (default 20,000), each with the fuse:fuse_request_send/end tracepoints on
# (Linux 6.15+, tracefs, root), and prints scripts/perf/fuse_trace.py's table
# per step. Prints numbers only; fails only if it cannot set up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD
files=20000
build=1
while [ $# -gt 0 ]; do
    case $1 in
        --files) files=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        *) break ;;
    esac
done

tracing=/sys/kernel/tracing
[ -d "$tracing/events" ] || mount -t tracefs nodev "$tracing"
if [ ! -d "$tracing/events/fuse" ]; then
    echo "fuse-trace: this kernel has no fuse tracepoints (Linux 6.15+)" >&2
    exit 1
fi
if [ "$build" = 1 ]; then
    cargo build --release -q -p agentfs-fuse
fi
metaops=$repo/target/perf/metaops
mkdir -p "$(dirname "$metaops")"
if [ ! -x "$metaops" ] || [ scripts/perf/metaops.c -nt "$metaops" ]; then
    gcc -O2 -Wall -Wextra -o "$metaops" scripts/perf/metaops.c
fi

work=$(mktemp -d /var/tmp/agentfs-fuse-trace.XXXXXX)
mkdir "$work/store" "$work/mnt"
pid=""
cleanup() {
    echo 0 > "$tracing/events/fuse/enable" || true
    if [ -n "$pid" ]; then
        fusermount3 -u "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
"$repo/target/release/agentfs-fuse-host" --foreground --backstore "$work/store" "$@" "$work/mnt" \
    2> "$work/daemon.log" &
pid=$!
for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { cat "$work/daemon.log" >&2; exit 1; }
mkdir "$work/mnt/meta"

old_size=$(cat "$tracing/buffer_size_kb")
echo 65536 > "$tracing/buffer_size_kb"
for step in create stat-cold stat unlink; do
    op=${step%-cold}
    sync
    [ "$step" = stat-cold ] && echo 3 > /proc/sys/vm/drop_caches
    echo > "$tracing/trace"
    echo 1 > "$tracing/events/fuse/enable"
    out=$("$metaops" "$op" "$work/mnt/meta" "$files")
    echo 0 > "$tracing/events/fuse/enable"
    cp "$tracing/trace" "$work/trace"
    echo "== $step: $out"
    python3 scripts/perf/fuse_trace.py "$work/trace" "$files"
done
echo "$old_size" > "$tracing/buffer_size_kb"
