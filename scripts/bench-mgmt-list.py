#!/usr/bin/env python3
"""Management API with many queues: declares N queues (default 10,000) on a
fresh release Warren and, if RABBITMQ_ADDR / RABBITMQ_HTTP are set (default
127.0.0.1:5672 and http://127.0.0.1:15672; empty to skip), on RabbitMQ, then
times GET /api/queues?page=1&page_size=100 and the unpaginated
GET /api/queues (median of 5 each), with the broker's peak RSS meanwhile.

    .venv/bin/python scripts/bench-mgmt-list.py [N]
"""
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pika
import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(name, amqp_port, http, pid, prefix):
    c = pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port))
    ch = c.channel()
    t = time.time()
    for i in range(N):
        ch.queue_declare(f"{prefix}-{i:05}", auto_delete=False, arguments={"x-expires": 600_000})
    declare_s = time.time() - t
    c.close()
    auth = ("guest", "guest")
    paged, full, sizes, peaks = [], [], [], []
    for _ in range(5):
        t = time.time()
        r = requests.get(f"{http}/api/queues?page=1&page_size=100", auth=auth, timeout=600)
        paged.append(time.time() - t)
        assert r.status_code == 200 and len(r.json()["items"]) == 100, r.text[:200]
        peak = [rss(pid) if pid else 0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss(pid) if pid else 0)
                time.sleep(0.01)

        th = threading.Thread(target=sample)
        th.start()
        t = time.time()
        r = requests.get(f"{http}/api/queues", auth=auth, timeout=600)
        full.append(time.time() - t)
        stop.set()
        th.join()
        assert r.status_code == 200 and len(r.json()) >= N
        sizes.append(len(r.content))
        peaks.append(peak[0])
    base_rss = rss(pid) if pid else 0
    print(f"{name}: {N} queues declared in {declare_s:.1f} s; "
          f"page of 100: median {statistics.median(paged) * 1000:.0f} ms ({', '.join(f'{x * 1000:.0f}' for x in paged)}); "
          f"full list ({statistics.median(sizes) / 1e6:.1f} MB): median {statistics.median(full) * 1000:.0f} ms "
          f"({', '.join(f'{x * 1000:.0f}' for x in full)})"
          + (f"; RSS {base_rss / 2**20:.0f} MiB after, peak during the full list {max(peaks) / 2**20:.0f} MiB" if pid else ""))
    return prefix


def main():
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "warren"], cwd=ROOT, check=True)
    port, hport = free_port(), free_port()
    data = tempfile.mkdtemp()
    proc = subprocess.Popen([str(ROOT / "target/release/warren"), "--amqp-listen", f"127.0.0.1:{port}",
                             "--http-listen", f"127.0.0.1:{hport}", "--prometheus-listen", "", "--data-dir", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        measure("warren", port, f"http://127.0.0.1:{hport}", proc.pid, "bench")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)
    addr = os.environ.get("RABBITMQ_ADDR", "127.0.0.1:5672")
    if addr:
        http = os.environ.get("RABBITMQ_HTTP", "http://127.0.0.1:15672")
        prefix = f"bench-{os.getpid()}"
        try:
            pid = int(subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True).stdout.split()[0])
        except (IndexError, ValueError):
            pid = 0
        measure("rabbitmq", int(addr.rsplit(":", 1)[1]), http, pid, prefix)
        c = pika.BlockingConnection(pika.ConnectionParameters(port=int(addr.rsplit(":", 1)[1])))
        ch = c.channel()
        for i in range(N):
            ch.queue_delete(f"{prefix}-{i:05}")
        c.close()


main()
