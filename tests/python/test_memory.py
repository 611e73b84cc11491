"""Memory under pressure: after a burst fills the broker past its memory
high watermark and the backlog goes away (deleted or consumed), the memory
alarm clears within seconds and publishers get connection.unblocked;
transient backlogs spill to disk and come back in order; a consumer that
never reads cannot grow the broker; `warren ctl status` says where the
memory is. Warren-only: each test starts its own Warren with small limits."""
import contextlib
import os
import struct
import threading
import time
import types

import pika
import pytest

from conftest import own_warren, wait_for
from rawamqp import Raw, method, shortstr

BODY = b"x" * 65536


@pytest.fixture
def small_broker():
    # No spilling (paging ratio above 1): the backlog must hit the alarm.
    with own_warren(extra=["--memory-high-watermark", "64MiB", "--memory-paging-ratio", "2"]) as b:
        yield b.proc, b.port


def logged(proc, text):
    return any(text in line for line in proc.log)


def flood_until_alarm(port, queue):
    """Publishes 64 KiB transient messages from a thread until the memory
    alarm stops it; returns the thread and its stop flag."""
    stop = threading.Event()

    def flood():
        c = pika.BlockingConnection(pika.ConnectionParameters(port=port, heartbeat=0))
        ch = c.channel()
        while not stop.is_set():
            ch.basic_publish("", queue, BODY)  # blocks while the alarm holds
        c.close()

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    return t, stop


def watcher(port, queue):
    """A publisher connection that records connection.blocked / unblocked."""
    c = pika.BlockingConnection(pika.ConnectionParameters(port=port, heartbeat=0))
    events = []
    c.add_on_connection_blocked_callback(lambda _c, f: events.append(f.method.reason))
    c.add_on_connection_unblocked_callback(lambda _c, f: events.append("unblocked"))
    c.channel().basic_publish("", queue, b"w")  # only publishers are blocked
    return c, events


@pytest.mark.parametrize("how", ["deleted", "consumed"])
def test_alarm_clears_when_the_backlog_goes(small_broker, name, how):
    proc, port = small_broker
    admin = pika.BlockingConnection(pika.ConnectionParameters(port=port, heartbeat=0))
    ach = admin.channel()
    ach.queue_declare(name)
    w, events = watcher(port, name)
    t, stop = flood_until_alarm(port, name)
    assert wait_for(lambda: (w.process_data_events(0), events)[1], timeout=60)
    assert events == ["low on memory"]
    stop.set()
    if how == "deleted":
        ach.queue_delete(name)
    else:
        n, deadline = 0, time.time() + 60
        while time.time() < deadline:
            m, _, body = ach.basic_get(name, auto_ack=True)
            if m is None:
                if not t.is_alive():
                    break
                w.process_data_events(0)
                time.sleep(0.01)
                continue
            n += 1
        assert n > 400  # more than 25 MiB had been queued
    # The bar: unblocked within 5 s of the backlog going away.
    assert wait_for(lambda: (w.process_data_events(0), "unblocked" in events)[1], timeout=5), events
    # The log line is written before the alarm clears, but the thread that
    # collects the broker's output may not have read it yet.
    assert wait_for(lambda: logged(proc, "resource alarm cleared"), timeout=5)
    t.join(10)
    w.close()
    admin.close()


def breakdown(broker):
    out = broker.ctl("memory_breakdown").stdout
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    return {r[0]: int(r[1]) for r in rows[1:]}


def test_status_shows_a_memory_breakdown(name):
    """`warren ctl status`: queue bodies in memory, connection buffers,
    heap, RSS, as rabbitmq-diagnostics memory_breakdown shows them. Its own
    Warren, so that no other test's queues move the figures."""
    with own_warren() as broker:
        c = pika.BlockingConnection(broker.params())
        ch = c.channel()
        ch.queue_declare(name, exclusive=True)
        assert breakdown(broker)["queue_bodies_in_memory"] == 0
        ch.confirm_delivery()
        for _ in range(100):
            ch.basic_publish("", name, b"x" * 10000)
        during = breakdown(broker)
        assert during["queue_bodies_in_memory"] == 1_000_000
        assert during["queue_bodies_on_disk"] == 0
        assert during["total_rss"] > 1_000_000
        assert during["allocator_committed"] > 1_000_000
        assert wait_for(lambda: breakdown(broker)["connection_buffers"] > 0)
        ch.queue_purge(name)
        assert breakdown(broker)["queue_bodies_in_memory"] == 0
        c.close()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def peak_rss(proc):
    """Samples the process's RSS every 10 ms; `.mib` is the highest seen."""
    peak = types.SimpleNamespace(mib=0.0)
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak.mib = max(peak.mib, rss_mib(proc.pid))
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        done.set()
        t.join(5)


def test_transient_backlog_spills_to_disk_and_comes_back_in_order(name):
    """1 GiB of transient 64 KiB messages into a consumer-less non-durable
    queue under a 256 MiB watermark: every one is accepted (the publisher
    may be paused, never blocked for good), RSS stays under 1.2 x the
    watermark, all come back intact and in order, and the spill files go.
    (The broker's fixed costs — a queue's 8 MiB head, a consumer's 16 MiB
    outbound window, 8 MiB of socket backlog — are not proportional to the
    watermark: a smaller one would measure them rather than the spilling.)"""
    watermark, n = 256, 16384
    with own_warren(extra=["--memory-high-watermark", f"{watermark}MiB"]) as broker, peak_rss(broker.proc) as peak:
        spill = os.path.join(broker.data, "spill")
        c = pika.BlockingConnection(broker.params(heartbeat=0))
        ch = c.channel()
        ch.queue_declare(name)
        ch.confirm_delivery()
        for i in range(n):
            ch.basic_publish("", name, i.to_bytes(4, "big") + BODY[4:])
        assert ch.queue_declare(name, passive=True).method.message_count == n
        assert os.listdir(spill), "nothing was spilled"
        # A connection of its own, with a prefetch: a connection that also
        # publishes is not read from while the memory alarm holds (its acks
        # included), and an unlimited prefetch keeps every delivery in
        # memory as unacked — both as in RabbitMQ.
        cc = pika.BlockingConnection(broker.params(heartbeat=0))
        cch = cc.channel()
        cch.basic_qos(prefetch_count=256)
        got = 0
        for m, _, body in cch.consume(name, auto_ack=False, inactivity_timeout=30):
            assert m is not None, f"stalled after {got}"
            assert body[:4] == got.to_bytes(4, "big") and body[4:] == BODY[4:], got
            got += 1
            if got % 100 == 0 or got == n:
                cch.basic_ack(m.delivery_tag, multiple=True)
            if got == n:
                break
        cch.cancel()
        assert cch.queue_declare(name, passive=True).method.message_count == 0
        assert wait_for(lambda: os.listdir(spill) == [])
        assert peak.mib < 1.2 * watermark, f"RSS peaked at {peak.mib:.0f} MiB"
        cc.close()
        c.close()


def test_consumer_that_never_reads_cannot_grow_the_broker(name):
    """A consumer with unlimited prefetch whose socket is never read, while
    a publisher floods its queue (1 GiB, or 30 s): the messages wait in the
    queue — spilled — not in the connection, RSS stays under 1.5 x the
    watermark, and once the consumer is gone no alarm holds."""
    watermark = 256
    with own_warren(extra=["--memory-high-watermark", f"{watermark}MiB"]) as broker, peak_rss(broker.proc) as peak:
        spill = os.path.join(broker.data, "spill")
        c = pika.BlockingConnection(broker.params(heartbeat=0))
        ch = c.channel()
        ch.queue_declare(name)
        stalled = Raw(broker.host, broker.port)
        stalled.handshake()
        stalled.open_channel()
        # Manual ack, no basic.qos: unlimited prefetch; then never read.
        stalled.send(method(1, 60, 20, b"\x00\x00" + shortstr(name.encode()) + shortstr(b"stuck") + b"\x00"
                            + struct.pack(">I", 0)))
        ch.confirm_delivery()
        deadline, sent = time.time() + 30, 0
        while sent < 16384 and time.time() < deadline:
            ch.basic_publish("", name, BODY)
            sent += 1
        assert sent > 2000, sent
        stalled.s.close()  # the consumer goes: its unacked deliveries return
        assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == sent, timeout=30)
        assert os.listdir(spill), "nothing was spilled"
        assert wait_for(lambda: "Alarms: none." in broker.ctl("status").stdout, timeout=10)
        assert peak.mib < 1.5 * watermark, f"RSS peaked at {peak.mib:.0f} MiB"
        ch.queue_delete(name)
        assert wait_for(lambda: os.listdir(spill) == [])
        c.close()
