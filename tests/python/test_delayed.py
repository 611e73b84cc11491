"""Delayed delivery (issue "celery-first", first slice): the
`x-delayed-message` exchange type of RabbitMQ's delayed-message plugin.
RabbitMQ 3.10 as Debian ships it has no such plugin, so these run against
Warren only."""
import time

import pika
import pika.exceptions as pe
import pytest

from conftest import count, round_trip, wait_for


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("the delayed-message exchange type")


def delayed_exchange(ch, name, kind="direct"):
    ch.exchange_declare(name, "x-delayed-message", auto_delete=True, arguments={"x-delayed-type": kind})


def test_a_delayed_message_arrives_when_due(conn, name):
    ch = conn.channel()
    delayed_exchange(ch, name)
    ch.queue_declare(name, exclusive=True)
    ch.queue_bind(name, name, "k")
    t0 = time.monotonic()
    ch.basic_publish(name, "k", b"later", pika.BasicProperties(headers={"x-delay": 400}))
    ch.basic_publish(name, "k", b"now")
    round_trip(conn, ch, name)
    assert count(ch, name) == 1, "only the undelayed one is there at once"
    assert wait_for(lambda: count(ch, name) == 2, timeout=10, interval=0.01)
    assert time.monotonic() - t0 >= 0.4
    bodies = [ch.basic_get(name, auto_ack=True)[2] for _ in range(2)]
    assert bodies == [b"now", b"later"]


def test_routed_to_the_bindings_that_exist_when_due(conn, name):
    ch = conn.channel()
    delayed_exchange(ch, name, "fanout")
    ch.basic_publish(name, "", b"x", pika.BasicProperties(headers={"x-delay": 300}))
    ch.queue_declare(name, exclusive=True)
    ch.queue_bind(name, name)
    assert wait_for(lambda: count(ch, name) == 1, timeout=10)


def test_declaration_needs_a_delayed_type(conn, name):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.exchange_declare(name, "x-delayed-message")
    assert e.value.reply_code == 406
    assert "x-delayed-type" in e.value.reply_text
    ch = conn.channel()
    delayed_exchange(ch, name, "topic")
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.exchange_declare(name, "topic", auto_delete=True)
    assert e.value.reply_code == 406 and "x-delayed-message" in e.value.reply_text


def test_the_api_shows_the_declared_type(broker, conn, name):
    import requests

    ch = conn.channel()
    delayed_exchange(ch, name)
    ch.queue_declare(name, exclusive=True)
    ch.queue_bind(name, name, "k")
    x = requests.get(f"{broker.http}/api/exchanges/%2F/{name}", auth=("guest", "guest"), timeout=10).json()
    assert x["type"] == "x-delayed-message" and x["arguments"] == {"x-delayed-type": "direct"}


def test_long_delays_are_held_and_counted(broker, conn, name):
    """A delay beyond 2^32 ms (49.7 days) is held, not wrapped around to a
    short one; the exchange shows how many wait (`messages_delayed`, as the
    plugin's), also for one published through the HTTP API."""
    import requests

    ch = conn.channel()
    delayed_exchange(ch, name)
    ch.queue_declare(name, exclusive=True)
    ch.queue_bind(name, name, "k")
    fifty_days = 50 * 24 * 3600 * 1000
    ch.basic_publish(name, "k", b"much later", pika.BasicProperties(headers={"x-delay": fifty_days}))
    api = f"{broker.http}/api/exchanges/%2F/{name}"
    r = requests.post(api + "/publish", auth=("guest", "guest"), timeout=10, json={
        "properties": {"headers": {"x-delay": 2 ** 32 + 5}}, "routing_key": "k",
        "payload": "via http", "payload_encoding": "string"})
    assert r.json() == {"routed": False}
    assert wait_for(lambda: requests.get(api, auth=("guest", "guest"), timeout=10).json().get("messages_delayed") == 2)
    round_trip(conn, ch, name)
    assert count(ch, name) == 0


def test_a_confirmed_persistent_delayed_message_survives_kill_9(broker, name, tmp_path):
    """Confirmed only once on disk; after kill -9 and a restart it is
    delivered when due, once."""
    import signal
    import subprocess

    from conftest import free_port, warren_binary

    data = str(tmp_path / "data")
    port = free_port()

    def start():
        proc = subprocess.Popen([warren_binary(), "--amqp-listen", f"127.0.0.1:{port}", "--http-listen", "",
                                 "--prometheus-listen", "", "--data-dir", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up():
            try:
                pika.BlockingConnection(pika.ConnectionParameters(port=port)).close()
                return True
            except pika.exceptions.AMQPConnectionError:
                return False

        assert wait_for(up, timeout=20)
        return proc

    proc = start()
    try:
        c = pika.BlockingConnection(pika.ConnectionParameters(port=port))
        ch = c.channel()
        ch.exchange_declare(name, "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"})
        ch.queue_declare(name, durable=True)
        ch.queue_bind(name, name, "k")
        ch.confirm_delivery()
        ch.basic_publish(name, "k", b"survivor", pika.BasicProperties(delivery_mode=2, headers={"x-delay": 1500}))
        ch.basic_publish(name, "k", b"transient", pika.BasicProperties(headers={"x-delay": 1500}))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    proc = start()
    try:
        c = pika.BlockingConnection(pika.ConnectionParameters(port=port))
        ch = c.channel()
        assert wait_for(lambda: count(ch, name) >= 1, timeout=20)
        _, _, body = ch.basic_get(name, auto_ack=True)
        assert body == b"survivor"
        round_trip(c, ch, name)
        assert count(ch, name) == 0, "once, and the transient one is gone"
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_delayed_bodies_wait_on_disk_not_in_memory(name):
    """128 MiB of delayed bodies (half persistent on a durable exchange: the
    message log; half transient: the spill store) leave the broker's RSS
    well below that while they wait, and arrive intact when due."""
    import hashlib

    from conftest import own_warren
    from test_memory import rss_mib

    with own_warren() as b:
        c = pika.BlockingConnection(b.params())
        ch = c.channel()
        ch.exchange_declare(name, "x-delayed-message", durable=True, arguments={"x-delayed-type": "fanout"})
        ch.queue_declare(name, durable=True)
        ch.queue_bind(name, name)
        ch.confirm_delivery()
        before = rss_mib(b.proc.pid)
        t0 = time.monotonic()
        sent = {}
        for i in range(128):
            body = hashlib.sha256(b"%d" % i).digest() * (1 << 15)  # 1 MiB
            sent[i] = hashlib.sha256(body).hexdigest()
            mode = 2 if i % 2 else 1
            ch.basic_publish(name, "", body, pika.BasicProperties(delivery_mode=mode, headers={"x-delay": 8000, "i": i}))
        waiting = rss_mib(b.proc.pid)
        assert time.monotonic() - t0 < 8, "measured before any was due"
        assert count(ch, name) == 0
        assert waiting - before < 48, f"RSS grew {waiting - before:.0f} MiB for 128 MiB of delayed bodies"
        assert wait_for(lambda: count(ch, name) == 128, timeout=30, interval=0.1)
        got = {}
        for _ in range(128):
            _, props, body = ch.basic_get(name, auto_ack=True)
            got[props.headers["i"]] = hashlib.sha256(body).hexdigest()
        assert got == sent
        c.close()
