#!/usr/bin/env bash
# The FUSE requests behind the metadata workloads of test-fuse-performance,
# traced by the kernel: which requests each file costs, how long each took
# from the kernel queuing it to the daemon's answer, which daemon thread
# answered, and the time between requests (the workload's own thread).
#
# Usage: scripts/perf/fuse-trace.sh [--files N | --tree DIR] [--no-build] [AGENTFS FLAGS...]
#   e.g. scripts/perf/fuse-trace.sh --files 20000 --passthrough off
#        scripts/perf/fuse-trace.sh --tree /var/tmp/agentfs-perf-cache/tree-20000
#
# Mounts AgentFS (release build, daemon mode, as the performance harness
# does) on a fresh backstore under /var/tmp and traces each step with the
# fuse:fuse_request_send/end tracepoints on (Linux 6.15+, tracefs, root),
# printing scripts/perf/fuse_trace.py's table per step:
# - by default metaops create, stat after a cache drop, stat again, and
#   unlink over N files (default 20,000);
# - with --tree DIR (a git work tree, e.g. the harness's generated one) the
#   harness's tree workloads on a copy of it: cp -a into the mount, git
#   update-index --refresh, find and git status after a cache drop, rm -rf.
# Prints numbers only; fails only if it cannot set up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD
files=20000
tree=""
build=1
while [ $# -gt 0 ]; do
    case $1 in
        --files) files=$2; shift 2 ;;
        --tree) tree=$2; shift 2 ;;
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
metaops=$(bash scripts/perf/metaops.sh)

work=$(mktemp -d /var/tmp/agentfs-fuse-trace.XXXXXX)
mkdir "$work/store" "$work/mnt"
pid=""
old_size=$(cat "$tracing/buffer_size_kb")
old_on=$(cat "$tracing/tracing_on")
cleanup() {
    echo 0 > "$tracing/events/fuse/enable" || true
    echo "$old_size" > "$tracing/buffer_size_kb" || true
    echo "$old_on" > "$tracing/tracing_on" || true
    if [ -n "$pid" ]; then
        fusermount3 -u "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
        for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
# Daemon mode: the daemon in a session of its own, as users and the harness
# run it (the scheduler places a caller differently when the daemon shares
# its session; specs/performance.md).
"$repo/target/release/agentfs-fuse-host" --backstore "$work/store" "$@" "$work/mnt" > "$work/mount.out"
pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$work/mount.out")
mountpoint -q "$work/mnt" || { cat "$work/mount.out" >&2; exit 1; }

echo 131072 > "$tracing/buffer_size_kb"
# Another tool (perf, a trace-cmd run) may have left the ring buffer off, and
# then every step would look answered from the kernel's caches.
echo 1 > "$tracing/tracing_on"
# trace NAME NFILES COLD COMMAND...: one step, traced, and its table.
trace() {
    local name=$1 n=$2 cold=$3
    shift 3
    sync
    [ "$cold" = cold ] && echo 3 > /proc/sys/vm/drop_caches
    echo > "$tracing/trace"
    echo 1 > "$tracing/events/fuse/enable"
    local start end out
    start=$(date +%s%N)
    out=$("$@" 2>&1) || echo "fuse-trace: $name failed: $out" >&2
    end=$(date +%s%N)
    echo 0 > "$tracing/events/fuse/enable"
    cp "$tracing/trace" "$work/trace"
    echo "== $name: $(( (end - start) / 1000000 )) ms${out:+ $out}"
    python3 scripts/perf/fuse_trace.py "$work/trace" "$n"
}

if [ -z "$tree" ]; then
    mkdir "$work/mnt/meta"
    for step in create stat-cold stat unlink; do
        cold=warm
        [ "$step" = stat-cold ] && cold=cold
        trace "$step" "$files" "$cold" "$metaops" "${step%-cold}" "$work/mnt/meta" "$files"
    done
else
    n=$(find "$tree" -type f | wc -l)
    t=$work/mnt/tree
    git=(git -c "safe.directory=*" -C "$t")
    find "$tree" -type f -exec cat {} + > /dev/null # the source warm, as in the harness
    trace "cp -a" "$n" warm cp -a "$tree" "$t"
    trace "git update-index --refresh" "$n" warm "${git[@]}" update-index --refresh -q
    trace "find (cold)" "$n" cold find "$t" -false
    trace "git status (cold)" "$n" cold "${git[@]}" status --porcelain
    trace "rm -rf" "$n" warm rm -rf "$t"
fi
