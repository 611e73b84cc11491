"""Pytest fixtures: a broker to test against.

With WARREN_TEST_ADDR=host:port the tests use that broker (Warren or
RabbitMQ: the differential run). Otherwise one real `warren` binary is
started for the session on a free port with a temporary data directory.
WARREN_BIN names the binary (default: target/debug/warren).
"""
import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def warren_binary():
    return os.environ.get("WARREN_BIN", str(ROOT / "target" / "debug" / "warren"))


class Broker:
    def __init__(self, host, port, proc=None, data=None, http=None):
        self.host = host
        self.port = port
        self.proc = proc
        self.data = data
        # Base URL of the management HTTP API (".../api/..." follows).
        self.http = http or os.environ.get("WARREN_TEST_HTTP", f"http://{host}:15672")
        # Base URL of the Prometheus endpoint ("/metrics" follows).
        self.prometheus = getattr(proc, "prometheus", None) or os.environ.get(
            "WARREN_TEST_PROMETHEUS", f"http://{host}:15692")

    def ctl(self, *args, check=True, input=None):
        """Runs an administration command: `warren ctl` for the Warren this
        session started, else WARREN_TEST_CTL (default `rabbitmqctl`)."""
        if self.data is not None:
            cmd = [warren_binary(), "ctl", "--data-dir", self.data]
        else:
            cmd = os.environ.get("WARREN_TEST_CTL", "rabbitmqctl").split()
        r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"{cmd + list(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    @property
    def is_warren(self):
        return self.proc is not None

    @property
    def url(self):
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    def params(self, **kw):
        import pika

        return pika.ConnectionParameters(host=self.host, port=self.port, **kw)


_HANDED_OUT = set()


def free_port():
    """A port nothing listens on, never one handed out before in this run:
    the kernel may offer a just-released port again, and a broker given the
    same port for two listeners fails to start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


# Every line with "panicked" in the log of any Warren the tests started,
# unless the test provoked it on purpose (allow_panic). Each test fails on
# new ones (see no_panics_in_broker_logs), and the session on late ones.
PANIC_LINES = []
_panics_reported = 0


def start_warren(listen_host="127.0.0.1", extra=(), env=None, allow_panic=False, data=None):
    """Starts Warren (on a new data directory unless given one); `proc.log`
    collects its log lines as they come.

    A port `free_port` picked is free when picked, not when the broker binds
    it: in between the kernel may hand it to anyone who binds port 0 (a
    cluster node's replication listener does). A broker that exits because
    one of its ports was taken is started again on new ones."""
    made = data is None
    data = data or tempfile.mkdtemp(prefix="warren-pytest-")
    try:
        for attempt in range(5):
            proc, port = _start_warren_once(listen_host, extra, env, allow_panic, data)
            if proc is not None:
                return proc, port, data
        raise RuntimeError("warren did not start: its ports were taken five times")
    except BaseException:
        if made:  # nobody else will remove it
            shutil.rmtree(data, ignore_errors=True)
        raise


def _start_warren_once(listen_host, extra, env, allow_panic, data):
    """(proc, port) once it listens; (None, None) if it exited because a
    port was taken; raises otherwise."""
    binary = warren_binary()
    port = free_port()
    http_port = free_port()
    http = [] if "--http-listen" in extra else ["--http-listen", f"127.0.0.1:{http_port}"]
    prometheus_port = free_port()
    if "--prometheus-listen" not in extra:
        http += ["--prometheus-listen", f"127.0.0.1:{prometheus_port}"]
    proc = subprocess.Popen(
        [binary, "--amqp-listen", f"{listen_host}:{port}", *http, "--data-dir", data, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    proc.log = []
    proc.http = f"http://127.0.0.1:{http_port}"
    proc.prometheus = f"http://127.0.0.1:{prometheus_port}"
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            if "AMQP listening" in line:
                ready.set()
            if "panicked" in line and not allow_panic:
                PANIC_LINES.append(line)
            proc.log.append(line)
            print("[warren]", line, end="")

    proc.pump = threading.Thread(target=pump, daemon=True)
    proc.pump.start()
    deadline = time.monotonic() + 20
    while not ready.wait(0.05):
        if proc.poll() is not None:
            proc.pump.join(10)
            if any("Address already in use" in line for line in proc.log):
                return None, None
            raise RuntimeError(f"warren exited ({proc.returncode}) before it listened")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("warren did not start")
    return proc, port


def stop_warren(proc, *dirs):
    """Stops a Warren that start_warren started (its last log lines read)
    and removes `dirs`: its data directory and any made for it."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    proc.pump.join(10)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def own_warren(extra=(), env=None, allow_panic=False, data=None):
    """A Warren of the test's own (flags, environment, data directory), as a
    Broker; stopped and its data directory removed afterwards."""
    proc, port, data = start_warren(extra=extra, env=env, allow_panic=allow_panic, data=data)
    try:
        yield Broker("127.0.0.1", port, proc, data, proc.http)
    finally:
        stop_warren(proc, data)


@pytest.fixture(scope="session")
def broker():
    addr = os.environ.get("WARREN_TEST_ADDR")
    if addr:
        host, port = addr.rsplit(":", 1)
        yield Broker(host, int(port))
        return
    proc, port, data = start_warren()
    yield Broker("127.0.0.1", port, proc, data, proc.http)
    stop_warren(proc, data)  # its last lines are in PANIC_LINES before the session ends


@pytest.fixture(autouse=True)
def no_panics_in_broker_logs():
    """Fails the test during which a broker the suite started logged a panic."""
    global _panics_reported
    yield
    new = PANIC_LINES[_panics_reported:]
    _panics_reported = len(PANIC_LINES)
    assert not new, "panic in a broker log:\n" + "".join(new)


def pytest_sessionfinish(session, exitstatus):
    late = PANIC_LINES[_panics_reported:]
    if late:
        print("\npanic in a broker log (after the last test):\n" + "".join(late))
        session.exitstatus = 1


@pytest.fixture
def name():
    """A unique name, so tests never collide on a shared broker."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conn(broker):
    import pika

    c = pika.BlockingConnection(broker.params())
    yield c
    if c.is_open:
        c.close()


def listening(pid):
    """(address, port) of every TCP socket process `pid` listens on, from
    /proc (no tools needed); the address as /proc/net/tcp writes it."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    addr, port = cols[1].split(":")
                    found.append((addr, int(port, 16)))
    return found


def wait_for(pred, timeout=10.0, interval=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False


def pump_until(conn, pred, timeout=10.0):
    """Runs a pika BlockingConnection's event loop until `pred()` holds or
    the deadline passes; returns whether it held. (Never one fixed
    `process_data_events(time_limit=...)`: a slow run misses deliveries.)"""
    deadline = time.time() + timeout
    while not pred():
        if time.time() >= deadline:
            return False
        conn.process_data_events(time_limit=0.02)
    return True


def drain_until(conn, pred, timeout=10.0):
    """The same for a kombu Connection: drains events until `pred()` holds
    or the deadline passes; returns whether it held."""
    deadline = time.time() + timeout
    while not pred():
        if time.time() >= deadline:
            return False
        try:
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            pass
    return True


def round_trip(conn, ch, queue):
    """A synchronous method on `ch` and the events before its reply: what
    the broker had sent on the channel by then has been dispatched."""
    ch.queue_declare(queue, passive=True)
    conn.process_data_events(time_limit=0)


def count(ch, name):
    """Ready messages of a queue (a passive declare, in step with the channel)."""
    return ch.queue_declare(name, passive=True).method.message_count


@pytest.fixture(scope="session")
def rabbit(broker):
    """A private RabbitMQ node (tests/python/rabbitnode.py) for the other
    side of shovels and federation links, shared by the session; against
    another broker (WARREN_TEST_ADDR) those tests are skipped."""
    if not broker.is_warren:
        pytest.skip("starts a RabbitMQ node of its own")
    from rabbitnode import RabbitNode
    node = RabbitNode()
    yield node
    node.stop()
