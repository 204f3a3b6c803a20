#!/usr/bin/env bash
# Diff time on a real mount: a tree of FILES files (default 100,000, in
# directories of 1,000) made through the mount, a snapshot and a branch of
# it, 10 changes in the branch through .agentfs/branches/feat (4 writes, 2
# chmods, 1 delete, 1 mkdir, 1 move, 1 create), then `diff base feat`
# RUNS times (default 7): the CLI's wall time (process start included) and
# the daemon's own time (--stats), median of the runs. In the same run, the
# baselines a user has without diff: `find` of the branch (one walk through
# FUSE) and `diff -rq` of the snapshot and branch directories. Asserts
# nothing about time; checks the diff found the 10 changes. Cleans up (trap
# EXIT), ends only the daemon it started.
# `diff -rq` runs only up to 100,000 files (it reads every file: ~110 s there).
# Usage: scripts/bench-diff.sh [FILES] [RUNS]   (PROFILE=debug|release, default
# debug; CONTENT=text each file holds, default "x"; empty: no backstore objects)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FILES=${1:-100000}
RUNS=${2:-7}
CONTENT=${CONTENT-x}
PROFILE=${PROFILE:-debug}
build_flags=()
[ "$PROFILE" = release ] && build_flags=(--release)
cargo build "${build_flags[@]}" -p agentfs-fuse -p agentfs-control-cli --bins
bin="$PWD/target/$PROFILE"

work=$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/agentfs-diff-bench.XXXXXX")")
mnt="$work/mnt"
mkdir "$mnt" "$work/store"
daemon_pid=""
cleanup() {
    set +e
    grep -qs " $mnt fuse" /proc/self/mounts && { fusermount3 -u "$mnt" || fusermount3 -u -z "$mnt"; }
    [ -n "$daemon_pid" ] && for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    rm -rf "$work"
}
trap cleanup EXIT
"$bin/agentfs-fuse-host" --backstore "$work/store" "$mnt" >"$work/mount.log" 2>&1
daemon_pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$work/mount.log" | head -1)
cli() { "$bin/agentfs-control-cli" --mount "$mnt" "$@"; }
now() { date +%s.%N; }
ms() { python3 -c "print(round(($2 - $1) * 1000, 1))"; }

echo "# $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, $PROFILE build"
t0=$(now)
python3 - "$mnt" "$FILES" "$CONTENT" <<'PY'
import os, sys
root, n, content = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(n):
    d = os.path.join(root, f"d{i // 1000}")
    if i % 1000 == 0:
        os.mkdir(d)
    with open(os.path.join(d, f"f{i}"), "w") as f:
        f.write(content)
PY
echo "made $FILES files through the mount in $(ms "$t0" "$(now)") ms"
cli snapshot-create --name base >/dev/null
cli branch-create --from base --name feat >/dev/null
br="$mnt/.agentfs/branches/feat"
dirs=$((FILES / 1000))
f() { local i=$(( ($1 * FILES / 10) % FILES )); echo "d$((i / 1000))/f$i"; }
for k in 0 1 2 3; do echo changed > "$br/$(f "$k")"; done
chmod 600 "$br/$(f 4)" "$br/$(f 5)"
rm "$br/$(f 6)"
mkdir "$br/d0/new"
mv "$br/$(f 7)" "$br/d0/new/moved"
echo new > "$br/d$((dirs - 1))/added"

walls=() daemons=()
for _ in $(seq "$RUNS"); do
    t0=$(now)
    cli diff --stats base feat >"$work/diff.out" 2>"$work/diff.err"
    walls+=("$(ms "$t0" "$(now)")")
    daemons+=("$(sed -n 's/.*daemon \([0-9.]*\) ms.*/\1/p' "$work/diff.err")")
done
lines=$(wc -l <"$work/diff.out")
if [ "$lines" != 10 ]; then
    echo "diff found $lines changes, not 10:" >&2
    cat "$work/diff.out" >&2
    exit 1
fi
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "diff base feat at $FILES files, 10 changes: CLI wall median $(median "${walls[@]}") ms (runs: ${walls[*]}), daemon median $(median "${daemons[@]}") ms; $(cat "$work/diff.err")"
sed 's/^/  /' "$work/diff.out"
t0=$(now)
n=$(find "$br" | wc -l)
echo "baseline: find of the branch ($n entries) $(ms "$t0" "$(now)") ms"
if [ "$FILES" -le 100000 ]; then
    t0=$(now)
    diff -rq "$mnt/.agentfs/snapshots/base" "$br" >/dev/null || true
    echo "baseline: diff -rq of .agentfs/snapshots/base and the branch $(ms "$t0" "$(now)") ms"
fi
