"""kombu (py-amqp transport) against the broker."""
import kombu
import pytest


@pytest.fixture
def connection(broker):
    with kombu.Connection(broker.url) as c:
        yield c


def test_simple_queue_round_trip(connection, name):
    q = connection.SimpleQueue(name, queue_opts={"auto_delete": True})
    q.put({"hello": "world", "n": [1, 2, 3]}, serializer="json")
    msg = q.get(timeout=5)
    assert msg.payload == {"hello": "world", "n": [1, 2, 3]}
    msg.ack()
    q.close()


def test_producer_consumer_with_topic_exchange(connection, name):
    exchange = kombu.Exchange(name, type="topic", auto_delete=True)
    queue = kombu.Queue(name, exchange=exchange, routing_key="jobs.#", auto_delete=True)
    got = []
    with connection.Consumer(queue, callbacks=[lambda body, m: (got.append(body), m.ack())], prefetch_count=10):
        producer = connection.Producer()
        for key in ["jobs.a", "other.b", "jobs.c.d"]:
            producer.publish({"key": key}, exchange=exchange, routing_key=key, declare=[queue])
        while len(got) < 2:
            connection.drain_events(timeout=5)
    assert [g["key"] for g in got] == ["jobs.a", "jobs.c.d"]


def test_kombu_qos_semantics_follow_rabbitmq(connection):
    # kombu reads product/version to decide how celery applies prefetch.
    connection.connect()
    transport = connection.transport
    assert transport.qos_semantics_matches_spec(connection.connection) is False
