#!/usr/bin/env bash
# pjdfstest conformance of AgentFS, with plain ext4 as the reference in the same run.
#
# One run does these suites with one config (scripts/pjdfstest/pjdfstest.toml):
#   ext4             a fresh directory on the host disk (checked to be ext4);
#   default-branch   a fresh AgentFS mount (--allow-other; the daemon always
#                    mounts with default_permissions), branch main;
#   snapshot-branch  the same mount: a populated tree, snapshot-create,
#                    branch-create from it, and the suite run by a pjdfstest
#                    process bound to that branch (branch-exec) inside a
#                    directory of the snapshotted tree, so every first change
#                    is a copy-on-write;
#   default-branch-transport, snapshot-branch-transport
#                    the same two on a second fresh mount with
#                    --passthrough off (the first mount uses FUSE passthrough
#                    where the kernel allows it: both data paths get covered).
# A small tmpfs is the second filesystem (-s) for the EXDEV tests. The debug
# build is used unless PROFILE=release.
#
# Results go to logs/pjdfstest-<UTC timestamp>/: the raw output of each suite,
# each mount's `status --json` and daemon log tail, and summary.json (counts,
# failed tests, failures by group, differences from ext4).
# The AgentFS runs are compared with specs/pjdfstest.baseline.json: a test the
# baseline lists that does not pass is a regression and the script exits 1.
#
# pjdfstest's link::link_count_max skips itself on every FUSE mount (glibc's
# pathconf cannot know a FUSE filesystem's LINK_MAX), so ext4 and the first
# mount's two states also run scripts/pjdfstest/link_max.py, the same test
# with ext4's LINK_MAX (65000) given; it counts separately ("supplementary") in
# the summary and in the baseline.
#
# Usage: scripts/test-pjdfstest.sh [--update-baseline] [--no-link-max] [TEST_PATTERN...]
#   --update-baseline  write the baseline from this run instead of checking it
#   --no-link-max      skip the supplementary link_count_max runs (about a
#                      minute per AgentFS state: 65000 links through FUSE)
#   TEST_PATTERN       only the tests whose names contain a pattern (for
#                      debugging; the baseline is then checked on those only)
# Environment: PROFILE=debug|release (default debug, what `just test` builds);
#   PJDFSTEST_TMP parent of the temp dirs (default /var/tmp, must be ext4);
#   SUITE_TIMEOUT seconds per suite (default 900).
# Needs root, /dev/fuse, fusermount3, python3, and cargo (installs pjdfstest
# 0.2.2 into target/tools once, ~75 s). Always unmounts what it mounted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

PROFILE=${PROFILE:-debug}
PJDFSTEST_TMP=${PJDFSTEST_TMP:-/var/tmp}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-900}
PJDFSTEST_VERSION=0.2.2
config="$repo/scripts/pjdfstest/pjdfstest.toml"
baseline="$repo/specs/pjdfstest.baseline.json"

update_baseline=0
link_max=1
patterns=()
for arg in "$@"; do
    case "$arg" in
    --update-baseline) update_baseline=1 ;;
    --no-link-max) link_max=0 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    -*)
        echo "unknown option $arg" >&2
        exit 2
        ;;
    *) patterns+=("$arg") ;;
    esac
done
if [ "$update_baseline" = 1 ] && { [ ${#patterns[@]} -gt 0 ] || [ "$link_max" = 0 ]; }; then
    echo "--update-baseline needs the full suite: no test patterns, no --no-link-max" >&2
    exit 2
fi

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'test-pjdfstest: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "pjdfstest switches users: run as root"
[ -c /dev/fuse ] || die "/dev/fuse is not available"
command -v fusermount3 >/dev/null || die "fusermount3 is needed (run scripts/bootstrap.sh)"
command -v python3 >/dev/null || die "python3 is needed"

# --- tools -------------------------------------------------------------------
pjdfstest="$repo/target/tools/bin/pjdfstest"
if [ ! -x "$pjdfstest" ]; then
    say "installing pjdfstest $PJDFSTEST_VERSION into target/tools"
    cargo install pjdfstest --version "$PJDFSTEST_VERSION" --locked --root "$repo/target/tools"
fi
[ -x "$pjdfstest" ] || die "pjdfstest install did not produce $pjdfstest"

say "building the workspace binaries ($PROFILE)"
build_flags=()
[ "$PROFILE" = release ] && build_flags=(--release)
cargo build "${build_flags[@]}" --workspace --bins
bin="$repo/target/$PROFILE"
for b in agentfs-fuse-host agentfs-control-cli; do
    [ -x "$bin/$b" ] || die "build did not produce $bin/$b"
done

# --- temp dirs, mounts, and their cleanup -------------------------------------
ts=$(date -u +%Y%m%dT%H%M%SZ)
out="$repo/logs/pjdfstest-$ts"
mkdir -p "$out"

# Short names: the socket tests bind(2) a unix socket a few levels below the
# directory under test, and sun_path holds only 108 bytes (ENAMETOOLONG beyond).
# Every directory under test is equally deep: $work/{e,p,t}/<8 characters>.
work=$(mktemp -d "$PJDFSTEST_TMP/agentfs-pjd.XXXXXX")
# The suite's switched users must be able to reach every directory under test.
chmod 0755 "$work"
ext4_dir="$work/e/ext4-run"
second="$work/second"
mkdir -m 0755 "$work/e" "$ext4_dir" "$second"
# The AgentFS mount in use (one at a time), its backstore and daemon.
mnt=""
store=""
daemon_pid=""
tmpfs_mounted=0

is_fuse_mounted() { [ -n "$1" ] && grep -qs " $1 fuse" /proc/self/mounts; }

# Unmount the current AgentFS mount and end its daemon (by pid), keeping the
# tail of its log; the daemon exits on unmount, TERM/KILL only if it does not.
unmount_agentfs() {
    local tag=$1
    if is_fuse_mounted "$mnt"; then
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || true
    fi
    if [ -n "$daemon_pid" ]; then
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$daemon_pid" 2>/dev/null; then
            kill -TERM "$daemon_pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$daemon_pid" 2>/dev/null && kill -KILL "$daemon_pid" 2>/dev/null
        fi
        daemon_pid=""
    fi
    if is_fuse_mounted "$mnt"; then fusermount3 -u -z "$mnt" 2>/dev/null || true; fi
    if [ -n "$store" ] && [ -f "$store/agentfs.log" ]; then
        tail -n 100 "$store/agentfs.log" >"$out/agentfs-daemon-$tag.log.tail" 2>/dev/null || true
    fi
    return 0
}

cleanup() {
    local rc=$?
    set +e
    unmount_agentfs aborted
    [ "$tmpfs_mounted" = 1 ] && umount "$second" 2>/dev/null
    if is_fuse_mounted "$mnt" || mountpoint -q "$second"; then
        printf 'warning: something under %s is still mounted; leaving it in place\n' "$work" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fstype=$(findmnt -n -o FSTYPE -T "$ext4_dir" 2>/dev/null || true)
[ "$(stat -f -c %T "$ext4_dir")" = "ext2/ext3" ] && [ "$fstype" = ext4 ] ||
    die "$ext4_dir is not on ext4 (stat -f: $(stat -f -c %T "$ext4_dir"), findmnt: $fstype); set PJDFSTEST_TMP"

mount -t tmpfs -o size=16m,mode=0755 agentfs-pjdfstest-second "$second"
tmpfs_mounted=1

# Run one suite: its raw output (uncoloured) goes to $out/NAME.log. pjdfstest
# exits 1 when any test fails; the summary decides what that means. With
# LINK_MAX=1 the supplementary link_count_max runs after it in the same way.
suite() {
    local name=$1 dir=$2 rc=0 start=$SECONDS
    shift 2
    say "pjdfstest: $name in $dir"
    NO_COLOR=1 timeout -k 10 "$SUITE_TIMEOUT" "$@" "$pjdfstest" -c "$config" -p "$dir" -s "$second" \
        ${patterns[@]+"${patterns[@]}"} >"$out/$name.log" 2>&1 || rc=$?
    printf '    exit %d after %ds; %s\n' "$rc" $((SECONDS - start)) \
        "$(grep -a '^Summary:' "$out/$name.log" || echo 'no Summary line')"
    [ "$rc" -ne 124 ] || echo "    (timed out after ${SUITE_TIMEOUT}s)"
    if [ "${LINK_MAX:-0}" = 1 ] && [ "$link_max" = 1 ] && [ ${#patterns[@]} -eq 0 ]; then
        local keep=()
        # A FUSE mount is thrown away whole at the end: skip 65000 unlinks there.
        [ "$name" = ext4 ] || keep=(--keep)
        start=$SECONDS
        rc=0
        timeout -k 10 "$SUITE_TIMEOUT" "$@" python3 "$repo/scripts/pjdfstest/link_max.py" \
            ${keep[@]+"${keep[@]}"} "$dir/link-max" 65000 >"$out/$name.link-max.log" 2>&1 || rc=$?
        printf '    supplementary: %s (exit %d after %ds)\n' "$(tail -n 1 "$out/$name.link-max.log")" \
            "$rc" $((SECONDS - start))
    fi
}

# One fresh AgentFS mount at $work/LETTER with data path PASSTHROUGH (auto|off):
# the suite in the default branch, then in a branch made from a snapshot of a
# populated tree. Runs are named default-branch$SUFFIX and snapshot-branch$SUFFIX.
agentfs_runs() {
    local passthrough=$1 suffix=$2 letter=$3
    mnt="$work/$letter"
    store="$work/store-$letter"
    mkdir -m 0755 "$mnt"
    mkdir -m 0700 "$store"
    say "mounting AgentFS on $mnt (backstore $store, --passthrough $passthrough)"
    local mount_out
    mount_out=$(timeout -k 5 60 "$bin/agentfs-fuse-host" --allow-other --passthrough "$passthrough" \
        --backstore "$store" "$mnt" 2>&1) || die "agentfs-fuse-host did not mount: $mount_out"
    daemon_pid=$(printf '%s\n' "$mount_out" | sed -n 's/.*daemon pid \([0-9][0-9]*\).*/\1/p' | head -n1)
    [ -n "$daemon_pid" ] || die "no daemon pid in: $mount_out"
    is_fuse_mounted "$mnt" || die "$mnt is not a FUSE mount after agentfs-fuse-host returned"
    local cli=("$bin/agentfs-control-cli" --mount "$mnt")

    # b) the default branch, in a fresh directory.
    mkdir -m 0755 "$mnt/main-run"
    suite "default-branch$suffix" "$mnt/main-run"

    # c) a branch made from a snapshot of a populated tree; the suite runs in a
    # directory of that tree, so its first change of anything is a copy-on-write.
    say "populating $mnt/tree"
    mkdir -m 0755 "$mnt/tree"
    local d f
    for d in $(seq -w 0 19); do
        mkdir -p "$mnt/tree/d$d/sub"
        for f in $(seq -w 0 11); do
            printf 'file %s/%s\n' "$d" "$f" >"$mnt/tree/d$d/f$f"
        done
        printf 'nested %s\n' "$d" >"$mnt/tree/d$d/sub/n"
        ln -s "f00" "$mnt/tree/d$d/link"
        ln "$mnt/tree/d$d/f01" "$mnt/tree/d$d/hard"
    done
    chmod -R a+rX "$mnt/tree"
    local entries seen left
    entries=$(find "$mnt/tree" | wc -l)
    say "tree: $entries entries; snapshot-create, branch-create"
    "${cli[@]}" snapshot-create --name pjdfstest-base >/dev/null
    "${cli[@]}" branch-create --from pjdfstest-base --name pjdfstest-branch >/dev/null
    seen=$("${cli[@]}" branch-exec --branch pjdfstest-branch -- find "$mnt/tree" | wc -l)
    [ "$seen" = "$entries" ] || die "the branch shows $seen entries of the snapshotted tree, expected $entries"
    # A change in main after the snapshot must not show in the branch.
    echo main-only >"$mnt/tree/d00/main-only"
    "${cli[@]}" branch-exec --branch pjdfstest-branch -- test ! -e "$mnt/tree/d00/main-only" ||
        die "a file created in main after the snapshot is visible in the branch"

    # The pjdfstest process itself is bound; its children and setuid'd forks inherit it.
    suite "snapshot-branch$suffix" "$mnt/tree/d07" "${cli[@]}" branch-exec --branch pjdfstest-branch --

    # The branch's changes stayed in the branch.
    left=$(find "$mnt/tree" | wc -l)
    [ "$left" = $((entries + 1)) ] ||
        die "main's tree has $left entries after the branch run, expected $((entries + 1))"
    "${cli[@]}" status --json >"$out/status$suffix.json"

    say "unmounting $mnt"
    unmount_agentfs "passthrough-$passthrough"
    mnt=""
    store=""
}

# --- a) ext4 -------------------------------------------------------------------
LINK_MAX=1 suite ext4 "$ext4_dir"

# --- b) and c): AgentFS, file data through passthrough where the kernel allows --
LINK_MAX=1 agentfs_runs auto "" p
data_path=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d=d.get("value", d); print(d.get("data_path", "?"))' \
    "$out/status.json" 2>/dev/null || echo '?')
say "data path of that mount: $data_path"

# --- the same with every byte through the transport (--passthrough off) ---------
agentfs_runs off "-transport" t

# --- summary, baseline -----------------------------------------------------------
meta=$(python3 -c '
import json, sys
print(json.dumps({"tool": "pjdfstest " + sys.argv[1], "timestamp_utc": sys.argv[2],
    "command": sys.argv[3], "agentfs_build": sys.argv[4], "kernel": sys.argv[5],
    "data_path": {"default-branch, snapshot-branch": sys.argv[6],
                  "default-branch-transport, snapshot-branch-transport": "transport (--passthrough off)"},
    "config": open(sys.argv[7]).read(), "test_patterns": sys.argv[8:]}))
' "$PJDFSTEST_VERSION" "$ts" "scripts/test-pjdfstest.sh $*" "$PROFILE" "$(uname -r)" "$data_path" "$config" \
    ${patterns[@]+"${patterns[@]}"})
sum_flags=()
[ "$update_baseline" = 1 ] && sum_flags+=(--update-baseline)
[ ${#patterns[@]} -gt 0 ] && sum_flags+=(--filtered)
say "results in ${out#"$repo"/}"
python3 "$repo/scripts/pjdfstest/summarize.py" --summary "$out/summary.json" --baseline "$baseline" \
    --meta "$meta" ${sum_flags[@]+"${sum_flags[@]}"} \
    ext4="$out/ext4.log" default-branch="$out/default-branch.log" snapshot-branch="$out/snapshot-branch.log" \
    default-branch-transport="$out/default-branch-transport.log" \
    snapshot-branch-transport="$out/snapshot-branch-transport.log"
