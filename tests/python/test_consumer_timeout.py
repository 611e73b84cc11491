"""Consumer timeouts that help (issue "celery-first"): a consumer holding a
delivery unacked longer than `x-consumer-timeout` (queue argument,
basic.consume argument, or policy `consumer-timeout`) is cancelled alone —
`basic.cancel`, its deliveries requeued — and the channel with its other
consumers goes on. RabbitMQ 3.10 has no such argument (its global
consumer timeout closes the whole channel with 406), so these run against
Warren only."""
import datetime
import time
import uuid

import pika
import pika.exceptions as pe
import pytest

from conftest import count, pump_until, round_trip, wait_for


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's consumer timeout")


@pytest.mark.parametrize("where", ["queue", "consumer", "policy"])
def test_timed_out_consumer_is_cancelled_alone(broker, conn, name, where):
    slow_q, other_q = f"{name}-slow", f"{name}-other"
    ch = conn.channel()
    if where == "policy":
        broker.ctl("set_policy", name, f"^{slow_q}$", '{"consumer-timeout":800}', "--apply-to", "queues")
    ch.queue_declare(slow_q, arguments={"x-consumer-timeout": 800} if where == "queue" else {})
    ch.queue_declare(other_q)
    try:
        for _ in range(2):
            ch.basic_publish("", slow_q, b"held")
        cancelled, held, other = [], [], []
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        args = {"x-consumer-timeout": 800} if where == "consumer" else None
        ch.basic_consume(slow_q, lambda c, m, p, b: held.append(m), consumer_tag="slow", arguments=args)
        ch.basic_consume(other_q, lambda c, m, p, b: (other.append(b), c.basic_ack(m.delivery_tag)),
                         consumer_tag="other")
        assert pump_until(conn, lambda: len(held) == 2)
        t0 = time.time()
        assert pump_until(conn, lambda: cancelled == ["slow"], timeout=15)
        assert time.time() - t0 < 10
        # The channel is open, its other consumer goes on.
        ch.basic_publish("", other_q, b"still served")
        assert pump_until(conn, lambda: other == [b"still served"])
        # The held deliveries are back in the queue, marked redelivered.
        assert wait_for(lambda: count(ch, slow_q) == 2)
        m, _, body = ch.basic_get(slow_q, auto_ack=True)
        assert m.redelivered and body == b"held"
        # A late ack of a requeued delivery is ignored, not a 406.
        ch.basic_ack(held[0].delivery_tag)
        round_trip(conn, ch, slow_q)
        assert ch.is_open and count(ch, slow_q) == 1
    finally:
        if where == "policy":
            broker.ctl("clear_policy", name)
        c2 = conn.channel()
        c2.queue_delete(slow_q)
        c2.queue_delete(other_q)


def test_a_consumer_that_acks_in_time_is_not_cancelled(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-consumer-timeout": 1000})
    cancelled, got = [], []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    ch.basic_consume(name, lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
    deadline = time.time() + 2.5
    i = 0
    while time.time() < deadline:
        ch.basic_publish("", name, b"%d" % i)
        i += 1
        assert pump_until(conn, lambda: len(got) == i)
    assert not cancelled and len(got) == i


def test_invalid_consumer_timeout(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True)
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.basic_consume(name, lambda *a: None, arguments={"x-consumer-timeout": "soon"})
        ch.connection.process_data_events(time_limit=0)
        ch.queue_declare(name, passive=True)
    assert e.value.reply_code == 406
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(f"{name}-2", arguments={"x-consumer-timeout": 0})
    assert e.value.reply_code == 406


def test_the_clock_starts_at_a_celery_eta(conn, name):
    """A message with celery's `eta` header (ISO 8601) is measured from its
    ETA: held before it, the consumer is not timed out; held past ETA +
    timeout, it is."""
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-consumer-timeout": 700})
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    ch.basic_publish("", name, b"eta task", pika.BasicProperties(headers={"eta": eta.isoformat()}))
    cancelled, held = [], []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(time.time()))
    t0 = time.time()
    ch.basic_consume(name, lambda c, m, p, b: held.append(m))
    assert pump_until(conn, lambda: cancelled, timeout=15)
    assert len(held) == 1
    waited = cancelled[0] - t0
    assert waited >= 2.7, f"cancelled {waited:.1f} s after delivery: before ETA + timeout"


@pytest.mark.parametrize("pool,concurrency", [("solo", 1), ("prefork", 2)])
def test_celery_worker_holding_eta_tasks_keeps_working_and_runs_each_once(broker, tmp_path, pool, concurrency):
    """A queue timeout far shorter than the countdowns: the worker holds its
    ETA tasks past it, is never cancelled, and runs every task once. Celery
    sends the acks of ETA tasks only when its connection next has traffic,
    so its AMQP heartbeat (1 s here) must be shorter than the timeout."""
    from test_celery import client_app, start_worker, stop

    queue = f"celery-eta-{uuid.uuid4().hex[:8]}"
    args = {"x-consumer-timeout": 1500}
    tasks = client_app(broker, queue, args)
    log = tmp_path / "runs"
    w = start_worker(broker, queue, pool, concurrency, queue_args=args, env={"WARREN_CELERY_HEARTBEAT": "1"})
    try:
        expected = []
        for i in range(3):
            tasks.record.apply_async((str(log), f"eta-{i}"), countdown=4)
            expected.append(f"eta-{i}")
        for i in range(5):
            tasks.record.apply_async((str(log), f"now-{i}"))
            expected.append(f"now-{i}")

        def ran():
            return sorted(line.split()[0] for line in log.read_text().splitlines()) if log.exists() else []

        assert wait_for(lambda: set(ran()) == set(expected), timeout=60, interval=0.1)
        # Still working: tasks sent now run too.
        for i in range(3):
            tasks.record.apply_async((str(log), f"after-{i}"))
            expected.append(f"after-{i}")
        assert wait_for(lambda: set(ran()) == set(expected), timeout=60, interval=0.1)
        assert ran() == sorted(expected), "every task once"
        timed_out = [line for line in broker.proc.log if "consumer timed out" in line and queue in line]
        assert not timed_out
    finally:
        stop(w)
