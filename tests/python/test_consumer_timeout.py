"""Consumer timeouts that help (issue "celery-first"): a consumer holding a
delivery unacked longer than `x-consumer-timeout` (queue argument,
basic.consume argument, or policy `consumer-timeout`) is cancelled alone —
`basic.cancel`, its deliveries requeued — and the channel with its other
consumers goes on. RabbitMQ 3.10 has no such argument (its global
consumer timeout closes the whole channel with 406), so these run against
Warren only."""
import time

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
