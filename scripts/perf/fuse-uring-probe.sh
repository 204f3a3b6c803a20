#!/usr/bin/env bash
# What one FUSE round trip costs here through the /dev/fuse read loop that
# fuser (and so AgentFS) uses, against FUSE over io_uring, measured with
# scripts/perf/fuse-uring-probe.c: a minimal filesystem of its own whose only
# work per request is building the reply. See the header of the C file.
#
# Usage: scripts/perf/fuse-uring-probe.sh [--files N] [--passes N] [--runs N]
# Defaults: 5,000 files, 10 passes (50,000 lstats, one LOOKUP each), 5 runs
# of each configuration, interleaved; prints each run's JSON line and the
# median microseconds per lstat of each configuration.
#
# Needs root and Linux 6.14+ with FUSE over io_uring built in. It sets
# /sys/module/fuse/parameters/enable_uring to Y for its own mounts and puts
# the old value back on exit (the parameter only lets a FUSE server ask for
# io_uring; servers that do not ask are unaffected). It prints numbers and
# fails only if it cannot set up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

files=5000 passes=10 runs=5
while [ $# -gt 0 ]; do
    case $1 in
        --files) files=$2; shift ;;
        --passes) passes=$2; shift ;;
        --runs) runs=$2; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

param=/sys/module/fuse/parameters/enable_uring
[ -w "$param" ] || { echo "fuse-uring-probe: $param is not writable (kernel without FUSE over io_uring, or not root)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/fuse-uring-probe.XXXXXX)
old=$(cat "$param")
cleanup() {
    mountpoint -q "$work/mnt" && umount -l "$work/mnt"
    echo "$old" > "$param"
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/mnt"
gcc -O2 -Wall -Wextra -pthread -o "$work/probe" scripts/perf/fuse-uring-probe.c
echo Y > "$param"

# label|mode threads client_cpu
configs=(
    "read, 2 threads|read 2 -1"
    "read, 2 threads, caller on CPU 0|read 2 0"
    "uring, a queue per CPU|uring 0 -1"
    "uring, a queue per CPU, caller on CPU 0|uring 0 0"
)
for r in $(seq "$runs"); do
    for c in "${configs[@]}"; do
        label=${c%%|*}
        read -r mode threads cpu <<< "${c#*|}"
        line=$(timeout 300 "$work/probe" "$mode" "$work/mnt" "$files" "$passes" "$threads" "$cpu")
        echo "run $r  $label: $line"
        echo "$label|$line" >> "$work/results"
    done
done
echo
echo "median microseconds per lstat (one LOOKUP round trip each), $runs runs:"
python3 - "$work/results" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, js = line.rstrip("\n").split("|", 1)
    runs.setdefault(label, []).append(json.loads(js)["us_per_lstat"])
for label, v in runs.items():
    print(f"  {label:42s} {statistics.median(v):7.2f}   (runs: {', '.join(f'{x:.2f}' for x in v)})")
EOF
