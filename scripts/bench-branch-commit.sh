#!/usr/bin/env bash
# Commit time on a real mount: a tree of FILES files (default 100,000, in
# directories of 1,000) made through the mount, a snapshot and a branch of
# it, 5 files changed in the branch, then `branch-commit`: once with main
# unchanged (the fast path), once with 5 files changed in main too (the
# three-way merge). Prints the wall time of the CLI call and the daemon's own
# `millis`; asserts nothing about time. Cleans up (trap EXIT), ends only the
# daemon it started.
# Usage: scripts/bench-branch-commit.sh [FILES]   (PROFILE=release|debug, default release)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FILES=${1:-100000}
PROFILE=${PROFILE:-release}
build_flags=()
[ "$PROFILE" = release ] && build_flags=(--release)
cargo build "${build_flags[@]}" -p agentfs-fuse -p agentfs-control-cli --bins
export PATH="$PWD/target/$PROFILE:$PATH"

work=$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/agentfs-commit-bench.XXXXXX")")
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
agentfs-fuse-host --backstore "$work/store" "$mnt" >"$work/mount.log" 2>&1
daemon_pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$work/mount.log" | head -1)
cli() { agentfs-control-cli --mount "$mnt" "$@"; }

echo "# $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, $PROFILE build"
start=$(date +%s.%N)
python3 - "$mnt" "$FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000}")
    if i % 1000 == 0:
        os.mkdir(d)
    with open(os.path.join(d, f"f{i}"), "w") as f:
        f.write("x")
EOF
echo "made $FILES files through the mount in $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"

edit() { # edit BRANCH-OR-EMPTY OFFSET TEXT
    local files=() k i
    for k in 0 1 2 3 4; do
        i=$((k * (FILES / 5) + $2))
        files+=("$mnt/d$((i / 1000))/f$i")
    done
    if [ -n "$1" ]; then
        cli branch-exec --branch "$1" -- sh -c 'for f in "$@"; do echo '"$3"' > "$f"; done' sh "${files[@]}"
    else
        for f in "${files[@]}"; do echo "$3" > "$f"; done
    fi
}
for round in 0 1; do
    cli snapshot-create --name "base$round" >/dev/null
    cli branch-create --from "base$round" --name "child$round" >/dev/null
    edit "child$round" "$round" child
    [ "$round" = 1 ] && edit "" $((round + 1)) parent
    t0=$(date +%s.%N)
    out=$(cli --json branch-commit "child$round")
    t1=$(date +%s.%N)
    python3 - "$out" "$t0" "$t1" "$FILES" <<'EOF'
import json, sys
v = json.loads(sys.argv[1]); v = v.get("value", v)
wall = (float(sys.argv[3]) - float(sys.argv[2])) * 1000
kind = "fast path" if v["fast_path"] else "three-way"
print(f"commit ({kind}) at {sys.argv[4]} files: {v['branch_changes']} branch / {v['parent_changes']} parent changes, "
      f"committed={v['committed']}, daemon {v['millis']:.2f} ms, CLI wall {wall:.1f} ms")
EOF
done
