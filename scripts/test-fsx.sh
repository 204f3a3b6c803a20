#!/usr/bin/env bash
# fsx (the Rust `fsx` crate) against a real AgentFS mount, in every branch state.
#
# Mounts agentfs-fuse-host on a fresh temp mountpoint with a fresh temp
# backstore and runs, for K seeds of N operations each, these configurations:
#   default-branch    fsx with every operation it knows (scripts/fsx/full.toml:
#                     pread, pwrite, mmap read and write, msync(MS_INVALIDATE),
#                     ftruncate, posix_fallocate, punch hole, fsync, fdatasync,
#                     sendfile, posix_fadvise, copy_file_range, close/reopen)
#                     on files of branch main.
#   snapshot-branch   the same, run by fsx bound to a branch (branch-exec) that
#                     was created from a snapshot of a directory already holding
#                     the fsx files with data. fsx opens its file with O_TRUNC,
#                     which lets go of the shared data without a copy, so a
#                     ticker also snapshots the branch every SNAP_INTERVAL
#                     seconds while fsx runs: every write after a tick is a
#                     copy-on-write of a file with data, through handles and
#                     mmaps that are already open.
#   snapshot-branch-blockmode
#                     fsx in block mode (scripts/fsx/blockmode.toml) on a file
#                     of that branch with data from the snapshot: fsx keeps the
#                     file (no O_TRUNC), so its first write copies shared data.
#                     Block mode cannot truncate, posix_fallocate or reopen.
# and in default-branch and snapshot-branch also scripts/fsx/zero_range.py (the
# same checking, for FALLOC_FL_ZERO_RANGE, which fsx lacks).
# After the branch runs it checks isolation (the populated files are unchanged
# on main and in a fresh branch made from the base snapshot) and snapshot
# stability (every 8th ticker snapshot gets a branch whose file hashes are
# taken at once and checked again at the end: a snapshot must not change under
# writers that had the file open or mapped when it was taken).
#
# Data paths: every configuration runs on a fresh mount per data path, and
# status must report the path asked for. off: the transport (FsCore serves
# every read and write; agentfs-fuse-host --passthrough off). on: FUSE
# passthrough (--passthrough auto; fails if the kernel refuses it). both: off
# then on. auto (the default): both when agentfs-fuse-host has a --passthrough
# flag, else off alone (a daemon without it has only the transport).
#
# Results go to logs/fsx-<UTC timestamp>/: summary.json (per configuration:
# seeds, ops, result), the output of every fsx run (<config>/seed-S.out) and,
# for a run that fails, the fsx log dump and artifacts (<file>.fsxgood, the
# model; <file>.fsxbad, the file as the mount holds it). Exit 1 on any mismatch.
#
# Usage: scripts/test-fsx.sh [--ops N] [--seeds K] [--seed-base S]
#            [--zero-ops N] [--passthrough off|on|both|auto] [--only CONFIG[,CONFIG]]
#   --ops N        fsx operations per seed (default 10000)
#   --seeds K      seeds per configuration (default 10: 100,000 ops each)
#   --seed-base S  seeds are S+1..S+K (default 0); the branch ones add 1000
#   --zero-ops N   zero_range.py operations per seed (default 2000)
#   --only LIST    run only these configurations (comma-separated)
# Environment: PROFILE=debug|release (default debug, what `just test` builds);
#   SNAP_INTERVAL seconds between ticker snapshots (default 0.5);
#   FSX_TMP parent of the temp dirs (default /var/tmp); LOG_DIR overrides the
#   log directory.
# Needs root (or FUSE rights), /dev/fuse, fusermount3, python3, and cargo
# (installs fsx 0.3.2 into target/tools once, ~2 min). Always unmounts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

PROFILE=${PROFILE:-debug}
SNAP_INTERVAL=${SNAP_INTERVAL:-0.5}
FSX_TMP=${FSX_TMP:-/var/tmp}
FSX_VERSION=0.3.2

ops=10000
seeds=10
seed_base=0
zero_ops=2000
passthrough=auto
only=""
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --ops) ops=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --seed-base) seed_base=$2; shift 2 ;;
    --zero-ops) zero_ops=$2; shift 2 ;;
    --passthrough) passthrough=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "test-fsx: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$ops" "$seeds" "$seed_base" "$zero_ops"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "test-fsx: '$n' is not a number" >&2; exit 2; }
done
if [ "$seeds" -lt 1 ] || [ "$ops" -lt 1 ]; then
    echo "test-fsx: --ops and --seeds must be at least 1" >&2
    exit 2
fi
case "$passthrough" in
off | on | both | auto) ;;
*) echo "test-fsx: --passthrough takes off, on, both or auto" >&2; exit 2 ;;
esac

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'test-fsx: %s\n' "$*" >&2
    exit 1
}
want() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

[ -c /dev/fuse ] || die "/dev/fuse is not available"
command -v fusermount3 >/dev/null || die "fusermount3 is needed (run scripts/bootstrap.sh)"
command -v python3 >/dev/null || die "python3 is needed"

# --- tools -------------------------------------------------------------------
fsx="$repo/target/tools/bin/fsx"
if [ ! -x "$fsx" ] || [ "$("$fsx" --version 2>/dev/null)" != "fsx $FSX_VERSION" ]; then
    say "installing fsx $FSX_VERSION into target/tools"
    cargo install fsx --version "$FSX_VERSION" --locked --root "$repo/target/tools"
fi
[ -x "$fsx" ] || die "fsx install did not produce $fsx"

say "building agentfs-fuse-host and agentfs-control-cli ($PROFILE)"
build_flags=()
[ "$PROFILE" = release ] && build_flags=(--release)
cargo build "${build_flags[@]}" -p agentfs-fuse -p agentfs-control-cli --bins
host="$repo/target/$PROFILE/agentfs-fuse-host"
cli="$repo/target/$PROFILE/agentfs-control-cli"

# Data paths to run. The daemon's --passthrough (auto|off) picks the path;
# "on" means auto and a check that status then reports "passthrough".
host_has_passthrough=0
"$host" --help 2>&1 | grep -q -- '--passthrough' && host_has_passthrough=1
case "$passthrough" in
off) modes=(off) ;;
on) modes=(on) ;;
both) modes=(off on) ;;
auto) if [ "$host_has_passthrough" = 1 ]; then modes=(off on); else modes=(off); fi ;;
esac
if [[ " ${modes[*]} " == *" on "* ]] && [ "$host_has_passthrough" = 0 ]; then
    echo "test-fsx: --passthrough on: agentfs-fuse-host has no passthrough data path" \
        "(only the transport exists; status reports data_path \"transport\")" >&2
    exit 2
fi

# --- log dir, mount, cleanup -------------------------------------------------
ts=$(date -u +%Y%m%dT%H%M%SZ)
log=${LOG_DIR:-$repo/logs/fsx-$ts}
mkdir -p "$log"
runs="$log/runs.tsv"
: >"$runs"

work=$(mktemp -d "$FSX_TMP/agentfs-fsx.XXXXXX")
mnt=""
store=""
daemon_pid=""
ticker_pid=""

is_mounted() { grep -qs " $1 fuse" /proc/self/mounts; }

# Unmount the current mount and wait for its daemon (ending it if it lingers).
unmount_fs() {
    [ -n "$mnt" ] || return 0
    if is_mounted "$mnt"; then
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || true
    fi
    if [ -n "$daemon_pid" ]; then
        for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$daemon_pid" 2>/dev/null; then
            kill -TERM "$daemon_pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$daemon_pid" 2>/dev/null && kill -KILL "$daemon_pid" 2>/dev/null
        fi
    fi
    if is_mounted "$mnt"; then fusermount3 -u -z "$mnt" 2>/dev/null || true; fi
    if [ -f "$store/agentfs.log" ]; then
        # Keep the daemon's warnings and errors as evidence.
        grep -E ' (WARN|ERROR) ' "$store/agentfs.log" | tail -n 200 >"$log/daemon-$data_path.log" 2>/dev/null || true
        [ -s "$log/daemon-$data_path.log" ] || rm -f "$log/daemon-$data_path.log"
    fi
    daemon_pid=""
    mnt=""
}

cleanup() {
    local rc=$?
    set +e
    if [ -n "$ticker_pid" ]; then
        kill "$ticker_pid" 2>/dev/null
        wait "$ticker_pid" 2>/dev/null
    fi
    local last=$mnt
    unmount_fs
    if [ -n "$last" ] && is_mounted "$last"; then
        printf 'warning: %s is still mounted; leaving %s in place\n' "$last" "$work" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

status_field() {
    "$cli" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"][sys.argv[1]])' "$1"
}

# mount_fs off|on: a fresh mount and backstore; sets mnt, store, data_path.
data_path=""
mount_fs() {
    local mode=$1 flags=() out want
    mnt="$work/mnt-$mode"
    store="$work/store-$mode"
    mkdir "$mnt" "$store"
    if [ "$host_has_passthrough" = 1 ]; then
        flags=(--passthrough "$([ "$mode" = on ] && echo auto || echo off)")
    fi
    want=$([ "$mode" = on ] && echo passthrough || echo transport)
    data_path=$want
    say "mounting on $mnt (backstore $store, passthrough $mode)"
    out=$("$host" "${flags[@]}" --backstore "$store" "$mnt" 2>&1) || die "agentfs-fuse-host did not mount: $out"
    daemon_pid=$(sed -n 's/.*daemon pid \([0-9][0-9]*\).*/\1/p' <<<"$out" | head -n1)
    [ -n "$daemon_pid" ] || die "no daemon pid in the mount message: $out"
    is_mounted "$mnt" || die "$mnt is not a FUSE mount"
    export AGENTFS_MOUNT="$mnt"
    data_path=$(status_field data_path)
    [ "$data_path" = "$want" ] ||
        die "status reports data_path '$data_path', expected '$want' for passthrough $mode (kernel $(uname -r))"
}

# A run's time limit: generous (about 30 ms per operation) but bounded, so a
# hung mount fails the run instead of hanging it.
run_timeout() { echo $((120 + $1 * 30 / 1000)); }

# run_one CONFIG TOOL SEED OPS FILE BRANCH COMMAND...
# Runs one seed (bound to BRANCH through branch-exec unless it is empty) and
# records "config data_path tool seed ops result seconds" in runs.tsv.
run_one() {
    local config=$1 tool=$2 seed=$3 n=$4 file=$5 branch=$6
    shift 6
    local dir="$log/$data_path/$config" prefix=() rc=0 t0 t1 result
    mkdir -p "$dir"
    [ -n "$branch" ] && prefix=("$cli" branch-exec --branch "$branch" --)
    local base="$dir/$tool-seed-$seed"
    t0=$(date +%s%N)
    timeout -k 10 "$(run_timeout "$n")" "${prefix[@]}" "$@" >"$base.out" 2>"$base.fsxlog" || rc=$?
    t1=$(date +%s%N)
    if [ "$rc" -eq 0 ] && grep -q 'completed A-OK!' "$base.out"; then
        result=pass
        # The log dump exists only for a failure; an empty stderr is noise.
        [ -s "$base.fsxlog" ] || rm -f "$base.fsxlog"
    else
        result=fail
        [ "$rc" -eq 124 ] && result=timeout
        # The file as the mount holds it, beside fsx's .fsxgood model.
        local bad
        bad="$dir/$(basename "$file").fsxbad"
        if [ -n "$branch" ]; then
            "$cli" branch-exec --branch "$branch" -- cat "$file" >"$bad" 2>/dev/null || true
        else
            cat "$file" >"$bad" 2>/dev/null || true
        fi
        printf '    %s %s seed %s: %s (exit %s); see %s\n' "$config" "$tool" "$seed" "$result" "$rc" "$base.fsxlog"
        tail -n 25 "$base.fsxlog" | sed 's/^/      /'
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%d.%d\n' "$config" "$data_path" "$tool" "$seed" "$n" "$result" \
        $(((t1 - t0) / 1000000000)) $(((t1 - t0) / 100000000 % 10)) >>"$runs"
    printf '    %-38s %-10s seed %-5s %7s ops  %s\n' "$config/$data_path" "$tool" "$seed" "$n" "$result"
}

fsx_run() { # CONFIG TOML SEED FILE [BRANCH]
    local config=$1 conf=$2 seed=$3 file=$4 branch=${5:-}
    run_one "$config" fsx "$seed" "$ops" "$file" "$branch" \
        "$fsx" -f "$repo/scripts/fsx/$conf" -N "$ops" -S "$seed" -P "$log/$data_path/$config" "$file"
}
zero_run() { # CONFIG SEED FILE [BRANCH]
    local config=$1 seed=$2 file=$3 branch=${4:-}
    [ "$zero_ops" -gt 0 ] || return 0
    run_one "$config" zero_range "$seed" "$zero_ops" "$file" "$branch" \
        python3 "$repo/scripts/fsx/zero_range.py" -N "$zero_ops" -S "$seed" -P "$log/$data_path/$config" "$file"
}

# Snapshot BRANCH every SNAP_INTERVAL seconds until stopped, keeping the last
# three ticks (older ones are deleted, which frees their content while fsx runs).
start_ticker() {
    local branch=$1 tag=$2
    (
        trap 'exit 0' TERM
        i=0
        while :; do
            i=$((i + 1))
            if ! "$cli" snapshot-create --branch "$branch" --name "$tag-$i" >/dev/null 2>>"$log/ticker.err"; then
                echo "snapshot $tag-$i of $branch failed" >>"$log/ticker.err"
            elif [ "$i" -gt 3 ]; then
                "$cli" snapshot-delete "$tag-$((i - 3))" >/dev/null 2>>"$log/ticker.err" ||
                    echo "snapshot-delete $tag-$((i - 3)) failed" >>"$log/ticker.err"
            fi
            # Every 8th tick: a branch from it, and the hashes it holds now, to
            # check at the end that the snapshot did not change under the
            # writers that had the files open (and mapped) when it was taken.
            if [ $((i % 8)) = 0 ] && "$cli" branch-create --from "$tag-$i" --name "$tag-chk-$i" \
                >/dev/null 2>>"$log/ticker.err"; then
                "$cli" branch-exec --branch "$tag-chk-$i" -- sh -c "cd '$mnt/cow' && sha256sum -- *" \
                    >"$work/chk-$i.sha256" 2>>"$log/ticker.err" ||
                    echo "hashing $tag-chk-$i failed" >>"$log/ticker.err"
            fi
            echo "$i" >"$log/ticker.count"
            sleep "$SNAP_INTERVAL"
        done
    ) &
    ticker_pid=$!
}
stop_ticker() {
    kill "$ticker_pid" 2>/dev/null || true
    wait "$ticker_pid" 2>/dev/null || true
    ticker_pid=""
}

seed_list() { # OFFSET
    local i
    for i in $(seq 1 "$seeds"); do echo $((seed_base + $1 + i)); done
}

# run_configs: every wanted configuration on the current mount.
run_configs() {
    local cow_before cow_after iso ticks=0 errs=0 stable="not run" checked=0
    cow_before=$(status_field cow_clones)
    : >"$log/ticker.err"

    if want default-branch; then
        say "default-branch ($data_path): $seeds seeds x $ops fsx ops, $seeds x $zero_ops zero_range ops"
        mkdir "$mnt/main"
        for s in $(seed_list 0); do
            fsx_run default-branch full.toml "$s" "$mnt/main/fsx-$s"
            zero_run default-branch "$s" "$mnt/main/zr-$s"
        done
    fi

    if want snapshot-branch || want snapshot-branch-blockmode; then
        say "populating files, snapshot, branch"
        mkdir "$mnt/cow"
        for s in $(seed_list 1000); do
            for f in fsx zr blk; do
                head -c 262144 /dev/urandom >"$mnt/cow/$f-$s"
            done
        done
        (cd "$mnt/cow" && sha256sum -- *) >"$work/populated.sha256"
        "$cli" snapshot-create --name fsx-base >/dev/null
        "$cli" branch-create --from fsx-base --name fsx-branch >/dev/null

        if want snapshot-branch; then
            say "snapshot-branch ($data_path): $seeds seeds x $ops fsx ops (+ zero_range), snapshots every ${SNAP_INTERVAL}s"
            echo 0 >"$log/ticker.count"
            start_ticker fsx-branch fsx-tick
            for s in $(seed_list 1000); do
                fsx_run snapshot-branch full.toml "$s" "$mnt/cow/fsx-$s" fsx-branch
                zero_run snapshot-branch "$s" "$mnt/cow/zr-$s" fsx-branch
            done
            stop_ticker
            ticks=$(cat "$log/ticker.count")
            rm -f "$log/ticker.count"
            say "snapshot stability: branches of ticks taken while fsx wrote still hold what they held"
            stable=pass checked=0
            for f in "$work"/chk-*.sha256; do
                [ -e "$f" ] || continue
                i=${f##*/chk-}
                i=${i%.sha256}
                checked=$((checked + 1))
                "$cli" branch-exec --branch "fsx-tick-chk-$i" -- \
                    sh -c "cd '$mnt/cow' && sha256sum --quiet -c '$f'" >>"$log/$data_path/stability.txt" 2>&1 ||
                    { stable=fail; echo "tick $i changed" >>"$log/$data_path/stability.txt"; }
                rm -f "$f"
            done
            [ -s "$log/$data_path/stability.txt" ] || rm -f "$log/$data_path/stability.txt"
            [ "$checked" -gt 0 ] || stable="not checked (no tick reached 8)"
            echo "    snapshot stability over $checked ticks: $stable"
        fi
        if want snapshot-branch-blockmode; then
            say "snapshot-branch-blockmode ($data_path): $seeds seeds x $ops fsx ops on files with data from the snapshot"
            for s in $(seed_list 1000); do
                fsx_run snapshot-branch-blockmode blockmode.toml "$s" "$mnt/cow/blk-$s" fsx-branch
            done
        fi

        say "isolation: the populated files on main and in the base snapshot are unchanged"
        iso=pass
        (cd "$mnt/cow" && sha256sum --quiet -c "$work/populated.sha256") >"$log/$data_path/isolation.txt" 2>&1 || iso=fail
        "$cli" branch-create --from fsx-base --name fsx-check >/dev/null
        "$cli" branch-exec --branch fsx-check -- sh -c "cd '$mnt/cow' && sha256sum --quiet -c '$work/populated.sha256'" \
            >>"$log/$data_path/isolation.txt" 2>&1 || iso=fail
        [ -s "$log/$data_path/isolation.txt" ] || rm -f "$log/$data_path/isolation.txt"
        echo "    isolation: $iso"
    else
        iso="not run"
    fi
    cow_after=$(status_field cow_clones)
    if [ -s "$log/ticker.err" ]; then
        errs=$(wc -l <"$log/ticker.err")
        mv "$log/ticker.err" "$log/$data_path/ticker.err"
    fi
    rm -f "$log/ticker.err"
    printf '%s\n' "{\"data_path\": \"$data_path\", \"isolation\": \"$iso\", \"cow_clones\": $((cow_after - cow_before)), \"ticker_snapshots\": $ticks, \"ticker_errors\": $errs, \"snapshot_stability\": \"$stable\", \"stability_ticks_checked\": $checked}" \
        >>"$log/paths.jsonl"
}

: >"$log/paths.jsonl"
for mode in "${modes[@]}"; do
    mount_fs "$mode"
    mkdir -p "$log/$data_path"
    run_configs
    unmount_fs
done

# --- summary -------------------------------------------------------------------
rc=0
python3 - "$runs" "$log/paths.jsonl" "$log/summary.json" <<EOF || rc=$?
import json, sys
runs = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
paths = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
configs = {}
for config, path, tool, seed, n, result, secs in runs:
    c = configs.setdefault(config + "/" + path, {"configuration": config, "data_path": path,
                                                 "tools": {}})
    t = c["tools"].setdefault(tool, {"seeds": [], "ops_per_seed": int(n), "ops_total": 0,
                                     "mismatches": 0, "failed_seeds": [], "seconds": 0.0})
    t["seeds"].append(int(seed))
    t["ops_total"] += int(n)
    t["seconds"] = round(t["seconds"] + float(secs), 1)
    if result != "pass":
        t["failed_seeds"].append({"seed": int(seed), "result": result})
        if result == "fail":
            t["mismatches"] += 1
for c in configs.values():
    for t in c["tools"].values():
        t["result"] = "pass" if not t["failed_seeds"] else "fail"
    c["result"] = "pass" if all(t["result"] == "pass" for t in c["tools"].values()) else "fail"
summary = {
    "tool": "fsx $FSX_VERSION, scripts/fsx/zero_range.py",
    "kernel": "$(uname -r)",
    "profile": "$PROFILE",
    "passthrough_option": "$passthrough",
    "data_paths": paths,
    "snap_interval_s": $SNAP_INTERVAL,
    "configurations": configs,
}
ok = all(c["result"] == "pass" for c in configs.values()) and bool(configs) \
    and all(p["isolation"] != "fail" and p["ticker_errors"] == 0
            and p["snapshot_stability"] != "fail" for p in paths)
summary["result"] = "pass" if ok else "fail"
json.dump(summary, open(sys.argv[3], "w"), indent=2)
print("configuration/data path                 tool        seeds  ops total  result")
for name, c in configs.items():
    for tool, t in c["tools"].items():
        print("%-39s %-10s %6d %10d  %s" % (name, tool, len(t["seeds"]), t["ops_total"], t["result"]))
for p in paths:
    print("%s: isolation %s, snapshot stability %s (%d ticks), copy-on-write clones %d,"
          " ticker snapshots %d, ticker errors %d"
          % (p["data_path"], p["isolation"], p["snapshot_stability"], p["stability_ticks_checked"],
             p["cow_clones"], p["ticker_snapshots"], p["ticker_errors"]))
print("result: %s" % summary["result"])
sys.exit(0 if ok else 1)
EOF
rm -f "$log/paths.jsonl"
echo "log: ${log#"$repo"/}"
exit "$rc"
