#!/usr/bin/env python3
"""A small fsx-style exerciser for the fallocate modes fsx 0.3.2 lacks.

fsx covers posix_fallocate and FALLOC_FL_PUNCH_HOLE but not
FALLOC_FL_ZERO_RANGE. This applies a seeded random sequence of pwrite,
ftruncate, fallocate (ZERO_RANGE with and without KEEP_SIZE, PUNCH_HOLE,
plain allocation with and without KEEP_SIZE), mmap writes, fsync and
close/reopen to one file and to a bytearray model, and checks every pread, every
mmap read and the size after every operation against the model. On the first
difference it prints the last operations, writes FILE.fsxgood (the model) and
FILE.fsxbad (what the file held) into the artifact directory, and exits 1.

Usage: zero_range.py -N OPS -S SEED -P ARTIFACT_DIR FILE
"""

import argparse
import collections
import ctypes
import ctypes.util
import mmap
import os
import random
import sys

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd, mode, offset, length):
    if libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "fallocate(mode=%#x, %#x, %#x): %s" % (mode, offset, length, os.strerror(e)))


class Exerciser:
    def __init__(self, path, seed, artifacts, flen, maxop):
        self.path = path
        self.rng = random.Random(seed)
        self.seed = seed
        self.artifacts = artifacts
        self.flen = flen
        self.maxop = maxop
        self.model = bytearray()
        self.log = collections.deque(maxlen=64)
        self.step = 0
        # Like fsx: O_TRUNC at start, so the file begins empty.
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def fail(self, why):
        print("zero_range: seed %d: step %d: %s" % (self.seed, self.step, why), file=sys.stderr)
        print("last operations:", file=sys.stderr)
        for entry in self.log:
            print("  " + entry, file=sys.stderr)
        base = os.path.join(self.artifacts, os.path.basename(self.path))
        with open(base + ".fsxgood", "wb") as f:
            f.write(self.model)
        try:
            size = os.fstat(self.fd).st_size
            with open(base + ".fsxbad", "wb") as f:
                f.write(os.pread(self.fd, size, 0))
        except OSError as e:
            print("could not save the file's content: %s" % e, file=sys.stderr)
        sys.exit(1)

    def note(self, text):
        self.log.append("%6d %s" % (self.step, text))

    def span(self, within):
        off = self.rng.randrange(max(within, 1))
        size = self.rng.randint(1, self.maxop)
        return off, size

    def data(self, size):
        # Like fsx: bytes derived from the step number, so each write differs.
        return bytes((self.step + i * 7) & 0xFF for i in range(size))

    def resize_model(self, size):
        if size < len(self.model):
            del self.model[size:]
        else:
            self.model.extend(bytes(size - len(self.model)))

    def check_range(self, got, off, what):
        want = bytes(self.model[off:off + len(got)])
        if got != want:
            bad = next(i for i in range(len(got)) if got[i] != want[i])
            self.fail("%s at %#x: byte %#x is %#x, model says %#x"
                      % (what, off, off + bad, got[bad], want[bad]))

    def op_write(self):
        off, size = self.span(self.flen)
        size = min(size, self.flen - off)
        buf = self.data(size)
        self.note("WRITE    %#x +%#x" % (off, size))
        if os.pwrite(self.fd, buf, off) != size:
            self.fail("short write")
        if off + size > len(self.model):
            self.resize_model(off + size)
        self.model[off:off + size] = buf

    def op_mapwrite(self):
        off, size = self.span(self.flen)
        size = min(size, self.flen - off)
        buf = self.data(size)
        self.note("MAPWRITE %#x +%#x" % (off, size))
        if off + size > len(self.model):
            os.ftruncate(self.fd, off + size)
            self.resize_model(off + size)
        with mmap.mmap(self.fd, len(self.model)) as m:
            m[off:off + size] = buf
            m.flush()
        self.model[off:off + size] = buf

    def op_read(self):
        if not self.model:
            return
        off, size = self.span(len(self.model))
        size = min(size, len(self.model) - off)
        self.note("READ     %#x +%#x" % (off, size))
        got = os.pread(self.fd, size, off)
        if len(got) != size:
            self.fail("short read: %#x of %#x bytes at %#x" % (len(got), size, off))
        self.check_range(got, off, "pread")

    def op_mapread(self):
        if not self.model:
            return
        off, size = self.span(len(self.model))
        size = min(size, len(self.model) - off)
        self.note("MAPREAD  %#x +%#x" % (off, size))
        with mmap.mmap(self.fd, len(self.model), prot=mmap.PROT_READ) as m:
            got = m[off:off + size]
        self.check_range(got, off, "mmap read")

    def op_truncate(self):
        size = self.rng.randrange(self.flen)
        self.note("TRUNCATE %#x (from %#x)" % (size, len(self.model)))
        os.ftruncate(self.fd, size)
        self.resize_model(size)

    def op_fallocate(self, mode, name):
        off, size = self.span(self.flen)
        size = min(size, self.flen - off)
        self.note("%-8s %#x +%#x (size %#x)" % (name, off, size, len(self.model)))
        fallocate(self.fd, mode, off, size)
        end = off + size
        keep = mode & FALLOC_FL_KEEP_SIZE
        if mode & (FALLOC_FL_ZERO_RANGE | FALLOC_FL_PUNCH_HOLE):
            zero_end = min(end, len(self.model)) if keep else end
            if not keep and end > len(self.model):
                self.resize_model(end)
            if zero_end > off:
                self.model[off:zero_end] = bytes(zero_end - off)
        elif not keep and end > len(self.model):
            self.resize_model(end)

    def op_fsync(self):
        self.note("FSYNC")
        os.fsync(self.fd)

    def op_reopen(self):
        self.note("CLOSE/OPEN")
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)

    def check_size(self):
        size = os.fstat(self.fd).st_size
        if size != len(self.model):
            self.fail("size is %#x, model says %#x" % (size, len(self.model)))

    def run(self, ops):
        table = [
            (10, self.op_write),
            (4, self.op_mapwrite),
            (10, self.op_read),
            (6, self.op_mapread),
            (3, self.op_truncate),
            (4, lambda: self.op_fallocate(FALLOC_FL_ZERO_RANGE, "ZERO")),
            (4, lambda: self.op_fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "ZERO_KS")),
            (3, lambda: self.op_fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "PUNCH")),
            (2, lambda: self.op_fallocate(0, "ALLOC")),
            (2, lambda: self.op_fallocate(FALLOC_FL_KEEP_SIZE, "ALLOC_KS")),
            (1, self.op_fsync),
            (1, self.op_reopen),
        ]
        weights = [w for w, _ in table]
        funcs = [f for _, f in table]
        for self.step in range(1, ops + 1):
            op = self.rng.choices(funcs, weights)[0]
            try:
                op()
            except OSError as e:
                self.fail("operation failed: %s" % e)
            self.check_size()
        # A final full comparison.
        got = os.pread(self.fd, len(self.model) + 1, 0)
        if len(got) != len(self.model):
            self.fail("final read: %#x bytes, model has %#x" % (len(got), len(self.model)))
        self.check_range(got, 0, "final read")
        os.close(self.fd)
        print("zero_range: seed %d: %d operations completed A-OK!" % (self.seed, ops))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-N", type=int, required=True, help="operations")
    ap.add_argument("-S", type=int, required=True, help="seed")
    ap.add_argument("-P", required=True, help="artifact directory")
    ap.add_argument("--flen", type=int, default=256 * 1024, help="largest file size")
    ap.add_argument("--maxop", type=int, default=64 * 1024, help="largest operation")
    ap.add_argument("file")
    a = ap.parse_args()
    Exerciser(a.file, a.S, a.P, a.flen, a.maxop).run(a.N)


if __name__ == "__main__":
    main()
