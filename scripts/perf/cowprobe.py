#!/usr/bin/env python3
"""Time the first write to a file: open(O_WRONLY), pwrite 1 byte at 0, close.

    cowprobe.py FILE

Prints one JSON line with open_s, write_s, close_s and total_s (monotonic
clock, this process only: run it under `agentfs-control-cli branch-exec` and
the CLI's own start-up is not counted). On a copy-on-write filesystem the
open (or the write, or the close) pays for cloning the shared content.
"""

import json
import os
import sys
import time


def main() -> int:
    path = sys.argv[1]
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY)
    t1 = time.perf_counter()
    os.pwrite(fd, b"x", 0)
    t2 = time.perf_counter()
    os.close(fd)
    t3 = time.perf_counter()
    print(json.dumps({"open_s": t1 - t0, "write_s": t2 - t1, "close_s": t3 - t2, "total_s": t3 - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
