#!/usr/bin/env bash
# stress-ng (filesystem class, --verify) and fio (verify=crc32c) on a real
# AgentFS mount, in the default branch and in a branch made from a snapshot.
#
# For each data path (see --passthrough) a fresh mount and backstore, then for
# each branch state:
#   default-branch    stress-ng and fio in directories of branch main;
#   snapshot-branch   a tree holding stress-ng's directory and fio's data files
#                     (written in full on main) is snapshotted, a branch is made
#                     from it, and stress-ng and fio run bound to that branch
#                     (agentfs-control-cli branch-exec): fio's first write to
#                     each file is a copy-on-write of shared data. Afterwards
#                     main's copies of the fio files must be unchanged.
# stress-ng: `--class filesystem --sequential 1 --timeout 3s --verify
#   --metrics-brief --exclude bind-mount,binderfs,procfs,verity,fanotify,ioprio`
#   (42 stressors, ~2.5 min), judged per stressor from its messages: a stressor
#   fails on any "fail:" or "error:" line it printed, is skipped when it says it
#   skips, else passes if it reported metrics. A plain directory of the host
#   (FSTRESS_TMP) runs the same command first as the reference.
# fio: psync and mmap engines, random writes of 4-64 KiB blocks over
#   FIO_SIZE (default 256M) per engine, crc32c checksums, verify_fatal=1:
#   write then verify in one run, then the page cache is dropped and a
#   verify-only run reads everything back from the daemon.
#
# Results go to logs/stress-<UTC timestamp>/: summary.json (per data path and
# branch state: stressors passed/failed/skipped, fio verify results), the
# stress-ng and fio output of every run. Exit 1 on any failure.
#
# Usage: scripts/test-stress.sh [--passthrough off|on|both|auto] [--fio-only]
#            [--fio-size SIZE] [--no-reference]
#   --passthrough  as in scripts/test-fsx.sh: off is the transport, on is FUSE
#                  passthrough, auto (default) both when the daemon has it
#   --fio-only     skip stress-ng (the short run CI can afford)
#   --fio-size S   bytes per fio job, fio syntax (default 256M)
#   --no-reference skip the stress-ng reference run on the host directory
# Environment: PROFILE=debug|release (default debug); FSTRESS_TMP parent of the
#   temp dirs (default /var/tmp); LOG_DIR overrides the log directory;
#   STRESS_TIMEOUT seconds for one stress-ng pass (default 900).
# Needs root, /dev/fuse, fusermount3, python3; installs stress-ng and fio from
# apt when missing. Always unmounts what it mounted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

PROFILE=${PROFILE:-debug}
FSTRESS_TMP=${FSTRESS_TMP:-/var/tmp}
STRESS_TIMEOUT=${STRESS_TIMEOUT:-900}

passthrough=auto
fio_only=0
fio_size=256M
reference=1
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --passthrough) passthrough=$2; shift 2 ;;
    --fio-only) fio_only=1; shift ;;
    --fio-size) fio_size=$2; shift 2 ;;
    --no-reference) reference=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "test-stress: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$passthrough" in
off | on | both | auto) ;;
*) echo "test-stress: --passthrough takes off, on, both or auto" >&2; exit 2 ;;
esac
[[ "$fio_size" =~ ^[0-9]+[KMG]?$ ]] || { echo "test-stress: --fio-size like 64M" >&2; exit 2; }

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'test-stress: %s\n' "$*" >&2
    exit 1
}

[ -c /dev/fuse ] || die "/dev/fuse is not available"
command -v fusermount3 >/dev/null || die "fusermount3 is needed (run scripts/bootstrap.sh)"
command -v python3 >/dev/null || die "python3 is needed"

# --- tools -------------------------------------------------------------------
missing=()
command -v fio >/dev/null || missing+=(fio)
[ "$fio_only" = 1 ] || command -v stress-ng >/dev/null || missing+=(stress-ng)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} from apt"
    [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

say "building agentfs-fuse-host and agentfs-control-cli ($PROFILE)"
build_flags=()
[ "$PROFILE" = release ] && build_flags=(--release)
cargo build "${build_flags[@]}" -p agentfs-fuse -p agentfs-control-cli --bins
host="$repo/target/$PROFILE/agentfs-fuse-host"
cli="$repo/target/$PROFILE/agentfs-control-cli"

host_has_passthrough=0
"$host" --help 2>&1 | grep -q -- '--passthrough' && host_has_passthrough=1
case "$passthrough" in
off) modes=(off) ;;
on) modes=(on) ;;
both) modes=(off on) ;;
auto) if [ "$host_has_passthrough" = 1 ]; then modes=(off on); else modes=(off); fi ;;
esac
if [[ " ${modes[*]} " == *" on "* ]] && [ "$host_has_passthrough" = 0 ]; then
    die "--passthrough on: agentfs-fuse-host has no passthrough data path (only the transport exists)"
fi

# --- log dir, mount, cleanup -------------------------------------------------
ts=$(date -u +%Y%m%dT%H%M%SZ)
log=${LOG_DIR:-$repo/logs/stress-$ts}
mkdir -p "$log"
results="$log/results.jsonl"
: >"$results"

work=$(mktemp -d "$FSTRESS_TMP/agentfs-stress.XXXXXX")
mnt=""
store=""
daemon_pid=""
data_path=""

is_mounted() { grep -qs " $1 fuse" /proc/self/mounts; }

unmount_fs() {
    [ -n "$mnt" ] || return 0
    if is_mounted "$mnt"; then
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || true
    fi
    if [ -n "$daemon_pid" ]; then
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$daemon_pid" 2>/dev/null; then
            kill -TERM "$daemon_pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$daemon_pid" 2>/dev/null && kill -KILL "$daemon_pid" 2>/dev/null
        fi
    fi
    if is_mounted "$mnt"; then fusermount3 -u -z "$mnt" 2>/dev/null || true; fi
    if [ -f "$store/agentfs.log" ]; then
        grep -E ' (WARN|ERROR) ' "$store/agentfs.log" | tail -n 200 >"$log/daemon-$data_path.log" 2>/dev/null || true
        [ -s "$log/daemon-$data_path.log" ] || rm -f "$log/daemon-$data_path.log"
    fi
    daemon_pid=""
    mnt=""
}

cleanup() {
    local rc=$?
    set +e
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

mount_fs() { # off|on
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

# --- stress-ng -----------------------------------------------------------------
# shellcheck disable=SC2054 # the commas are stress-ng's list syntax
stress_args=(--class filesystem --sequential 1 --timeout 3s --verify --metrics-brief
    --exclude bind-mount,binderfs,procfs,verity,fanotify,ioprio)

# stress_run NAME DIR [BRANCH]: one stress-ng pass with DIR as --temp-path,
# judged per stressor into results.jsonl.
stress_run() {
    local name=$1 dir=$2 branch=${3:-} prefix=() rc=0 out="$log/$1.stress-ng.log"
    [ -n "$branch" ] && prefix=("$cli" branch-exec --branch "$branch" --)
    say "stress-ng: $name"
    # Run from DIR, entered after binding, so the working directory is the branch's too.
    # shellcheck disable=SC2016 # $1 and $@ are the inner shell's
    timeout -k 10 "$STRESS_TIMEOUT" "${prefix[@]}" sh -c 'cd "$1" && shift && exec "$@"' sh "$dir" \
        stress-ng --temp-path "$dir" "${stress_args[@]}" --yaml "$log/$name.stress-ng.yaml" >"$out" 2>&1 || rc=$?
    python3 - "$out" "$log/$name.stress-ng.yaml" "$rc" "$name" >>"$results" <<'EOF'
import json, re, sys
out, yaml_path, rc, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = open(out, errors="replace").read().splitlines()
stressors = []
for l in lines:
    m = re.search(r"dispatching hogs: (.*)$", l)
    if m:
        stressors = [h.split(" ", 1)[1] for h in m.group(1).split(", ")]
metrics = set()
try:
    for l in open(yaml_path):
        m = re.match(r"\s*- stressor: (\S+)", l)
        if m:
            metrics.add(m.group(1))
except OSError:
    pass
verdict = {}
why = {}
for s in stressors:
    pat = re.compile(r"^stress-ng: (fail|error|info|warn):\s+\[\d+\] " + re.escape(s) + r": (.*)$")
    for l in lines:
        m = pat.match(l)
        if not m:
            continue
        kind, msg = m.groups()
        if kind in ("fail", "error"):
            verdict[s] = "fail"
            why.setdefault(s, []).append(msg)
        elif "skipping" in msg and verdict.get(s) != "fail":
            verdict[s] = "skipped"
            why.setdefault(s, []).append(msg)
    if s not in verdict:
        verdict[s] = "pass" if s in metrics else "no-metrics"
# Lines of failure not tied to a named stressor still fail the pass.
loose = [l for l in lines if re.match(r"^stress-ng: (fail|error):", l)
         and not any(re.search(r"\] " + re.escape(s) + ":", l) for s in stressors)]
passed = sorted(s for s, v in verdict.items() if v == "pass")
failed = sorted(s for s, v in verdict.items() if v in ("fail", "no-metrics"))
skipped = sorted(s for s, v in verdict.items() if v == "skipped")
completed = any("successful run completed" in l and "unsuccessful" not in l for l in lines)
ok = rc == 0 and not failed and not loose and completed and len(stressors) > 0
print(json.dumps({"kind": "stress-ng", "name": name, "exit": rc, "stressors": len(stressors),
                  "passed": passed, "failed": failed, "skipped": skipped,
                  "reasons": {s: why[s][:5] for s in why}, "unattributed_errors": loose[:20],
                  "result": "pass" if ok else "fail"}))
print("    %s: %d stressors, %d passed, %d failed%s, %d skipped%s, exit %d -> %s"
      % (name, len(stressors), len(passed), len(failed),
         " (" + ", ".join(failed) + ")" if failed else "", len(skipped),
         " (" + ", ".join(skipped) + ")" if skipped else "", rc, "pass" if ok else "FAIL"),
      file=sys.stderr)
EOF
}

# --- fio -------------------------------------------------------------------------
# fio_run NAME DIR [BRANCH]: psync and mmap jobs, write+verify then verify-only.
fio_run() {
    local name=$1 dir=$2 branch=${3:-} prefix=() engine phase rc
    [ -n "$branch" ] && prefix=("$cli" branch-exec --branch "$branch" --)
    for engine in psync mmap; do
        local job=(--name="$engine" --filename="$dir/fio-$engine.dat" --ioengine="$engine"
            --rw=randwrite --bsrange=4k-64k --size="$fio_size" --randseed=4242
            --verify=crc32c --verify_fatal=1 --fsync_on_close=1 --output-format=json)
        for phase in write-verify verify-only; do
            local out="$log/$name.fio-$engine-$phase.json" extra=()
            if [ "$phase" = verify-only ]; then
                extra=(--verify_only)
                # Read back from the daemon, not from the page cache.
                sync
                echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
            fi
            rc=0
            timeout -k 10 900 "${prefix[@]}" fio "${job[@]}" "${extra[@]}" >"$out" 2>"$out.stderr" || rc=$?
            [ -s "$out.stderr" ] || rm -f "$out.stderr"
            python3 - "$out" "$rc" "$name" "$engine" "$phase" >>"$results" <<'EOF'
import json, sys
path, rc, name, engine, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
text = open(path, errors="replace").read()
try:
    # fio may print notes before the JSON document.
    doc = json.loads(text[text.index("{"):])
    job = doc["jobs"][0]
    err, written, read = job["error"], job["write"]["io_bytes"], job["read"]["io_bytes"]
except (ValueError, KeyError, IndexError):
    err, written, read = "no JSON output", 0, 0
ok = rc == 0 and err == 0 and (written > 0 if phase == "write-verify" else read > 0)
print(json.dumps({"kind": "fio", "name": name, "engine": engine, "phase": phase, "exit": rc,
                  "error": err, "bytes_written": written, "bytes_verified": read,
                  "result": "pass" if ok else "fail"}))
print("    %s fio %-5s %-12s written %4d MiB, verified %4d MiB, error %s, exit %d -> %s"
      % (name, engine, phase, written >> 20, read >> 20, err, rc, "pass" if ok else "FAIL"),
      file=sys.stderr)
EOF
        done
    done
}

# --- the runs --------------------------------------------------------------------
if [ "$fio_only" = 0 ] && [ "$reference" = 1 ]; then
    ref="$work/host-reference"
    mkdir "$ref"
    stress_run host-reference "$ref"
    rm -rf "$ref"
fi

for mode in "${modes[@]}"; do
    mount_fs "$mode"

    # default branch
    mkdir "$mnt/main" "$mnt/main/sng" "$mnt/main/fio"
    [ "$fio_only" = 1 ] || stress_run "$data_path.default-branch" "$mnt/main/sng"
    say "fio: $data_path.default-branch"
    fio_run "$data_path.default-branch" "$mnt/main/fio"

    # a branch from a snapshot of a populated tree
    say "populating (fio files of $fio_size written in full), snapshot, branch"
    mkdir -p "$mnt/cow/sng" "$mnt/cow/fio" "$mnt/cow/tree"
    for i in $(seq 1 50); do echo "file $i" >"$mnt/cow/tree/f$i"; done
    for engine in psync mmap; do
        fio --name=fill --filename="$mnt/cow/fio/fio-$engine.dat" --rw=write --bs=1M \
            --size="$fio_size" --randseed=7 --output=/dev/null
    done
    (cd "$mnt/cow/fio" && sha256sum -- *.dat) >"$work/populated.sha256"
    "$cli" snapshot-create --name stress-base >/dev/null
    "$cli" branch-create --from stress-base --name stress-branch >/dev/null
    cow0=$(status_field cow_clones)
    [ "$fio_only" = 1 ] || stress_run "$data_path.snapshot-branch" "$mnt/cow/sng" stress-branch
    say "fio: $data_path.snapshot-branch"
    fio_run "$data_path.snapshot-branch" "$mnt/cow/fio" stress-branch
    cow1=$(status_field cow_clones)
    iso=pass
    (cd "$mnt/cow/fio" && sha256sum --quiet -c "$work/populated.sha256") >"$log/$data_path.isolation.txt" 2>&1 || iso=fail
    [ -s "$log/$data_path.isolation.txt" ] || rm -f "$log/$data_path.isolation.txt"
    echo "    isolation (main's fio files unchanged by the branch): $iso; copy-on-write clones in the branch: $((cow1 - cow0))"
    printf '%s\n' "{\"kind\": \"isolation\", \"name\": \"$data_path.snapshot-branch\", \"cow_clones\": $((cow1 - cow0)), \"result\": \"$iso\"}" >>"$results"

    unmount_fs
done

# --- summary ---------------------------------------------------------------------
rc=0
python3 - "$results" "$log/summary.json" <<EOF || rc=$?
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
summary = {"kernel": "$(uname -r)", "profile": "$PROFILE", "passthrough_option": "$passthrough",
           "stress_ng": "$(stress-ng --version 2>/dev/null | head -n1 || true)",
           "stress_ng_args": "${stress_args[*]}",
           "fio": "$(fio --version)", "fio_size": "$fio_size", "runs": {}}
for r in rows:
    run = summary["runs"].setdefault(r["name"], {})
    if r["kind"] == "stress-ng":
        run["stress-ng"] = {k: r[k] for k in r if k not in ("kind", "name")}
        run["stress-ng"]["counts"] = {k: len(r[k]) for k in ("passed", "failed", "skipped")}
    elif r["kind"] == "fio":
        run.setdefault("fio", {})["%s/%s" % (r["engine"], r["phase"])] = \
            {k: r[k] for k in r if k not in ("kind", "name", "engine", "phase")}
    else:
        run["isolation"] = {"result": r["result"], "cow_clones": r["cow_clones"]}
# The host reference is not AgentFS: a stressor it fails is reported, not held against us.
def results(name, run):
    out = []
    if "stress-ng" in run:
        out.append(run["stress-ng"]["result"])
    out += [f["result"] for f in run.get("fio", {}).values()]
    if "isolation" in run:
        out.append(run["isolation"]["result"])
    return out
ok = bool(rows) and all(x == "pass" for n, run in summary["runs"].items() if n != "host-reference"
                        for x in results(n, run))
summary["result"] = "pass" if ok else "fail"
json.dump(summary, open(sys.argv[2], "w"), indent=2)
print("run                          stress-ng (pass/fail/skip)   fio verify")
for n, run in summary["runs"].items():
    s = run.get("stress-ng")
    sng = "%d/%d/%d of %d" % (len(s["passed"]), len(s["failed"]), len(s["skipped"]), s["stressors"]) if s else "-"
    fio = ", ".join("%s %s" % (k, v["result"]) for k, v in run.get("fio", {}).items()) or "-"
    print("%-28s %-28s %s" % (n, sng, fio))
print("result: %s" % summary["result"])
sys.exit(0 if ok else 1)
EOF
rm -f "$results"
echo "log: ${log#"$repo"/}"
exit "$rc"
