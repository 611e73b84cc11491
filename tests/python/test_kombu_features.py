"""Queue features through kombu's own declarations (what celery and kombu
users write). Each also passes against RabbitMQ (WARREN_TEST_ADDR)."""
import time

import kombu
import pytest


@pytest.fixture
def connection(broker):
    with kombu.Connection(broker.url) as c:
        yield c


def drain(queue, channel):
    out = []
    bound = queue(channel)
    while True:
        m = bound.get(no_ack=True)
        if m is None:
            return out
        out.append(m)


def test_dead_letter_via_kombu_queue_arguments(connection, name):
    ch = connection.channel()
    dlq = kombu.Queue(name + "-dlq", exchange=kombu.Exchange("", type="direct"), routing_key=name + "-dlq", auto_delete=True)
    src = kombu.Queue(
        name, routing_key=name, auto_delete=True,
        queue_arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": name + "-dlq"},
    )
    dlq(ch).declare()
    src(ch).declare()
    producer = kombu.Producer(ch)
    producer.publish({"job": 1}, exchange="", routing_key=name)
    m = src(ch).get()
    m.reject(requeue=False)
    deadline = time.time() + 5
    got = []
    while not got and time.time() < deadline:
        got = drain(dlq, ch)
    assert [g.payload for g in got] == [{"job": 1}]
    assert got[0].headers["x-death"][0]["reason"] == "rejected"


def test_kombu_message_ttl_priority_and_max_length(connection, name):
    ch = connection.channel()
    q = kombu.Queue(
        name, routing_key=name, auto_delete=True, max_priority=5, max_length=3,
        queue_arguments={"x-message-ttl": 60000},
    )
    q(ch).declare()
    producer = kombu.Producer(ch)
    for i, prio in enumerate([1, 5, 3, 0]):
        producer.publish({"i": i}, exchange="", routing_key=name, priority=prio)
    # max-length 3 with drop-head drops the head, which in a priority queue
    # is the highest-priority message (i=1); the rest come highest first.
    assert [m.payload["i"] for m in drain(q, ch)] == [2, 0, 3]
    producer.publish({"i": "short"}, exchange="", routing_key=name, expiration=0.05)
    time.sleep(0.3)
    assert drain(q, ch) == []
