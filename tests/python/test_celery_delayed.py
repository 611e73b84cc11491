"""Celery 5.5's native delayed delivery (kombu's native_delayed_delivery):
with quorum task queues, a countdown task waits in the broker — 28
`celery_delayed_*` levels of quorum queues with message TTLs, dead-lettered
level to level through topic exchange-to-exchange bindings — rather than in
the worker's memory. The first test runs against RabbitMQ too; the second
kills the broker, so it needs a Warren of its own."""
import os
import signal
import subprocess
import sys
import time
import types
import uuid

import pika
import pytest

from conftest import free_port, wait_for, warren_binary
from test_celery import HERE, start_worker, stop

NATIVE = {"WARREN_CELERY_NATIVE_DELAYED": "1"}


def send(url, queue, log, tag, countdown):
    """Sends `record(log, tag)` with a countdown from a client process of its
    own (celery's producer pool is per process); returns when confirmed."""
    code = (
        "import sys; from celery_app import tasks; "
        "tasks.record.apply_async((sys.argv[1], sys.argv[2]), countdown=float(sys.argv[3]))"
    )
    env = dict(os.environ, WARREN_CELERY_BROKER=url, WARREN_CELERY_QUEUE=queue, **NATIVE)
    subprocess.run([sys.executable, "-c", code, str(log), tag, str(countdown)], cwd=HERE, env=env,
                   check=True, timeout=60)


def runs(log):
    if not log.exists():
        return []
    return [(line.split()[0], float(line.split()[1])) for line in log.read_text().splitlines()]


def delayed_levels_declared(params):
    """The worker declares the celery_delayed_* exchanges and queues at start."""
    try:
        c = pika.BlockingConnection(params)
    except pika.exceptions.AMQPConnectionError:
        return False
    try:
        ch = c.channel()
        ch.exchange_declare("celery_delayed_delivery", "topic", passive=True)
        ch.queue_declare("celery_delayed_27", passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if c.is_open:
            c.close()


def waiting_in_levels(params):
    c = pika.BlockingConnection(params)
    try:
        ch = c.channel()
        return sum(ch.queue_declare(f"celery_delayed_{i}", passive=True).method.message_count for i in range(28))
    finally:
        c.close()


def test_countdown_waits_in_the_broker_and_runs_on_time(broker, tmp_path):
    queue = f"celery-native-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "runs"
    w = start_worker(broker, queue, env=NATIVE)
    try:
        assert wait_for(lambda: delayed_levels_declared(broker.params()), timeout=60, interval=0.2)
        t0 = time.time()
        send(broker.url, queue, log, "later", 5)
        send(broker.url, queue, log, "soon", 1)
        # Held by the broker's delay levels, not by the worker.
        assert waiting_in_levels(broker.params()) >= 1
        assert wait_for(lambda: len(runs(log)) == 2, timeout=60, interval=0.1)
        got = dict(runs(log))
        assert got["soon"] - t0 >= 1
        assert got["later"] - t0 >= 5
        assert got["later"] - t0 < 5 + 10, "on time (within seconds)"
        assert waiting_in_levels(broker.params()) == 0
    finally:
        stop(w)


def test_countdown_task_runs_on_time_across_a_broker_kill_9(broker, tmp_path):
    if not broker.is_warren:
        pytest.skip("kills the broker")
    data = str(tmp_path / "data")
    port = free_port()
    params = pika.ConnectionParameters(port=port)
    url = f"amqp://guest:guest@127.0.0.1:{port}//"

    def start():
        proc = subprocess.Popen([warren_binary(), "--amqp-listen", f"127.0.0.1:{port}", "--http-listen", "",
                                 "--prometheus-listen", "", "--data-dir", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        assert wait_for(lambda: proc.poll() is not None or _up(params), timeout=20)
        assert proc.poll() is None, f"the broker exited at start ({proc.returncode}): port {port} taken?"
        return proc

    queue = f"celery-native-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "runs"

    proc = start()
    w = None
    try:
        w = start_worker(types.SimpleNamespace(url=url), queue, env=NATIVE)
        assert wait_for(lambda: delayed_levels_declared(params), timeout=60, interval=0.2)
        t0 = time.time()
        send(url, queue, log, "survivor", 6)  # confirmed: on disk
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = start()
        assert wait_for(lambda: len(runs(log)) >= 1, timeout=60, interval=0.1)
        (tag, at), = runs(log)
        assert tag == "survivor"
        assert 6 <= at - t0 < 6 + 10, f"ran {at - t0:.1f} s after it was sent with countdown 6"
        # once: nothing left waiting anywhere
        assert wait_for(lambda: waiting_in_levels(params) == 0, timeout=20)
        c = pika.BlockingConnection(params)
        assert c.channel().queue_declare(queue, passive=True).method.message_count == 0
        c.close()
        assert len(runs(log)) == 1
    finally:
        if w:
            stop(w)
        proc.terminate()
        proc.wait(10)


def _up(params):
    try:
        pika.BlockingConnection(params).close()
        return True
    except pika.exceptions.AMQPConnectionError:
        return False
