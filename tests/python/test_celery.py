"""Celery end to end: a worker process runs tasks a separate client sends,
with results coming back through the broker (rpc:// backend)."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def client_app(broker, queue, queue_args=None):
    os.environ["WARREN_CELERY_BROKER"] = broker.url
    os.environ["WARREN_CELERY_QUEUE"] = queue
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    from celery_app import tasks
    from kombu import Queue

    tasks.app.conf.broker_url = broker.url
    tasks.app.conf.task_default_queue = queue
    tasks.app.conf.task_queues = [Queue(queue, queue_arguments=queue_args)] if queue_args else None
    # celery builds its queues and router once per app: forget the last test's.
    for cached in ("queues", "router", "default_queue"):
        tasks.app.amqp.__dict__.pop(cached, None)
    return tasks


def start_worker(broker, queue, pool="solo", concurrency=1, name=None, queue_args=None, env=None):
    env = dict(os.environ, WARREN_CELERY_BROKER=broker.url, WARREN_CELERY_QUEUE=queue, **(env or {}))
    if queue_args:
        env["WARREN_CELERY_QUEUE_ARGS"] = json.dumps(queue_args)
    cmd = [
        sys.executable, "-m", "celery", "-A", "celery_app.tasks", "worker",
        "-P", pool, "-c", str(concurrency), "-Q", queue, "-n", f"{name or uuid.uuid4().hex[:8]}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
    ]
    return subprocess.Popen(cmd, cwd=HERE, env=env, start_new_session=True)


def stop(proc, sig=signal.SIGTERM):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def queue():
    return f"celery-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("pool,concurrency", [("solo", 1), ("prefork", 2)])
def test_worker_runs_tasks_and_returns_results(broker, queue, pool, concurrency):
    tasks = client_app(broker, queue)
    w = start_worker(broker, queue, pool, concurrency)
    try:
        results = [tasks.add.delay(i, i) for i in range(10)]
        assert [r.get(timeout=60) for r in results] == [2 * i for i in range(10)]
    finally:
        stop(w)


def test_countdown_and_retry(broker, queue, tmp_path):
    tasks = client_app(broker, queue)
    w = start_worker(broker, queue)
    try:
        t0 = time.time()
        r = tasks.add.apply_async((20, 22), countdown=2)
        assert r.get(timeout=60) == 42
        assert time.time() - t0 >= 2
        r = tasks.flaky.delay(str(tmp_path / "flaky"))
        assert r.get(timeout=60) == "ok after retry"
    finally:
        stop(w)


def test_acks_late_task_of_killed_worker_is_redelivered(broker, queue, tmp_path):
    tasks = client_app(broker, queue)
    marker = tmp_path / "started"
    w1 = start_worker(broker, queue, name="first")
    try:
        r = tasks.slow_once.delay(str(marker))
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "first worker never started the task"
    finally:
        stop(w1, signal.SIGKILL)
    w2 = start_worker(broker, queue, name="second")
    try:
        assert r.get(timeout=60) == "second run"
    finally:
        stop(w2)
