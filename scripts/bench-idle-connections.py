"""Memory of N idle connections (each with one open channel): the broker's
RSS before and after, for a broker whose pid is given.

    .venv/bin/python scripts/bench-idle-connections.py HOST:PORT PID [N]
"""
import sys
import time

import pika


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    pid = int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    params = pika.ConnectionParameters(host=host, port=int(port), heartbeat=0)
    time.sleep(1)
    before = rss_kib(pid)
    conns = []
    for _ in range(n):
        c = pika.BlockingConnection(params)
        c.channel()
        conns.append(c)
    time.sleep(3)
    after = rss_kib(pid)
    print(f"{n} idle connections: RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB, "
          f"+{(after - before) / 1024:.1f} MiB ({(after - before) / n:.1f} KiB per connection)")
    for c in conns:
        c.close()


if __name__ == "__main__":
    main()
