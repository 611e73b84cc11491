#!/usr/bin/env python3
"""What this machine's disk takes with a sync after every write: N writers,
each appending CHUNK KiB then fdatasync, for SECONDS; prints MB/s in all.
The nodes of scripts/bench-cluster.sh share one disk; this is its ceiling
for a given size of write between syncs.

    scripts/bench-disk.py [WRITERS [CHUNK_KIB [SECONDS [DIR]]]]
    e.g. scripts/bench-disk.py 3 128
"""
import os
import sys
import tempfile
import threading
import time

writers = int(sys.argv[1]) if len(sys.argv) > 1 else 1
chunk = (int(sys.argv[2]) if len(sys.argv) > 2 else 128) * 1024
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5
where = sys.argv[4] if len(sys.argv) > 4 else "/tmp"
done = [0] * writers


def write(i, d):
    fd = os.open(os.path.join(d, f"w{i}"), os.O_WRONLY | os.O_CREAT, 0o600)
    buf = os.urandom(chunk)
    size, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        os.write(fd, buf)
        os.fdatasync(fd)
        done[i] += chunk
        size += chunk
        if size >= 256 << 20:  # like a log's segments: start a new file
            os.close(fd)
            os.unlink(os.path.join(d, f"w{i}"))
            fd = os.open(os.path.join(d, f"w{i}"), os.O_WRONLY | os.O_CREAT, 0o600)
            size = 0
    os.close(fd)


with tempfile.TemporaryDirectory(dir=where) as d:
    threads = [threading.Thread(target=write, args=(i, d)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(f"writers {writers}, {chunk >> 10} KiB a sync: {sum(done) / seconds / 1e6:.0f} MB/s")
