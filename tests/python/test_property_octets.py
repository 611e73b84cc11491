"""Message properties whose short strings or `headers` names are not UTF-8.

RabbitMQ takes any octets there and passes them on as they came; only
`expiration` (not a number) and `user_id` (not the user) are refused, with a
406. So does this broker. Where it decodes properties whole (dead-lettering,
direct reply-to, headers exchanges, the management API, a shovel's link),
such octets are made UTF-8 (U+FFFD); the tests check only what both brokers
do alike there.

Run against RabbitMQ too (WARREN_TEST_ADDR; the shovel test needs the
rabbitmq_shovel and rabbitmq_shovel_management plugins)."""
import struct

import pika
import pytest

from conftest import wait_for
from rawamqp import Raw, frame, longstr, method, shortstr
from test_management import Api
from test_shovel import put_shovel, gone

NOT_UTF8 = b"\xff\xfe"


def props(flags, fields):
    return struct.pack(">H", flags) + b"".join(fields)


def table(entries):
    body = b"".join(shortstr(k) + v for k, v in entries)
    return struct.pack(">I", len(body)) + body


def lstr(v):
    return b"S" + longstr(v)


CASES = {
    "headers name": props(1 << 13, [table([(NOT_UTF8, lstr(b"v")), (b"ok", lstr(b"1"))])]),
    "nested headers name": props(1 << 13, [table([(b"n", b"F" + table([(b"\xc3\x28", lstr(b"v"))]))])]),
    "content_type": props(1 << 15, [shortstr(b"\xfftext")]),
    "correlation_id": props(1 << 10, [shortstr(b"\xff")]),
    "reply_to": props(1 << 9, [shortstr(b"\xffq")]),
    "app_id": props(1 << 3, [shortstr(b"\xff")]),
    "255 octets": props(1 << 15 | 1 << 13, [shortstr(b"\xff" * 255), table([(b"\xff" * 255, lstr(b"v"))])]),
}


def raw_publish_and_get(broker, name, properties, body=b"hello"):
    """Publishes through a raw connection and gets it back: the get-ok's
    content header properties, or the close the broker sent."""
    r = Raw(broker.host, broker.port)
    r.handshake()
    r.open_channel()
    qn = name.encode()
    r.send(method(1, 50, 10, b"\x00\x00" + shortstr(qn) + b"\x00" + struct.pack(">I", 0)))
    assert r.read_method()[1] == (50, 11)
    r.send(method(1, 60, 40, b"\x00\x00" + shortstr(b"") + shortstr(qn) + b"\x00")
           + frame(2, 1, struct.pack(">HHQ", 60, 0, len(body)) + properties) + frame(3, 1, body))
    r.send(method(1, 60, 70, b"\x00\x00" + shortstr(qn) + b"\x01"))
    m = r.read_method()
    assert m is not None, "connection dropped"
    _, ids, args = m
    if ids in ((10, 50), (20, 40)):
        code, n = struct.unpack(">H", args[:2])[0], args[2]
        return None, (code, args[3:3 + n])
    assert ids == (60, 71), ids
    t, _, header = r.read_frame()
    t2, _, got_body = r.read_frame()
    assert (t, t2, got_body) == (2, 3, body)
    r.send(method(1, 50, 40, b"\x00\x00" + shortstr(qn) + b"\x00"))  # queue.delete
    r.read_method()
    r.s.close()
    return header[12:], None


@pytest.mark.parametrize("case", list(CASES))
def test_octets_that_are_not_utf8_pass_through_unchanged(broker, name, case):
    got, closed = raw_publish_and_get(broker, name, CASES[case])
    assert closed is None, closed
    assert got == CASES[case]


def test_expiration_and_user_id_that_are_not_utf8_are_refused_with_406(broker, name):
    got, closed = raw_publish_and_get(broker, f"{name}-e", props(1 << 8, [shortstr(b"\xff")]))
    assert got is None and closed[0] == 406
    # RabbitMQ quotes the octets as they came; this broker with U+FFFD.
    assert closed[1].startswith(b"PRECONDITION_FAILED - invalid expiration '") and closed[1].endswith(b"': no_integer")
    got, closed = raw_publish_and_get(broker, f"{name}-u", props(1 << 4, [shortstr(b"\xffguest")]))
    assert got is None and closed[0] == 406
    assert closed[1].startswith(b"PRECONDITION_FAILED - user_id property set to '")
    assert closed[1].endswith(b"' but authenticated user was 'guest'")
    c = pika.BlockingConnection(broker.params())
    c.channel().queue_delete(f"{name}-e")
    c.channel().queue_delete(f"{name}-u")
    c.close()


def headers_with_a_name_that_is_not_utf8():
    # pika writes a bytes name as it is; it reads one that is not UTF-8
    # back as bytes.
    return {NOT_UTF8: "v", "ok": "1"}


def test_a_pika_consumer_reads_them(conn, name):
    ch = conn.channel()
    ch.queue_declare(name)
    ch.basic_publish("", name, b"x", pika.BasicProperties(headers=headers_with_a_name_that_is_not_utf8()))
    got = []
    ch.basic_consume(name, lambda c, m, p, b: (got.append(p.headers), c.basic_ack(m.delivery_tag)))
    assert wait_for(lambda: (conn.process_data_events(time_limit=0.05), got)[1], timeout=10)
    assert got[0] == {NOT_UTF8: "v", "ok": "1"}
    ch.queue_delete(name)


def test_dead_lettered_and_routed_by_headers(conn, name):
    ch = conn.channel()
    ch.exchange_declare(f"{name}-h", "headers", auto_delete=True)
    ch.queue_declare(f"{name}-dlq")
    ch.queue_declare(name, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{name}-dlq"})
    ch.queue_bind(name, f"{name}-h", arguments={"x-match": "all", "ok": "1"})
    ch.basic_publish(f"{name}-h", "", b"x", pika.BasicProperties(headers=headers_with_a_name_that_is_not_utf8()))
    assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 1, timeout=10)
    m, _, _ = ch.basic_get(name)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m = []
    assert wait_for(lambda: m.append(ch.basic_get(f"{name}-dlq", auto_ack=True)) or m[-1][0] is not None, timeout=10)
    _, p, body = m[-1]
    # The name that is not UTF-8 is kept by RabbitMQ, made UTF-8 here.
    assert body == b"x" and p.headers["ok"] == "1"
    known = {"ok", "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason"}
    assert known <= set(p.headers) and len(set(p.headers) - known) == 1, p.headers
    assert p.headers["x-death"][0]["reason"] == "rejected"
    ch.queue_delete(name)
    ch.queue_delete(f"{name}-dlq")


def test_a_shovel_moves_them(broker, conn, name):
    api = Api(broker.http)
    ch = conn.channel()
    ch.queue_declare(f"{name}-src")
    ch.queue_declare(f"{name}-dst")
    for i in range(3):
        ch.basic_publish("", f"{name}-src", f"{i}".encode(),
                         pika.BasicProperties(headers=headers_with_a_name_that_is_not_utf8(), content_type=b"a\xff"))
    put_shovel(api, name, {
        "src-uri": "amqp://", "src-queue": f"{name}-src", "dest-uri": "amqp://", "dest-queue": f"{name}-dst",
        "src-delete-after": 3,
    })
    assert wait_for(lambda: gone(api, name), timeout=30)
    got = [ch.basic_get(f"{name}-dst", auto_ack=True) for _ in range(3)]
    assert [b for _, _, b in got] == [b"0", b"1", b"2"]
    assert all(p.headers["ok"] == "1" and len(p.headers) == 2 for _, p, _ in got)
    assert ch.queue_declare(f"{name}-src", passive=True).method.message_count == 0
    ch.queue_delete(f"{name}-src")
    ch.queue_delete(f"{name}-dst")
