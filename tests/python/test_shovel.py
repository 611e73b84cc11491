"""Dynamic shovels as RabbitMQ's shovel plugin runs them: the `shovel`
runtime parameter (its value keys, RabbitMQ's validation texts), the
shovel status API, ack modes, `src-delete-after`, forward headers.

The tests on this broker's own queues (`amqp://` URIs) run against RabbitMQ
too (WARREN_TEST_ADDR, with the rabbitmq_shovel and
rabbitmq_shovel_management plugins enabled): that is the differential run
of the API. The tests with a real RabbitMQ on the other side start a
private node (tests/python/rabbitnode.py) and run against Warren only."""
import json

import pika
import pytest

from conftest import count, own_warren, wait_for
from test_management import Api, q


@pytest.fixture
def api(broker):
    return Api(broker.http)


def put_shovel(api, name, value, vhost="%2F"):
    r = api.put(f"/parameters/shovel/{vhost}/{q(name)}", {"value": value})
    assert r.status_code in (201, 204), r.text
    return r


def shovel_row(api, name):
    rows = [s for s in api.json("/shovels") if s["name"] == name]
    return rows[0] if rows else None


def wait_state(api, name, state, timeout=30):
    assert wait_for(lambda: (shovel_row(api, name) or {}).get("state") == state, timeout=timeout, interval=0.1), \
        shovel_row(api, name)
    return shovel_row(api, name)


def gone(api, name):
    return api.get(f"/parameters/shovel/%2F/{q(name)}").status_code == 404 and shovel_row(api, name) is None


def drain(ch, queue, n, timeout=30):
    """Gets `n` messages from `queue` (acknowledged), in order."""
    got = []

    def more():
        while len(got) < n:
            m = ch.basic_get(queue, auto_ack=True)
            if m[0] is None:
                return False
            got.append(m)
        return True
    assert wait_for(more, timeout=timeout), f"{len(got)} of {n}"
    return got


def test_validation_errors_read_as_rabbitmq(api, name):
    base = {"src-uri": "amqp://", "src-queue": f"{name}-s", "dest-uri": "amqp://", "dest-queue": f"{name}-d"}
    cases = [
        # (RabbitMQ's API escapes < and > in reasons.)
        ({**base, "bogus": "x"}, 'Unrecognised terms [{&lt;&lt;"bogus"&gt;&gt;,&lt;&lt;"x"&gt;&gt;}] in ' + name),
        ({k: v for k, v in base.items() if k != "src-queue"}, "Must specify 'src-exchange' or 'src-queue'"),
        ({**base, "src-exchange": "amq.direct"}, "Cannot specify 'src-exchange' and 'src-queue'"),
        ({**base, "dest-exchange": "amq.direct"}, "Cannot specify 'dest-exchange' and 'dest-queue'"),
        ({k: v for k, v in base.items() if k != "dest-uri"}, f'Key "dest-uri" not found in {name}'),
        ({**base, "src-delete-after": "sometime"},
         'src-delete-after should be a number greater than or equal to 0, "never" or "queue-length", actually was &lt;&lt;"sometime"&gt;&gt;'),
        ({**base, "ack-mode": "no-ack", "src-delete-after": 5}, "Cannot specify 'no-ack' and numerical 'delete-after'"),
        ({**base, "src-uri": "http://example.com"}, "not a valid URI"),
    ]
    for value, text in cases:
        r = api.put(f"/parameters/shovel/%2F/{name}", {"value": value})
        assert r.status_code == 400, (value, r.text)
        assert r.json()["reason"].startswith("Validation failed\n\n"), r.text
        assert text in r.json()["reason"], (text, r.text)
    assert api.get(f"/parameters/shovel/%2F/{name}").status_code == 404
    r = api.put(f"/parameters/shovel/%2F/{name}", {})
    assert r.status_code == 400
    assert api.delete(f"/parameters/shovel/%2F/{name}").status_code == 404


def test_queue_to_exchange_shovel_runs_until_deleted(broker, conn, api, name):
    ch = conn.channel()
    ch.queue_declare(f"{name}-src", durable=True)
    ch.exchange_declare(f"{name}-x", "direct")
    ch.queue_declare(f"{name}-dst")
    ch.queue_bind(f"{name}-dst", f"{name}-x", "k")
    try:
        assert put_shovel(api, name, {
            "src-protocol": "amqp091", "src-uri": "amqp://", "src-queue": f"{name}-src",
            "dest-protocol": "amqp091", "dest-uri": "amqp://", "dest-exchange": f"{name}-x",
            "dest-exchange-key": "k",
        }).status_code == 201
        row = wait_state(api, name, "running")
        assert (row["vhost"], row["type"], row["src_queue"], row["dest_exchange"]) == ("/", "dynamic", f"{name}-src", f"{name}-x")
        assert row["src_uri"] == "amqp://" and row["dest_exchange_key"] == "k"
        got = api.json(f"/parameters/shovel/%2F/{name}")
        assert (got["component"], got["vhost"], got["name"]) == ("shovel", "/", name)
        assert got["value"]["dest-exchange-key"] == "k"
        assert any(p["name"] == name for p in api.json("/parameters/shovel"))
        assert any(s["name"] == name for s in api.json("/shovels/%2F"))
        for i in range(50):
            ch.basic_publish("", f"{name}-src", f"m{i}".encode())
        got = drain(ch, f"{name}-dst", 50)
        assert [m[2] for m in got] == [f"m{i}".encode() for i in range(50)]
        assert count(ch, f"{name}-src") == 0
        # Still running: later messages move too.
        ch.basic_publish("", f"{name}-src", b"later")
        assert drain(ch, f"{name}-dst", 1)[0][2] == b"later"
        assert shovel_row(api, name)["state"] == "running"
    finally:
        api.delete(f"/parameters/shovel/%2F/{name}")
    assert wait_for(lambda: gone(api, name), timeout=20)
    # Stopped: what arrives now stays.
    ch.basic_publish("", f"{name}-src", b"after-delete")
    assert wait_for(lambda: count(ch, f"{name}-src") == 1, timeout=10)
    for suffix in ("src", "dst"):
        ch.queue_delete(f"{name}-{suffix}")
    ch.exchange_delete(f"{name}-x")


def test_delete_after_queue_length_moves_the_backlog_and_removes_itself(broker, conn, api, name):
    ch = conn.channel()
    ch.queue_declare(f"{name}-src", durable=True)
    ch.confirm_delivery()
    for i in range(1000):
        ch.basic_publish("", f"{name}-src", f"{i}".encode(), pika.BasicProperties(delivery_mode=2))
    # The destination queue does not exist: the shovel declares it durable.
    put_shovel(api, name, {
        "src-uri": "amqp://", "src-queue": f"{name}-src", "dest-uri": "amqp://", "dest-queue": f"{name}-dst",
        "src-delete-after": "queue-length", "ack-mode": "on-confirm", "src-prefetch-count": 100,
    })
    assert wait_for(lambda: gone(api, name), timeout=60)
    assert count(ch, f"{name}-dst") == 1000
    assert count(ch, f"{name}-src") == 0
    got = drain(ch, f"{name}-dst", 1000)
    assert [int(m[2]) for m in got] == list(range(1000))
    assert ch.queue_declare(f"{name}-dst", durable=True, passive=True)
    ch.queue_delete(f"{name}-src")
    ch.queue_delete(f"{name}-dst")


def test_forward_and_timestamp_headers_and_publish_properties(broker, conn, api, name):
    ch = conn.channel()
    ch.queue_declare(f"{name}-src")
    ch.queue_declare(f"{name}-dst")
    ch.basic_publish("", f"{name}-src", b"x", pika.BasicProperties(headers={"mine": "kept"}, content_type="text/plain"))
    put_shovel(api, name, {
        "src-uri": "amqp://", "src-queue": f"{name}-src", "dest-uri": "amqp://", "dest-queue": f"{name}-dst",
        "src-delete-after": 1, "dest-add-forward-headers": True, "dest-add-timestamp-header": True,
        "dest-publish-properties": {"app_id": "shovelled", "delivery_mode": 2},
    })
    assert wait_for(lambda: gone(api, name), timeout=30)
    m, props, body = drain(ch, f"{name}-dst", 1)[0]
    assert body == b"x"
    assert props.headers["mine"] == "kept"
    assert props.app_id == "shovelled" and props.delivery_mode == 2 and props.content_type == "text/plain"
    hop = props.headers["x-shovelled"][0]
    assert hop["shovel-name"] == name and hop["shovel-vhost"] == "/" and hop["shovel-type"] == "dynamic"
    assert hop["src-queue"] == f"{name}-src" and hop["dest-queue"] == f"{name}-dst"
    assert hop["src-uri"] == "amqp://" and hop["dest-uri"] == "amqp://"
    assert isinstance(props.headers["x-shovelled-timestamp"], int) and props.headers["x-shovelled-timestamp"] > 1.7e9
    ch.queue_delete(f"{name}-src")
    ch.queue_delete(f"{name}-dst")


def test_restart_and_delete_through_the_shovels_api(broker, conn, api, name):
    ch = conn.channel()
    ch.queue_declare(f"{name}-src")
    put_shovel(api, name, {"src-uri": "amqp://", "src-queue": f"{name}-src", "dest-uri": "amqp://",
                           "dest-queue": f"{name}-dst"})
    try:
        wait_state(api, name, "running")
        assert api.delete(f"/shovels/vhost/%2F/{name}/restart").status_code == 204
        wait_state(api, name, "running")
        ch.basic_publish("", f"{name}-src", b"after-restart")
        assert drain(ch, f"{name}-dst", 1)[0][2] == b"after-restart"
        assert api.delete(f"/shovels/vhost/%2F/{name}-none/restart").status_code == 404
        assert api.delete(f"/shovels/vhost/%2F/{name}").status_code == 204
        assert wait_for(lambda: gone(api, name), timeout=20)
    finally:
        api.delete(f"/parameters/shovel/%2F/{name}")
    ch.queue_delete(f"{name}-src")
    ch.queue_delete(f"{name}-dst")


def test_ctl_sets_lists_and_clears_shovel_parameters(broker, conn, api, name):
    value = {"src-uri": "amqp://", "src-queue": f"{name}-src", "dest-uri": "amqp://", "dest-queue": f"{name}-dst"}
    broker.ctl("set_parameter", "shovel", name, json.dumps(value))
    try:
        wait_state(api, name, "running")
        listed = broker.ctl("list_parameters").stdout
        assert name in listed and "shovel" in listed
        assert name in broker.ctl("shovel_status").stdout
        bad = broker.ctl("set_parameter", "shovel", name + "-bad", json.dumps({**value, "bogus": 1}), check=False)
        assert bad.returncode == 69 and "Unrecognised terms" in bad.stdout + bad.stderr
    finally:
        broker.ctl("clear_parameter", "shovel", name)
    assert wait_for(lambda: gone(api, name), timeout=20)
    r = broker.ctl("clear_parameter", "shovel", name, check=False)
    assert r.returncode == 69 and "Parameter does not exist" in r.stdout + r.stderr
    ch = conn.channel()
    ch.queue_delete(f"{name}-src")
    ch.queue_delete(f"{name}-dst")


def test_a_local_uri_needs_access_to_its_vhost(broker, api, name):
    user, password = f"{name}-pm", "pw"
    assert api.put(f"/users/{user}", {"password": password, "tags": "policymaker"}).status_code in (201, 204)
    assert api.put(f"/vhosts/{name}").status_code in (201, 204)
    assert api.put(f"/permissions/%2F/{user}", {"configure": ".*", "write": ".*", "read": ".*"}).status_code in (201, 204)
    try:
        mine = Api(broker.http, auth=(user, password))
        r = mine.put(f"/parameters/shovel/%2F/{name}", {"value": {
            "src-uri": "amqp://", "src-queue": "a", "dest-uri": f"amqp:///{name}", "dest-queue": "b"}})
        assert r.status_code == 400, r.text
        assert f'user "{user}" may not connect to vhost "{name}"' in r.json()["reason"]
        # Without policymaker, no parameters at all.
        assert api.put(f"/users/{user}", {"password": password, "tags": ""}).status_code in (201, 204)
        assert mine.get("/parameters/shovel").status_code == 401
    finally:
        api.delete(f"/parameters/shovel/%2F/{name}")
        api.delete(f"/users/{user}")
        api.delete(f"/vhosts/{name}")


def test_definitions_carry_shovels_to_a_new_broker(broker, api, name):
    if not broker.is_warren:
        pytest.skip("starts Warrens of its own")
    value = {"src-uri": "amqp://", "src-queue": f"{name}-src", "dest-uri": "amqp://", "dest-queue": f"{name}-dst"}
    with own_warren() as a:
        a_api = Api(a.http)
        put_shovel(a_api, name, value)
        defs = a_api.json("/definitions")
    assert {"vhost": "/", "component": "shovel", "name": name, "value": value} in defs["parameters"]
    with own_warren() as b:
        b_api = Api(b.http)
        assert b_api.post("/definitions", defs).status_code in (200, 201, 204)
        wait_state(b_api, name, "running")
        c = pika.BlockingConnection(b.params())
        ch = c.channel()
        ch.queue_declare(f"{name}-src", durable=True, passive=True)
        ch.basic_publish("", f"{name}-src", b"moved")
        assert drain(ch, f"{name}-dst", 1)[0][2] == b"moved"
        c.close()


# --- With a real RabbitMQ on the other side (Warren only) -------------------



def publish_confirmed(params, queue, n, size=16):
    c = pika.BlockingConnection(params)
    ch = c.channel()
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(n):
        ch.basic_publish("", queue, str(i).encode().ljust(size, b"."), props)
    c.close()


def test_moves_a_rabbitmq_backlog_in_order_and_removes_itself(broker, conn, api, rabbit, name):
    publish_confirmed(rabbit.params(), f"{name}-src", 5000)
    put_shovel(api, name, {
        "src-protocol": "amqp091", "src-uri": rabbit.uri(), "src-queue": f"{name}-src",
        "dest-protocol": "amqp091", "dest-uri": "amqp://", "dest-queue": f"{name}-dst",
        "ack-mode": "on-confirm", "src-delete-after": "queue-length",
    })
    assert wait_for(lambda: gone(api, name), timeout=120)
    ch = conn.channel()
    assert count(ch, f"{name}-dst") == 5000
    got = drain(ch, f"{name}-dst", 5000)
    assert [int(m[2].rstrip(b".")) for m in got] == list(range(5000))
    rc = pika.BlockingConnection(rabbit.params())
    assert rc.channel().queue_declare(f"{name}-src", durable=True, passive=True).method.message_count == 0
    rc.close()
    ch.queue_delete(f"{name}-dst")


def test_status_shows_credentials_removed_and_why_it_failed(broker, api, rabbit, name):
    # A port nothing listens on: terminated, with the reason, retried.
    from conftest import free_port
    put_shovel(api, name, {
        "src-uri": f"amqp://guest:secret@127.0.0.1:{free_port()}", "src-queue": "q",
        "dest-uri": "amqp://", "dest-queue": f"{name}-dst", "reconnect-delay": 1,
    })
    try:
        row = wait_state(api, name, "terminated")
        assert "secret" not in json.dumps(row) and row["src_uri"].startswith("amqp://127.0.0.1:")
        assert row["reason"]
        # Pointed at the RabbitMQ node, the same shovel runs.
        put_shovel(api, name, {"src-uri": [f"amqp://127.0.0.1:{free_port()}", rabbit.uri()], "src-queue": f"{name}-q",
                               "dest-uri": "amqp://", "dest-queue": f"{name}-dst"})
        wait_state(api, name, "running")
    finally:
        api.delete(f"/parameters/shovel/%2F/{name}")


@pytest.mark.parametrize("victim", ["rabbitmq", "warren"])
def test_kill_9_of_either_side_loses_no_confirmed_message(broker, rabbit, name, victim):
    """RabbitMQ → Warren, on-confirm: kill -9 of one side mid-shovel, start
    it again on its data; every message arrives at least once."""
    import os
    # The figure is 100,000 (2 × ~90 s here); the default suite
    # moves fewer, to stay within its time.
    total = int(os.environ.get("WARREN_SHOVEL_KILL_MESSAGES", "5000"))
    publish_confirmed(rabbit.params(), f"{name}-src", total)
    with own_warren() as w:
        w_api = Api(w.http)
        c = pika.BlockingConnection(w.params())
        c.channel().queue_declare(f"{name}-dst", durable=True)
        c.close()
        put_shovel(w_api, name, {
            "src-uri": rabbit.uri(), "src-queue": f"{name}-src", "dest-uri": "amqp://",
            "dest-queue": f"{name}-dst", "ack-mode": "on-confirm", "reconnect-delay": 1,
        })
        c = pika.BlockingConnection(w.params())
        ch = c.channel()
        assert wait_for(lambda: ch.queue_declare(f"{name}-dst", durable=True, passive=True).method.message_count
                        >= total // 4, timeout=120)
        c.close()
        if victim == "rabbitmq":
            rabbit.kill9()
            rabbit.start()
            w2 = w
        else:
            w.proc.kill()
            w.proc.wait(10)
        if victim == "warren":
            ctx = own_warren(data=w.data)
        else:
            import contextlib
            ctx = contextlib.nullcontext(w)
        with ctx as w2:
            c = pika.BlockingConnection(w2.params())
            ch = c.channel()
            seen = set()

            def all_there():
                while True:
                    m = ch.basic_get(f"{name}-dst", auto_ack=True)
                    if m[0] is None:
                        return len(seen) == total
                    seen.add(int(m[2].rstrip(b".")))
            assert wait_for(all_there, timeout=300, interval=0.2), f"{len(seen)} of {total}"
            Api(w2.http).delete(f"/parameters/shovel/%2F/{name}")
            c.close()
    rc = pika.BlockingConnection(rabbit.params())
    rc.channel().queue_delete(f"{name}-src")
    rc.close()


# --- The internal listener, as a stranger would try it (Warren only) ---------

def listening_ports(pid):
    from conftest import listening
    return {port for _, port in listening(pid)}


def test_only_the_links_can_log_in_to_the_internal_listener(broker, api, name):
    if not broker.is_warren:
        pytest.skip("Warren's internal listener")
    import urllib.parse
    known = {broker.port, urllib.parse.urlparse(broker.http).port, urllib.parse.urlparse(broker.prometheus).port}
    internal = listening_ports(broker.proc.pid) - known
    assert len(internal) == 1, (internal, known)
    port = internal.pop()
    for user, password in [("guest", "guest"), ("warren-internal", "guest"), ("warren-internal", "0" * 64)]:
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.ConnectionParameters(
                "127.0.0.1", port, credentials=pika.PlainCredentials(user, password), connection_attempts=1))
    # The main listener knows no such user, and none can be made or imported.
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", broker.port, credentials=pika.PlainCredentials("warren-internal", "x")))
    r = api.put("/users/warren-internal", {"password": "x", "tags": "administrator"})
    assert r.status_code == 400 and "reserved" in r.text
    r = api.post("/definitions", {"users": [{"name": "warren-internal", "password_hash": "", "tags": ""}]})
    assert r.status_code == 400 and "reserved" in r.text
    assert broker.ctl("add_user", "warren-internal", "x", check=False).returncode != 0
    # The broker goes on serving.
    c = pika.BlockingConnection(broker.params())
    c.close()


def test_amqps_destination_with_a_client_certificate(broker, conn, api, name, tmp_path):
    """A shovel to a TLS listener that requires a client certificate, with
    RabbitMQ's URI query parameters (cacertfile, certfile, keyfile)."""
    if not broker.is_warren:
        pytest.skip("starts a Warren of its own")
    from conftest import free_port
    from pki import Pki
    pki = Pki(tmp_path)
    server_cert, server_key = pki.leaf("server", dns=["localhost"], ips=["127.0.0.1"])
    client_cert, client_key = pki.leaf("client", dns=["shovel"])
    port = free_port()
    extra = ["--amqps-listen", f"127.0.0.1:{port}", "--tls-cert", str(server_cert), "--tls-key", str(server_key),
             "--tls-ca", str(pki.ca), "--tls-verify-peer"]
    with own_warren(extra=extra) as far:
        ch = conn.channel()
        ch.queue_declare(f"{name}-src")
        for i in range(10):
            ch.basic_publish("", f"{name}-src", f"{i}".encode())
        dest = (f"amqps://guest:guest@localhost:{port}/%2F?cacertfile={pki.ca}&certfile={client_cert}"
                f"&keyfile={client_key}&verify=verify_peer&server_name_indication=localhost")
        put_shovel(api, name, {"src-uri": "amqp://", "src-queue": f"{name}-src", "dest-uri": dest,
                               "dest-queue": f"{name}-dst", "src-delete-after": "queue-length"})
        assert wait_for(lambda: gone(api, name), timeout=30), shovel_row(api, name)
        c = pika.BlockingConnection(far.params())
        got = drain(c.channel(), f"{name}-dst", 10)
        assert [m[2] for m in got] == [f"{i}".encode() for i in range(10)]
        c.close()
        # Without the client certificate the far side refuses: terminated, with the reason.
        put_shovel(api, name, {"src-uri": "amqp://", "src-queue": f"{name}-src", "dest-uri":
                               f"amqps://guest:guest@localhost:{port}/%2F?cacertfile={pki.ca}",
                               "dest-queue": f"{name}-dst", "reconnect-delay": 1})
        try:
            row = wait_state(api, name, "terminated")
            assert row["reason"]
        finally:
            api.delete(f"/parameters/shovel/%2F/{name}")
    ch.queue_delete(f"{name}-src")
