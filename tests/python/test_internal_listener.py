"""The internal listener, where the broker's own links (shovels, federation)
reach it, tried the way a stranger on the same host would: it is bound to
loopback only, refuses every login but the links' secret one (a real user's
password, the reserved user with a guessed secret), and survives garbage,
a frame length that asks for gigabytes and a half-sent handshake, while
the broker goes on serving its clients. Warren's own listener: there is no
RabbitMQ counterpart to run against.
"""
import os
import socket
import struct
import time

import pika
import pika.exceptions as pe
import pytest

from conftest import listening, own_warren, wait_for
from rawamqp import Raw, longstr, method, shortstr
from test_hostile_clients import rss_kib

HEADER = b"AMQP\x00\x00\x09\x01"


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's own internal listener")


@pytest.fixture(scope="module")
def warren():
    with own_warren() as b:
        known = {b.port, int(b.http.rsplit(":", 1)[1]), int(b.proc.prometheus.rsplit(":", 1)[1])}
        others = []
        assert wait_for(lambda: others.extend(l for l in listening(b.proc.pid) if l[1] not in known) or others)
        assert len(others) == 1, f"one listener besides AMQP, HTTP and metrics: {others}"
        b.internal_addr, b.internal_port = others[0]
        yield b


def serves(b):
    """The broker still takes a publish and hands it back on its AMQP port."""
    c = pika.BlockingConnection(b.params())
    try:
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"still here")
        assert wait_for(lambda: ch.basic_get(q, auto_ack=True)[2] == b"still here")
    finally:
        c.close()
    return True


def refused(port, user, password):
    """Logs in with pika; returns the exception the login ended in."""
    params = pika.ConnectionParameters(host="127.0.0.1", port=port,
                                       credentials=pika.PlainCredentials(user, password),
                                       connection_attempts=1, socket_timeout=5)
    with pytest.raises(pe.AMQPConnectionError) as e:
        pika.BlockingConnection(params).close()
    return e.value


def test_it_listens_on_loopback_only(warren):
    assert warren.internal_addr in ("0100007F", "00000000000000000000000001000000"), warren.internal_addr


def test_a_users_password_does_not_open_it(warren):
    e = refused(warren.internal_port, "guest", "guest")
    assert isinstance(e, pe.ProbableAuthenticationError) or "403" in repr(e), repr(e)
    # The log is read by another thread: the line may come just after the refusal.
    why = "internal listener: not one of this broker's links"
    assert wait_for(lambda: any(why in line for line in warren.proc.log), timeout=5)
    assert serves(warren)


def test_the_reserved_user_with_a_guessed_secret_is_refused(warren):
    for guess in ("", "guest", "0" * 64):
        e = refused(warren.internal_port, "warren-internal", guess)
        assert isinstance(e, pe.ProbableAuthenticationError) or "403" in repr(e), repr(e)
    # A guess longer than a frame before tuning may be is not even read.
    refused(warren.internal_port, "warren-internal", "x" * 70000)
    # Nor does the reserved name log in on the AMQP port.
    e = refused(warren.port, "warren-internal", "guest")
    assert isinstance(e, pe.ProbableAuthenticationError) or "403" in repr(e), repr(e)
    assert serves(warren)


def test_nothing_but_the_handshake_is_read_before_login(warren):
    """Channel frames before login, and a frame that claims 4 GiB, end the
    connection without the broker reserving the memory they ask for."""
    before = rss_kib(warren)
    for payload in (
        HEADER + method(1, 20, 10, shortstr(b"")),
        HEADER + struct.pack(">BHI", 1, 0, 0xFFFFFFF0) + b"\x00" * 64,
        HEADER + method(0, 10, 11, struct.pack(">I", 0) + shortstr(b"PLAIN") + longstr(b"\0a" * 40000)
                        + shortstr(b"en_US")),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        os.urandom(4096),
    ):
        s = socket.create_connection(("127.0.0.1", warren.internal_port), timeout=5)
        try:
            s.sendall(payload)
            assert closes(s), payload[:40]
        finally:
            s.close()
    assert rss_kib(warren) < before + 64 * 1024
    assert serves(warren)


def test_a_half_sent_handshake_holds_nobody_else_up(warren):
    stalled = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", warren.internal_port), timeout=5)
        s.sendall(HEADER[:5])
        stalled.append(s)
    try:
        raw = Raw("127.0.0.1", warren.internal_port)
        raw.send(HEADER)
        ch, ids, _ = raw.read_method()
        assert (ch, ids) == (0, (10, 10)), "a new connection still gets connection.start"
        raw.s.close()
        assert serves(warren)
    finally:
        for s in stalled:
            s.close()


def closes(s, timeout=10):
    """Reads until the broker hangs up or sends connection.close (True), or
    the deadline passes. (A client that broke the handshake gets
    connection.close and then until the handshake timeout to answer it.)"""
    deadline = time.time() + timeout
    s.settimeout(0.5)
    got = b""
    while time.time() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
        if not chunk:
            return True
        got += chunk
        if b"\x00\x0a\x00\x32" in got:
            return True
    return False
