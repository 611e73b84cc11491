"""Delivery counts on every queue type (issue "celery-first"): a classic
queue declared with `x-delivery-count-header: true` sends `x-delivery-count`
as quorum queues do, and `x-delivery-limit` works on classic queues too.
Both are Warren's own (RabbitMQ's classic queues ignore them), so those
tests run against Warren only; that a plain classic queue sends no header
holds on both."""
import pika
import pika.exceptions as pe
import pytest

from conftest import count, wait_for


def deliveries(ch, name, n):
    seen = []
    for _ in range(n):
        assert wait_for(lambda: count(ch, name) == 1)
        m, props, _ = ch.basic_get(name)
        seen.append((m.redelivered, (props.headers or {}).get("x-delivery-count")))
        ch.basic_nack(m.delivery_tag, requeue=True)
    return seen


def test_plain_classic_queue_sends_no_delivery_count(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True)
    ch.basic_publish("", name, b"m")
    assert deliveries(ch, name, 2) == [(False, None), (True, None)]


def test_classic_queue_with_delivery_count_header(broker, conn, name):
    if not broker.is_warren:
        pytest.skip("a Warren queue argument")
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments={"x-delivery-count-header": True})
    ch.confirm_delivery()
    ch.basic_publish("", name, b"m", pika.BasicProperties(delivery_mode=2, headers={"app": 1}))
    assert deliveries(ch, name, 3) == [(False, 0), (True, 1), (True, 2)]
    m, props, _ = ch.basic_get(name, auto_ack=True)
    assert props.headers == {"app": 1, "x-delivery-count": 3}
    # Redeclared with another value: inequivalent, as for any argument.
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(name, durable=True, arguments={"x-delivery-count-header": False})
    assert e.value.reply_code == 406
    conn.channel().queue_delete(name)


def test_delivery_count_header_must_be_a_boolean(broker, conn, name):
    if not broker.is_warren:
        pytest.skip("a Warren queue argument")
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        conn.channel().queue_declare(name, arguments={"x-delivery-count-header": "yes"})
    assert e.value.reply_code == 406
    assert "x-delivery-count-header" in e.value.reply_text


def test_delivery_limit_on_a_classic_queue(broker, conn, name):
    if not broker.is_warren:
        pytest.skip("RabbitMQ applies x-delivery-limit to quorum queues only")
    ch = conn.channel()
    dlq = f"{name}-dlq"
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(name, exclusive=True, arguments={
        "x-delivery-limit": 2, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.basic_publish("", name, b"poison")
    # Delivered 3 times (the first and 2 redeliveries), then dead-lettered.
    assert len(deliveries(ch, name, 3)) == 3
    assert wait_for(lambda: count(ch, dlq) == 1)
    assert count(ch, name) == 0
    _, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"poison" and props.headers["x-death"][0]["reason"] == "delivery_limit"


@pytest.mark.parametrize("fair", [False, True])
def test_fair_dispatch_sends_to_the_consumer_with_fewest_unacked(broker, conn, name, fair):
    """A slow consumer (never acks, prefetch 10) and a fast one (acks at
    once): round-robin gives the slow one every other message until its
    prefetch is full; `x-fair-dispatch: true` gives it only the first."""
    if fair and not broker.is_warren:
        pytest.skip("a Warren queue argument")
    from conftest import pump_until

    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-fair-dispatch": True} if fair else {})
    got = {"slow": 0, "fast": 0}
    slow, fast = conn.channel(), conn.channel()
    for c in (slow, fast):
        c.basic_qos(prefetch_count=10)

    def on_fast(c, m, p, b):
        got["fast"] += 1
        c.basic_ack(m.delivery_tag)

    slow.basic_consume(name, lambda c, m, p, b: got.__setitem__("slow", got["slow"] + 1))
    fast.basic_consume(name, on_fast)
    for i in range(20):
        ch.basic_publish("", name, b"x")
        assert pump_until(conn, lambda: got["slow"] + got["fast"] == i + 1)
    if fair:
        assert got == {"slow": 1, "fast": 19}
    else:
        assert got["slow"] == 10 and got["fast"] == 10


@pytest.mark.parametrize("global_qos", [True, False])
def test_basic_qos_applies_to_existing_consumers(broker, conn, name, global_qos):
    """celery raises and lowers its prefetch around ETA tasks on a channel
    that already consumes. With global=true both brokers apply the new
    limit at once; with global=false RabbitMQ 3.10 keeps the old limit for
    existing consumers, Warren applies it to them too (a deliberate
    difference, README)."""
    from conftest import pump_until, round_trip

    ch = conn.channel()
    ch.queue_declare(name, exclusive=True)
    for _ in range(10):
        ch.basic_publish("", name, b"x")
    got = []
    ch.basic_qos(prefetch_count=2, global_qos=global_qos)
    ch.basic_consume(name, lambda c, m, p, b: got.append(m))
    assert pump_until(conn, lambda: len(got) >= 2)
    round_trip(conn, ch, name)
    assert len(got) == 2
    ch.basic_qos(prefetch_count=5, global_qos=global_qos)
    live = global_qos or broker.is_warren
    if live:
        assert pump_until(conn, lambda: len(got) >= 5)
    round_trip(conn, ch, name)
    assert len(got) == (5 if live else 2)
    # Lowered: after acking everything, only one at a time.
    ch.basic_qos(prefetch_count=1, global_qos=global_qos)
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    n = len(got)
    assert pump_until(conn, lambda: len(got) >= n + 1)
    round_trip(conn, ch, name)
    assert len(got) == n + (1 if live else 2)


def test_requeue_backoff_delays_rejected_messages(broker, conn, name):
    """`x-requeue-backoff: 200`: a message nacked with requeue comes back
    after 200 ms, then 400, then 800 (doubling per delivery), not at once."""
    if not broker.is_warren:
        pytest.skip("a Warren queue argument")
    import time

    from conftest import pump_until

    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-requeue-backoff": 200, "x-delivery-count-header": True})
    seen = []

    def on_message(c, m, p, b):
        seen.append((time.monotonic(), p.headers["x-delivery-count"]))
        c.basic_nack(m.delivery_tag, requeue=True)

    ch.basic_consume(name, on_message)
    ch.basic_publish("", name, b"poison")
    assert pump_until(conn, lambda: len(seen) >= 4, timeout=20)
    gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:4])]
    assert [c for _, c in seen[:4]] == [0, 1, 2, 3]
    for gap, wait in zip(gaps, (0.2, 0.4, 0.8)):
        assert gap >= wait * 0.95, (gaps, "a rejected message came back before its back-off")
    ch.basic_cancel(ch.consumer_tags[0])


def test_requeue_backoff_with_a_delivery_limit(broker, conn, name):
    if not broker.is_warren:
        pytest.skip("a Warren queue argument")
    from conftest import pump_until

    ch = conn.channel()
    dlq = f"{name}-dlq"
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(name, exclusive=True, arguments={
        "x-requeue-backoff": 50, "x-delivery-limit": 2, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq})
    seen = []
    ch.basic_consume(name, lambda c, m, p, b: (seen.append(b), c.basic_nack(m.delivery_tag, requeue=True)))
    ch.basic_publish("", name, b"poison")
    assert pump_until(conn, lambda: ch.queue_declare(dlq, passive=True).method.message_count == 1, timeout=20)
    assert seen == [b"poison"] * 3
