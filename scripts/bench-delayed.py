#!/usr/bin/env python3
"""One million delayed messages: publishes N messages (64-byte bodies) to an
`x-delayed-message` exchange with due times spread evenly over SPREAD
seconds, starting well after the last publish; two consumer processes take
them from the bound queue and record how late each arrived (arrival − due,
from an absolute due time the message carries). Reports the broker's RSS
before, once all are published (all held), and its peak, and lateness
p50/p99/max. Runs a fresh release Warren of its own.

    .venv/bin/python scripts/bench-delayed.py [N] [persistent|transient] [SPREAD]

persistent (default): delivery mode 2 on a durable exchange and queue — the
message log holds the bodies; transient: the spill store does.
"""
import json
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

ROOT = pathlib.Path(__file__).resolve().parents[1]
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
MODE = sys.argv[2] if len(sys.argv) > 2 else "persistent"
SPREAD = float(sys.argv[3]) if len(sys.argv) > 3 else 100.0
CONSUMERS = 2

CONSUMER = r"""
import json, sys, time, pika
port, queue, n, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=port, heartbeat=0))
ch = c.channel()
ch.basic_qos(prefetch_count=2000)
late = []
for method, props, body in ch.consume(queue, inactivity_timeout=1):
    if method is None:
        if len(late) and time.time() > last + 20:
            break
        continue
    now = time.time() * 1000
    late.append(now - props.headers["due"])
    last = time.time()
    ch.basic_ack(method.delivery_tag)
    if len(late) >= n:
        break
json.dump(late, open(out, "w"))
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    port, data = free_port(), tempfile.mkdtemp(prefix="bench-delayed-")
    broker = subprocess.Popen([str(ROOT / "target/release/warren"), "--amqp-listen", f"127.0.0.1:{port}",
                               "--http-listen", "", "--prometheus-listen", "", "--data-dir", data],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while True:
            try:
                c = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=port, heartbeat=0))
                break
            except pika.exceptions.AMQPConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        durable = MODE == "persistent"
        ch = c.channel()
        ch.exchange_declare("delayed", "x-delayed-message", durable=durable, arguments={"x-delayed-type": "direct"})
        ch.queue_declare("due", durable=durable)
        ch.queue_bind("due", "delayed", "k")
        peak = [0.0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mib(broker.pid))
                time.sleep(0.1)

        threading.Thread(target=sample, daemon=True).start()
        outs = [os.path.join(data, f"late-{i}.json") for i in range(CONSUMERS)]
        consumers = [subprocess.Popen([sys.executable, "-c", CONSUMER, str(port), "due", str(N), o]) for o in outs]
        rss_start = rss_mib(broker.pid)
        # Due times begin after the publishing is surely over (measured
        # ~7 s per 100k here; a message published after its due time is
        # counted and left out).
        t0 = time.time()
        base = int(t0 * 1000 + max(30_000, N * 0.15))
        body = b"x" * 64
        mode = 2 if durable else 1
        published_late = 0
        for i in range(N):
            due = int(base + SPREAD * 1000 * i / N)
            now = time.time() * 1000
            delay = int(due - now)
            if delay < 1:
                published_late += 1
                delay = 1
            ch.basic_publish("delayed", "k", body,
                             pika.BasicProperties(delivery_mode=mode, headers={"x-delay": delay, "due": due}))
            if i % 10000 == 9999:
                c.process_data_events(0)
        ch.queue_declare("due", durable=durable, passive=True)  # a round trip: all were taken
        publish_s = time.time() - t0
        rss_held = rss_mib(broker.pid)
        c.close()
        for p in consumers:
            p.wait()
        stop.set()
        late = sorted(x for o in outs for x in json.load(open(o)))
        print(f"mode={MODE} n={N} spread={SPREAD:.0f}s published in {publish_s:.1f}s "
              f"({published_late} published after their due time)")
        print(f"received {len(late)} of {N}")
        print(f"broker RSS: start {rss_start:.1f} MiB, all {N} held {rss_held:.1f} MiB "
              f"({(rss_held - rss_start) * 1024 * 1024 / N:.0f} B/message), peak {peak[0]:.1f} MiB")
        print(f"lateness ms: p50 {statistics.median(late):.1f}  p99 {pct(late, 0.99):.1f}  max {late[-1]:.1f}"
              f"  (min {late[0]:.1f})")
    finally:
        broker.terminate()
        broker.wait(30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
