"""Bodies of every size arrive byte for byte, in order.

Big body frames are read into room kept for them and sent by reference
(vectored writes) rather than copied; small ones are copied. These tests
cross those thresholds (16 KiB frames, the 131,072-byte frame_max, bodies
split over many frames) with small and big messages interleaved on one
connection, through consumers, basic.get and basic.return.
"""
import os
import threading

import pika

from conftest import pump_until

# Around 16 KiB (the in-place and by-reference threshold), one whole frame
# at the default frame_max (131,072 - 8 bytes of payload), one byte more,
# and bodies over many frames.
SIZES = [0, 1, 4095, 4096, 16383, 16384, 16385, 65536, 131064, 131065, 300_001, 1 << 20]


def body(i, size):
    """A body whose every byte depends on its message and position."""
    seed = f"{i}:{size}:".encode()
    out = (seed * (size // len(seed) + 1))[:size]
    return out


def test_interleaved_sizes_arrive_exactly_through_a_consumer(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, auto_delete=True)
    sent = []
    for i, size in enumerate(SIZES * 3):
        b = body(i, size)
        sent.append(b)
        ch.basic_publish("", name, b, pika.BasicProperties(message_id=str(i), headers={"n": i}))
    got = []

    def on(c, m, p, b):
        got.append((p.message_id, p.headers, b))
        c.basic_ack(m.delivery_tag)

    ch.basic_qos(prefetch_count=5)
    ch.basic_consume(name, on)
    assert pump_until(conn, lambda: len(got) == len(sent), timeout=60), len(got)
    for i, (mid, headers, b) in enumerate(got):
        assert mid == str(i) and headers == {"n": i}
        assert b == sent[i], f"message {i} ({len(sent[i])} bytes) came back as {len(b)} different bytes"


def test_small_frame_max_and_basic_get(broker, name):
    # frame_max 4096: every big body comes in many small frames.
    c = pika.BlockingConnection(broker.params(frame_max=4096))
    try:
        ch = c.channel()
        ch.queue_declare(name, auto_delete=False)
        sent = [body(i, s) for i, s in enumerate(SIZES)]
        for b in sent:
            ch.basic_publish("", name, b)
        for i, b in enumerate(sent):
            m, _p, got = ch.basic_get(name, auto_ack=True)
            assert m is not None, i
            assert got == b, f"get {i}: {len(got)} bytes"
        ch.queue_delete(name)
    finally:
        c.close()


def test_big_returned_bodies(conn, name):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(b))
    sent = [body(i, s) for i, s in enumerate([16384, 5, 200_000, 131065])]
    for b in sent:
        ch.basic_publish("", f"{name}-nowhere", b, mandatory=True)
    assert pump_until(conn, lambda: len(returned) == len(sent), timeout=30)
    assert returned == sent


def test_a_slow_reader_gets_big_bodies_intact(broker, name):
    """Deliveries that do not fit the socket go through the writer task
    (vectored writes of what is queued): a consumer that reads slowly still
    gets every byte."""
    total = 80
    pub = pika.BlockingConnection(broker.params())
    con = pika.BlockingConnection(broker.params())
    try:
        pch = pub.channel()
        pch.queue_declare(name, auto_delete=True)
        cch = con.channel()
        cch.basic_qos(prefetch_count=total)
        sent = [os.urandom(s) for s in [70_000, 20, 250_000, 16384] * (total // 4)]
        got = []
        cch.basic_consume(name, lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
        done = threading.Event()

        def publish():
            for b in sent:
                pch.basic_publish("", name, b)
            done.set()

        t = threading.Thread(target=publish)
        t.start()
        t.join(60)
        assert done.is_set()
        # Read a little at a time at first, then the rest.
        for _ in range(20):
            con.process_data_events(time_limit=0.01)
        assert pump_until(con, lambda: len(got) == len(sent), timeout=60), len(got)
        assert got == sent
    finally:
        pub.close()
        con.close()


def test_consumers_with_another_frame_max_get_big_bodies_intact(broker, name):
    """A body that came in several big frames is kept in them; a consumer
    whose frame_max differs from the publisher's gets frames that take
    pieces of two of them."""
    sizes = [131065, 300_001, 1 << 20, 5, 262_128]
    pub = pika.BlockingConnection(broker.params())
    try:
        ch = pub.channel()
        ch.queue_declare(name, auto_delete=False)
        for frame_max in (4096, 50_000, 131072):
            sent = [body(i + frame_max, s) for i, s in enumerate(sizes)]
            for b in sent:
                ch.basic_publish("", name, b)
            c = pika.BlockingConnection(broker.params(frame_max=frame_max))
            try:
                cch = c.channel()
                # Half by basic.get, half by basic.deliver.
                for i, b in enumerate(sent[:2]):
                    m, _p, got = cch.basic_get(name, auto_ack=True)
                    assert m is not None and got == b, f"frame_max {frame_max}, get {i}"
                got = []
                cch.basic_consume(name, lambda c, m, p, b: got.append(b), auto_ack=True)
                assert pump_until(c, lambda: len(got) == len(sent) - 2, timeout=30), len(got)
                assert got == sent[2:], f"frame_max {frame_max}: {[len(b) for b in got]}"
            finally:
                c.close()
        ch.queue_delete(name)
    finally:
        pub.close()


def test_big_bodies_dead_lettered_arrive_intact(conn, name):
    ch = conn.channel()
    ch.queue_declare(f"{name}-dead", auto_delete=True)
    ch.queue_declare(name, auto_delete=True, arguments={"x-dead-letter-exchange": "",
                                                         "x-dead-letter-routing-key": f"{name}-dead"})
    sent = [body(i, s) for i, s in enumerate([300_001, 1 << 20, 17])]
    for b in sent:
        ch.basic_publish("", name, b)
    for _ in sent:
        m, _p, _b = ch.basic_get(name)
        ch.basic_reject(m.delivery_tag, requeue=False)
    for i, b in enumerate(sent):
        m, p, got = ch.basic_get(f"{name}-dead", auto_ack=True)
        assert m is not None and got == b, i
        assert p.headers["x-death"][0]["reason"] == "rejected"


def test_persistent_big_bodies_survive_kill_9(name):
    """Written to the message log from the frames they came in, read back
    after kill -9 and a restart; the management API's get shows them too."""
    import base64
    import signal

    import requests

    from conftest import start_warren, stop_warren, wait_for

    sizes = [300_001, 1 << 20, 131065, 5]
    sent = [body(i, s) for i, s in enumerate(sizes)]
    proc, port, data = start_warren()
    try:
        c = pika.BlockingConnection(pika.ConnectionParameters(port=port))
        ch = c.channel()
        ch.queue_declare(name, durable=True)
        ch.confirm_delivery()
        for b in sent:
            ch.basic_publish("", name, b, pika.BasicProperties(delivery_mode=2))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.pump.join(10)
    proc, port, _ = start_warren(data=data)
    try:
        api = proc.http + f"/api/queues/%2F/{name}"
        assert wait_for(lambda: requests.get(api, auth=("guest", "guest"), timeout=10).json().get("messages") == 4)
        r = requests.post(api + "/get", auth=("guest", "guest"), timeout=30,
                          json={"count": 2, "ackmode": "ack_requeue_true", "encoding": "base64"}).json()
        assert [base64.b64decode(m["payload"]) for m in r] == sent[:2]
        assert [m["payload_bytes"] for m in r] == sizes[:2]
        r = requests.post(api + "/get", auth=("guest", "guest"), timeout=30,
                          json={"count": 2, "ackmode": "ack_requeue_true", "encoding": "base64", "truncate": 200_000})
        assert [base64.b64decode(m["payload"]) for m in r.json()] == [b[:200_000] for b in sent[:2]]
        c = pika.BlockingConnection(pika.ConnectionParameters(port=port))
        ch = c.channel()
        for i, b in enumerate(sent):
            m, _p, got = ch.basic_get(name, auto_ack=True)
            assert m is not None and got == b, i
        c.close()
    finally:
        stop_warren(proc, data)
