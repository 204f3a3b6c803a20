#!/usr/bin/env bash
# Stress run: mount AgentFS (release build) on a fresh backstore and run
# scripts/stress/fstress.py: N threads for D seconds of mixed file operations
# in the default branch and 3 more (through the mount path, the
# .agentfs/branches/<b>/ paths, branch-exec and branch-bind processes),
# snapshots, throwaway branches made from them, branch and snapshot deletes;
# every branch and snapshot verified against the workers' models at
# checkpoints and at the end. Measures the daemon's descriptors and VmRSS at
# the start, after warm-up and after deleting the throwaway branches and
# snapshots, and the backstore's usage; fails on any error, mismatch or leak.
#
# Usage: scripts/test-fuse-stress.sh [--duration SEC] [--threads N]
#            [--passthrough auto|off] [--seed S] [--checkpoints N] [--no-build]
#            [--debug] [--self-test-corrupt] [--lower]
# --lower mounts as an overlay (--lower DIR) over a generated directory that
# already holds each worker's wNN/ with files and subdirectories (so reads,
# copy-ups, whiteouts and renames of lower entries are in the mix); the lower
# directory must be byte for byte as generated afterwards.
# --debug uses the debug build (CI, where the debug build exists already);
# --self-test-corrupt flips a bit of one file behind the model's back after
# warm-up, so the run must fail (shows that verification catches it).
# Logs: logs/fuse-stress-<UTC>/ (summary.json, summary.md, run.log, and on
# failure the daemon log). Needs root and /dev/fuse.
set -euo pipefail

duration=300
threads=16
passthrough=auto
seed=$(( $(date +%s) % 100000 ))
checkpoints=3
build=1
lower=0
profile=release
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --passthrough) passthrough=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --checkpoints) checkpoints=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --debug) profile=debug; shift ;;
        --self-test-corrupt) extra+=(--self-test-corrupt); shift ;;
        --lower) lower=1; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [[ $build == 1 ]]; then
    if [[ $profile == release ]]; then
        cargo build --release --workspace --bins
    else
        cargo build --workspace --bins
    fi
fi
host="$repo/target/$profile/agentfs-fuse-host"
cli="$repo/target/$profile/agentfs-control-cli"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
logdir="$repo/logs/fuse-stress-$stamp"
mkdir -p "$logdir"
work=$(mktemp -d /tmp/agentfs-stress.XXXXXX)
mnt="$work/mnt"
store="$work/store"
mkdir -p "$mnt" "$store"
daemon_pid=""
status=fail

cleanup() {
    if grep -q " $mnt " /proc/mounts; then
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    fi
    if [[ -n $daemon_pid ]]; then
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$daemon_pid" 2>/dev/null || true
    fi
    if [[ $status != pass ]]; then
        cp "$work/daemon.log" "$logdir/" 2>/dev/null || true
        echo "fuse stress FAILED; logs in $logdir" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT

lower_args=()
if [[ $lower == 1 ]]; then
    lowerdir="$work/lower"
    python3 - "$lowerdir" "$threads" "$seed" <<'PY'
import os, random, sys
root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
for i in range(n):
    w = os.path.join(root, "w%02d" % i)
    dirs = [w, os.path.join(w, "ld0"), os.path.join(w, "ld1"), os.path.join(w, "ld0", "ld2")]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    for k in range(rng.randrange(15, 30)):
        with open(os.path.join(rng.choice(dirs), "lf%d" % k), "wb") as f:
            f.write(rng.randbytes(rng.randrange(0, 40000) if rng.random() < 0.95 else rng.randrange(100000, 200000)))
PY
    # What the lower directory holds: every path, type, mode, size, mtime and content hash.
    lower_listing() { (cd "$lowerdir" && find . -printf '%p %y %m %s %T@\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
    lower_listing >"$work/lower.before"
    lower_args=(--lower "$lowerdir")
    extra+=(--lower "$lowerdir")
fi
"$host" --foreground --allow-other --passthrough "$passthrough" "${lower_args[@]}" --backstore "$store" "$mnt" \
    >"$work/daemon.out" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 600); do
    if grep -q "mounted at" "$work/daemon.out"; then break; fi
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "the daemon exited before mounting:" >&2
        tail -20 "$work/daemon.log" >&2
        exit 1
    fi
    sleep 0.1
done
grep -q "mounted at" "$work/daemon.out" || { echo "the daemon did not mount within 60 s" >&2; exit 1; }

# How the kernel hands this daemon its requests (dev-fuse or io-uring).
channel=$(grep -q "FUSE over io_uring: one queue per CPU" "$work/daemon.log" && echo io-uring || echo dev-fuse)

cmd="scripts/test-fuse-stress.sh --duration $duration --threads $threads --passthrough $passthrough --seed $seed --checkpoints $checkpoints"
[[ " ${extra[*]} " == *" --self-test-corrupt "* ]] && cmd="$cmd --self-test-corrupt"
[[ $lower == 1 ]] && cmd="$cmd --lower"
[[ $profile == debug ]] && cmd="$cmd --debug"
echo "fuse stress: $cmd; requests over $channel; logs $logdir" | tee "$logdir/run.log"
rc=0
python3 "$repo/scripts/stress/fstress.py" run --mount "$mnt" --cli "$cli" --daemon-pid "$daemon_pid" \
    --out "$logdir/summary.json" --threads "$threads" --duration "$duration" --seed "$seed" \
    --checkpoints "$checkpoints" --passthrough "$passthrough" "${extra[@]}" 2>&1 | tee -a "$logdir/run.log" || rc=$?
du_kib=$(du -sk "$store" | cut -f1)
objects=$(find "$store/objects" -type f | wc -l)

fusermount3 -u "$mnt"
wait "$daemon_pid" || { echo "the daemon exited with status $? at unmount" >&2; rc=1; }
daemon_pid=""
python3 "$repo/scripts/stress/summary.py" --json "$logdir/summary.json" --md "$logdir/summary.md" \
    --command "$cmd" --commit "$(git rev-parse --short HEAD)" --kernel "$(uname -r)" --cores "$(nproc)" \
    --du-kib "$du_kib" --object-files "$objects" | tee -a "$logdir/run.log"
if [[ $lower == 1 ]]; then
    lower_listing >"$work/lower.after"
    if cmp -s "$work/lower.before" "$work/lower.after"; then
        echo "lower directory unchanged: $(grep -c ' f ' "$work/lower.before") files, byte for byte (paths, types, modes, sizes, mtimes, sha256)" | tee -a "$logdir/run.log"
    else
        echo "ERROR: the lower directory changed:" | tee -a "$logdir/run.log"
        diff "$work/lower.before" "$work/lower.after" | head -20 | tee -a "$logdir/run.log"
        rc=1
    fi
fi
if [[ $rc != 0 ]] || grep -q '"errors": [1-9]' "$logdir/summary.json"; then
    exit 1
fi
status=pass
echo "fuse stress passed; $logdir/summary.md"
