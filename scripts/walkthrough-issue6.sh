#!/usr/bin/env bash
# The branch workflow of issue 6, end to end on a real mount, as a test:
#
#   1. mount AgentFS over a git checkout (--lower: nothing is copied);
#   2. snapshot it as "base" and make three branches of it;
#   3. three shells, each bound to one branch (two by branch-bind, one by
#      branch-exec), make a different edit at the same paths at once;
#   4. diff each branch against the base;
#   5. commit one branch ("feature") into main;
#   6. export it onto the checkout (dry run first);
#   7. `git status` / `git diff` in the checkout show exactly that branch's edits;
#   8. delete the other two branches and show their space reclaimed.
#
# Each check prints "ok N - ..."; the first failure stops the run (exit 1).
# Always unmounts and removes its temp dirs (trap EXIT) and ends only the
# daemon it started, by pid. Needs /dev/fuse, root (or a user allowed to
# mount FUSE), git, python3, fusermount3.
# Environment: PROFILE=debug|release (default debug), AGENTFS_PASSTHROUGH=auto|off,
# STEP_TIMEOUT per command (default 60 s), KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

PROFILE=${PROFILE:-debug}
STEP_TIMEOUT=${STEP_TIMEOUT:-60}
PASSTHROUGH=${AGENTFS_PASSTHROUGH:-auto}
passed=0

say() { printf '\n==> %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$1" >&2
    if [ $# -gt 1 ] && [ -n "$2" ]; then printf '%s\n' "$2" | sed 's/^/    /' >&2; fi
    exit 1
}
pass() {
    passed=$((passed + 1))
    printf 'ok %d - %s\n' "$passed" "$1"
}
t() { timeout -k 5 "$STEP_TIMEOUT" "$@"; }

for tool in git python3 fusermount3; do
    command -v "$tool" >/dev/null || fail "$tool is needed (run scripts/bootstrap.sh)"
done
[ -c /dev/fuse ] || fail "/dev/fuse is not available: this walk-through needs a real FUSE mount"

say "building agentfs-fuse-host and agentfs-control-cli ($PROFILE)"
build_flags=()
[ "$PROFILE" = release ] && build_flags=(--release)
cargo build "${build_flags[@]}" -p agentfs-fuse -p agentfs-control-cli --bins
bin_dir="$repo/target/$PROFILE"
export PATH="$bin_dir:$PATH"

work=$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/agentfs-issue6.XXXXXX")")
mnt="$work/mnt"
store="$work/store"
checkout="$work/checkout"
mkdir "$mnt" "$store"
daemon_pid=""
is_mounted() { grep -qs " $1 fuse" /proc/self/mounts; }
cleanup() {
    local rc=$?
    set +e
    if is_mounted "$mnt"; then
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null
    fi
    if [ -n "$daemon_pid" ]; then
        for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$daemon_pid" 2>/dev/null && kill "$daemon_pid" 2>/dev/null
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
    if [ $rc -eq 0 ]; then echo "walkthrough-issue6: $passed passed, 0 failed"; else echo "walkthrough-issue6: $passed passed, 1 failed"; fi
    exit $rc
}
trap cleanup EXIT

# A git checkout of this repository at $1: a clone, or (when this copy is not a
# git repository) its sources committed into a new one.
make_checkout() {
    if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
        t git clone -q --no-hardlinks "$repo" "$1"
    else
        mkdir "$1"
        cp -a "$repo/README.md" "$repo/justfile" "$repo/crates" "$repo/specs" "$repo/scripts" "$1/"
        git -C "$1" init -q
        git -C "$1" add -A
        git -C "$1" -c user.email=walkthrough@agentfs.invalid -c user.name=walkthrough commit -q -m sources
    fi
}

# The CLI's --json reply payload, field by field.
cli() { t agentfs-control-cli --mount "$mnt" "$@"; }
field() { python3 -c 'import json,sys
v=json.load(sys.stdin)
v=v.get("ok",v) if isinstance(v,dict) else v
v=v["value"] if isinstance(v,dict) and "reply" in v and "value" in v else v
for k in sys.argv[1:]:
    v=v[int(k)] if isinstance(v,list) else v[k]
print(json.dumps(v) if isinstance(v,(dict,list)) else v)' "$@"; }

say "1. a git checkout (a clone of this repository), and AgentFS mounted over it"
make_checkout "$checkout"
files=$(git -C "$checkout" ls-files | wc -l)
show "agentfs-fuse-host --backstore $store --lower $checkout $mnt"
start=$(date +%s.%N)
t agentfs-fuse-host --allow-other --passthrough "$PASSTHROUGH" --backstore "$store" --lower "$checkout" "$mnt" \
    >"$work/mount.log" 2>&1 || fail "mount failed" "$(cat "$work/mount.log")"
end=$(date +%s.%N)
daemon_pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$work/mount.log" | head -1)
[ -n "$daemon_pid" ] || fail "no daemon pid in the mount message" "$(cat "$work/mount.log")"
printf 'mounted over %d tracked files in %s s\n' "$files" "$(python3 -c "print(round($end - $start, 3))")"
[ "$(cat "$mnt/README.md" | head -1)" = "$(head -1 "$checkout/README.md")" ] || fail "the mount does not show the checkout"
pass "the mount shows the checkout ($files files) without copying it"
[ "$(git -C "$mnt" status --porcelain | wc -l)" = 0 ] || fail "git status in the mount is not clean" "$(git -C "$mnt" status --porcelain | head)"
pass "git status in the mount is clean"

say "2. snapshot base, three branches"
show "agentfs-control-cli snapshot-create --name base"
cli snapshot-create --name base
for b in typo feature refactor; do
    show "agentfs-control-cli branch-create --from base --name $b"
    cli branch-create --from base --name "$b"
done
pass "three branches of one snapshot"

say "3. three shells, each bound to its branch, edit at once"
# typo: one word of the README. feature: a new file, a new directory, a
# changed justfile. refactor: a rename, a deletion, and 8 MiB of build output.
typo_sh='sed -i "0,/branching/s//branching (copy-on-write)/" README.md'
feature_sh='mkdir -p docs/notes && printf "merge-back notes\n" > docs/notes/merge.md &&
  printf "pub fn hello() -> &'"'"'static str {\n    \"hello\"\n}\n" > crates/agentfs-core/src/hello.rs &&
  printf "\n# Say hello.\nhello:\n    echo hello\n" >> justfile'
refactor_sh='mv specs/limits.md specs/limits-and-sizes.md && rm scripts/bootstrap.sh &&
  head -c 8388608 /dev/urandom > build-output.bin'
show "bash -c 'agentfs-control-cli branch-bind --branch typo && cd $mnt && $typo_sh'"
t bash -c "agentfs-control-cli --mount '$mnt' branch-bind --branch typo >/dev/null && cd '$mnt' && $typo_sh" &
p1=$!
show "agentfs-control-cli branch-exec --branch feature -- bash -c 'cd $mnt && ...'"
t agentfs-control-cli --mount "$mnt" branch-exec --branch feature -- bash -c "cd '$mnt' && $feature_sh" &
p2=$!
show "bash -c 'agentfs-control-cli branch-bind --branch refactor && cd $mnt && ...'"
t bash -c "agentfs-control-cli --mount '$mnt' branch-bind --branch refactor >/dev/null && cd '$mnt' && $refactor_sh" &
p3=$!
wait $p1 || fail "the typo shell failed"
wait $p2 || fail "the feature shell failed"
wait $p3 || fail "the refactor shell failed"
[ "$(git -C "$mnt" status --porcelain | wc -l)" = 0 ] || fail "main changed" "$(git -C "$mnt" status --porcelain)"
[ -e "$mnt/specs/limits.md" ] && [ ! -e "$mnt/docs/notes" ] || fail "main sees a branch's edit"
pass "each edit stays in its branch; main is untouched"
in_branch() { local b=$1; shift; cli branch-exec --branch "$b" -- bash -c "cd '$mnt' && $*"; }
in_branch feature 'test -f docs/notes/merge.md && test -f crates/agentfs-core/src/hello.rs' || fail "feature lost its files"
in_branch refactor 'test -f specs/limits-and-sizes.md && ! test -e scripts/bootstrap.sh' || fail "refactor lost its edits"
pass "each branch sees its own edit"

say "4. diff each branch against the base"
for b in typo feature refactor; do
    show "agentfs-control-cli diff base $b"
    cli diff base "$b" | tee "$work/diff-$b.txt"
done
grep -q 'README.md' "$work/diff-typo.txt" || fail "the typo diff misses README.md" "$(cat "$work/diff-typo.txt")"
grep -q 'docs/notes/merge.md' "$work/diff-feature.txt" || fail "the feature diff misses docs/notes/merge.md"
grep -q 'limits-and-sizes.md' "$work/diff-refactor.txt" || fail "the refactor diff misses the rename"
pass "each diff names its branch's edits"

say "5. commit feature into main"
show "agentfs-control-cli branch-commit feature"
cli branch-commit feature
[ -f "$mnt/docs/notes/merge.md" ] && [ -f "$mnt/crates/agentfs-core/src/hello.rs" ] || fail "main does not show the commit"
pass "main shows feature's edits at once"
# The other branches are not affected by the commit.
in_branch typo '! test -e docs/notes' || fail "typo sees feature's commit"
pass "the other branches do not see it"

say "6. export feature onto the checkout"
if cli export feature --to "$mnt/docs" >/dev/null 2>"$work/err.txt"; then fail "export into the mount was not refused"; fi
grep -q "inside the mount" "$work/err.txt" || fail "export into the mount: unclear error" "$(cat "$work/err.txt")"
pass "export refuses a directory inside the mount"
show "agentfs-control-cli export feature --to $checkout --dry-run"
cli export feature --to "$checkout" --dry-run
[ -z "$(git -C "$checkout" status --porcelain)" ] || fail "the dry run changed the checkout"
pass "the dry run lists the steps and changes nothing"
show "agentfs-control-cli export feature --to $checkout"
cli export feature --to "$checkout"

say "7. git in the checkout shows exactly feature's edits"
show "git -C $checkout status --porcelain --untracked-files=all"
git -C "$checkout" status --porcelain --untracked-files=all | tee "$work/status.txt"
expected=$' M justfile\n?? crates/agentfs-core/src/hello.rs\n?? docs/notes/merge.md'
[ "$(sort "$work/status.txt")" = "$(printf '%s\n' "$expected" | sort)" ] ||
    fail "git status differs from feature's edits" "$(cat "$work/status.txt")"
show "git -C $checkout diff"
git -C "$checkout" diff | tee "$work/git-diff.txt"
[ "$(grep -c '^+[^+]' "$work/git-diff.txt")" = 3 ] && grep -q '^+hello:' "$work/git-diff.txt" ||
    fail "git diff is not the three added justfile lines"
pass "git status and git diff show exactly the feature branch's edits"

say "7b. export refactor (a rename, a deletion) onto a second clone"
make_checkout "$work/checkout2"
cli export refactor --to "$work/checkout2"
git -C "$work/checkout2" status --porcelain --untracked-files=all | tee "$work/status2.txt"
expected2=$' D scripts/bootstrap.sh\n D specs/limits.md\n?? build-output.bin\n?? specs/limits-and-sizes.md'
[ "$(sort "$work/status2.txt")" = "$(printf '%s\n' "$expected2" | sort)" ] ||
    fail "git status differs from refactor's edits" "$(cat "$work/status2.txt")"
cmp -s "$work/checkout2/specs/limits-and-sizes.md" "$checkout/specs/limits.md" || fail "the renamed file's content changed"
pass "export applies deletions and renames: git status shows exactly refactor's edits"

say "8. delete the other branches: their space comes back"
show "agentfs-control-cli status"
cli status
before=$(cli --json status | field content_bytes)
for b in typo refactor; do
    show "agentfs-control-cli branch-delete $b"
    cli branch-delete "$b"
done
show "agentfs-control-cli status"
cli status
after=$(cli --json status | field content_bytes)
printf 'backstore content: %d bytes before, %d after (%d reclaimed)\n' "$before" "$after" "$((before - after))"
[ $((before - after)) -ge 8388608 ] || fail "less than the 8 MiB of refactor's output was reclaimed ($before -> $after)"
pass "deleting the branches reclaimed their space"

say "unmount"
fusermount3 -u "$mnt"
