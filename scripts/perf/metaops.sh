#!/usr/bin/env bash
# Build target/perf/metaops (the metadata loops of the performance tools)
# if it is missing or older than its source, and print its path. Run from
# the repository root: metaops=$(bash scripts/perf/metaops.sh)
set -euo pipefail
metaops=$PWD/target/perf/metaops
mkdir -p "$(dirname "$metaops")"
if [ ! -x "$metaops" ] || [ scripts/perf/metaops.c -nt "$metaops" ]; then
    gcc -O2 -Wall -Wextra -o "$metaops" scripts/perf/metaops.c >&2
fi
echo "$metaops"
