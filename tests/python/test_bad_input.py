"""Malformed input ends in the exception RabbitMQ sends (code, text and
class/method ids), the broker keeps serving everybody else, and nothing
queued is lost. Each case also passes against RabbitMQ (WARREN_TEST_ADDR)."""
import struct

import pika
import pytest

from rawamqp import Raw, frame, method, shortstr

PUBLISH_Q = method(1, 60, 40, b"\x00\x00" + shortstr(b"") + shortstr(b"q") + b"\x00")
DECLARE_Q = method(1, 50, 10, b"\x00\x00" + shortstr(b"q") + b"\x00" + struct.pack(">I", 0))


def header(size):
    return frame(2, 1, struct.pack(">HHQH", 60, 0, size, 0))


CASES = {
    "bad frame end byte": (
        False, struct.pack(">BHI", 1, 0, 4) + struct.pack(">HH", 10, 50) + b"\x00",
        (501, "FRAME_ERROR - type 1, all octets = <<0,10,0,50>>: {invalid_frame_end_marker,0}", 0, 0),
    ),
    "frame larger than frame_max": (
        True, frame(3, 1, b"x" * 200000),
        (501, "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,200000,131064}", 0, 0),
    ),
    "truncated method arguments": (
        True, method(1, 50, 10, b"\x00\x00\x05ab"),
        (501, "FRAME_ERROR - cannot decode <<0,0,5,97,98>>", 50, 10),
    ),
    "method before channel.open": (
        False, method(5, 50, 10, b"\x00\x00" + shortstr(b"q") + b"\x00" + struct.pack(">I", 0)),
        (504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10),
    ),
    "second channel.open": (
        True, method(1, 20, 10, shortstr(b"")),
        (504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10),
    ),
    "content header without publish": (
        True, header(5),
        (505, "UNEXPECTED_FRAME - expected method frame, got non method frame instead", 0, 0),
    ),
    "body frame instead of header": (
        True, PUBLISH_Q + frame(3, 1, b"hello"),
        (505, "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead", 60, 40),
    ),
    "method instead of content header": (
        True, PUBLISH_Q + DECLARE_Q,
        (505, "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead", 60, 40),
    ),
    "content frame on channel 0": (
        False, frame(3, 0, b"zz"),
        (505, 'UNEXPECTED_FRAME - type 3, all octets = <<"zz">>', 0, 0),
    ),
    "heartbeat on a channel": (
        True, frame(8, 1, b""),
        (505, "UNEXPECTED_FRAME - type 8, all octets = <<>>", 0, 0),
    ),
    "unknown frame type": (
        False, frame(9, 0, b""),
        (501, "FRAME_ERROR - type 9, all octets = <<>>: unknown_frame", 0, 0),
    ),
}

# The connection ends. RabbitMQ resets the socket without a close frame for
# unknown methods; Warren sends connection.close 540 first.
CONNECTION_ENDS = {
    "unknown method": (True, method(1, 60, 99)),
    "unknown class": (True, method(1, 77, 10)),
}

# Warren is stricter than RabbitMQ here, on purpose: RabbitMQ silently
# accepts a body longer than its header announced and opens channels above
# the negotiated channel_max; Warren closes the connection (501 / 504).
WARREN_STRICTER = {
    "body longer than its header said": (
        True, PUBLISH_Q + header(3) + frame(3, 1, b"hello"),
        501, "FRAME_ERROR - content body of 5 bytes exceeds the 3 the header announced",
    ),
    "channel above channel_max": (
        False, method(3000, 20, 10, shortstr(b"")), 504, "CHANNEL_ERROR - channel 3000 exceeds channel_max 2047",
    ),
}

CLOSE_OK = method(0, 10, 51)


def raw(broker, open_channel):
    r = Raw(broker.host, broker.port)
    r.handshake()
    if open_channel:
        r.open_channel()
    return r


def hung_up(r):
    """After connection.close / close-ok, the broker closes the socket."""
    try:
        r.send(CLOSE_OK)
        return r.read_frame() is None
    except (ConnectionResetError, BrokenPipeError):
        return True


@pytest.mark.parametrize("case", CASES)
def test_connection_exception_as_rabbitmq(broker, case):
    open_channel, data, (code, text, cls, mid) = CASES[case]
    r = raw(broker, open_channel)
    r.send(data)
    assert r.expect_close() == (0, code, text, cls, mid)
    assert hung_up(r)


@pytest.mark.parametrize("case", CONNECTION_ENDS)
def test_connection_ends(broker, case):
    open_channel, data = CONNECTION_ENDS[case]
    r = raw(broker, open_channel)
    r.send(data)
    closed = r.expect_close()  # None: reset without a close frame (RabbitMQ)
    if closed is not None:
        assert closed[1] == 540
    assert hung_up(r)


def test_invalid_utf8_short_string_is_a_frame_error(broker):
    r = raw(broker, True)
    r.send(method(1, 50, 10, b"\x00\x00" + shortstr(b"\xff\xfe") + b"\x00" + struct.pack(">I", 0)))
    closed = r.expect_close()
    assert closed[1] == 501  # RabbitMQ words it "Malformed UTF-8 in shortstr"
    assert hung_up(r)


@pytest.mark.parametrize("case", WARREN_STRICTER)
def test_warren_is_stricter(broker, case):
    if not broker.is_warren:
        pytest.skip("deliberate difference: RabbitMQ accepts this input")
    open_channel, data, code, text = WARREN_STRICTER[case]
    r = raw(broker, open_channel)
    r.send(data)
    assert r.expect_close() == (0, code, text, 0, 0)
    assert hung_up(r)


def test_garbage_hurts_no_one_else(broker, name):
    """A well-behaved client keeps working and keeps its queued messages
    while other connections send every kind of garbage."""
    good = pika.BlockingConnection(broker.params())
    ch = good.channel()
    ch.queue_declare(name, arguments={"x-expires": 60000})
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", name, str(i).encode())
    for open_channel, data, _ in CASES.values():
        r = raw(broker, open_channel)
        r.send(data)
        r.expect_close()
    for open_channel, data in CONNECTION_ENDS.values():
        r = raw(broker, open_channel)
        r.send(data)
        r.expect_close()
    for open_channel, data, _, _ in WARREN_STRICTER.values():
        r = raw(broker, open_channel)
        r.send(data)
    assert ch.queue_declare(name, passive=True).method.message_count == 10
    got = [ch.basic_get(name, auto_ack=True)[2] for _ in range(10)]
    assert got == [str(i).encode() for i in range(10)]
    ch.queue_delete(name)
    good.close()


def test_unfinished_handshake_is_closed(broker):
    """A socket that sends the protocol header and then nothing is closed
    after the handshake timeout (10 s, as RabbitMQ's default)."""
    import socket
    import time

    s = socket.create_connection((broker.host, broker.port), timeout=30)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    start = time.time()
    try:
        while s.recv(4096):
            pass  # connection.start, then maybe a close
    except ConnectionResetError:
        pass
    elapsed = time.time() - start
    assert 5 < elapsed < 25, elapsed
