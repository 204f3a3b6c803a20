#!/usr/bin/env bash
# Overlay figures (specs/overlay.md): mount time of `agentfs-fuse-host --lower`
# over a 100,000-file git checkout (cold caches and warm), `git status` in it
# against the host, and the `--lower-isolation copy` import. Prints figures;
# asserts nothing about time. Needs root (drop_caches) and /dev/fuse.
#
#   scripts/bench-overlay.sh [--files N] [--repo DIR] [--log FILE]
#
# The checkout is generated once (DIR, default /tmp/agentfs-overlay-bench/repo:
# 20 x 50 directories of N/1000 files of ~37 bytes, one commit) and reused.
set -euo pipefail

files=100000
repo=/tmp/agentfs-overlay-bench/repo
log=""
while [ $# -gt 0 ]; do
    case "$1" in
        --files) files=$2; shift 2 ;;
        --repo) repo=$2; shift 2 ;;
        --log) log=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "$log" ]; then
    log=logs/overlay-bench-$(date -u +%Y%m%dT%H%M%SZ).log
fi
mkdir -p "$(dirname "$log")"
exec > >(tee "$log") 2>&1

cargo build --release -p agentfs-fuse --bins
bin=$root/target/release/agentfs-fuse-host

if [ ! -d "$repo/.git" ]; then
    echo "generating $files files in $repo"
    rm -rf "$repo"
    python3 - "$repo" "$files" <<'EOF'
import os, sys
root, total = sys.argv[1], int(sys.argv[2])
per = max(1, total // 1000)
n = 0
for a in range(20):
    for b in range(50):
        d = os.path.join(root, f"mod{a:02d}", f"pkg{b:02d}")
        os.makedirs(d, exist_ok=True)
        for c in range(per):
            with open(os.path.join(d, f"file{c:03d}.rs"), "w") as f:
                f.write(f"// {a} {b} {c}\nfn f{c}() -> u32 {{ {n} }}\n")
            n += 1
EOF
    git -C "$repo" init -q
    git -C "$repo" add -A
    git -C "$repo" -c user.email=bench@example.com -c user.name=bench commit -qm init
fi

work=$(mktemp -d)
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
    if mountpoint -q "$mnt"; then fusermount3 -u "$mnt" || umount -l "$mnt" || true; fi
    sleep 1
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
unmount() {
    fusermount3 -u "$mnt"
    # The daemon checkpoints, then releases the backstore lock.
    for _ in $(seq 1200); do pgrep -f "agentfs-fuse-host.*$work" >/dev/null || break; sleep 0.1; done
}

echo "== $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, lower and backstore on $(df -T "$repo" | awk 'NR==2{print $2}')/$(df -T "$work" | awk 'NR==2{print $2}')"
echo "checkout: $repo, $(git -C "$repo" ls-files | wc -l) tracked files"

git -C "$repo" status --porcelain >/dev/null
t0=$(now); git -C "$repo" status --porcelain >/dev/null; t1=$(now)
echo "host: git status (warm): $(ms "$t0" "$t1") ms"
drop
t0=$(now); git -C "$repo" status --porcelain >/dev/null; t1=$(now)
echo "host: git status (cold): $(ms "$t0" "$t1") ms"
cp -a "$repo" "$work/copy"
t0=$(now); git -C "$work/copy" status --porcelain >/dev/null; t1=$(now)
echo "host: first git status in a cp -a copy (new inode numbers, warm): $(ms "$t0" "$t1") ms"
rm -rf "$work/copy"

for round in cold warm; do
    rm -rf "$work/store"
    mkdir -p "$work/store"
    [ "$round" = cold ] && drop
    t0=$(now); "$bin" --backstore "$work/store" --lower "$repo" "$mnt" >/dev/null; t1=$(now)
    echo "overlay ($round): mount, command start to 'mounted' printed: $(ms "$t0" "$t1") ms"
    grep -o 'overlay: lower directory attached.*' "$work/store/agentfs.log" | tail -1
    t0=$(now); ls "$mnt" >/dev/null; t1=$(now)
    echo "overlay ($round): first ls of the root: $(ms "$t0" "$t1") ms"
    for i in 1 2 3; do
        t0=$(now); n=$(git -C "$mnt" status --porcelain | wc -l); t1=$(now)
        echo "overlay ($round): git status #$i: $(ms "$t0" "$t1") ms, $n entries reported"
    done
    unmount
done

rm -rf "$work/store"; mkdir -p "$work/store"
"$bin" --backstore "$work/store" --lower "$repo" "$mnt" >/dev/null
t0=$(now); n=$(git -C "$mnt" -c core.checkStat=minimal status --porcelain | wc -l); t1=$(now)
echo "overlay (warm): first git status with core.checkStat=minimal: $(ms "$t0" "$t1") ms, $n entries reported"
t0=$(now); find "$mnt" -type f -not -path '*/.git/*' | wc -l >/dev/null; t1=$(now)
echo "overlay (warm): find over every directory (reads the rest of them): $(ms "$t0" "$t1") ms"
unmount

rm -rf "$work/store"; mkdir -p "$work/store"
t0=$(now); "$bin" --backstore "$work/store" --lower "$repo" --lower-isolation copy "$mnt" >/dev/null; t1=$(now)
echo "overlay --lower-isolation copy (warm): first mount (imports everything): $(ms "$t0" "$t1") ms"
grep -o 'overlay: lower directory copied.*' "$work/store/agentfs.log" | tail -1
echo "backstore after the import: $(du -sh "$work/store" | cut -f1)"
t0=$(now); n=$(git -C "$mnt" status --porcelain | wc -l); t1=$(now)
echo "overlay --lower-isolation copy: git status #1: $(ms "$t0" "$t1") ms, $n entries reported"
unmount
t0=$(now); "$bin" --backstore "$work/store" --lower "$repo" --lower-isolation copy "$mnt" >/dev/null; t1=$(now)
echo "overlay --lower-isolation copy: remount: $(ms "$t0" "$t1") ms"
unmount
echo "log: $log"
