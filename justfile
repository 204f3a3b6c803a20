# AgentFS entry points. `just` alone lists them.
# First time on a machine: scripts/bootstrap.sh (installs fuse3, just, cargo-nextest).

set shell := ["bash", "-euo", "pipefail", "-c"]

# Where `mount-fuse`, `umount-fuse` and `status` act unless given a path.
default_mount := env_var_or_default("AGENTFS_MOUNT", env_var("HOME") + "/agentfs")

# List the recipes.
default:
    @just --list --unsorted

# Build the release binaries (agentfs-fuse-host, agentfs-control-cli) into target/release.
build:
    cargo build --release --workspace --bins

# E.g. an overlay over an existing checkout (specs/overlay.md):
#   just mount-fuse ~/agentfs --lower ~/src/repo --backstore ~/.local/share/agentfs/repo
# Build, then mount AgentFS at MOUNT as a background daemon (default $AGENTFS_MOUNT or ~/agentfs); FLAGS go to agentfs-fuse-host.
mount-fuse mount=default_mount *flags: build
    #!/usr/bin/env bash
    set -euo pipefail
    mount={{ quote(mount) }}
    mkdir -p "$mount"
    # Let FUSE servers ask for io_uring (Linux 6.14+; servers that do not ask
    # are unaffected): AgentFS then serves requests from a queue per CPU.
    uring=/sys/module/fuse/parameters/enable_uring
    if [ -w "$uring" ] && [ "$(cat "$uring")" = N ]; then
        echo Y > "$uring" && echo "set $uring to Y (FUSE over io_uring)"
    fi
    # The daemon prints "AgentFS mounted at ..." once the mount is live, then detaches.
    target/release/agentfs-fuse-host {{ flags }} "$mount"
    echo "To use it:  export PATH=\"$PWD/target/release:\$PATH\" AGENTFS_MOUNT=\"$mount\""
    echo "            agentfs-control-cli snapshot-create --name base && agentfs-control-cli branch-create --from base --name feature"
    echo "            agentfs-control-cli branch-bind --branch feature   # this shell now sees branch 'feature' at $mount"

# Unmount AgentFS at MOUNT; the daemon exits on its own.
umount-fuse mount=default_mount:
    fusermount3 -u {{ quote(mount) }} || umount {{ quote(mount) }}

# Show the daemon's state for the mount at MOUNT.
status mount=default_mount: build
    target/release/agentfs-control-cli --mount {{ quote(mount) }} status

# Unit and mount tests on both data paths, the control-plane walk-through, the
# performance harness at tiny sizes, short fsx and fio verify runs, and pjdfstest
# against its committed baseline. Needs root and /dev/fuse.

# The whole suite, as CI runs it (about 20-30 min on 2 cores). FUSE servers may ask for io_uring while it runs (the fuse module's enable_uring, put back after), so the daemons serve requests over it by default (--fuse-uring auto) where the kernel has it.
test:
    #!/usr/bin/env bash
    set -euo pipefail
    param=/sys/module/fuse/parameters/enable_uring
    old=$(cat "$param" 2>/dev/null || echo none)
    restore() { if [ "$old" != none ]; then echo "$old" > "$param"; fi; }
    trap restore EXIT
    if [ "$old" != none ]; then echo Y > "$param"; fi
    # One at a time: a recipe taking *ARGS would swallow the names after it.
    for recipe in test-unit test-fuse-control-plane test-fuse-performance-smoke test-fsx-short test-fio-short test-crash-short test-fuse-stress-short test-pjdfstest test-walkthrough-branches; do
        {{ just_executable() }} "$recipe"
    done

# Format, lint, build, and every cargo test (the mount tests among them) on both data paths, and the mount tests once more over FUSE io_uring where the kernel has it.
test-unit:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo build --workspace --bins
    # Let FUSE servers ask for io_uring while the tests run (servers that do
    # not ask are unaffected); the old setting comes back at the end.
    param=/sys/module/fuse/parameters/enable_uring
    old=$(cat "$param" 2>/dev/null || echo none)
    restore() { if [ "$old" != none ]; then echo "$old" > "$param"; fi; }
    trap restore EXIT
    if [ "$old" != none ]; then echo Y > "$param"; fi
    cargo nextest run --workspace --no-fail-fast
    # The mount tests again with file data through the transport instead of passthrough.
    AGENTFS_PASSTHROUGH=off cargo nextest run -p agentfs-fuse --no-fail-fast
    # And with requests over FUSE io_uring instead of /dev/fuse.
    if [ "$old" != none ]; then
        AGENTFS_FUSE_URING=auto cargo nextest run -p agentfs-fuse --no-fail-fast
    else
        echo "this kernel has no FUSE over io_uring: the mount tests over the rings are skipped"
    fi

# The branch workflow of issue 6 on a real mount over a git checkout (--lower), each data path (under a minute): three branches edited from three bound shells at once, diff against the base, branch-commit, export to the checkout, git diff shows exactly that branch's edits, the other branches deleted and their space reclaimed.
test-walkthrough-branches:
    bash scripts/walkthrough-issue6.sh
    AGENTFS_PASSTHROUGH=off bash scripts/walkthrough-issue6.sh

# The control plane against a real mount: the Rust test, then the README walk-through script on each data path.
test-fuse-control-plane:
    cargo nextest run -p agentfs-fuse --test control_plane --no-fail-fast
    bash scripts/test-fuse-control-plane.sh
    AGENTFS_PASSTHROUGH=off bash scripts/test-fuse-control-plane.sh

# Names, limits and control-plane fuzzing at full size, printing every figure (root, /dev/fuse; about 40 min on 2 cores): 1,000,000 decoder fuzz cases per runner, 100,000 hostile control connections, 1,000,000 entries in one directory, 19,000 open fds, a 20,000-level tree, 2,000 snapshots and branches 3 times; logs/limits-<UTC time>/run.log. The short versions run in `cargo nextest`.
test-fuse-limits:
    #!/usr/bin/env bash
    set -euo pipefail
    log="logs/limits-$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$log"
    cargo build --workspace --bins
    {
        echo "# just test-fuse-limits at $(git rev-parse --short HEAD) on $(uname -r), $(nproc) cores"
        AGENTFS_FUZZ_CASES=1000000 cargo test --release -p agentfs-control --test fuzz -- --nocapture --test-threads 2
        AGENTFS_LIVE_FUZZ_CONNECTIONS=100000 cargo nextest run -p agentfs-fuse --test control_fuzz --no-capture
        AGENTFS_NAMES_DIR_ENTRIES=100000 AGENTFS_LIMITS_ROUNDS=2 cargo nextest run -p agentfs-fuse --test names_limits --no-capture -E 'test(one_directory)'
        AGENTFS_NAMES_DIR_ENTRIES=1000000 AGENTFS_LIMITS_ROUNDS=1 cargo nextest run -p agentfs-fuse --test names_limits --no-capture -E 'test(one_directory)'
        AGENTFS_NAMES_DEPTH=20000 AGENTFS_LIMITS_OPEN_FILES=19000 AGENTFS_LIMITS_ROUNDS=3 cargo nextest run -p agentfs-fuse --test names_limits --no-capture -E 'not test(one_directory)'
    } 2>&1 | tee "$log/run.log"
    grep -E '^(fuzz|live control fuzz|limits):' "$log/run.log" > "$log/figures.txt"
    echo "figures: $log/figures.txt"

# fio crc32c verify, 16 MiB per job (under a minute): default and snapshot branch, each data path.
test-fio-short:
    bash scripts/test-stress.sh --fio-only --fio-size 16M

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Format every crate in place.
fmt:
    cargo fmt --all

# AgentFS vs the host directory and fuse-overlayfs on the same disk: medians, ratios, a chart, in logs/fuse-performance-<UTC time>/ (root; ARGS e.g. --runs 5 --max-files 100000).
test-fuse-performance *ARGS:
    bash scripts/test-fuse-performance.sh {{ ARGS }}

# The FUSE requests behind the metadata workloads (create, cold and warm stat, unlink of 20,000 files), traced by the kernel: requests per file, latency per opcode and answering thread, time between requests (ARGS e.g. --files 5000 --passthrough off).
fuse-trace *ARGS:
    bash scripts/perf/fuse-trace.sh {{ ARGS }}

# One FUSE round trip through the /dev/fuse read loop (fuser's, so AgentFS's) against FUSE over io_uring, on a minimal filesystem of its own (ARGS e.g. --files 2000 --runs 3).
fuse-uring-probe *ARGS:
    bash scripts/perf/fuse-uring-probe.sh {{ ARGS }}

# The harness's metadata loops on the host, AgentFS and a FUSE server that does nothing but keep its tree in memory (scripts/perf/fuse-floor.c), side by side: the floor is the least any FUSE server costs here (ARGS e.g. --rounds 3 --files 5000).
fuse-floor *ARGS:
    bash scripts/perf/fuse-floor.sh {{ ARGS }}

# The performance harness at tiny sizes, one run, debug build (CI): fails only on a failed measurement, never on a time.
test-fuse-performance-smoke *ARGS:
    bash scripts/test-fuse-performance.sh --smoke {{ ARGS }}

# fsx on a real mount: default branch, snapshot branch (+ block mode), each data path; 10 seeds x 10,000 ops per configuration; logs/fsx-<UTC time>/ (ARGS e.g. --seeds 20 --passthrough off).
test-fsx *ARGS:
    bash scripts/test-fsx.sh {{ ARGS }}

# fsx, about a minute (CI): 2 seeds x 1,500 ops per configuration and data path.
test-fsx-short *ARGS:
    bash scripts/test-fsx.sh --ops 1500 --seeds 2 --zero-ops 300 {{ ARGS }}

# stress-ng filesystem class (--verify) and fio crc32c verify (psync, mmap), default branch and snapshot branch, each data path; logs/stress-<UTC time>/ (ARGS e.g. --fio-only --fio-size 64M).
test-stress *ARGS:
    bash scripts/test-stress.sh {{ ARGS }}

# Crash loop: kill -9 the daemon at random moments of a random workload (default branch and a branch, fsyncs, snapshots, branches), remount, verify against what was acknowledged durable; logs/crash-<UTC>/ (ARGS e.g. --iterations 500 --passthrough off).
test-crash *ARGS:
    bash scripts/test-crash.sh --iterations 300 {{ ARGS }}

# The crash loop, 20 iterations with passthrough and 10 through the transport (about 2 min with the build; CI).
test-crash-short *ARGS:
    bash scripts/test-crash.sh --iterations 20 {{ ARGS }}
    bash scripts/test-crash.sh --iterations 10 --no-build --passthrough off {{ ARGS }}

# Stress: 16 threads of mixed file operations in the default branch and 3 branches (mount path, .agentfs/branches, branch-exec, branch-bind processes), snapshots, throwaway branches, deletes, for 5 min on a release build; every branch and snapshot checked against a model; daemon fds and RSS measured; logs/fuse-stress-<UTC>/ (ARGS e.g. --duration 600 --passthrough off).
test-fuse-stress *ARGS:
    bash scripts/test-fuse-stress.sh {{ ARGS }}

# The stress run for 60 s with 16 threads on the debug build (about 70 s; CI).
test-fuse-stress-short *ARGS:
    bash scripts/test-fuse-stress.sh --duration 60 --checkpoints 2 --debug {{ ARGS }}

# pjdfstest on ext4 (reference), AgentFS main and a snapshot branch, each data path; checks specs/pjdfstest.baseline.json; logs/pjdfstest-<UTC time>/ (ARGS e.g. --update-baseline, --no-link-max, a test-name pattern).
test-pjdfstest *ARGS:
    bash scripts/test-pjdfstest.sh {{ ARGS }}

# Diff cost: 1,000,000 files in the core (release, ignored test: diff of 10 changes vs one walk of the tree), then diff through a real mount of FILES files (default 100,000; 1,000,000 takes ~5 min to make) with 10 changes: daemon and CLI times, with find (and diff -rq up to 100,000 files) as baselines in the same run.
bench-diff FILES="100000":
    cargo test --release -p agentfs-core --lib diff_speed_at_a_million_files -- --ignored --nocapture
    CONTENT= bash scripts/bench-diff.sh {{ FILES }}
