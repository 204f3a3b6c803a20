#!/usr/bin/env bash
# The README walk-through, run for real against a fresh mount, as a test.
#
# Mounts agentfs-fuse-host (daemon mode) on a fresh temp dir with a fresh temp
# backstore, then drives it with agentfs-control-cli: snapshot, branch, a bound
# shell and an unbound one seeing different content at one path, writes in a
# branch invisible elsewhere, space freed when a branch is deleted, and the CLI's
# error cases. Stops at the first check that fails, with a message, exit 1;
# otherwise ends with "N passed, 0 failed". Always unmounts and removes its
# temp dirs (trap EXIT), and ends only the daemon it started, by pid.
#
# Needs /dev/fuse and root (or a user allowed to mount FUSE), python3, fusermount3.
# Environment: PROFILE=debug|release picks the build (default debug: it is what
# `just test` already built); AGENTFS_PASSTHROUGH=auto|off picks the mount's data
# path (default auto, as the mount tests do); STEP_TIMEOUT bounds each command
# (default 60 s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROFILE=${PROFILE:-debug}
STEP_TIMEOUT=${STEP_TIMEOUT:-60}
PASSTHROUGH=${AGENTFS_PASSTHROUGH:-auto}
passed=0

say() { printf '==> %s\n' "$*"; }

# Stop the run. Inside a command substitution this ends only that subshell; the
# caller then fails too (errexit, or a comparison with the empty answer), and
# the EXIT trap prints the summary line once.
fail() {
    printf 'FAIL: %s\n' "$1" >&2
    if [ $# -gt 1 ] && [ -n "$2" ]; then printf '%s\n' "$2" | sed 's/^/    /' >&2; fi
    exit 1
}

pass() {
    passed=$((passed + 1))
    printf 'ok %d - %s\n' "$passed" "$1"
}

# Every command that touches the mount runs under a timeout, so a hung daemon
# fails the run instead of hanging it.
t() { timeout -k 5 "$STEP_TIMEOUT" "$@"; }

# --- build -------------------------------------------------------------------
say "building agentfs-fuse-host and agentfs-control-cli ($PROFILE)"
build_flags=()
[ "$PROFILE" = release ] && build_flags=(--release)
cargo build "${build_flags[@]}" -p agentfs-fuse -p agentfs-control-cli --bins
bin_dir="$PWD/target/$PROFILE"
for b in agentfs-fuse-host agentfs-control-cli; do
    [ -x "$bin_dir/$b" ] || fail "build did not produce $bin_dir/$b"
done
export PATH="$bin_dir:$PATH"
command -v python3 >/dev/null || fail "python3 is needed to read the CLI's JSON (run scripts/bootstrap.sh)"
command -v fusermount3 >/dev/null || fail "fusermount3 is needed (run scripts/bootstrap.sh)"
[ -c /dev/fuse ] || fail "/dev/fuse is not available: this test needs a real FUSE mount"

# --- mount, and clean up whatever happens ------------------------------------
# Canonical, because the daemon reports the mountpoint canonicalized.
work=$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/agentfs-cp.XXXXXX")")
mnt="$work/mnt"
store="$work/store"
out="$work/out"
err="$work/err"
mkdir "$mnt" "$store"
daemon_pid=""
bg_pid=""

is_mounted() { grep -qs " $1 fuse" /proc/self/mounts; }

cleanup() {
    local rc=$?
    set +e
    if [ -n "$bg_pid" ] && kill -0 "$bg_pid" 2>/dev/null; then
        kill "$bg_pid" 2>/dev/null
        wait "$bg_pid" 2>/dev/null
    fi
    if is_mounted "$mnt"; then
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null
    fi
    if [ -n "$daemon_pid" ]; then
        # The daemon exits on unmount; give it a moment, then end it.
        for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$daemon_pid" 2>/dev/null; then
            kill -TERM "$daemon_pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$daemon_pid" 2>/dev/null && kill -KILL "$daemon_pid" 2>/dev/null
        fi
    fi
    # A killed daemon leaves a dead mount behind; detach it before removing anything.
    is_mounted "$mnt" && fusermount3 -u -z "$mnt" 2>/dev/null
    if is_mounted "$mnt"; then
        printf 'warning: %s is still mounted; leaving %s in place\n' "$mnt" "$work" >&2
    else
        if [ "$rc" -ne 0 ] && [ -f "$store/agentfs.log" ]; then
            printf -- '--- last lines of the daemon log (%s/agentfs.log) ---\n' "$store" >&2
            grep -v 'final count' "$store/agentfs.log" | tail -n 20 >&2
        fi
        rm -rf "$work"
    fi
    [ "$rc" -ne 0 ] && printf '%s passed, 1 failed\n' "$passed"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "mounting on $mnt (backstore $store, passthrough $PASSTHROUGH)"
if ! t agentfs-fuse-host --backstore "$store" --passthrough "$PASSTHROUGH" "$mnt" >"$out" 2>"$err"; then
    fail "agentfs-fuse-host did not mount" "$(cat "$out" "$err")"
fi
grep -q "AgentFS mounted at $mnt" "$out" || fail "mount message missing" "$(cat "$out" "$err")"
daemon_pid=$(sed -n 's/.*daemon pid \([0-9][0-9]*\).*/\1/p' "$out" | head -n1)
[ -n "$daemon_pid" ] || fail "no daemon pid in the mount message" "$(cat "$out")"
kill -0 "$daemon_pid" 2>/dev/null || fail "daemon pid $daemon_pid is not running"
is_mounted "$mnt" || fail "$mnt is not a FUSE mount after agentfs-fuse-host returned"
pass "daemon mounted $mnt (pid $daemon_pid)"

[ -f "$mnt/.agentfs/control" ] || fail "$mnt/.agentfs/control is missing"
if t ls -A "$mnt" | grep -qx '.agentfs'; then
    fail ".agentfs shows up in ls of the mount root"
fi
pass ".agentfs/control present, hidden from ls of the root"

export AGENTFS_MOUNT="$mnt"

# --- helpers over the CLI ----------------------------------------------------

# Run a command that must succeed; its stdout is left in $out.
ok() {
    local what=$1
    shift
    if ! t "$@" >"$out" 2>"$err"; then
        fail "$what: '$*' failed" "$(cat "$out" "$err")"
    fi
}

# Run a CLI command that must fail with exit 1 and one line on stderr containing $2.
refused() {
    local what=$1 needle=$2 rc=0 lines
    shift 2
    t "$@" >"$out" 2>"$err" || rc=$?
    [ "$rc" -eq 1 ] || fail "$what: '$*' exited $rc, expected 1" "$(cat "$out" "$err")"
    lines=$(awk 'END { print NR }' "$err")
    [ "$lines" -eq 1 ] || fail "$what: expected one line on stderr, got $lines" "$(cat "$err")"
    if [ -n "$needle" ] && ! grep -qi -- "$needle" "$err"; then
        fail "$what: stderr does not mention '$needle'" "$(cat "$err")"
    fi
    pass "$what ($(cat "$err"))"
}

expect_eq() {
    local what=$1 want=$2 got=$3
    [ "$got" = "$want" ] || fail "$what: expected '$want', got '$got'"
    pass "$what"
}

# Evaluate a Python expression over `d`, the JSON document on stdin with the
# reply envelope ({"ok": ..} and/or {"reply": .., "value": ..}) peeled off.
json() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
if isinstance(d, dict) and set(d) == {"ok"}:
    d = d["ok"]
if isinstance(d, dict) and "reply" in d and "value" in d:
    d = d["value"]
try:
    print(eval(sys.argv[1], {"d": d}))
except Exception as e:
    sys.exit("cannot take %s of the JSON reply: %r" % (sys.argv[1], e))
' "$1"
}

status_field() {
    ok "status --json" agentfs-control-cli status --json
    json "d[\"$1\"]" <"$out"
}

# --- the walk-through ----------------------------------------------------------
say "files on the default branch"
ok "write files" sh -c "echo base > '$mnt/file' && mkdir '$mnt/dir' && echo nested > '$mnt/dir/nested'"
expect_eq "read back a new file" "base" "$(t cat "$mnt/file")"
expect_eq "read back a nested file" "nested" "$(t cat "$mnt/dir/nested")"

ok "status" agentfs-control-cli status --json
main_id=$(json 'd["default_branch"]' <"$out")
expect_eq "an unbound caller sees the default branch" "$main_id" "$(json 'd["caller_branch"]' <"$out")"
expect_eq "status names the mountpoint" "$mnt" "$(json 'd["mountpoint"]' <"$out")"
if [ "$PASSTHROUGH" = off ]; then
    expect_eq "with --passthrough off file data goes through the transport" "transport" "$(json 'd["data_path"]' <"$out")"
fi
ok "branch-list" agentfs-control-cli branch-list --json
expect_eq "the default branch is called main" "main" \
    "$(json '[b["name"] for b in d if b["is_default"]][0]' <"$out")"
ok "status from inside the mount, no --mount or AGENTFS_MOUNT" \
    sh -c "cd '$mnt/dir' && env -u AGENTFS_MOUNT agentfs-control-cli status"
pass "the CLI finds the mount containing its working directory"

say "snapshot, change, branch"
ok "snapshot-create" agentfs-control-cli snapshot-create --name base
pass "snapshot-create --name base"
ok "snapshot-list" agentfs-control-cli snapshot-list --json
expect_eq "snapshot-list shows base" "True" "$(json '"base" in [s["name"] for s in d]' <"$out")"

ok "change files" sh -c "echo changed > '$mnt/file' && echo nested-changed > '$mnt/dir/nested'"
expect_eq "the default branch sees its change" "changed" "$(t cat "$mnt/file")"

ok "branch-create" agentfs-control-cli branch-create --from base --name feature
pass "branch-create --from base --name feature"
ok "branch-list" agentfs-control-cli branch-list --json
feature_id=$(json '[b["id"] for b in d if b["name"] == "feature"][0]' <"$out")
if [ -z "$feature_id" ] || [ "$feature_id" = "$main_id" ]; then
    fail "feature has no id of its own ('$feature_id')"
fi
pass "branch-list shows feature as $feature_id"

say "a bound shell and an unbound one, same path"
for round in 1 2; do
    got=$(t bash -c "agentfs-control-cli branch-bind --branch feature >/dev/null && cat '$mnt/file' '$mnt/dir/nested'" 2>&1) ||
        fail "bound shell failed" "$got"
    expect_eq "round $round: a shell bound to feature sees the snapshot's content" "base
nested" "$got"
    expect_eq "round $round: this unbound shell still sees main's content" "changed
nested-changed" "$(t cat "$mnt/file" "$mnt/dir/nested")"
done
got=$(t bash -c "agentfs-control-cli branch-bind --branch feature >/dev/null && bash -c 'sh -c \"cat $mnt/file\"'" 2>&1) ||
    fail "grandchild of a bound shell failed" "$got"
expect_eq "processes started by a bound shell see its branch" "base" "$got"
got=$(t bash -c "agentfs-control-cli branch-bind --branch feature >/dev/null && agentfs-control-cli status --json" 2>&1) ||
    fail "status from a bound shell failed" "$got"
expect_eq "status reports the bound caller's branch" "$feature_id" "$(printf '%s' "$got" | json 'd["caller_branch"]')"
got=$(t bash -c "agentfs-control-cli branch-bind --branch feature >/dev/null && agentfs-control-cli branch-unbind >/dev/null && cat '$mnt/file'" 2>&1) ||
    fail "unbinding shell failed" "$got"
expect_eq "branch-unbind returns a shell to the default branch" "changed" "$got"

say "writes in a branch stay there"
ok "write in feature" agentfs-control-cli branch-exec --branch feature -- sh -c "echo x > '$mnt/newfile' && echo feature-edit > '$mnt/file'"
expect_eq "branch-exec sees its own write" "x" "$(t agentfs-control-cli branch-exec --branch feature -- cat "$mnt/newfile")"
[ ! -e "$mnt/newfile" ] || fail "newfile written in feature is visible on the default branch"
pass "a file created in feature is not on the default branch"
expect_eq "a file changed in feature is unchanged on the default branch" "changed" "$(t cat "$mnt/file")"
ok "branch-create other" agentfs-control-cli branch-create --from base --name other
got=$(t agentfs-control-cli branch-exec --branch other -- sh -c "if [ -e '$mnt/newfile' ]; then echo present; else echo absent; fi; cat '$mnt/file'")
expect_eq "a new branch from the snapshot has neither feature's file nor its edit" "absent
base" "$got"

say "deleting a branch frees what only it used"
ok "write 8 MiB in feature" agentfs-control-cli branch-exec --branch feature -- \
    dd if=/dev/urandom of="$mnt/big" bs=1M count=8 status=none
expect_eq "the big file is only in feature" "absent" \
    "$(if [ -e "$mnt/big" ]; then echo present; else echo absent; fi)"
before=$(status_field content_bytes)
[ "$before" -ge $((8 << 20)) ] || fail "content_bytes is $before with an 8 MiB file in feature"
pass "status counts feature's 8 MiB (content_bytes $before)"

# A shell bound to feature keeps it busy: delete without --force is refused.
ready="$work/bound"
bash -c "agentfs-control-cli branch-bind --branch feature >/dev/null && touch '$ready' && exec sleep $STEP_TIMEOUT" &
bg_pid=$!
for _ in $(seq 100); do [ -e "$ready" ] && break; sleep 0.1; done
[ -e "$ready" ] || fail "background shell did not bind to feature"
refused "branch-delete refuses a branch with a bound process" "" agentfs-control-cli branch-delete feature
kill "$bg_pid" 2>/dev/null || true
wait "$bg_pid" 2>/dev/null || true
bg_pid=""

ok "branch-delete --force" agentfs-control-cli branch-delete feature --force
pass "branch-delete feature --force"
# Freed content may wait for the kernel's last release of a handle: poll, bounded.
after=$before
for _ in $(seq 50); do
    after=$(status_field content_bytes)
    [ $((before - after)) -ge $((8 << 20)) ] && break
    sleep 0.1
done
[ $((before - after)) -ge $((8 << 20)) ] ||
    fail "content_bytes went from $before to $after after deleting feature; expected a drop of at least 8 MiB"
pass "deleting feature freed its content (content_bytes $before -> $after)"
ok "branch-list" agentfs-control-cli branch-list --json
expect_eq "feature is gone from branch-list" "False" "$(json '"feature" in [b["name"] for b in d]' <"$out")"
expect_eq "the default branch is untouched" "changed" "$(t cat "$mnt/file")"

say "errors"
refused "an unknown branch" "" agentfs-control-cli branch-bind --branch no-such-branch
refused "branch-exec on a deleted branch" "" agentfs-control-cli branch-exec --branch feature -- true
refused "a snapshot name taken twice" "" agentfs-control-cli snapshot-create --name base
refused "a branch name taken twice" "" agentfs-control-cli branch-create --from base --name other
refused "an unknown snapshot" "" agentfs-control-cli branch-create --from no-such-snapshot
refused "a directory that is not a mount" "not an AgentFS mount" agentfs-control-cli --mount /tmp status

say "unmount"
ok "fusermount3 -u" fusermount3 -u "$mnt"
for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$daemon_pid" 2>/dev/null && fail "daemon $daemon_pid still running after unmount"
is_mounted "$mnt" && fail "$mnt still mounted after fusermount3 -u"
daemon_pid=""
pass "unmount ends the daemon"

printf '%d passed, 0 failed\n' "$passed"
