"""Dead-lettering, length limits, queue expiry, single active consumer and
consumer priorities, as RabbitMQ 3.10 does them. Each also passes against
RabbitMQ (WARREN_TEST_ADDR)."""
import pika
import pika.exceptions as pe
import pytest

from conftest import pump_until, round_trip, wait_for


def get(ch, q):
    m, p, b = ch.basic_get(q, auto_ack=True)
    return (m, p, b)


def dlq_pair(ch, name, **src_args):
    dlq = name + "-dlq"
    ch.queue_declare(dlq, exclusive=True)
    args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq, **src_args}
    ch.queue_declare(name, exclusive=True, arguments=args)
    return dlq


def death(props):
    d = dict(props.headers["x-death"][0])
    d.pop("time")
    return d


def test_rejected_message_is_dead_lettered_with_x_death(conn, name):
    ch = conn.channel()
    dlq = dlq_pair(ch, name)
    ch.basic_publish("", name, b"bad", pika.BasicProperties(headers={"app": "x"}))
    m, _, _ = ch.basic_get(name)
    ch.basic_reject(m.delivery_tag, requeue=False)
    assert wait_for(lambda: ch.queue_declare(dlq, passive=True).method.message_count == 1)
    m, props, body = get(ch, dlq)
    assert body == b"bad"
    assert m.routing_key == dlq
    assert props.headers["app"] == "x"
    assert death(props) == {"count": 1, "reason": "rejected", "queue": name, "exchange": "", "routing-keys": [name]}
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == name
    assert props.headers["x-first-death-exchange"] == ""


def test_nack_without_requeue_dead_letters_but_ack_does_not(conn, name):
    ch = conn.channel()
    dlq = dlq_pair(ch, name)
    for b in (b"acked", b"nacked"):
        ch.basic_publish("", name, b)
    m1, _, _ = ch.basic_get(name)
    m2, _, _ = ch.basic_get(name)
    ch.basic_ack(m1.delivery_tag)
    ch.basic_nack(m2.delivery_tag, requeue=False)
    assert wait_for(lambda: ch.queue_declare(dlq, passive=True).method.message_count == 1)
    assert get(ch, dlq)[2] == b"nacked"


def test_expired_message_is_dead_lettered_with_original_expiration(conn, name):
    ch = conn.channel()
    dlq = dlq_pair(ch, name)
    ch.basic_publish("", name, b"late", pika.BasicProperties(expiration="50"))
    assert wait_for(lambda: ch.queue_declare(dlq, passive=True).method.message_count == 1)
    m, props, body = get(ch, dlq)
    assert props.expiration is None
    assert death(props) == {
        "count": 1, "reason": "expired", "queue": name, "exchange": "",
        "routing-keys": [name], "original-expiration": "50",
    }


def test_queue_ttl_dead_letters_without_consumer(conn, name):
    ch = conn.channel()
    dlq = dlq_pair(ch, name, **{"x-message-ttl": 50})
    for i in range(3):
        ch.basic_publish("", name, str(i).encode())
    assert wait_for(lambda: ch.queue_declare(dlq, passive=True).method.message_count == 3)
    assert [get(ch, dlq)[2] for _ in range(3)] == [b"0", b"1", b"2"]


def test_max_length_drop_head_dead_letters_the_oldest(conn, name):
    ch = conn.channel()
    dlq = dlq_pair(ch, name, **{"x-max-length": 2})
    for i in range(4):
        ch.basic_publish("", name, str(i).encode())
    assert wait_for(lambda: ch.queue_declare(dlq, passive=True).method.message_count == 2)
    assert [get(ch, name)[2] for _ in range(2)] == [b"2", b"3"]
    m, props, body = get(ch, dlq)
    assert body == b"0" and death(props)["reason"] == "maxlen"


def test_max_length_bytes(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-max-length-bytes": 10})
    for b in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", name, b)
    # RabbitMQ applies publishes to the queue asynchronously: wait for it.
    assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 2)
    assert get(ch, name)[2] == b"bbbb"


def test_reject_publish_nacks_the_publisher(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", name, b"first")
    with pytest.raises(pe.NackError):
        ch.basic_publish("", name, b"second")
    assert get(ch, name)[2] == b"first"
    ch.basic_publish("", name, b"third")  # room again
    assert get(ch, name)[2] == b"third"


def test_reject_publish_dlx_nacks_and_dead_letters(conn, name):
    ch = conn.channel()
    dlq = dlq_pair(ch, name, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    ch.confirm_delivery()
    ch.basic_publish("", name, b"first")
    with pytest.raises(pe.NackError):
        ch.basic_publish("", name, b"second")
    assert wait_for(lambda: ch.queue_declare(dlq, passive=True).method.message_count == 1)
    m, props, body = get(ch, dlq)
    assert body == b"second" and death(props)["reason"] == "maxlen"


def test_x_death_counts_repeated_deaths_in_one_entry(conn, name):
    # Rejected back into itself: a cycle with a rejection is allowed.
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": name})
    ch.basic_publish("", name, b"again")
    for _ in range(3):
        assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 1)
        m, _, _ = ch.basic_get(name)
        ch.basic_reject(m.delivery_tag, requeue=False)
    assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 1)
    m, props, _ = get(ch, name)
    assert len(props.headers["x-death"]) == 1
    assert death(props)["count"] == 3


def test_expiry_cycle_without_rejection_is_dropped(conn, name):
    ch = conn.channel()
    ch.queue_declare(
        name, exclusive=True,
        arguments={"x-message-ttl": 20, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": name},
    )
    ch.basic_publish("", name, b"loop")
    # First expiry puts it back once; the second would be a cycle: dropped.
    assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 0, timeout=5)
    conn.sleep(0.3)
    assert ch.queue_declare(name, passive=True).method.message_count == 0


def test_missing_dead_letter_exchange_drops(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True, arguments={"x-dead-letter-exchange": name + "-nowhere"})
    ch.basic_publish("", name, b"x")
    m, _, _ = ch.basic_get(name)
    ch.basic_reject(m.delivery_tag, requeue=False)
    assert ch.queue_declare(name, passive=True).method.message_count == 0
    assert conn.is_open


def test_unused_queue_expires(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, arguments={"x-expires": 300})
    assert ch.queue_declare(name, passive=True)
    conn.sleep(1.0)
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare(name, passive=True)
    assert e.value.reply_code == 404


def test_queue_with_consumer_does_not_expire(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, arguments={"x-expires": 200})
    ch.basic_consume(name, lambda *a: None)
    conn.sleep(0.8)
    assert ch.queue_declare(name, passive=True)
    ch.queue_delete(name)




def test_single_active_consumer(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, arguments={"x-single-active-consumer": True})
    got = {"a": [], "b": []}
    ch_a = conn.channel()
    ch_a.basic_consume(name, lambda c, m, p, b: got["a"].append(b), auto_ack=True)
    ch_b = conn.channel()
    ch_b.basic_consume(name, lambda c, m, p, b: got["b"].append(b), auto_ack=True)
    for i in range(4):
        ch.basic_publish("", name, str(i).encode())
    assert pump_until(conn, lambda: len(got["a"]) + len(got["b"]) >= 4)
    round_trip(conn, ch, name)
    assert got == {"a": [b"0", b"1", b"2", b"3"], "b": []}
    ch_a.close()  # the next consumer takes over
    ch.basic_publish("", name, b"4")
    assert pump_until(conn, lambda: len(got["b"]) >= 1)
    assert got["b"] == [b"4"]
    ch.queue_delete(name)


def test_consumer_priority_is_served_first(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True)
    ch.basic_qos(prefetch_count=2)
    got = {"low": [], "high": []}
    ch.basic_consume(name, lambda c, m, p, b: got["low"].append(m), consumer_tag="low")
    ch.basic_consume(name, lambda c, m, p, b: got["high"].append(m), consumer_tag="high", arguments={"x-priority": 10})
    for i in range(3):
        ch.basic_publish("", name, str(i).encode())
    assert pump_until(conn, lambda: len(got["high"]) + len(got["low"]) >= 3)
    round_trip(conn, ch, name)
    # The high-priority consumer takes what its prefetch allows, the rest spills over.
    assert len(got["high"]) == 2 and len(got["low"]) == 1


def test_alternate_exchange_takes_unroutable(conn, name):
    ch = conn.channel()
    ae = name + "-ae"
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.queue_declare(ae, exclusive=True)
    ch.queue_bind(ae, ae)
    ch.exchange_declare(name, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    ch.queue_declare(name, exclusive=True)
    ch.queue_bind(name, name, "known")
    ch.confirm_delivery()
    ch.basic_publish(name, "known", b"routed")
    ch.basic_publish(name, "unknown", b"spilled", mandatory=True)  # not returned: the AE took it
    assert get(ch, name)[2] == b"routed"
    assert get(ch, ae)[2] == b"spilled"


def test_delivery_limit_dead_letters_poison_message(conn, name):
    ch = conn.channel()
    dlq = name + "-dlq"
    ch.queue_declare(dlq, exclusive=True)
    args = {
        "x-queue-type": "quorum", "x-delivery-limit": 2,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq,
    }
    ch.queue_declare(name, durable=True, arguments=args)
    ch.confirm_delivery()
    ch.basic_publish("", name, b"poison")
    for _ in range(3):
        assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 1)
        m, _, _ = ch.basic_get(name)
        ch.basic_nack(m.delivery_tag, requeue=True)
    assert wait_for(lambda: ch.queue_declare(dlq, passive=True).method.message_count == 1)
    m, props, body = get(ch, dlq)
    assert body == b"poison" and death(props)["reason"] == "delivery_limit"
    ch.queue_delete(name)


def test_quorum_queue_deliveries_carry_x_delivery_count(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    ch.basic_publish("", name, b"m", pika.BasicProperties(headers={"app": 1}))
    seen = []
    for _ in range(3):
        assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 1)
        m, props, _ = ch.basic_get(name)
        seen.append((m.redelivered, props.headers["x-delivery-count"], props.headers["app"]))
        ch.basic_nack(m.delivery_tag, requeue=True)
    assert seen == [(False, 0, 1), (True, 1, 1), (True, 2, 1)]
    ch.queue_delete(name)


def _kill(ch, name, src_x, reason):
    """Makes the one message in `name` die for `reason`."""
    if reason == "rejected":
        assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 1)
        m, _, _ = ch.basic_get(name)
        ch.basic_reject(m.delivery_tag, requeue=False)
    elif reason == "maxlen":
        ch.basic_publish(src_x, "orig-key", b"pusher")
    elif reason == "delivery_limit":
        for _ in range(3):
            assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 1)
            m, _, _ = ch.basic_get(name)
            ch.basic_nack(m.delivery_tag, requeue=True)
    # expired: the queue's TTL does it.


@pytest.mark.parametrize("reason", ["rejected", "expired", "maxlen", "delivery_limit"])
@pytest.mark.parametrize("dl_key", [None, "dl-key"])
@pytest.mark.parametrize("via", ["get", "consume"])
def test_dead_lettered_message_carries_dead_letter_exchange(conn, name, reason, dl_key, via):
    """basic.get-ok and basic.deliver name the dead-letter exchange and the
    key the message was dead-lettered with; x-death keeps the original."""
    ch = conn.channel()
    src_x, dlx, dlq = name + "-src", name + "-dlx", name + "-dlq"
    ch.exchange_declare(src_x, "direct", auto_delete=True)
    ch.exchange_declare(dlx, "direct", auto_delete=True)
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_bind(dlq, dlx, dl_key or "orig-key")
    args = {"x-dead-letter-exchange": dlx}
    if dl_key:
        args["x-dead-letter-routing-key"] = dl_key
    durable = False
    if reason == "expired":
        args["x-message-ttl"] = 10
    elif reason == "maxlen":
        args["x-max-length"] = 1
    elif reason == "delivery_limit":
        args.update({"x-queue-type": "quorum", "x-delivery-limit": 2})
        durable = True
    ch.queue_declare(name, durable=durable, exclusive=not durable, arguments=args)
    ch.queue_bind(name, src_x, "orig-key")
    ch.confirm_delivery()
    ch.basic_publish(src_x, "orig-key", b"doomed")
    _kill(ch, name, src_x, reason)
    assert wait_for(lambda: ch.queue_declare(dlq, passive=True).method.message_count == 1)
    if via == "get":
        m, props, body = ch.basic_get(dlq, auto_ack=True)
    else:
        m, props, body = next(ch.consume(dlq, auto_ack=True, inactivity_timeout=10))
        ch.cancel()
    assert body == b"doomed"
    assert (m.exchange, m.routing_key) == (dlx, dl_key or "orig-key")
    d = death(props)
    assert (d["reason"], d["queue"], d["exchange"], d["routing-keys"]) == (reason, name, src_x, ["orig-key"])
    assert props.headers["x-first-death-exchange"] == src_x
    if durable:
        ch.queue_delete(name)
