"""Behaviour tests with pika (BlockingConnection). Each passes against
RabbitMQ 3.10 too (WARREN_TEST_ADDR)."""
import socket
import time

import pika
import pika.exceptions as pe
import pytest

from conftest import count, pump_until, round_trip, wait_for


def declare(ch, name, **kw):
    return ch.queue_declare(name, **kw).method


def publish_n(ch, q, n, prefix="m"):
    for i in range(n):
        ch.basic_publish("", q, f"{prefix}{i}".encode())


def get_all(ch, q):
    out = []
    while True:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append((b.decode(), m.redelivered))


def test_declare_ok_counts_and_server_named_queue(conn):
    ch = conn.channel()
    ok = declare(ch, "", exclusive=True)
    assert ok.queue.startswith("amq.gen-")
    publish_n(ch, ok.queue, 3)
    ch.basic_consume(ok.queue, lambda *a: None)
    again = declare(ch, ok.queue, passive=True)
    assert again.consumer_count == 1
    assert again.message_count == 0  # all three went to the consumer


def test_nack_requeue_and_reject_drop(conn, name):
    ch = conn.channel()
    declare(ch, name, auto_delete=False)
    publish_n(ch, name, 3)
    m1, _, b1 = ch.basic_get(name)
    m2, _, b2 = ch.basic_get(name)
    ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
    m3, _, b3 = ch.basic_get(name)
    assert (b3, m3.redelivered) == (b"m0", True)
    ch.basic_reject(m3.delivery_tag, requeue=False)
    assert get_all(ch, name) == [("m1", True), ("m2", False)]
    assert ch.queue_delete(name).method.message_count == 0


def test_recover_requeues_unacked(conn, name):
    ch = conn.channel()
    declare(ch, name, exclusive=True)
    publish_n(ch, name, 2)
    ch.basic_get(name)
    ch.basic_get(name)
    ch.basic_recover(requeue=True)
    assert get_all(ch, name) == [("m0", True), ("m1", True)]


def test_global_qos_limits_the_whole_channel(conn, name):
    ch = conn.channel()
    q1, q2 = name + "-a", name + "-b"
    for q in (q1, q2):
        declare(ch, q, exclusive=True)
        publish_n(ch, q, 5)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    got = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append(m))
    ch.basic_consume(q2, lambda c, m, p, b: got.append(m))
    assert pump_until(conn, lambda: len(got) >= 3)
    round_trip(conn, ch, q1)
    assert len(got) == 3, "no more than the channel's prefetch"
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    assert pump_until(conn, lambda: len(got) >= 6)
    round_trip(conn, ch, q1)
    assert len(got) == 6


def test_per_consumer_qos(conn, name):
    ch = conn.channel()
    q1, q2 = name + "-a", name + "-b"
    for q in (q1, q2):
        declare(ch, q, exclusive=True)
        publish_n(ch, q, 5)
    ch.basic_qos(prefetch_count=2)
    got = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append(m))
    ch.basic_consume(q2, lambda c, m, p, b: got.append(m))
    assert pump_until(conn, lambda: len(got) >= 4)
    round_trip(conn, ch, q1)
    assert len(got) == 4, "2 per consumer"


def test_purge_and_delete_conditions(conn, name):
    ch = conn.channel()
    declare(ch, name)
    publish_n(ch, name, 4)
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_delete(name, if_empty=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text == f"PRECONDITION_FAILED - queue '{name}' in vhost '/' not empty"
    ch = conn.channel()
    ch.basic_consume(name, lambda *a: None, auto_ack=False)
    ch2 = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch2.queue_delete(name, if_unused=True)
    assert e.value.reply_text == f"PRECONDITION_FAILED - queue '{name}' in vhost '/' in use"
    ch.close()
    ch = conn.channel()
    assert ch.queue_purge(name).method.message_count == 4
    assert ch.queue_delete(name).method.message_count == 0


def test_exchange_equivalence_and_in_use(conn, name):
    ch = conn.channel()
    ch.exchange_declare(name, "direct", auto_delete=True)
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.exchange_declare(name, "fanout", auto_delete=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{name}' in vhost '/': "
        "received 'fanout' but current is 'direct'"
    )
    ch = conn.channel()
    q = declare(ch, "", exclusive=True).queue
    ch.queue_bind(q, name, "k")
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.exchange_delete(name, if_unused=True)
    assert e.value.reply_text == f"PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use"


def test_publish_to_missing_exchange_closes_channel_404(conn, name):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.basic_publish(name, "k", b"x")
    assert e.value.reply_code == 404
    assert e.value.reply_text == f"NOT_FOUND - no exchange '{name}' in vhost '/'"
    assert conn.is_open


def test_exclusive_consumer_refuses_others(conn, name):
    ch = conn.channel()
    declare(ch, name, exclusive=True)
    ch.basic_consume(name, lambda *a: None, exclusive=True)
    ch2 = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch2.basic_consume(name, lambda *a: None)
    assert e.value.reply_code == 403
    assert e.value.reply_text == f"ACCESS_REFUSED - queue '{name}' in vhost '/' in exclusive use"


def test_reusing_a_consumer_tag_is_a_connection_error(broker, name):
    # pika refuses a duplicate tag itself; py-amqp sends it.
    import amqp

    c = amqp.Connection(f"{broker.host}:{broker.port}")
    c.connect()
    ch = c.channel()
    ch.queue_declare(name, exclusive=True)
    ch.basic_consume(name, consumer_tag="dup", callback=lambda m: None)
    with pytest.raises(amqp.exceptions.NotAllowed) as e:
        ch.basic_consume(name, consumer_tag="dup", callback=lambda m: None)
    assert e.value.reply_code == 530
    assert e.value.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"


def test_immediate_is_not_implemented(broker):
    # pika refuses to send immediate=true itself; py-amqp does not.
    import amqp

    c = amqp.Connection(f"{broker.host}:{broker.port}")
    c.connect()
    ch = c.channel()
    ch.basic_publish(amqp.Message(b"x"), exchange="", routing_key="q", immediate=True)
    with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as e:
        c.drain_events(timeout=5)
    assert e.value.reply_code == 540
    assert e.value.reply_text == "NOT_IMPLEMENTED - immediate=true"


def test_confirm_and_tx_do_not_mix(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.tx_select()
    assert e.value.reply_text == "PRECONDITION_FAILED - cannot switch from confirm to tx mode"
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.tx_commit()
    assert e.value.reply_text == "PRECONDITION_FAILED - channel is not transactional"


def test_wrong_password_is_refused(broker):
    params = pika.ConnectionParameters(
        host=broker.host, port=broker.port, credentials=pika.PlainCredentials("guest", "wrong")
    )
    with pytest.raises(pe.ProbableAuthenticationError) as e:
        pika.BlockingConnection(params)
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in str(e.value)


def test_unknown_vhost_is_not_allowed(broker):
    with pytest.raises(pe.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(broker.params(virtual_host="no-such-vhost"))
    assert "NOT_ALLOWED - vhost no-such-vhost not found" in str(e.value)


def test_amqplain_login_with_py_amqp(broker):
    import amqp

    c = amqp.Connection(f"{broker.host}:{broker.port}", login_method="AMQPLAIN")
    c.connect()
    assert c.server_properties["capabilities"]["publisher_confirms"] is True
    c.close()


def test_bad_protocol_header_gets_ours_back(broker):
    s = socket.create_connection((broker.host, broker.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    data = b""
    try:
        while True:
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass  # RabbitMQ resets: it never read what we sent
    assert data == b"AMQP\x00\x00\x09\x01"


def test_silent_client_is_dropped_after_missed_heartbeats(broker):
    from rawamqp import Raw

    r = Raw(broker.host, broker.port)
    r.s.settimeout(15)
    r.handshake(heartbeat=1)
    s = r.s
    start = time.time()
    got_heartbeat = False
    try:
        while True:
            chunk = s.recv(64)
            if not chunk:
                break
            if chunk[0] == 8:
                got_heartbeat = True
    except ConnectionResetError:
        pass
    elapsed = time.time() - start
    assert got_heartbeat
    assert elapsed < 10


def test_heartbeating_client_stays_connected(broker):
    c = pika.BlockingConnection(broker.params(heartbeat=1))
    c.sleep(3.5)
    assert c.is_open
    c.channel().queue_declare("", exclusive=True)
    c.close()


def test_channel_flow_active_true(conn):
    ch = conn.channel()
    ch.flow(True)
    assert ch.is_open


def _amqp(broker):
    import amqp

    c = amqp.Connection(f"{broker.host}:{broker.port}")
    c.connect()
    return c


def test_recover_without_requeue_is_not_implemented(broker):
    import amqp

    c = _amqp(broker)
    ch = c.channel()
    ch.basic_recover(requeue=False)  # py-amqp sends basic.recover-async
    with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as e:
        ch.queue_declare("", exclusive=True)
    assert e.value.reply_text == "NOT_IMPLEMENTED - requeue=false"


def test_channel_flow_inactive_is_not_implemented(broker):
    import amqp

    c = _amqp(broker)
    ch = c.channel()
    with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as e:
        ch.flow(False)
    assert e.value.reply_text == "NOT_IMPLEMENTED - active=false"


def test_update_secret_with_the_right_secret(broker):
    """connection.update-secret (RabbitMQ 3.8+, for refreshing OAuth tokens):
    update-secret-ok, and the connection goes on."""
    c = pika.BlockingConnection(broker.params())
    c.update_secret("guest", "token refresh")
    ch = c.channel()
    ch.queue_declare("", exclusive=True)
    assert c.is_open
    c.close()


def test_update_secret_accepts_any_secret_of_an_internal_user(broker):
    """As RabbitMQ's internal user database: it has no token to re-check, so
    any new secret is accepted and the connection goes on."""
    c = pika.BlockingConnection(broker.params())
    c.update_secret("not-the-password", "token refresh")
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"after")
    assert wait_for(lambda: ch.basic_get(q, auto_ack=True)[2] == b"after")
    assert c.is_open
    c.close()


def test_update_secret_keeps_the_tags_of_the_login(broker, name):
    """As RabbitMQ's internal backend: a new secret changes nothing of what the
    connection may do. Granted `impersonator` after login, the user still may
    not set another user_id, before or after updating its secret."""
    user = f"{name}-u"
    broker.ctl("add_user", user, "pw")
    try:
        broker.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        c = pika.BlockingConnection(broker.params(credentials=pika.PlainCredentials(user, "pw")))
        broker.ctl("set_user_tags", user, "impersonator")
        for step in ("before", "after"):
            if step == "after":
                c.update_secret("new-token", "tags changed")
            ch = c.channel()
            q = ch.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="somebody-else"))
            with pytest.raises(pe.ChannelClosedByBroker) as e:
                ch.basic_get(q)
            assert e.value.args[0] == 406, step
        assert c.is_open
        c.close()
    finally:
        broker.ctl("delete_user", user)


def test_qos_prefetch_size_is_not_implemented(broker):
    """As RabbitMQ: basic.qos with a byte limit closes the connection with 540."""
    c = pika.BlockingConnection(broker.params())
    with pytest.raises(pe.ConnectionClosedByBroker) as e:
        c.channel().basic_qos(prefetch_size=1000, prefetch_count=1)
    assert e.value.args == (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)")


def test_consumers_come_and_go_on_one_connection_without_losing_messages(conn, name):
    """Eighty consumers in turn on one connection, each cancelled with
    deliveries still on their way to it (prefetch 10 of a long queue), and
    every tenth channel closed with its deliveries unacked: every message
    is acked exactly once in the end. (Warren reuses a cancelled consumer's
    slot in the connection once no delivery to it can still arrive.)"""
    from collections import Counter

    total = 1000
    ch = conn.channel()
    declare(ch, name)
    publish_n(ch, name, total)
    acked = Counter()
    for round_no in range(80):
        ch.basic_qos(prefetch_count=10)
        got = []
        tag = ch.basic_consume(name, lambda c, m, p, b: got.append((m.delivery_tag, b)))
        assert pump_until(conn, lambda: got), f"round {round_no}: no delivery"
        ch.basic_cancel(tag)
        if round_no % 10 == 9:
            # Closed with its deliveries unacked: they go back to the queue.
            ch.close()
            ch = conn.channel()
            continue
        for delivery_tag, body in got:
            ch.basic_ack(delivery_tag)
            acked[body] += 1
    got = []
    ch.basic_qos(prefetch_count=100)
    ch.basic_consume(name, lambda c, m, p, b: (c.basic_ack(m.delivery_tag), got.append(b)))
    assert pump_until(conn, lambda: sum(acked.values()) + len(got) >= total)
    acked.update(got)
    assert sum(acked.values()) == total
    assert set(acked) == {f"m{i}".encode() for i in range(total)}
    assert max(acked.values()) == 1
    round_trip(conn, ch, name)
    assert count(ch, name) == 0


def test_a_publisher_repeating_its_routing_key_follows_its_queue_through_delete_and_redeclare(conn, name):
    # A channel that publishes to one queue name over and over must see the
    # queue go and a new one of that name come (Warren caches the route).
    pub = conn.channel()
    pub.confirm_delivery()
    adm = conn.channel()
    declare(adm, name, auto_delete=False)
    for _ in range(3):
        pub.basic_publish("", name, b"old")
    assert declare(adm, name, passive=True).message_count == 3
    assert adm.queue_delete(name).method.message_count == 3
    with pytest.raises(pe.UnroutableError):
        pub.basic_publish("", name, b"lost", mandatory=True)
    declare(adm, name, auto_delete=False)
    pub.basic_publish("", name, b"new", mandatory=True)
    pub.basic_publish("", name, b"newer", mandatory=True)
    assert get_all(adm, name) == [("new", False), ("newer", False)]
    adm.queue_delete(name)
