#!/usr/bin/env bash
# Reproducer for a branch-isolation leak seen once in walkthrough-issue6.sh
# step 3 (AGENTFS_PASSTHROUGH=off): after three shells bound to three branches
# edited at once, `git status` in main (unbound) showed the refactor branch's
# rename specs/limits.md -> specs/limits-and-sizes.md.
#
# Mounts AgentFS (--passthrough off by default) over a small git checkout with
# the walkthrough's paths, then repeats ROUNDS times:
#   1. `git status` in main (caches the root's entries while nothing is bound);
#   2. snapshot main as base<i>, branches typo<i>, feature<i>, refactor<i>;
#   3. the walkthrough's three shells at once (two branch-bind, one branch-exec);
#   4. checks main: `git status --porcelain` empty and specs/limits.md there;
#      on a failure it prints what main's kernel view and the daemon's tree
#      (diff base<i> main) say, then stops (exit 1);
#   5. deletes the round's branches and snapshot.
# Environment: ROUNDS (default 100), SECONDS_MAX (stop after this long,
# default 280), ROOT_FILES (extra files in the root, default 200),
# DEEP_DIRS (directories of 50 files under crates/, default 40), PASSTHROUGH=auto|off (default off), PROFILE (default debug),
# BUILD=0 to skip cargo build, HOST_BIN (another agentfs-fuse-host binary, e.g.
# one built without a fix), KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
ROUNDS=${ROUNDS:-100}
ROOT_FILES=${ROOT_FILES:-200}
DEEP_DIRS=${DEEP_DIRS:-40}
SECONDS_MAX=${SECONDS_MAX:-280}
PASSTHROUGH=${PASSTHROUGH:-off}
PROFILE=${PROFILE:-debug}

if [ "${BUILD:-1}" = 1 ]; then
    build_flags=()
    [ "$PROFILE" = release ] && build_flags=(--release)
    cargo build "${build_flags[@]}" -p agentfs-fuse -p agentfs-control-cli --bins
fi
export PATH="$repo/target/$PROFILE:$PATH"

work=$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/agentfs-bindrepro.XXXXXX")")
mnt=$work/mnt
store=$work/store
checkout=$work/checkout
mkdir "$mnt" "$store" "$checkout"
daemon_pid=""
cleanup() {
    local rc=$?
    set +e
    if grep -qs " $mnt fuse" /proc/self/mounts; then
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt"
    fi
    if [ -n "$daemon_pid" ]; then
        for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$daemon_pid" 2>/dev/null && kill "$daemon_pid"
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
    exit $rc
}
trap cleanup EXIT

# A checkout with the walkthrough's paths (and a few more entries in the root).
(
    cd "$checkout"
    mkdir -p specs scripts crates/agentfs-core/src docs
    printf 'AgentFS, a branching snapshot filesystem\n' >README.md
    printf 'test:\n    cargo test\n' >justfile
    printf '# Limits\n' >specs/limits.md
    printf '# Other\n' >specs/other.md
    printf '#!/bin/sh\n' >scripts/bootstrap.sh
    printf 'pub fn x() {}\n' >crates/agentfs-core/src/lib.rs
    # More names in the root make the first binding's invalidation longer.
    for i in $(seq "$ROOT_FILES"); do printf '%s\n' "$i" >"f$i.txt"; done
    # Many cached names below crates/ (sorted before specs/) make its
    # invalidation slow, as a clone of this repository does.
    for d in $(seq "$DEEP_DIRS"); do
        mkdir -p "crates/gen$d"
        for i in $(seq 50); do printf '%s\n' "$i" >"crates/gen$d/m$i.rs"; done
    done
    git init -q
    git add -A
    git -c user.email=r@agentfs.invalid -c user.name=r commit -q -m init
)

"${HOST_BIN:-agentfs-fuse-host}" --allow-other --passthrough "$PASSTHROUGH" --backstore "$store" \
    --lower "$checkout" "$mnt" >"$work/mount.log" 2>&1 || {
    cat "$work/mount.log"
    exit 1
}
daemon_pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$work/mount.log" | head -1)
cli() { timeout -k 5 60 agentfs-control-cli --mount "$mnt" "$@"; }

typo_sh='sed -i "0,/branching/s//branching (copy-on-write)/" README.md'
feature_sh='mkdir -p docs/notes && printf "merge-back notes\n" > docs/notes/merge.md &&
  printf "pub fn hello() {}\n" > crates/agentfs-core/src/hello.rs &&
  printf "\nhello:\n    echo hello\n" >> justfile'
refactor_sh='mv specs/limits.md specs/limits-and-sizes.md && rm scripts/bootstrap.sh &&
  head -c 8388608 /dev/urandom > build-output.bin'

start=$SECONDS
round=0
while [ "$round" -lt "$ROUNDS" ] && [ $((SECONDS - start)) -lt "$SECONDS_MAX" ]; do
    round=$((round + 1))
    # Let the last round's dead bindings be pruned, so main caches the root.
    sleep 1.1
    [ -z "$(git -C "$mnt" status --porcelain)" ] || { echo "round $round: main not clean before"; exit 1; }
    cli snapshot-create --name "base$round" >/dev/null
    for b in typo feature refactor; do cli branch-create --from "base$round" --name "$b$round" >/dev/null; done
    timeout -k 5 60 bash -c "agentfs-control-cli --mount '$mnt' branch-bind --branch typo$round >/dev/null && cd '$mnt' && $typo_sh" &
    p1=$!
    timeout -k 5 60 agentfs-control-cli --mount "$mnt" branch-exec --branch "feature$round" -- bash -c "cd '$mnt' && $feature_sh" &
    p2=$!
    timeout -k 5 60 bash -c "agentfs-control-cli --mount '$mnt' branch-bind --branch refactor$round >/dev/null && cd '$mnt' && $refactor_sh" &
    p3=$!
    rc=0
    wait $p1 || rc=1
    wait $p2 || rc=2
    wait $p3 || rc=3
    [ $rc = 0 ] || { echo "round $round: shell $rc failed"; exit 1; }
    st=$(git -C "$mnt" status --porcelain)
    if [ -n "$st" ] || [ ! -e "$mnt/specs/limits.md" ]; then
        echo "LEAK in round $round: git status in main:"
        printf '%s\n' "$st"
        echo "main's kernel view: specs ino $(stat -c %i "$mnt/specs"), scripts ino $(stat -c %i "$mnt/scripts")"
        ls -la "$mnt/specs" "$mnt/scripts" || true
        echo "the daemon's tree, diff base$round main:"
        cli diff "base$round" main || true
        echo "branch-exec main (a fresh view of main's tree):"
        cli branch-exec --branch main -- ls "$mnt/specs" "$mnt/scripts" || true
        cli status || true
        sleep 2
        echo "git status in main 2 s later:"
        git -C "$mnt" status --porcelain
        echo "repro-bind-isolation: leak after $round rounds"
        exit 1
    fi
    for b in typo feature refactor; do cli branch-delete --force "$b$round" >/dev/null; done
    cli snapshot-delete "base$round" >/dev/null
    [ $((round % 25)) != 0 ] || echo "round $round: main untouched"
done
echo "repro-bind-isolation: $round rounds, main untouched in every one (passthrough $PASSTHROUGH)"
