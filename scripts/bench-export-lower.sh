#!/usr/bin/env bash
# What `export --to <the mount's own --lower directory>` costs: an overlay
# over a lower directory of FILES files (default 100,000, 20 x 50 x 100),
# every directory read (`find`), a snapshot and two branches; the branch
# `work` edits 5 files, deletes one and renames one, is committed into main,
# then exported once to another directory (the daemon has nothing to do) and
# once onto the lower directory (the daemon first copies up what the export
# changes, in every tree, and checkpoints). Prints the CLI's wall time and
# the daemon's `lower-detach` figures; checks that main still reads the
# committed rename and the other branch the deleted file. Asserts nothing
# about time. Cleans up (trap EXIT), ends only the daemon it started.
# Usage: scripts/bench-export-lower.sh [FILES]   (PROFILE=release|debug, default release)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FILES=${1:-100000}
PROFILE=${PROFILE:-release}
build_flags=()
[ "$PROFILE" = release ] && build_flags=(--release)
cargo build "${build_flags[@]}" -p agentfs-fuse -p agentfs-control-cli --bins
export PATH="$PWD/target/$PROFILE:$PATH"

work=$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/agentfs-export-bench.XXXXXX")")
lower="$work/lower" mnt="$work/mnt" store="$work/store" elsewhere="$work/elsewhere"
mkdir "$lower" "$mnt" "$store" "$elsewhere"
daemon_pid=""
cleanup() {
    set +e
    grep -qs " $mnt fuse" /proc/self/mounts && { fusermount3 -u "$mnt" || fusermount3 -u -z "$mnt"; }
    [ -n "$daemon_pid" ] && for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    rm -rf "$work"
}
trap cleanup EXIT

python3 - "$lower" "$FILES" <<'PY'
import os, sys
root, files = sys.argv[1], int(sys.argv[2])
per_dir = 100
dirs = max(1, files // per_dir)
for i in range(dirs):
    d = os.path.join(root, f"d{i // 50}", f"e{i % 50}")
    os.makedirs(d, exist_ok=True)
    for c in range(per_dir):
        with open(os.path.join(d, f"f{c}"), "w") as f:
            f.write(f"file {i}/{c} of the lower directory\n")
PY
agentfs-fuse-host --backstore "$store" --lower "$lower" "$mnt" >"$work/mount.log" 2>&1
daemon_pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$work/mount.log")
cli() { agentfs-control-cli --mount "$mnt" "$@"; }
now() { date +%s.%N; }
ms() { python3 -c "print(f'{($2 - $1) * 1000:.1f}')" ; }

echo "lower directory: $(find "$lower" -type f | wc -l) files; build: $PROFILE"
t0=$(now); n=$(find "$mnt" -path "$mnt/.agentfs" -prune -o -type f -print | wc -l); t1=$(now)
echo "find in the mount (reads every directory): $n files, $(ms "$t0" "$t1") ms"
cli snapshot-create --name base >/dev/null
cli branch-create --from base --name work >/dev/null
cli branch-create --from base --name other >/dev/null
w="$mnt/.agentfs/branches/work"
for i in 0 1 2 3 4; do echo "edit $i" >"$w/d0/e$i/f$i"; done
rm "$w/d0/e9/f9"
mv "$w/d0/e8/f8" "$w/d0/e8/moved"
cli --json branch-commit work >"$work/commit.json"
grep -q '"committed": true' "$work/commit.json"
cp -r "$lower/d0" "$elsewhere/"
for target in elsewhere lower; do
    dir=$elsewhere
    [ "$target" = lower ] && dir=$lower
    t0=$(now)
    cli --json export work --to "$dir" >"$work/export.json"
    t1=$(now)
    detached=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['detached'])" "$work/export.json")
    echo "export to $target: CLI $(ms "$t0" "$t1") ms; detached: $detached"
done
# The daemon's own breakdown (read the lower directories, copy up, swap the
# copies into every tree under their locks, checkpoint).
grep -h "lower paths detached" "$store/agentfs.log" | sed 's/^.*INFO /daemon: /' || true
[ "$(cat "$mnt/d0/e8/moved")" = "file 8/8 of the lower directory" ]
echo "main still reads the committed rename (d0/e8/moved); the lower has no d0/e8/f8: $([ -e "$lower/d0/e8/f8" ] && echo no || echo yes)"
[ "$(cat "$mnt/.agentfs/branches/other/d0/e9/f9")" = "file 9/9 of the lower directory" ]
echo "the other branch still reads d0/e9/f9, which the export deleted from the lower directory"
