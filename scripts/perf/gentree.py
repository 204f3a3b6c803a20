#!/usr/bin/env python3
"""Generate the source-tree workload's input: a deterministic git repository.

    gentree.py DIR FILES

Writes about FILES small source files (.rs, .c, .h, .md; 200 B to 8 KiB of
text, contents from a fixed seed, so every run and machine gets the same
bytes) in nested directories (top/sub/ with at most 100 files each), commits
them in one commit, and packs the objects (`git repack -ad`), so the .git
directory adds a handful of files, not one per object. DIR must not exist.
Prints one JSON line: files, directories, bytes.
"""

import json
import os
import random
import subprocess
import sys

EXTS = (".rs", ".c", ".h", ".md")
WORDS = (
    "fn let mut struct impl match return self pub use mod static const "
    "int char void unsigned while for if else buffer inode branch snapshot "
    "offset length count error result option some none"
).split()


def body(rng: random.Random, ext: str) -> str:
    size = rng.randint(200, 8192)
    lines = []
    total = 0
    n = 0
    while total < size:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        line = f"// {words}" if ext != ".md" else words
        if ext in (".rs", ".c") and n % 7 == 0:
            line = f"int f{n}(int x) {{ return x + {rng.randint(0, 999)}; }}"
        lines.append(line)
        total += len(line) + 1
        n += 1
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    root, files = sys.argv[1], int(sys.argv[2])
    rng = random.Random(20240611)
    os.makedirs(root)
    per_dir = 100
    subs_per_top = 10
    written = dirs = nbytes = 0
    top = 0
    while written < files:
        for sub in range(subs_per_top):
            if written >= files:
                break
            d = os.path.join(root, f"crate{top:03d}", f"mod{sub:02d}")
            os.makedirs(d)
            dirs += 1
            for k in range(min(per_dir, files - written)):
                ext = EXTS[rng.randrange(len(EXTS))]
                text = body(rng, ext)
                with open(os.path.join(d, f"file{k:03d}{ext}"), "w") as f:
                    f.write(text)
                written += 1
                nbytes += len(text)
        top += 1
    git = ["git", "-C", root, "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "generated tree"], check=True)
    subprocess.run(git + ["repack", "-adq"], check=True)
    subprocess.run(git + ["prune-packed"], check=True)
    git_files = sum(len(fs) for _, _, fs in os.walk(os.path.join(root, ".git")))
    print(json.dumps({"files": written, "directories": dirs, "bytes": nbytes, "git_files": git_files}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
