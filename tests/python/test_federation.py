"""Federation as RabbitMQ's federation plugin configures it: upstreams
(`federation-upstream`), upstream sets, and policies selecting the
exchanges and queues to federate; `/api/federation-links`.

The parameter and policy checks run against RabbitMQ too (WARREN_TEST_ADDR,
with rabbitmq_federation and rabbitmq_federation_management enabled). The
links themselves are tested with a private RabbitMQ node as the upstream
(tests/python/rabbitnode.py), against Warren only."""
import time

import pika
import pytest

from conftest import count, pump_until, wait_for
from test_management import Api, q


@pytest.fixture
def api(broker):
    return Api(broker.http)




def links(api, **match):
    return [l for l in api.json("/federation-links") if all(l.get(k) == v for k, v in match.items())]


def test_upstream_and_policy_validation_read_as_rabbitmq(api, name):
    r = api.put(f"/parameters/federation-upstream/%2F/{name}", {"value": {"uri": "amqp://h", "bogus": 1}})
    assert r.status_code == 400 and r.json()["reason"].startswith("Validation failed\n\n")
    assert "Unrecognised terms [{&lt;&lt;\"bogus\"&gt;&gt;,1}] in " + name in r.json()["reason"], r.text
    r = api.put(f"/parameters/federation-upstream/%2F/{name}", {"value": {"exchange": "x"}})
    assert r.status_code == 400 and f'Key "uri" not found in {name}' in r.json()["reason"], r.text
    r = api.put(f"/parameters/federation-upstream/%2F/{name}", {"value": {"uri": "amqp://h", "max-hops": "two"}})
    assert r.status_code == 400 and "max-hops should be a number" in r.json()["reason"], r.text
    r = api.put(f"/parameters/federation-upstream-set/%2F/{name}", {"value": [{"exchange": "x"}]})
    assert r.status_code == 400 and f'Key "upstream" not found in {name}' in r.json()["reason"], r.text
    r = api.put(f"/policies/%2F/{name}", {"pattern": "^x$", "definition": {
        "federation-upstream": "a", "federation-upstream-set": "all"}})
    assert r.status_code == 400, r.text
    assert "cannot specify federation-upstream, federation-upstream-set or federation-upstream-pattern together" \
        in r.json()["reason"]
    # Accepted, listed, deleted.
    value = {"uri": "amqp://localhost:1", "max-hops": 2, "ack-mode": "on-confirm", "expires": 60000}
    assert api.put(f"/parameters/federation-upstream/%2F/{name}", {"value": value}).status_code == 201
    assert api.put(f"/parameters/federation-upstream/%2F/{name}", {"value": value}).status_code == 204
    got = api.json(f"/parameters/federation-upstream/%2F/{name}")
    assert (got["component"], got["name"], got["value"]) == ("federation-upstream", name, value)
    assert api.put(f"/parameters/federation-upstream-set/%2F/{name}", {"value": [{"upstream": name}]}).status_code == 201
    assert api.delete(f"/parameters/federation-upstream-set/%2F/{name}").status_code == 204
    assert api.delete(f"/parameters/federation-upstream/%2F/{name}").status_code == 204
    assert api.get(f"/parameters/federation-upstream/%2F/{name}").status_code == 404
    assert isinstance(api.json("/federation-links"), list)
    assert isinstance(api.json("/federation-links/%2F"), list)


def test_exchange_federation_from_rabbitmq(broker, conn, api, rabbit, name):
    rc = pika.BlockingConnection(rabbit.params())
    rch = rc.channel()
    rch.exchange_declare(f"{name}-x", "direct", durable=True)
    ch = conn.channel()
    ch.exchange_declare(f"{name}-x", "direct", durable=True)
    ch.queue_declare(f"{name}-q")
    ch.queue_bind(f"{name}-q", f"{name}-x", "k")
    assert api.put(f"/parameters/federation-upstream/%2F/{name}-up",
                   {"value": {"uri": rabbit.uri(), "max-hops": 1}}).status_code == 201
    assert api.put(f"/policies/%2F/{name}", {"pattern": f"^{q(name)}-x$", "apply-to": "exchanges",
                                             "definition": {"federation-upstream": f"{name}-up"}}).status_code == 201
    try:
        assert wait_for(lambda: [l["status"] for l in links(api, exchange=f"{name}-x")] == ["running"], timeout=30), \
            api.json("/federation-links")
        link = links(api, exchange=f"{name}-x")[0]
        assert (link["type"], link["upstream"], link["upstream_exchange"], link["vhost"]) == \
            ("exchange", f"{name}-up", f"{name}-x", "/")
        assert "guest:guest" not in link["uri"]
        # Only what the local bindings ask for crosses: "other" is not bound upstream.
        rch.basic_publish(f"{name}-x", "other", b"not-wanted")
        rch.basic_publish(f"{name}-x", "k", b"hello", pika.BasicProperties(headers={"h": 1}))
        got = []
        assert wait_for(lambda: (m := ch.basic_get(f"{name}-q", auto_ack=True))[0] is not None and not got.append(m),
                        timeout=20)
        method, props, body = got[0]
        assert body == b"hello" and props.headers["h"] == 1
        hop = props.headers["x-received-from"][0]
        assert hop["exchange"] == f"{name}-x" and hop["redelivered"] is False and "guest:guest" not in hop["uri"]
        assert count(ch, f"{name}-q") == 0
        # Restarted through RabbitMQ's path, it runs again.
        r = api.delete(f"/federation-links/vhost/%2F/{q(link['id'])}/{q(link['node'])}/restart")
        assert r.status_code == 204, r.text
        assert wait_for(lambda: [l["status"] for l in links(api, exchange=f"{name}-x")] == ["running"], timeout=30)
        assert api.delete(f"/federation-links/vhost/%2F/nope/{q(link['node'])}/restart").status_code == 404
        # A new local binding is made upstream too.
        ch.queue_bind(f"{name}-q", f"{name}-x", "k2")

        def bound_upstream():
            out = rabbit.ctl("list_bindings", "source_name", "routing_key").stdout
            return any(line.split("\t") == [f"{name}-x", "k2"] for line in out.splitlines())
        assert wait_for(bound_upstream, timeout=20)
        rch.basic_publish(f"{name}-x", "k2", b"second")
        assert wait_for(lambda: count(ch, f"{name}-q") == 1, timeout=20)
    finally:
        api.delete(f"/policies/%2F/{name}")
        api.delete(f"/parameters/federation-upstream/%2F/{name}-up")
    assert wait_for(lambda: not links(api, exchange=f"{name}-x"), timeout=20)
    ch.queue_delete(f"{name}-q")
    ch.exchange_delete(f"{name}-x")
    rch.exchange_delete(f"{name}-x")
    rc.close()


def test_queue_federation_moves_only_while_there_are_consumers(broker, conn, api, rabbit, name):
    rc = pika.BlockingConnection(rabbit.params())
    rch = rc.channel()
    rch.queue_declare(f"{name}-q", durable=True)
    rch.confirm_delivery()
    for i in range(20):
        rch.basic_publish("", f"{name}-q", f"m{i}".encode())
    ch = conn.channel()
    ch.queue_declare(f"{name}-q")
    assert api.put(f"/parameters/federation-upstream/%2F/{name}-up", {"value": {"uri": rabbit.uri()}}).status_code == 201
    assert api.put(f"/parameters/federation-upstream-set/%2F/{name}-set",
                   {"value": [{"upstream": f"{name}-up", "prefetch-count": 5}]}).status_code == 201
    assert api.put(f"/policies/%2F/{name}", {"pattern": f"^{q(name)}-q$", "apply-to": "queues",
                                             "definition": {"federation-upstream-set": f"{name}-set"}}).status_code == 201
    try:
        assert wait_for(lambda: [l["status"] for l in links(api, queue=f"{name}-q")] == ["running"], timeout=30), \
            api.json("/federation-links")
        link = links(api, queue=f"{name}-q")[0]
        assert (link["type"], link["upstream_queue"]) == ("queue", f"{name}-q")
        # No local consumer: nothing moves (watched for a second).
        deadline = time.time() + 1.0
        while time.time() < deadline:
            assert count(ch, f"{name}-q") == 0
            assert rch.queue_declare(f"{name}-q", durable=True, passive=True).method.message_count == 20
            time.sleep(0.1)
        got = []
        ch.basic_consume(f"{name}-q", lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
        assert pump_until(conn, lambda: len(got) == 20, timeout=30), got
        assert got == [f"m{i}".encode() for i in range(20)]
        assert wait_for(lambda: rch.queue_declare(f"{name}-q", durable=True, passive=True).method.message_count == 0)
    finally:
        api.delete(f"/policies/%2F/{name}")
        api.delete(f"/parameters/federation-upstream-set/%2F/{name}-set")
        api.delete(f"/parameters/federation-upstream/%2F/{name}-up")
    ch.close()
    conn.channel().queue_delete(f"{name}-q")
    rch.queue_delete(f"{name}-q")
    rc.close()
