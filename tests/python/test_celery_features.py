"""Warren's celery-first queue features with real celery workers (solo and
prefork) and kombu: delivery counts and limits on a classic task queue,
and a delayed exchange in front of a task queue. Warren's own arguments,
so these run against Warren only (native delayed delivery, which RabbitMQ
has too, is in test_celery_delayed.py)."""
import os
import subprocess
import sys
import time
import uuid

import kombu
import pytest

from conftest import drain_until, wait_for
from test_celery import HERE, client_app, start_worker, stop


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's own queue arguments")


@pytest.mark.parametrize("pool,concurrency", [("solo", 1), ("prefork", 2)])
def test_poison_task_sees_its_delivery_count_and_is_dead_lettered_at_the_limit(broker, tmp_path, pool, concurrency):
    queue = f"celery-poison-{uuid.uuid4().hex[:8]}"
    dlq = queue + "-dead"
    args = {"x-delivery-count-header": True, "x-delivery-limit": 2,
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    with kombu.Connection(broker.url) as c:
        c.default_channel.queue_declare(dlq, auto_delete=False)
    tasks = client_app(broker, queue, args)
    log = tmp_path / "counts"
    w = start_worker(broker, queue, pool, concurrency, queue_args=args)
    try:
        tasks.poison.delay(str(log))
        with kombu.Connection(broker.url) as c:
            ch = c.default_channel
            assert wait_for(lambda: ch.queue_declare(dlq, passive=True).message_count == 1, timeout=60)
        # 0 on the first delivery, then 1, 2; beyond the limit it is dead.
        assert log.read_text().split() == ["0", "1", "2"]
    finally:
        stop(w)
        with kombu.Connection(broker.url) as c:
            c.default_channel.queue_delete(dlq)
            c.default_channel.queue_delete(queue)


def test_kombu_consumer_reads_the_delivery_count(broker, name):
    queue = kombu.Queue(name, queue_arguments={"x-delivery-count-header": True}, auto_delete=True)
    seen = []

    def on_message(body, message):
        seen.append(message.headers.get("x-delivery-count"))
        if len(seen) < 3:
            message.requeue()
        else:
            message.ack()

    with kombu.Connection(broker.url) as c:
        c.Producer().publish({"n": 1}, routing_key=name, declare=[queue])
        with c.Consumer(queue, callbacks=[on_message]):
            assert drain_until(c, lambda: len(seen) == 3)
    assert seen == [0, 1, 2]


def test_kombu_through_a_delayed_exchange(broker, name):
    exchange = kombu.Exchange(name, "x-delayed-message", arguments={"x-delayed-type": "direct"}, auto_delete=True)
    queue = kombu.Queue(name, exchange, routing_key="k", auto_delete=True)
    got = []
    with kombu.Connection(broker.url) as c:
        t0 = time.monotonic()
        c.Producer().publish({"later": True}, exchange=exchange, routing_key="k", declare=[queue],
                             headers={"x-delay": 1000})
        c.Producer().publish({"now": True}, exchange=exchange, routing_key="k", declare=[queue])
        with c.Consumer(queue, callbacks=[lambda body, m: (got.append((body, time.monotonic() - t0)), m.ack())]):
            assert drain_until(c, lambda: len(got) == 2)
    assert [b for b, _ in got] == [{"now": True}, {"later": True}]
    assert got[1][1] >= 1.0


def test_celery_task_through_a_delayed_exchange_waits_in_the_broker(broker, tmp_path):
    """A task queue bound to an x-delayed-message exchange: a task sent with
    an `x-delay` header reaches the worker only when due (the worker holds
    nothing meanwhile, unlike a countdown)."""
    queue = f"celery-xdelay-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "runs"
    env = {"WARREN_CELERY_DELAYED_EXCHANGE": "1"}
    w = start_worker(broker, queue, env=env)
    try:
        code = ("import sys; from celery_app import tasks; "
                "tasks.record.apply_async((sys.argv[1], 'delayed'), headers={'x-delay': 3000})")
        penv = dict(os.environ, WARREN_CELERY_BROKER=broker.url, WARREN_CELERY_QUEUE=queue, **env)
        t0 = time.time()
        subprocess.run([sys.executable, "-c", code, str(log)], cwd=HERE, env=penv, check=True, timeout=60)
        with kombu.Connection(broker.url) as c:
            ch = c.default_channel
            assert ch.queue_declare(queue, passive=True).message_count == 0
        assert wait_for(lambda: log.exists(), timeout=60, interval=0.05)
        tag, at = log.read_text().split()
        assert tag == "delayed" and float(at) - t0 >= 3
    finally:
        stop(w)
