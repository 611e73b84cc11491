"""Transient backlog under memory pressure: publishes N transient 64 KiB
messages into a consumer-less queue, then consumes them all (prefetch 256,
ack every 100, checking order), and reports the broker's peak RSS in each
phase (sampled every 10 ms from /proc). Start the broker with the watermark
to test, e.g. `warren --memory-high-watermark 512MiB`.

    .venv/bin/python scripts/bench-spill.py HOST:PORT PID [N]
"""
import sys
import threading
import time

import pika


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    pid = int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 32768
    params = pika.ConnectionParameters(host=host, port=int(port), heartbeat=0)
    peak, phase, done = {"publish": 0.0, "consume": 0.0}, ["publish"], threading.Event()

    def sample():
        while not done.is_set():
            peak[phase[0]] = max(peak[phase[0]], rss_mib(pid))
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    body = b"x" * 65536
    c = pika.BlockingConnection(params)
    ch = c.channel()
    ch.queue_declare("bench-spill")
    ch.confirm_delivery()
    start = time.time()
    for i in range(n):
        ch.basic_publish("", "bench-spill", i.to_bytes(4, "big") + body[4:])
    published = time.time() - start
    phase[0] = "consume"
    cc = pika.BlockingConnection(params)
    cch = cc.channel()
    cch.basic_qos(prefetch_count=256)
    got, start = 0, time.time()
    for m, _, b in cch.consume("bench-spill", inactivity_timeout=30):
        if m is None or b[:4] != got.to_bytes(4, "big"):
            raise SystemExit(f"out of order or stalled at {got}")
        got += 1
        if got % 100 == 0 or got == n:
            cch.basic_ack(m.delivery_tag, multiple=True)
        if got == n:
            break
    consumed = time.time() - start
    done.set()
    cch.queue_delete("bench-spill")
    print(f"{n} x 64 KiB ({n * 64 / 1024 / 1024:.1f} GiB): published in {published:.1f} s, consumed in order in "
          f"{consumed:.1f} s; peak RSS {peak['publish']:.0f} MiB publishing, {peak['consume']:.0f} MiB consuming")


if __name__ == "__main__":
    main()
