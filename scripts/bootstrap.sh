#!/usr/bin/env bash
# Installs what building, mounting and testing AgentFS needs on a fresh Debian
# machine that has only the Rust toolchain:
#
#   fuse3          fusermount3 (unmounting, and mounting as a non-root user)
#   python3        the control-plane walk-through parses JSON with it
#   rustfmt,clippy `just test` runs `cargo fmt --check` and clippy
#   just           every entry point is a `just` recipe
#   cargo-nextest  the test runner
#
# Idempotent: whatever is already there is reported and left alone, so running
# it twice installs nothing the second time. Prints one line per item.
set -euo pipefail

say() { printf 'bootstrap: %s\n' "$*"; }
die() {
    printf 'bootstrap: error: %s\n' "$*" >&2
    exit 1
}

# cargo installs binaries here; put it on PATH for the rest of this run even if
# the user's shell does not have it.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
path_hint=""
case ":$PATH:" in
*":$cargo_bin:"*) ;;
*)
    export PATH="$cargo_bin:$PATH"
    path_hint="yes"
    ;;
esac

command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' and sudo is not installed"
    fi
}

# Debian packages: collect what is missing, then one `apt-get update` and one
# `apt-get install` for all of it.
apt_wanted=()
if path=$(command -v fusermount3 2>/dev/null); then
    say "found fusermount3 at $path"
else
    apt_wanted+=(fuse3)
fi
if path=$(command -v python3 2>/dev/null); then
    say "found python3 at $path"
else
    apt_wanted+=(python3)
fi
if [ "${#apt_wanted[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${apt_wanted[*]} and apt-get is not available: install them by hand"
    # apt's chatter (debconf notices and the like) is shown only if it fails.
    if ! apt_log=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq 2>&1 &&
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${apt_wanted[@]}" 2>&1); then
        printf '%s\n' "$apt_log" >&2
        die "apt-get could not install ${apt_wanted[*]}"
    fi
    for pkg in "${apt_wanted[@]}"; do
        say "installed $pkg (apt-get)"
    done
    command -v fusermount3 >/dev/null 2>&1 || die "fuse3 installed but fusermount3 is still not on PATH"
fi

# rustfmt and clippy ship as rustup components; a minimal toolchain lacks them.
rust_component() {
    local component=$1 subcommand=$2 version
    if version=$(cargo "$subcommand" --version 2>/dev/null); then
        say "found $component ($version)"
    elif command -v rustup >/dev/null 2>&1; then
        rustup component add "$component" >/dev/null
        say "installed $component (rustup component add)"
    else
        die "$component is missing and rustup is not available to add it"
    fi
}
rust_component rustfmt fmt
rust_component clippy clippy

# Cargo-installed tools land in $cargo_bin, which survives between runs.
cargo_tool() {
    local bin=$1 crate=$2 path
    if path=$(command -v "$bin" 2>/dev/null); then
        say "found $bin at $path"
    else
        cargo install "$crate" --locked --quiet
        say "installed $crate (cargo install) at $cargo_bin/$bin"
    fi
}
cargo_tool just just
cargo_tool cargo-nextest cargo-nextest

# The mount itself needs the kernel's FUSE device; nothing here can install it.
if [ -c /dev/fuse ]; then
    say "found /dev/fuse"
else
    say "warning: /dev/fuse is missing: mounting and the mount tests will fail (try 'modprobe fuse', or give the container --device /dev/fuse)"
fi

if [ -n "$path_hint" ]; then
    say "note: $cargo_bin is not on your PATH; add it: export PATH=\"$cargo_bin:\$PATH\""
fi
