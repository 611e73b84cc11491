"""Memory of N idle connections (each with one open channel, heartbeats
off): the broker's RSS before, with them open, and 15 s after they close,
for a broker whose pid is given. Each connection is a plain socket driven
by the tests' raw AMQP client (one file descriptor each, so 10,000 fit).

    .venv/bin/python scripts/bench-idle-connections.py HOST:PORT PID [N]
"""
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
from rawamqp import Raw, method  # noqa: E402


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
    time.sleep(1)
    before = rss_kib(pid)
    conns = []
    for _ in range(n):
        r = Raw(host, int(port))
        r.s.settimeout(30)
        r.handshake(heartbeat=0)
        r.open_channel()
        conns.append(r)
    time.sleep(3)
    after = rss_kib(pid)
    print(f"{n} idle connections: RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB, "
          f"+{(after - before) / 1024:.1f} MiB ({(after - before) / n:.1f} KiB per connection)")
    for r in conns:
        r.send(method(0, 10, 50, b"\x00\xc8\x00\x00\x00\x00\x00"))  # connection.close 200
        r.s.close()
    time.sleep(15)
    closed = rss_kib(pid)
    print(f"15 s after closing them: RSS {closed / 1024:.1f} MiB ({100 * (closed - before) / before:+.1f} % of before)")


if __name__ == "__main__":
    main()
