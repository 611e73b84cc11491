"""Message deduplication (issue "celery-first"): `x-message-deduplication`
on exchanges and queues, the `x-deduplication-header` message header, a
cache bounded by `x-cache-size` with `x-cache-ttl` — the names LavinMQ and
RabbitMQ's deduplication plugin use. Debian's RabbitMQ 3.10 has no such
plugin, so these run against Warren only."""
import time

import kombu
import pika
import pika.exceptions as pe
import pytest

from conftest import count, drain_until, round_trip, wait_for

from test_celery import client_app, start_worker, stop


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("message deduplication")


def props(value=None, **headers):
    if value is not None:
        headers["x-deduplication-header"] = value
    return pika.BasicProperties(headers=headers or None)


def bodies(ch, queue):
    out = []
    while True:
        m = ch.basic_get(queue, auto_ack=True)
        if m[0] is None:
            return out
        out.append(m[2])


def test_exchange_drops_repeated_values_and_confirms_them(conn, name):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare(name, "direct", auto_delete=True, arguments={"x-message-deduplication": True})
    ch.queue_declare(name, exclusive=True)
    ch.queue_bind(name, name, "k")
    sent = [(b"1", "a"), (b"2", "a"), (b"3", None), (b"4", None), (b"5", "b"), (b"6", "a")]
    for body, value in sent:
        # mandatory: a dropped duplicate is confirmed, never returned
        ch.basic_publish(name, "k", body, props(value), mandatory=True)
    assert bodies(ch, name) == [b"1", b"3", b"4", b"5"]
    # integers and strings are different values
    ch.basic_publish(name, "k", b"7", props(1))
    ch.basic_publish(name, "k", b"8", props("1"))
    ch.basic_publish(name, "k", b"9", props(1))
    assert bodies(ch, name) == [b"7", b"8"]


def test_plugin_exchange_type_routes_as_fanout(conn, name):
    ch = conn.channel()
    ch.exchange_declare(name, "x-message-deduplication", auto_delete=True, arguments={"x-cache-size": 10})
    for q in (name + "-1", name + "-2"):
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, name, "ignored")
    for i in range(3):
        ch.basic_publish(name, "any", b"x%d" % i, props("same"))
    round_trip(conn, ch, name + "-1")
    assert count(ch, name + "-1") == 1 and count(ch, name + "-2") == 1
    ch2 = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch2.exchange_declare(name, "fanout", auto_delete=True)
    assert e.value.reply_code == 406 and "x-message-deduplication" in e.value.reply_text


def test_cache_size_forgets_the_oldest(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-message-deduplication": True, "x-cache-size": 2})
    for value in ["a", "b", "a", "c", "a", "c"]:  # "a" forgotten once "c" came in
        ch.basic_publish("", name, value.encode(), props(value))
    assert bodies(ch, name) == [b"a", b"b", b"c", b"a"]


def test_cache_ttl_from_the_arguments_and_from_the_message(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-message-deduplication": True, "x-cache-ttl": 300})
    t0 = time.monotonic()
    ch.basic_publish("", name, b"first", props("a"))
    ch.basic_publish("", name, b"long", props("b", **{"x-cache-ttl": 60_000}))

    def resend():
        ch.basic_publish("", name, b"again", props("a"))
        ch.basic_publish("", name, b"long again", props("b"))
        return count(ch, name) >= 3

    assert wait_for(resend, timeout=10, interval=0.05)
    assert time.monotonic() - t0 >= 0.3, "forgotten only after its TTL"
    assert bodies(ch, name) == [b"first", b"long", b"again"]


def test_queue_level_leaves_other_queues_their_copy(conn, name):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare(name, "fanout", auto_delete=True)
    ch.queue_declare(name + "-dedup", exclusive=True, arguments={"x-message-deduplication": True})
    ch.queue_declare(name + "-plain", exclusive=True)
    for q in (name + "-dedup", name + "-plain"):
        ch.queue_bind(q, name)
    for i in range(4):
        ch.basic_publish(name, "", b"%d" % i, props("v"))
    assert count(ch, name + "-dedup") == 1
    assert count(ch, name + "-plain") == 4
    # a custom header named by the argument
    q = name + "-custom"
    ch.queue_declare(q, exclusive=True, arguments={"x-message-deduplication": True, "x-deduplication-header": "id"})
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(headers={"id": "same"}))
    assert count(ch, q) == 1


def test_durable_queue_drops_a_persistent_duplicate_from_disk(broker, conn, name):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(name, durable=True, arguments={"x-message-deduplication": True})
    try:
        for i in range(5):
            ch.basic_publish("", name, b"%d" % i, pika.BasicProperties(delivery_mode=2, headers={"x-deduplication-header": "x"}))
        assert bodies(ch, name) == [b"0"]
    finally:
        ch.queue_delete(name)


@pytest.mark.parametrize("arg,value", [
    ("x-cache-size", "big"), ("x-cache-size", 0), ("x-cache-ttl", -1),
    ("x-message-deduplication", "yes"), ("x-deduplication-header", 5),
])
def test_bad_arguments_are_refused(conn, name, arg, value):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(name, exclusive=True, arguments={"x-message-deduplication": True, arg: value})
    assert e.value.reply_code == 406
    assert f"invalid arg '{arg}' for queue '{name}'" in e.value.reply_text
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.exchange_declare(name, "direct", auto_delete=True, arguments={"x-message-deduplication": True, arg: value})
    assert e.value.reply_code == 406
    assert f"invalid arg '{arg}' for exchange '{name}'" in e.value.reply_text


def test_kombu_producer_retries_are_deduplicated(broker, name):
    exchange = kombu.Exchange(name, "direct", auto_delete=True, arguments={"x-message-deduplication": True})
    queue = kombu.Queue(name, exchange, routing_key="k", auto_delete=True)
    with kombu.Connection(broker.url) as c:
        producer = c.Producer()
        for attempt in range(3):  # the same order sent three times, as a retrying producer does
            for order in ("o-1", "o-2"):
                producer.publish({"order": order, "attempt": attempt}, exchange=exchange, routing_key="k",
                                 declare=[queue], headers={"x-deduplication-header": order})
        got = []
        with c.Consumer(queue, callbacks=[lambda body, m: (got.append(body), m.ack())]):
            assert drain_until(c, lambda: len(got) == 2)
            # anything further would be a duplicate: drain until the queue is seen empty
            with c.channel() as ch:
                assert wait_for(lambda: ch.queue_declare(name, passive=True).message_count == 0)
        assert got == [{"order": "o-1", "attempt": 0}, {"order": "o-2", "attempt": 0}]


def test_celery_task_sent_twice_runs_once(broker, tmp_path):
    queue = f"celery-dedup-{tmp_path.name[-8:]}"
    args = {"x-message-deduplication": True}
    tasks = client_app(broker, queue, args)
    log = tmp_path / "runs"
    w = start_worker(broker, queue, queue_args=args)
    try:
        for _ in range(3):
            tasks.record.apply_async((str(log), "job-1"), headers={"x-deduplication-header": "job-1"})
        r = tasks.record.apply_async((str(log), "job-2"), headers={"x-deduplication-header": "job-2"})
        assert r.get(timeout=60) == "job-2"
        assert wait_for(lambda: log.exists() and "job-1" in log.read_text(), timeout=30)
        with kombu.Connection(broker.url) as c:
            assert wait_for(lambda: c.default_channel.queue_declare(queue, passive=True).message_count == 0)
        assert sorted(line.split()[0] for line in log.read_text().splitlines()) == ["job-1", "job-2"]
    finally:
        stop(w)
        with kombu.Connection(broker.url) as c:
            c.default_channel.queue_delete(queue)
