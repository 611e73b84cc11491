"""Message TTL (per queue and per message) and priority queues, as RabbitMQ
behaves. Each also passes against RabbitMQ 3.10 (WARREN_TEST_ADDR)."""
import time

import pika
import pika.exceptions as pe
import pytest

from conftest import pump_until, round_trip, wait_for


def count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def test_per_message_expiration(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True)
    ch.basic_publish("", name, b"short", pika.BasicProperties(expiration="100"))
    ch.basic_publish("", name, b"long", pika.BasicProperties(expiration="60000"))
    time.sleep(0.4)
    m, _, body = ch.basic_get(name, auto_ack=True)
    assert body == b"long"
    assert ch.basic_get(name)[0] is None


def test_queue_ttl_shrinks_queue_without_consumer(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-message-ttl": 1000})
    ch.confirm_delivery()  # confirmed = enqueued, on both brokers
    for i in range(5):
        ch.basic_publish("", name, b"x")
    assert count(ch, name) == 5
    assert wait_for(lambda: count(ch, name) == 0, timeout=5)


def test_shorter_of_queue_and_message_ttl_applies(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-message-ttl": 60000})
    ch.basic_publish("", name, b"x", pika.BasicProperties(expiration="50"))
    assert wait_for(lambda: count(ch, name) == 0, timeout=5)


def test_ttl_zero_delivered_only_to_a_waiting_consumer(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-message-ttl": 0})
    ch.basic_publish("", name, b"nobody waiting")
    assert count(ch, name) == 0
    got = []
    ch.basic_consume(name, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", name, b"consumer waiting")
    assert pump_until(conn, lambda: got)
    round_trip(conn, ch, name)
    assert got == [b"consumer waiting"]


def test_priority_queue_delivers_highest_first(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-max-priority": 10})
    for body, prio in [("p1", 1), ("p5a", 5), ("none", None), ("p9", 9), ("p5b", 5), ("p200", 200)]:
        ch.basic_publish("", name, body.encode(), pika.BasicProperties(priority=prio))
    order = []
    while True:
        m, _, b = ch.basic_get(name, auto_ack=True)
        if m is None:
            break
        order.append(b.decode())
    # Priorities above the maximum count as the maximum (10, above 9).
    assert order == ["p200", "p9", "p5a", "p5b", "p1", "none"]


def test_priority_requeue_goes_back_to_its_level(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-max-priority": 5})
    ch.basic_publish("", name, b"low", pika.BasicProperties(priority=1))
    ch.basic_publish("", name, b"high", pika.BasicProperties(priority=5))
    m, _, b = ch.basic_get(name)
    assert b == b"high"
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, _, b = ch.basic_get(name, auto_ack=True)
    assert (b, m.redelivered) == (b"high", True)


@pytest.mark.parametrize(
    "args,detail",
    [
        ({"x-message-ttl": -1}, "{value_negative,-1}"),
        ({"x-message-ttl": "abc"}, '"expected integer, got longstr"'),
        ({"x-expires": 0}, "{value_zero,0}"),
        ({"x-max-priority": 256}, "{max_value_exceeded,256}"),
        ({"x-max-length": -1}, "{value_negative,-1}"),
        ({"x-overflow": "foo"}, "invalid_overflow"),
        ({"x-overflow": 5}, "{unacceptable_type,signedint}"),
        ({"x-single-active-consumer": "yes"}, "{unacceptable_type,longstr}"),
        ({"x-dead-letter-routing-key": "k"}, "routing_key_but_no_dlx_defined"),
        ({"x-queue-type": "bogus"}, "\"unsupported queue type 'bogus'\""),
    ],
)
def test_invalid_queue_arguments(conn, name, args, detail):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(name, exclusive=True, arguments=args)
    key = next(iter(args))
    assert e.value.reply_code == 406
    assert e.value.reply_text == f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{name}' in vhost '/': {detail}"


@pytest.mark.parametrize("expiration,detail", [("-5", "{value_negative,-5}"), ("abc", "no_integer")])
def test_invalid_expiration(conn, expiration, detail):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.basic_publish("", "nowhere", b"x", pika.BasicProperties(expiration=expiration))
    assert e.value.reply_code == 406
    assert e.value.reply_text == f"PRECONDITION_FAILED - invalid expiration '{expiration}': {detail}"


def test_dead_letter_exchange_must_be_a_string(conn, name):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(name, exclusive=True, arguments={"x-dead-letter-exchange": 5})
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{name}' in vhost '/'"
    )
