"""Hostile and broken clients at the socket level: random and mutated
frames, clients that never read, slowloris, channel floods. After each, the
broker must still serve a normal client and must not have lost a queued
message. Everything here also runs against RabbitMQ (WARREN_TEST_ADDR);
the memory bounds are checked on Warren's own process.

WARREN_FUZZ_ITERATIONS (default 300) and WARREN_FUZZ_SEED set the size and
seed of the random-frame run; a long run:
  WARREN_FUZZ_ITERATIONS=20000 .venv/bin/python -m pytest tests/python/test_hostile_clients.py -k fuzz
"""
import os
import random
import select
import socket
import struct
import threading
import time

import pika
import pytest

import pika.exceptions as pe

from conftest import wait_for
from rawamqp import Raw, frame, longstr, method, shortstr

HEADER = b"AMQP\x00\x00\x09\x01"


def rss_kib(broker):
    with open(f"/proc/{broker.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def handshake_bytes():
    start_ok = struct.pack(">I", 0) + shortstr(b"PLAIN") + longstr(b"\0guest\0guest") + shortstr(b"en_US")
    return (
        HEADER
        + method(0, 10, 11, start_ok)
        + method(0, 10, 31, struct.pack(">HIH", 2047, 131072, 0))
        + method(0, 10, 40, shortstr(b"/") + shortstr(b"") + b"\0")
    )


def valid_session(rng):
    """A plausible stream of channel frames for a fuzz victim's own names."""
    q = b"fz-%d" % rng.randrange(1000)
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    frames = [
        method(1, 20, 10, shortstr(b"")),
        method(1, 50, 10, b"\x00\x00" + shortstr(q) + b"\x00" + struct.pack(">I", 0)),
        method(1, 60, 10, struct.pack(">IHB", 0, rng.randrange(5), 0)),
        method(1, 85, 10, b"\x00"),
        method(1, 60, 40, b"\x00\x00" + shortstr(b"") + shortstr(q) + b"\x00"),
        frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0x9000) + shortstr(b"text/plain") + b"\x02"),
        frame(3, 1, body),
        method(1, 60, 20, b"\x00\x00" + shortstr(q) + shortstr(b"") + b"\x00" + struct.pack(">I", 0)),
        method(1, 60, 80, struct.pack(">QB", 1, 0)),
        method(1, 50, 20, b"\x00\x00" + shortstr(q) + shortstr(b"amq.topic") + shortstr(b"#") + b"\x00" + struct.pack(">I", 4) + b"\x01a" + b"S\x00"),
        method(1, 20, 40, struct.pack(">H", 200) + shortstr(b"bye") + struct.pack(">HH", 0, 0)),
    ]
    return b"".join(rng.sample(frames, k=rng.randrange(1, len(frames) + 1)) if rng.random() < 0.3 else frames)


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(1, 8)):
        if not data:
            break
        i = rng.randrange(len(data))
        op = rng.randrange(5)
        if op == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[i] = rng.choice([0, 1, 0x7F, 0x80, 0xCE, 0xFF])
        elif op == 2:
            del data[i:i + rng.randrange(1, 16)]
        elif op == 3:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        else:
            data = data[:i]
    return bytes(data)


def random_frames(rng):
    out = b""
    for _ in range(rng.randrange(1, 6)):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        if rng.random() < 0.5 and len(payload) >= 4:
            payload = struct.pack(">HH", rng.choice([10, 20, 40, 50, 60, 85, 90]), rng.randrange(0, 120)) + payload[4:]
        out += frame(rng.choice([1, 2, 3, 8, rng.randrange(256)]), rng.choice([0, 1, 2, rng.randrange(65536)]), payload)
    return out


def hostile_input(rng):
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return HEADER + mutate(rng, handshake_bytes()[8:] + valid_session(rng))
    if kind == 2:
        return handshake_bytes() + mutate(rng, valid_session(rng))
    return handshake_bytes() + method(1, 20, 10, shortstr(b"")) + random_frames(rng)


def drain_and_close(socks, seconds):
    """Reads whatever the broker answers, for a while, then hangs up."""
    deadline = time.time() + seconds
    live = list(socks)
    while live and time.time() < deadline:
        readable, _, _ = select.select(live, [], [], max(0, deadline - time.time()))
        for s in readable:
            try:
                if not s.recv(65536):
                    live.remove(s)
            except OSError:
                live.remove(s)
    for s in socks:
        s.close()


@pytest.fixture
def precious(broker, name):
    """A queue holding 20 persistent messages that must survive everything."""
    c = pika.BlockingConnection(broker.params())
    ch = c.channel()
    ch.queue_declare(name, durable=True)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", name, b"keep-%d" % i, pika.BasicProperties(delivery_mode=2))
    c.close()
    yield name
    c = pika.BlockingConnection(broker.params())
    c.channel().queue_delete(name)
    c.close()


def assert_intact(broker, queue):
    if broker.is_warren:
        assert broker.proc.poll() is None, "the broker died"
    c = pika.BlockingConnection(broker.params())
    ch = c.channel()
    assert ch.queue_declare(queue, passive=True).method.message_count == 20
    got = []
    for _ in range(20):
        method_frame, _, body = ch.basic_get(queue)
        got.append(body)
    assert got == [b"keep-%d" % i for i in range(20)]
    c.close()  # unacked: they go back


def test_a_handshake_sent_in_one_write_is_answered(broker):
    """A client that does not wait for connection.start (the protocol
    header, start-ok, tune-ok and open in one write) is served, as RabbitMQ
    serves it: what came with the header is not left for a next read."""
    raw = Raw(broker.host, broker.port)
    try:
        raw.send(handshake_bytes())
        seen = [raw.read_method()[1] for _ in range(3)]
        assert seen == [(10, 10), (10, 30), (10, 41)], seen
        raw.open_channel()
    finally:
        raw.s.close()


def test_fuzz_random_and_mutated_frames(broker, precious):
    seed = int(os.environ.get("WARREN_FUZZ_SEED", random.randrange(1 << 30)))
    iterations = int(os.environ.get("WARREN_FUZZ_ITERATIONS", 300))
    print(f"fuzz seed {seed}, {iterations} connections")
    rng = random.Random(seed)
    batch = 25
    for start in range(0, iterations, batch):
        socks = []
        for _ in range(min(batch, iterations - start)):
            s = socket.create_connection((broker.host, broker.port), timeout=5)
            try:
                s.sendall(hostile_input(rng))
            except OSError:
                pass
            socks.append(s)
        drain_and_close(socks, 0.3)
    assert_intact(broker, precious)


def test_client_that_never_reads_cannot_grow_memory(broker, precious):
    """A publisher of mandatory, unroutable 64 KiB messages gets every one back
    as basic.return; it never reads them. The broker stops reading from it
    instead of buffering without bound."""
    body = b"r" * 65536
    publish = (
        method(1, 60, 40, b"\x00\x00" + shortstr(b"amq.direct") + shortstr(b"nowhere") + b"\x01")
        + frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0))
        + frame(3, 1, body)
    )
    r = Raw(broker.host, broker.port)
    r.handshake()
    r.open_channel()
    r.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    r.s.settimeout(None)  # sendall blocks for as long as the broker does not read
    sent = [0]

    def flood():
        try:
            while sent[0] < 2000:  # 128 MiB of returns if nothing stopped it
                r.s.sendall(publish * 16)
                sent[0] += 16
        except OSError:
            pass

    before = rss_kib(broker) if broker.is_warren else 0
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    t.join(15)
    if broker.is_warren:
        assert t.is_alive(), f"all {sent[0]} publishes were taken although nothing was read"
        grown_mib = (rss_kib(broker) - before) / 1024
        print(f"sent {sent[0]} publishes; broker RSS grew {grown_mib:.1f} MiB")
        assert grown_mib < 80
    assert_intact(broker, precious)
    r.s.shutdown(socket.SHUT_RDWR)
    r.s.close()
    t.join(5)


def test_slowloris_one_byte_at_a_time(broker, precious):
    """Clients trickling a handshake and a frame byte by byte hold nothing
    but their socket, and do not slow anybody else down."""
    slow = [socket.create_connection((broker.host, broker.port), timeout=5) for _ in range(20)]
    data = handshake_bytes() + method(1, 20, 10, shortstr(b""))
    for i in range(40):
        for s in slow:
            try:
                s.send(data[i:i + 1])
            except OSError:
                pass
        time.sleep(0.02)
    assert_intact(broker, precious)
    for s in slow:
        s.close()


def test_channel_flood_is_bounded_by_channel_max(broker, precious):
    r = Raw(broker.host, broker.port)
    r.handshake()
    r.send(b"".join(method(ch, 20, 10, shortstr(b"")) for ch in range(1, 2048)))
    opened = 0
    while opened < 2047:
        m = r.read_method()
        assert m is not None and m[1] == (20, 11)
        opened += 1
    if broker.is_warren:
        before = rss_kib(broker)
    # One more is beyond channel_max 2047: Warren refuses (504); RabbitMQ opens it.
    r.send(method(2048, 20, 10, shortstr(b"")))
    if broker.is_warren:
        closed = r.expect_close()
        assert closed[:2] == (0, 504)
        assert (rss_kib(broker) - before) < 16 * 1024
    r.s.close()
    assert_intact(broker, precious)


def test_no_ack_consumer_that_never_reads_is_bounded_in_bytes(broker, name):
    """A no-ack consumer that never reads gets at most ~16 MiB of bodies
    pulled out for it (plus what its socket holds), not 4,096 large
    messages: the rest stay in the (disk-first) queue."""
    c = pika.BlockingConnection(broker.params())
    ch = c.channel()
    ch.queue_declare(name, durable=True)
    ch.confirm_delivery()
    body = b"m" * (1 << 20)
    for _ in range(120):
        ch.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2))
    before = rss_kib(broker) if broker.is_warren else 0
    r = Raw(broker.host, broker.port)
    r.handshake()
    r.open_channel()
    r.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    # basic.consume, no-ack, then never read.
    r.send(method(1, 60, 20, b"\x00\x00" + shortstr(name.encode()) + shortstr(b"") + b"\x02" + struct.pack(">I", 0)))
    time.sleep(2)
    if broker.is_warren:
        left = ch.queue_declare(name, durable=True, passive=True).method.message_count
        grown_mib = (rss_kib(broker) - before) / 1024
        print(f"{left} of 120 left in the queue; broker RSS grew {grown_mib:.1f} MiB")
        assert left >= 80, f"only {left} left: too much was pulled out for a consumer that does not read"
        assert grown_mib < 64
    r.s.close()
    ch.queue_delete(name)
    c.close()


def test_a_panic_costs_one_connection_and_is_logged_once(name):
    """If handling a method panics anyway (here forced with the test-only
    WARREN_FAULT_PANIC_QUEUE), that connection gets 541 INTERNAL_ERROR, the
    panic is logged once at error level with the peer and the method, and
    every other connection goes on."""
    from conftest import own_warren

    doomed = name + "-panics"
    with own_warren(env={"WARREN_FAULT_PANIC_QUEUE": doomed}, allow_panic=True) as b:
        bystander = pika.BlockingConnection(b.params())
        bch = bystander.channel()
        bch.queue_declare(name, exclusive=True)
        bch.confirm_delivery()
        bch.basic_publish("", name, b"before")

        victim = pika.BlockingConnection(b.params())
        local_port = victim._impl._transport._sock.getsockname()[1]
        with pytest.raises(pe.ConnectionClosedByBroker) as e:
            victim.channel().queue_declare(doomed)
        assert e.value.args == (541, "INTERNAL_ERROR")

        bch.basic_publish("", name, b"after")
        assert [bch.basic_get(name, auto_ack=True)[2] for _ in range(2)] == [b"before", b"after"]
        again = pika.BlockingConnection(b.params())
        again.channel().queue_declare("", exclusive=True)
        again.close()
        bystander.close()

        assert wait_for(lambda: any("panicked" in line for line in b.proc.log))
        panics = [line for line in b.proc.log if "panicked" in line]
        assert len(panics) == 1, panics
        line = panics[0]
        assert "ERROR" in line and f"127.0.0.1:{local_port}" in line and "method=50.10" in line, line
        assert "fault injection" in line, line
