#!/usr/bin/env python3
"""link::link_count_max with LINK_MAX given, for filesystems pathconf cannot describe.

pjdfstest's link_count_max asks pathconf(_PC_LINK_MAX) for the limit. glibc
answers that from statfs' f_type, which for every FUSE filesystem is
FUSE_SUPER_MAGIC, so it returns the "unknown" 127 and pjdfstest skips the test
on any FUSE mount. This runs the same test with the limit given on the command
line (ext4's EXT4_LINK_MAX is 65000): a file can get LINK_MAX - 1 more names,
st_nlink then equals LINK_MAX, and one more link(2) fails with EMLINK. The
directory DIR is created, and removed again unless --keep is given (a
throw-away mount goes away in one piece, faster than 65000 unlinks).

Usage: link_max.py [--keep] DIR [LINK_MAX]. Prints one line; exit 0 when the
test passes, 1 when it fails.
"""

import errno
import os
import shutil
import sys


def main():
    args = sys.argv[1:]
    keep = "--keep" in args
    args = [a for a in args if a != "--keep"]
    base = args[0]
    link_max = int(args[1]) if len(args) > 1 else 65000
    os.mkdir(base, 0o755)
    try:
        target = os.path.join(base, "f")
        with open(target, "w"):
            pass
        for i in range(1, link_max):
            try:
                os.link(target, os.path.join(base, "l%d" % i))
            except OSError as e:
                print("link_count_max: FAILED: link number %d of %d: %s" % (i + 1, link_max, e))
                return 1
        nlink = os.lstat(target).st_nlink
        if nlink != link_max:
            print("link_count_max: FAILED: st_nlink is %d after %d links" % (nlink, link_max))
            return 1
        try:
            os.link(target, os.path.join(base, "one-too-many"))
        except OSError as e:
            if e.errno != errno.EMLINK:
                print("link_count_max: FAILED: link past LINK_MAX gave %s, not EMLINK" % e)
                return 1
        else:
            print("link_count_max: FAILED: link past LINK_MAX=%d succeeded" % link_max)
            return 1
        print("link_count_max: ok (LINK_MAX %d, then EMLINK)" % link_max)
        return 0
    finally:
        if not keep:
            shutil.rmtree(base)


if __name__ == "__main__":
    sys.exit(main())
