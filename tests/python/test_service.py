"""Warren as a service manager runs it (issue 26): systemd's readiness
notification (`Type=notify`), `warren --version`, `warren ctl status` and
`await_startup`, the connection lines operators grep for, and a SIGTERM
that lets confirms finish, closes clients with 320 and exits 0. Warren only."""
import os
import signal
import socket
import subprocess
import tempfile
import threading

import pika
import pytest

from conftest import free_port, own_warren, wait_for, warren_binary
from test_config_file import Launched


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's own command line")


def test_version():
    r = subprocess.run([warren_binary(), "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("warren "), r.stdout


def test_systemd_is_told_when_warren_is_ready_and_stopping(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    port = free_port()
    w = Launched(["--amqp-listen", f"127.0.0.1:{port}", "--http-listen", "", "--prometheus-listen", "",
                  "--data-dir", str(tmp_path / "data")], env={"NOTIFY_SOCKET": path})
    try:
        assert sock.recv(256) == b"READY=1"
        # Ready means serving.
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)).close()
        w.proc.send_signal(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert w.proc.wait(20) == 0
    finally:
        w.stop()
        sock.close()


def test_ctl_status_and_await_startup(tmp_path):
    data = tmp_path / "data"
    # await_startup waits for a broker that is not there yet...
    waiter = subprocess.Popen([warren_binary(), "ctl", "--data-dir", str(data), "await_startup", "--timeout", "60"])
    port = free_port()
    w = Launched(["--amqp-listen", f"127.0.0.1:{port}", "--http-listen", "", "--prometheus-listen", "",
                  "--data-dir", str(data)])
    try:
        assert waiter.wait(60) == 0
        # ...and once it returns, clients are served.
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)).close()
        r = subprocess.run([warren_binary(), "ctl", "--data-dir", str(data), "status"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        rows = dict(line.split("\t", 1) for line in r.stdout.splitlines() if "\t" in line)
        assert rows["amqp_listener"] == f"127.0.0.1:{port}"
        assert rows["http_listener"] == "off" and rows["alarms"] == "none"
        assert int(rows["uptime_seconds"]) >= 0 and rows["version"]
        assert int(rows["memory_rss_bytes"]) > 0
    finally:
        w.stop()
    # Nobody there: it gives up after its timeout.
    r = subprocess.run([warren_binary(), "ctl", "--data-dir", str(tmp_path / "none"), "await_startup", "--timeout",
                        "1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 69 and "did not start within 1 s" in r.stderr


def test_connection_lines_operators_grep_for():
    with own_warren() as b:
        c = pika.BlockingConnection(b.params())
        peer = "127.0.0.1:%d" % c._impl._transport._sock.getsockname()[1]
        c.close()

        def logged():
            log = "".join(b.proc.log)
            return all(f"peer={peer}" in line for line in [
                next((x for x in b.proc.log if "accepting AMQP connection" in x and peer in x), ""),
                next((x for x in b.proc.log if "user authenticated" in x and peer in x), ""),
                next((x for x in b.proc.log if "closing AMQP connection" in x and peer in x), ""),
            ]) and "user=guest" in log
        assert wait_for(logged, timeout=10), "".join(b.proc.log[-20:])


def test_sigterm_confirms_what_it_took_then_closes_clients_and_exits_0():
    data = tempfile.mkdtemp(prefix="warren-term-")
    port = free_port()
    args = ["--amqp-listen", f"127.0.0.1:{port}", "--http-listen", "", "--prometheus-listen", "",
            "--data-dir", data]
    w = Launched(args, data=data)
    confirmed, closed = [], []
    try:
        w.wait_listening()
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        ch = c.channel()
        ch.queue_declare("kept", durable=True)
        ch.confirm_delivery()
        started = threading.Event()

        def publish():
            n = 0
            try:
                while True:
                    ch.basic_publish("", "kept", str(n).encode(), pika.BasicProperties(delivery_mode=2))
                    confirmed.append(n)
                    n += 1
                    if n == 50:
                        started.set()
            except pika.exceptions.ConnectionClosedByBroker as e:
                closed.append(e.reply_code)
            except pika.exceptions.AMQPError as e:
                closed.append(repr(e))
            started.set()

        t = threading.Thread(target=publish, daemon=True)
        t.start()
        assert started.wait(30)
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(20) == 0
        t.join(20)
        assert closed == [320], closed
        assert "waiting for in-flight confirms" in w.output()
    finally:
        w.stop()
    # Every confirmed message is there after a restart.
    w = Launched(args, data=data)
    try:
        w.wait_listening()
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        got = set()
        ch = c.channel()
        while True:
            m, _, body = ch.basic_get("kept", auto_ack=True)
            if m is None:
                break
            got.add(int(body))
        c.close()
        missing = set(confirmed) - got
        assert confirmed and not missing, f"{len(missing)} confirmed messages lost"
    finally:
        w.stop()
        subprocess.run(["rm", "-rf", data])
    assert len(confirmed) >= 50
