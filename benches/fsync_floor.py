#!/usr/bin/env python3
"""What durability costs on this disk, with no relay involved: for each of
COUNT fresh 1 KiB files, the time of create+write+fsync, of the rename into
another directory, and of that directory's fsync; then the same for the
spool's two-file pattern (two files, two fsyncs, two renames, one directory
fsync). Prints medians and 90th percentiles in microseconds.

    benches/fsync_floor.py [DIR] [COUNT]     # DIR defaults to /tmp, COUNT to 300

Bounded: COUNT iterations and at most 60 s per pattern; cleans up after itself.
"""
import os
import statistics
import sys
import tempfile
import time

BASE = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
COUNT = int(sys.argv[2]) if len(sys.argv) > 2 else 300
LIMIT = 60.0
BODY = b"x" * 1022 + b"\r\n"
JSON = b"{" + b" " * 500 + b"}\n"


def us(t):
    return t * 1e6


def write_synced(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main():
    root = tempfile.mkdtemp(prefix="fsync-floor-", dir=BASE)
    tmp, msg = os.path.join(root, "tmp"), os.path.join(root, "msg")
    os.mkdir(tmp)
    os.mkdir(msg)
    try:
        for pattern in ("one file", "two files (the spool's store)"):
            parts = {"file fsync(s)": [], "rename(s)": [], "dir fsync": [], "total": []}
            start = time.monotonic()
            for i in range(COUNT):
                if time.monotonic() - start > LIMIT:
                    break
                names = [f"{i}.eml"] if pattern == "one file" else [f"{i}.eml", f"{i}.json"]
                t0 = time.perf_counter()
                for n in names:
                    write_synced(os.path.join(tmp, n), BODY if n.endswith("eml") else JSON)
                t1 = time.perf_counter()
                for n in names:
                    os.rename(os.path.join(tmp, n), os.path.join(msg, n))
                t2 = time.perf_counter()
                dir_fsync(msg)
                t3 = time.perf_counter()
                parts["file fsync(s)"].append(t1 - t0)
                parts["rename(s)"].append(t2 - t1)
                parts["dir fsync"].append(t3 - t2)
                parts["total"].append(t3 - t0)
                for n in names:
                    os.unlink(os.path.join(msg, n))
            print(f"{pattern}, {len(parts['total'])} runs in {root}:")
            for label, xs in parts.items():
                q = statistics.quantiles(xs, n=10)
                print(f"  {label:16} median {us(statistics.median(xs)):8.0f} us   p90 {us(q[-1]):8.0f} us")
    finally:
        for d in (tmp, msg):
            for n in os.listdir(d):
                os.unlink(os.path.join(d, n))
            os.rmdir(d)
        os.rmdir(root)


if __name__ == "__main__":
    main()
