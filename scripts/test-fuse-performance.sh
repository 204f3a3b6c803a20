#!/usr/bin/env bash
# `just test-fuse-performance`: AgentFS against the host directory and
# fuse-overlayfs, measured in the same run on the same disk.
#
# Builds the binaries, installs fio, fuse-overlayfs and (for the full run)
# linux-perf if missing, mounts AgentFS (daemon mode, fresh backstore) and
# fuse-overlayfs (empty lower dir; upper and work dirs on the same disk), makes
# a plain host directory as the baseline, all three under one scratch dir on
# one filesystem, then runs scripts/perf/bench.py (the workloads; its header
# lists them) and writes, in the run directory:
#   results.jsonl  one line per workload, target and run
#   meta.json      machine, filesystem, sizes, load, perf availability
#   summary.json   medians and ratios AgentFS/host, fuse-overlayfs/host
#   summary.md     the same as a table (also printed)
#   ratios.svg     a chart of the ratios
#   status-*.json  agentfs-control-cli status before and after
# The transport workloads (in the default set) mount a second AgentFS with
# --passthrough off beside the first, so one run also measures the data path
# through the daemon. Each result line carries the CPU time the target's
# FUSE server process spent during the measured command.
# It prints numbers; it never fails on a time, and a workload that fails on a
# target is recorded as failed and the run goes on. It exits non-zero only if
# it cannot set up (build, install, mount), or, with --smoke (CI), if a
# measurement failed (an error or a wrong result such as a dirty git status).
#
# Usage: scripts/test-fuse-performance.sh [--smoke] [--runs N] [--max-files N]
#          [--dir DIR] [--out DIR] [--size-mib N] [--meta-files N]
#          [--tree-files N] [--writer-size-mib N] [--cow-size-mib N]
#          [--rand-seconds N] [--workloads seq,transport,rand,meta,tree,writers,cow,scale]
#          [--targets host,agentfs,overlay] [--profile release|debug] [--no-perf]
#          [--no-warm]
#          [--perf-events LIST] [--agentfs-args "FLAGS"]
# Defaults (the issue's full run): 3 runs, 2 GiB sequential file, 20 s random
# reads, 20,000 metadata files, a 20,000-file tree, 4 writers x 512 MiB, a
# 1 GiB file for the first write after a snapshot, snapshot trees of 1,000,
# 100,000 and 1,000,000 files, release build, scratch dir under /var/tmp,
# results in logs/fuse-performance-<UTC timestamp>/.
# Before the sequential writes and reads, the 4 writers and the copy-on-write
# copy, the harness touches and frees as much fresh memory as the command
# will fill with page cache (--no-warm skips this): on this kind of VM, memory that stayed
# free a few seconds goes back to the hypervisor and is slow to touch again,
# which otherwise charged whichever target ran first (bench.py warm_memory).
# --smoke (CI): 1 run, 64 MiB, 2 s, 1,000 files everywhere, 16 MiB writers,
# 64 MiB copy-on-write file, debug build (the one `just test` built), no
# perf install, results under target/fuse-performance-smoke-<timestamp>/.
#
# --agentfs-args: extra agentfs-fuse-host flags for the AgentFS mounts, e.g.
# "--ring-poll-us 0" (the transport mount adds --passthrough off to them).
#
# Needs root (cache drops, FUSE mounts), /dev/fuse, python3, gcc, git.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
command_line="scripts/test-fuse-performance.sh${*:+ $*}"

MiB=$((1 << 20))
smoke=0
runs=3
max_files=1000000
dir=/var/tmp
out=""
size_mib=2048
meta_files=20000
tree_files=20000
writer_mib=512
cow_mib=1024
rand_seconds=20
workloads=seq,transport,rand,meta,tree,writers,cow,scale
targets=host,agentfs,overlay
profile=release
use_perf=1
perf_req=instructions,cycles
set_runs="" set_max="" set_profile="" set_perf=""
agentfs_args=""
warm=1

while [ $# -gt 0 ]; do
    case $1 in
        --smoke) smoke=1 ;;
        --runs) runs=$2; set_runs=1; shift ;;
        --max-files) max_files=$2; set_max=1; shift ;;
        --dir) dir=$2; shift ;;
        --out) out=$2; shift ;;
        --size-mib) size_mib=$2; shift ;;
        --meta-files) meta_files=$2; shift ;;
        --tree-files) tree_files=$2; shift ;;
        --writer-size-mib) writer_mib=$2; shift ;;
        --cow-size-mib) cow_mib=$2; shift ;;
        --rand-seconds) rand_seconds=$2; shift ;;
        --workloads) workloads=$2; shift ;;
        --agentfs-args) agentfs_args=$2; shift ;;
        --targets) targets=$2; shift ;;
        --profile) profile=$2; set_profile=1; shift ;;
        --no-perf) use_perf=0 ;;
        --no-warm) warm=0 ;;
        --perf-events) perf_req=$2; set_perf=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$smoke" = 1 ]; then
    [ -n "$set_runs" ] || runs=1
    [ -n "$set_max" ] || max_files=1000
    [ -n "$set_profile" ] || profile=debug
    [ -n "$set_perf" ] || use_perf=0
    size_mib=64 meta_files=1000 tree_files=1000 writer_mib=16 cow_mib=64 rand_seconds=2
fi

say() { printf '==> %s\n' "$*"; }
die() { printf 'test-fuse-performance: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (cache drops and mounts)"
[ -c /dev/fuse ] || die "/dev/fuse is not available"
ts=$(date -u +%Y%m%dT%H%M%SZ)
if [ -z "$out" ]; then
    if [ "$smoke" = 1 ]; then out="$repo/target/fuse-performance-smoke-$ts"; else out="$repo/logs/fuse-performance-$ts"; fi
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- build -------------------------------------------------------------------
say "building ($profile)"
if [ "$profile" = release ]; then
    cargo build --release --workspace --bins
else
    cargo build --workspace --bins
fi
bin="$repo/target/$profile"
for b in agentfs-fuse-host agentfs-control-cli; do
    [ -x "$bin/$b" ] || die "the build did not produce $bin/$b"
done

# --- tools (idempotent) --------------------------------------------------------
need=()
command -v fio >/dev/null || need+=(fio)
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v git >/dev/null || need+=(git)
command -v gcc >/dev/null || need+=(gcc)
command -v findmnt >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
perf_events="" perf_note="not requested (--no-perf or --smoke)"
if [ "$use_perf" = 1 ]; then
    if ! command -v perf >/dev/null; then
        say "installing linux-perf (optional)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; } ||
            true
    fi
    if ! command -v perf >/dev/null; then
        perf_note="skipped: perf is not installable here"
    else
        # Every requested event must be counted, else counters are skipped.
        probe=$(perf stat -x, -e "$perf_req" true 2>&1 || true)
        missing=""
        for ev in ${perf_req//,/ }; do
            printf '%s\n' "$probe" | grep -Eq "^[0-9.]+,[^,]*,$ev(:[a-z]+)?," || missing+=" $ev"
        done
        if [ -z "$missing" ]; then
            perf_events=$perf_req
            perf_note="$perf_req per operation (perf stat -a, system-wide)"
        else
            perf_note="skipped: this machine does not count$missing ($(printf '%s' "$probe" |
                tr '\n' ' ' | sed 's/  */ /g' | cut -c1-160))"
        fi
    fi
fi
say "hardware counters: $perf_note"

# metaops, the metadata workload's program.
metaops=$(bash scripts/perf/metaops.sh)

# --- scratch dir, mounts, cleanup -----------------------------------------------
mkdir -p "$dir"
work=$(mktemp -d "$dir/agentfs-perf.XXXXXX")
daemon_pid=""
tp_pid=""
# AgentFS serves requests over FUSE io_uring where the kernel lets FUSE
# servers ask for it (the fuse module's enable_uring, which `just mount-fuse`
# also sets); switched on for this run and put back at the end.
uring_param=/sys/module/fuse/parameters/enable_uring
uring_old=$(cat "$uring_param" 2>/dev/null || echo none)

fuse_mounts_under() { awk -v w="$1/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r; }

cleanup() {
    local rc=$?
    set +e
    for m in $(fuse_mounts_under "$work"); do
        fusermount3 -u "$m" 2>/dev/null || { sleep 1; fusermount3 -u "$m" 2>/dev/null; } ||
            fusermount3 -u -z "$m" 2>/dev/null
    done
    for pid in $daemon_pid $tp_pid; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            sleep 2
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        fi
    done
    for m in $(fuse_mounts_under "$work"); do fusermount3 -u -z "$m" 2>/dev/null; done
    [ "$uring_old" = none ] || echo "$uring_old" >"$uring_param" 2>/dev/null
    if [ -n "$(fuse_mounts_under "$work")" ]; then
        printf 'warning: mounts left under %s; not removing it\n' "$work" >&2
    else
        [ -f "$work/agentfs/store/agentfs.log" ] && tail -n 200 "$work/agentfs/store/agentfs.log" >"$out/agentfs-log-tail.txt"
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The source tree is deterministic: generate it once per size and keep it
# (outside the scratch dir, same disk) for the next run.
cache="$dir/agentfs-perf-cache"
tree_src="$cache/tree-$tree_files"
if [[ ",$workloads," == *,tree,* ]] && [ ! -d "$tree_src" ]; then
    say "generating the $tree_files-file source tree in $tree_src (once)"
    mkdir -p "$cache"
    rm -rf "$tree_src.tmp"
    python3 scripts/perf/gentree.py "$tree_src.tmp" "$tree_files"
    mv "$tree_src.tmp" "$tree_src"
fi

host="$work/host"
ovl="$work/overlay"
afs="$work/agentfs"
mkdir -p "$host" "$ovl/lower" "$ovl/upper" "$ovl/work" "$ovl/mnt" "$afs/store" "$afs/mnt"

[ "$uring_old" = none ] || echo Y >"$uring_param" 2>/dev/null || true
say "mounting AgentFS on $afs/mnt (backstore $afs/store)${agentfs_args:+, flags $agentfs_args}"
# shellcheck disable=SC2086 # the extra flags are meant to split into words
"$bin/agentfs-fuse-host" $agentfs_args --backstore "$afs/store" "$afs/mnt" >"$work/mount.out" 2>&1 ||
    die "agentfs-fuse-host did not mount: $(cat "$work/mount.out")"
daemon_pid=$(sed -n 's/.*daemon pid \([0-9][0-9]*\).*/\1/p' "$work/mount.out" | head -n1)
[ -n "$daemon_pid" ] || die "no daemon pid in: $(cat "$work/mount.out")"
say "mounting fuse-overlayfs on $ovl/mnt"
fuse-overlayfs -o "lowerdir=$ovl/lower,upperdir=$ovl/upper,workdir=$ovl/work" "$ovl/mnt" ||
    die "fuse-overlayfs did not mount"
mkdir "$afs/mnt/bench" "$ovl/mnt/bench"
# The transport workloads: a second AgentFS mount whose file data goes
# through the daemon (--passthrough off), on its own fresh backstore.
tp="$work/agentfs-transport"
if [[ ",$workloads," == *,transport,* && ",$targets," == *,agentfs,* ]]; then
    mkdir -p "$tp/store" "$tp/mnt"
    say "mounting AgentFS with --passthrough off on $tp/mnt (the transport workloads)"
    # shellcheck disable=SC2086 # the extra flags are meant to split into words
    "$bin/agentfs-fuse-host" $agentfs_args --passthrough off --backstore "$tp/store" "$tp/mnt" \
        >"$work/mount-transport.out" 2>&1 ||
        die "agentfs-fuse-host (transport) did not mount: $(cat "$work/mount-transport.out")"
    tp_pid=$(sed -n 's/.*daemon pid \([0-9][0-9]*\).*/\1/p' "$work/mount-transport.out" | head -n1)
    mkdir "$tp/mnt/bench"
fi
# fuse-overlayfs's server process (it detaches), for its CPU time per workload.
ovl_pid=""
for c in /proc/[0-9]*/cmdline; do
    if tr '\0' ' ' <"$c" 2>/dev/null | grep -q "^fuse-overlayfs .*$ovl/mnt"; then
        ovl_pid=${c#/proc/}
        ovl_pid=${ovl_pid%/cmdline}
        break
    fi
done

"$bin/agentfs-control-cli" --mount "$afs/mnt" status --json >"$out/status-before.json"
data_path=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["value"]["data_path"])' <"$out/status-before.json")
channel=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["value"].get("request_channel", "dev-fuse"))' <"$out/status-before.json")
say "AgentFS: data path $data_path, requests over $channel"

# --- meta.json -----------------------------------------------------------------
read -r fs_type fs_source < <(findmnt -no FSTYPE,SOURCE -T "$work")
export META_TS=$ts META_CMD=$command_line META_DIR=$dir META_FSTYPE=$fs_type META_FSSRC=$fs_source \
    META_RUNS=$runs META_PERF=$perf_note META_PATH=$data_path META_PROFILE=$profile META_SMOKE=$smoke \
    META_CHANNEL=$channel META_FLAGS=$agentfs_args
export META_SIZES="size_mib=$size_mib meta_files=$meta_files tree_files=$tree_files writer_mib=$writer_mib cow_mib=$cow_mib rand_seconds=$rand_seconds max_files=$max_files"
python3 - "$out/meta.json" <<'EOF'
import json, os, platform, subprocess, sys
e = os.environ
def sh(c):
    return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
meta = {
    "timestamp": e["META_TS"], "command": e["META_CMD"], "smoke": e["META_SMOKE"] == "1",
    "fs_dir": e["META_DIR"], "fs_type": e["META_FSTYPE"], "fs_source": e["META_FSSRC"],
    "kernel": platform.release(), "cpus": os.cpu_count(),
    "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "loadavg_before": " ".join(open("/proc/loadavg").read().split()[:3]),
    "runs": int(e["META_RUNS"]), "sizes": dict(kv.split("=") for kv in e["META_SIZES"].split()),
    "perf": e["META_PERF"], "agentfs_data_path": e["META_PATH"], "agentfs_build": e["META_PROFILE"],
    "agentfs_request_channel": e["META_CHANNEL"],
    "agentfs_mount_flags": "daemon mode, " + (e["META_FLAGS"] or "defaults (no flags besides --backstore)"),
    "fuse_overlayfs_options": "lowerdir=<empty>,upperdir=<same disk>,workdir=<same disk>",
    "fio": sh("fio --version"), "fuse_overlayfs": sh("dpkg-query -W -f='${Version}' fuse-overlayfs 2>/dev/null || fuse-overlayfs --version 2>/dev/null | head -n1"),
    "git_commit": sh("git rev-parse HEAD"), "git_dirty": bool(sh("git status --porcelain -uno")),
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF
say "filesystem: $work on $fs_source ($fs_type); load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- the workloads -----------------------------------------------------------------
bench_rc=0
strict=""
[ "$smoke" = 1 ] && strict=1
say "workloads: $workloads; targets: $targets; $runs run(s); results in $out"
python3 scripts/perf/bench.py --out "$out/results.jsonl" --work "$work" \
    --host "$host" --agentfs "$afs/mnt/bench" --agentfs-mount "$afs/mnt" --overlay "$ovl/mnt/bench" \
    --cli "$bin/agentfs-control-cli" --metaops "$metaops" --tree-src "$tree_src" \
    --targets "$targets" --workloads "$workloads" --runs "$runs" \
    --size $((size_mib * MiB)) --rand-seconds "$rand_seconds" --meta-files "$meta_files" \
    --writer-size $((writer_mib * MiB)) --cow-size $((cow_mib * MiB)) --max-files "$max_files" \
    --perf-events "$perf_events" ${tp_pid:+--agentfs-transport "$tp/mnt/bench"} \
    --server-pids "agentfs=$daemon_pid${ovl_pid:+,overlay=$ovl_pid}${tp_pid:+,transport=$tp_pid}" \
    ${strict:+--fail-on-error} $([ "$warm" = 1 ] || echo --no-warm) || bench_rc=$?

"$bin/agentfs-control-cli" --mount "$afs/mnt" status --json >"$out/status-after.json" || true
python3 - "$out/meta.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["loadavg_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
json.dump(m, open(sys.argv[1], "w"), indent=2)
EOF
python3 scripts/perf/summarize.py "$out"
python3 scripts/perf/chart.py "$out"
say "done: $out"
# Only the smoke run (CI) fails, and only on a failed measurement, never on a time.
exit "$bench_rc"
