"""The management HTTP API, as RabbitMQ's management plugin serves it:
paths, JSON fields, status codes and error bodies, driven with requests,
rabbitmqadmin and Flower.

Against RabbitMQ (WARREN_TEST_ADDR), the API is at WARREN_TEST_HTTP
(default http://HOST:15672; enable it with `rabbitmq-plugins enable
rabbitmq_management`). RabbitMQ refreshes its statistics every 5 s, so
every check of a figure polls until it holds or a deadline passes.
"""
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid

import pika
import pytest
import requests

from conftest import ROOT, free_port, wait_for

GUEST = ("guest", "guest")
HERE = os.path.dirname(os.path.abspath(__file__))


def q(s):
    return urllib.parse.quote(s, safe="")


class Api:
    def __init__(self, base, auth=GUEST):
        self.base = base.rstrip("/") + "/api"
        self.auth = auth

    def req(self, method, path, **kw):
        kw.setdefault("auth", self.auth)
        kw.setdefault("timeout", 30)
        return requests.request(method, self.base + path, **kw)

    def get(self, path, **kw):
        return self.req("GET", path, **kw)

    def json(self, path, **kw):
        r = self.get(path, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def put(self, path, body=None, **kw):
        return self.req("PUT", path, json=body if body is not None else {}, **kw)

    def post(self, path, body=None, **kw):
        return self.req("POST", path, json=body if body is not None else {}, **kw)

    def delete(self, path, **kw):
        return self.req("DELETE", path, **kw)

    def until(self, path, pred, timeout=20.0):
        """Polls `path` until `pred(json)` holds; returns the last JSON."""
        last = {}

        def check():
            nonlocal last
            r = self.get(path)
            if r.status_code != 200:
                return False
            last = r.json()
            return pred(last)

        assert wait_for(check, timeout=timeout, interval=0.25), f"{path}: condition never held; last: {last}"
        return last


@pytest.fixture
def api(broker):
    return Api(broker.http)


def test_login_and_user_tags(broker, api, name):
    r = requests.get(api.base + "/overview", timeout=10)
    assert r.status_code == 401
    assert "Basic" in r.headers.get("www-authenticate", "")
    r = api.get("/overview", auth=("guest", "wrong"))
    assert r.status_code == 401
    assert r.json() == {"error": "not_authorized", "reason": "Login failed"}
    plain, mgmt, mon = f"{name}-plain", f"{name}-mgmt", f"{name}-mon"
    for u in (plain, mgmt, mon):
        broker.ctl("add_user", u, "pw")
    try:
        broker.ctl("set_user_tags", mgmt, "management")
        broker.ctl("set_user_tags", mon, "monitoring")
        r = api.get("/overview", auth=(plain, "pw"))
        assert (r.status_code, r.json()) == (401, {"error": "not_authorised", "reason": "Not management user"})
        assert api.json("/whoami", auth=(mgmt, "pw")) == {"name": mgmt, "tags": ["management"]}
        r = api.get("/users", auth=(mgmt, "pw"))
        assert (r.status_code, r.json()["reason"]) == (401, "Not administrator user")
        r = api.get("/nodes", auth=(mgmt, "pw"))
        assert (r.status_code, r.json()["reason"]) == (401, "Not monitor user")
        # Without permissions in any vhost, a management user sees no queues.
        assert api.json("/queues", auth=(mgmt, "pw")) == []
        assert len(api.json("/nodes", auth=(mon, "pw"))) == 1
        r = api.get("/users", auth=(mon, "pw"))
        assert r.status_code == 401
    finally:
        for u in (plain, mgmt, mon):
            broker.ctl("delete_user", u)


def test_queue_declare_get_purge_delete(conn, api, name):
    path = f"/queues/%2F/{name}"
    assert api.put(path, {"durable": False, "arguments": {"x-max-length": 100}}).status_code == 201
    assert api.put(path, {"durable": False, "arguments": {"x-max-length": 100}}).status_code == 204
    r = api.put(path, {"durable": True})
    assert r.status_code == 400 and "inequivalent arg 'durable'" in r.json()["reason"], r.text
    info = api.until(path, lambda j: "state" in j)
    assert (info["name"], info["vhost"], info["durable"], info["auto_delete"], info["exclusive"]) == (
        name, "/", False, False, False)
    assert info["arguments"] == {"x-max-length": 100}
    assert info["type"] == "classic" and info["state"] == "running"
    ch = conn.channel()
    for i in range(5):
        ch.basic_publish("", name, f"m{i}".encode(), pika.BasicProperties(content_type="text/plain"))
    api.until(path, lambda j: j.get("messages") == 5 and j.get("messages_ready") == 5)
    got = api.post(path + "/get", {"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"}).json()
    assert [m["payload"] for m in got] == ["m0", "m1"]
    assert got[0]["payload_encoding"] == "string" and got[0]["routing_key"] == name
    assert got[0]["properties"]["content_type"] == "text/plain"
    assert got[0]["message_count"] == 4 and got[1]["message_count"] == 3
    # Requeued: the first comes back flagged redelivered.
    got = api.post(path + "/get", {"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"}).json()
    assert got[0]["payload_encoding"] == "base64" and got[0]["payload"] == "bTA=" and got[0]["redelivered"]
    api.until(path, lambda j: j.get("messages") == 4)
    assert api.delete(path + "/contents").status_code == 204
    api.until(path, lambda j: j.get("messages") == 0)
    r = api.delete(path + "?if-empty=true")
    assert r.status_code == 204
    r = api.get(path)
    assert (r.status_code, r.json()) == (404, {"error": "Object Not Found", "reason": "Not Found"})
    assert api.delete(path).status_code == 404


def test_exchanges_bindings_publish(api, name):
    x, qn = f"{name}-x", f"{name}-q"
    assert api.put(f"/exchanges/%2F/{x}", {"type": "topic", "durable": False}).status_code == 201
    r = api.put(f"/exchanges/%2F/{x}", {"type": "direct", "durable": False})
    assert r.status_code == 400 and "inequivalent arg 'type'" in r.json()["reason"], r.text
    assert api.put(f"/queues/%2F/{qn}", {"durable": False}).status_code == 201
    try:
        r = api.post(f"/bindings/%2F/e/{x}/q/{qn}", {"routing_key": "a.#", "arguments": {}})
        assert r.status_code == 201
        binds = api.json(f"/bindings/%2F/e/{x}/q/{qn}")
        assert [(b["source"], b["destination"], b["routing_key"], b["destination_type"]) for b in binds] == [
            (x, qn, "a.#", "queue")]
        assert [b["destination"] for b in api.json(f"/exchanges/%2F/{x}/bindings/source")] == [qn]
        assert {b["source"] for b in api.json(f"/queues/%2F/{qn}/bindings")} == {"", x}
        pub = {"properties": {"delivery_mode": 1, "headers": {"h": 1}}, "routing_key": "a.b",
               "payload": "hello", "payload_encoding": "string"}
        assert api.post(f"/exchanges/%2F/{x}/publish", pub).json() == {"routed": True}
        assert api.post(f"/exchanges/%2F/{x}/publish", {**pub, "routing_key": "b"}).json() == {"routed": False}
        got = api.post(f"/queues/%2F/{qn}/get", {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"}).json()
        assert [(m["payload"], m["exchange"], m["routing_key"], m["properties"].get("headers")) for m in got] == [
            ("hello", x, "a.b", {"h": 1})]
        props = binds[0]["properties_key"]
        assert api.get(f"/bindings/%2F/e/{x}/q/{qn}/{q(props)}").status_code == 200
        assert api.delete(f"/bindings/%2F/e/{x}/q/{qn}/{q(props)}").status_code == 204
        assert api.json(f"/bindings/%2F/e/{x}/q/{qn}") == []
        assert api.post(f"/exchanges/%2F/{x}/publish", pub).json() == {"routed": False}
        assert api.get(f"/exchanges/%2F/{x}").json()["type"] == "topic"
        assert api.get("/exchanges/%2F/amq.default").json()["name"] == ""
    finally:
        api.delete(f"/queues/%2F/{qn}")
        api.delete(f"/exchanges/%2F/{x}")
    assert api.get(f"/exchanges/%2F/{x}").status_code == 404


def _pub(routing_key, payload="x", **props):
    return {"properties": props, "routing_key": routing_key, "payload": payload, "payload_encoding": "string"}


def test_http_publish_is_refused_as_an_amqp_publish(api, name):
    """The API's publish takes the AMQP path: what basic.publish refuses, it
    refuses (400 with the channel's reply code and text), and enqueues nothing."""
    qn, internal = f"{name}-q", f"{name}-internal"
    assert api.put(f"/queues/%2F/{qn}", {"durable": False}).status_code == 201
    assert api.put(f"/exchanges/%2F/{internal}", {"type": "direct", "durable": False, "internal": True}).status_code == 201
    lim = f"{name}-lim"
    args = {"x-max-length": 1, "x-overflow": "reject-publish"}
    assert api.put(f"/queues/%2F/{lim}", {"durable": False, "arguments": args}).status_code == 201
    try:
        def refused(path, body, reason):
            r = api.post(path, body)
            assert (r.status_code, r.json()) == (400, {"error": "bad_request", "reason": reason}), r.text

        refused("/exchanges/%2F/amq.default/publish", _pub(qn, user_id="somebody-else"),
                "406 PRECONDITION_FAILED - user_id property set to 'somebody-else' but authenticated user was 'guest'")
        refused(f"/exchanges/%2F/{internal}/publish", _pub(qn),
                f"403 ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'")
        refused(f"/exchanges/%2F/{name}-missing/publish", _pub(qn),
                f"404 NOT_FOUND - no exchange '{name}-missing' in vhost '/'")
        ok = api.post("/exchanges/%2F/amq.default/publish", _pub(qn, "mine", user_id="guest"))
        assert (ok.status_code, ok.json()) == (200, {"routed": True})
        assert api.post("/exchanges/%2F/amq.default/publish", _pub(lim, "first")).json() == {"routed": True}
        refused("/exchanges/%2F/amq.default/publish", _pub(lim, "second"),
                "rejected Unable to publish message. Check queue limits.")
        got = api.post(f"/queues/%2F/{qn}/get", {"count": 10, "ackmode": "ack_requeue_false", "encoding": "auto"})
        assert [(m["payload"], m["properties"]) for m in got.json()] == [("mine", {"user_id": "guest"})]
        got = api.post(f"/queues/%2F/{lim}/get", {"count": 10, "ackmode": "ack_requeue_false", "encoding": "auto"})
        assert [m["payload"] for m in got.json()] == ["first"]
    finally:
        for path in (f"/queues/%2F/{qn}", f"/queues/%2F/{lim}", f"/exchanges/%2F/{internal}"):
            api.delete(path)


def test_http_publish_and_get_check_permissions_as_amqp(broker, api, name):
    """Write permission on the exchange and topic permissions on the routing
    key for publish, read permission on the queue for get, as over AMQP."""
    user, qn = f"{name}-u", f"{name}-q"
    broker.ctl("add_user", user, "pw")
    try:
        broker.ctl("set_user_tags", user, "management")
        broker.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        broker.ctl("set_topic_permissions", "-p", "/", user, "amq.topic", "^a\\.", ".*")
        as_user = Api(api.base[: -len("/api")], auth=(user, "pw"))
        assert api.put(f"/queues/%2F/{qn}", {"durable": False}).status_code == 201
        assert api.post(f"/bindings/%2F/e/amq.topic/q/{qn}", {"routing_key": "#"}).status_code == 201
        r = as_user.post("/exchanges/%2F/amq.topic/publish", _pub("b.c"))
        assert (r.status_code, r.json()["reason"]) == (
            400, f"403 ACCESS_REFUSED - access to topic 'b.c' in exchange 'amq.topic' in vhost '/' refused for user '{user}'")
        r = as_user.post("/exchanges/%2F/amq.topic/publish", _pub("a.c", "allowed"))
        assert (r.status_code, r.json()) == (200, {"routed": True})
        broker.ctl("set_permissions", "-p", "/", user, ".*", "^$", "^$")
        r = as_user.post("/exchanges/%2F/amq.topic/publish", _pub("a.c"))
        assert (r.status_code, r.json()["reason"]) == (
            400, f"403 ACCESS_REFUSED - access to exchange 'amq.topic' in vhost '/' refused for user '{user}'")
        r = as_user.post(f"/queues/%2F/{qn}/get", {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
        assert (r.status_code, r.json()) == (401, {
            "error": "not_authorised",
            "reason": f"ACCESS_REFUSED - access to queue '{qn}' in vhost '/' refused for user '{user}'"})
        r = api.post(f"/queues/%2F/{name}-missing/get", {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
        assert (r.status_code, r.json()) == (404, {
            "error": "not_found", "reason": f"NOT_FOUND - no queue '{name}-missing' in vhost '/'"})
        got = api.post(f"/queues/%2F/{qn}/get", {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})
        assert [m["payload"] for m in got.json()] == ["allowed"]
    finally:
        api.delete(f"/queues/%2F/{qn}")
        broker.ctl("delete_user", user)


def test_http_publish_and_get_are_counted_everywhere(broker, api, name):
    """20 publishes and 5 gets through the API show in the overview, the
    vhost, the exchange and the queue, as an AMQP client's would."""
    vh, x, qn = f"{name}-vh", f"{name}-x", f"{name}-q"
    assert api.put(f"/vhosts/{vh}").status_code == 201
    try:
        broker.ctl("set_permissions", "-p", vh, "guest", ".*", ".*", ".*")
        before = api.json("/overview").get("message_stats", {})
        assert api.put(f"/exchanges/{vh}/{x}", {"type": "direct", "durable": False}).status_code == 201
        assert api.put(f"/queues/{vh}/{qn}", {"durable": False}).status_code == 201
        assert api.post(f"/bindings/{vh}/e/{x}/q/{qn}", {"routing_key": "k"}).status_code == 201
        for i in range(20):
            assert api.post(f"/exchanges/{vh}/{x}/publish", _pub("k", str(i))).json() == {"routed": True}
        got = api.post(f"/queues/{vh}/{qn}/get", {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})
        assert [m["payload"] for m in got.json()] == [str(i) for i in range(5)]

        def stat(j, key):
            return j.get("message_stats", {}).get(key, 0)

        if broker.is_warren:  # RabbitMQ (rates_mode basic) keeps no per-queue stats of a direct channel
            api.until(f"/queues/{vh}/{qn}", lambda j: stat(j, "publish") == 20 and stat(j, "deliver_get") == 5)
        api.until(f"/exchanges/{vh}/{x}", lambda j: stat(j, "publish_in") == 20 and stat(j, "publish_out") == 20)
        api.until(f"/vhosts/{vh}", lambda j: stat(j, "publish") == 20 and stat(j, "get_no_ack") == 5
                  and stat(j, "deliver_get") == 5)
        api.until("/overview", lambda j: stat(j, "publish") >= before.get("publish", 0) + 20
                  and stat(j, "deliver_get") >= before.get("deliver_get", 0) + 5)
    finally:
        api.delete(f"/vhosts/{vh}")


def test_http_publish_waits_out_a_resource_alarm(broker, api, name):
    """While a resource alarm blocks publishers, the API's publish waits as a
    blocked AMQP publisher does, and goes through once the alarm clears."""
    if not broker.is_warren:
        pytest.skip("RabbitMQ's API publishes over a direct connection, which alarms do not block")
    import threading

    qn = f"{name}-q"
    assert api.put(f"/queues/%2F/{qn}", {"durable": False}).status_code == 201
    answer = {}
    try:
        broker.ctl("set_disk_free_limit", "1000000GB")
        api.until("/nodes", lambda js: js[0].get("disk_free_alarm") is True)
        t = threading.Thread(target=lambda: answer.update(
            r=api.post("/exchanges/%2F/amq.default/publish", _pub(qn, "held"))))
        t.start()
        t.join(1.0)
        assert t.is_alive() and not answer, "published through an alarm"
        broker.ctl("set_disk_free_limit", "50MB")
        t.join(15)
        assert (answer["r"].status_code, answer["r"].json()) == (200, {"routed": True})
    finally:
        broker.ctl("set_disk_free_limit", "50MB")
        api.delete(f"/queues/%2F/{qn}")


def test_connections_channels_consumers_and_close(broker, api, name):
    c = pika.BlockingConnection(broker.params(client_properties={"connection_name": name}))
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_qos(prefetch_count=7)
    ch.queue_declare(name, exclusive=True)
    tag = f"{name}-ctag"
    ch.basic_consume(name, lambda *a: None, consumer_tag=tag)

    def ours(conns):
        return [x for x in conns if x.get("client_properties", {}).get("connection_name") == name]

    conns = api.until("/connections", lambda js: len(ours(js)) == 1)
    mine = ours(conns)[0]
    assert mine["user"] == "guest" and mine["vhost"] == "/" and mine["protocol"] == "AMQP 0-9-1"
    assert mine["client_properties"]["product"] == "Pika Python Client Library"
    cname = mine["name"]
    assert api.json(f"/connections/{q(cname)}")["name"] == cname
    chans = api.until(f"/connections/{q(cname)}/channels", lambda js: len(js) == 1 and js[0].get("consumer_count") == 1)
    assert chans[0]["confirm"] is True and chans[0]["prefetch_count"] == 7 and chans[0]["number"] == 1
    assert chans[0]["connection_details"]["name"] == cname
    consumers = api.until("/consumers/%2F", lambda js: any(x["consumer_tag"] == tag for x in js))
    mine = next(x for x in consumers if x["consumer_tag"] == tag)
    assert mine["queue"] == {"name": name, "vhost": "/"} and mine["ack_required"] is True
    assert mine["channel_details"]["connection_name"] == cname
    assert api.json(f"/queues/%2F/{name}")["exclusive"] is True
    r = api.delete(f"/connections/{q(cname)}", headers={"X-Reason": "maintenance window"})
    assert r.status_code == 204
    with pytest.raises(pika.exceptions.ConnectionClosed) as e:
        deadline = time.time() + 10
        while time.time() < deadline:
            c.process_data_events(time_limit=0.2)
    assert e.value.reply_code == 320
    assert e.value.reply_text == "CONNECTION_FORCED - maintenance window"
    api.until("/connections", lambda js: not ours(js))


def test_message_stats(conn, api, name):
    ch = conn.channel()
    ch.queue_declare(name, auto_delete=False)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", name, b"x")
    for _ in range(20):
        m, _, _ = ch.basic_get(name)
        ch.basic_ack(m.delivery_tag)
    assert ch.basic_get(name) == (None, None, None)

    def done(j):
        s = j.get("message_stats", {})
        return s.get("publish") == 20 and s.get("deliver_get") == 20 and s.get("ack") == 20 and j.get("messages") == 0

    j = api.until(f"/queues/%2F/{name}", done)
    assert "rate" in j["message_stats"]["publish_details"]
    chans = api.until("/channels", lambda js: any(
        x.get("message_stats", {}).get("confirm", 0) >= 20 and x.get("message_stats", {}).get("ack", 0) >= 20
        for x in js))
    assert chans
    ov = api.until("/overview", lambda j: j.get("message_stats", {}).get("publish", 0) >= 20)
    assert ov["object_totals"]["queues"] >= 1 and "queue_totals" in ov
    v = api.until("/vhosts", lambda js: any(x["name"] == "/" and x.get("message_stats", {}).get("ack", 0) >= 20 for x in js))
    assert v
    # With msg_rates_age / lengths_age, the details carry samples.
    ages = "msg_rates_age=60&msg_rates_incr=5&lengths_age=60&lengths_incr=5"

    def newest(j, key):
        samples = j.get("message_stats", {}).get(f"{key}_details", {}).get("samples") or [{"sample": 0}]
        return samples[0]["sample"]

    ov = api.until(f"/overview?{ages}", lambda j: newest(j, "publish") >= 20)
    assert set(ov["message_stats"]["publish_details"]["samples"][0]) == {"sample", "timestamp"}
    assert "avg_rate" in ov["message_stats"]["publish_details"]
    assert "samples" in ov["queue_totals"]["messages_details"]
    api.until(f"/vhosts/%2F?{ages}", lambda j: newest(j, "ack") >= 20)
    ch.queue_delete(name)


def test_pagination_filter_sort_columns(conn, api, name):
    ch = conn.channel()
    names = [f"{name}-{i}" for i in range(5)]
    for n in names:
        ch.queue_declare(n, auto_delete=True, arguments={"x-expires": 60000})
    for i, n in enumerate(names):
        for _ in range(i):
            ch.basic_publish("", n, b"x")
    base = f"/queues/%2F?name={q(name)}&use_regex=false"
    p = api.until(base + "&page=1&page_size=2", lambda j: j.get("filtered_count") == 5)
    assert (p["item_count"], p["page"], p["page_count"], p["page_size"]) == (2, 1, 3, 2)
    assert p["total_count"] >= 5
    assert [x["name"] for x in p["items"]] == names[:2]
    last = api.json(base + "&page=3&page_size=2")
    assert [x["name"] for x in last["items"]] == names[4:]
    rev = api.json(base + "&page=1&page_size=5&sort=name&sort_reverse=true")
    assert [x["name"] for x in rev["items"]] == names[::-1]
    rx = api.json(f"/queues/%2F?name={q('^' + name + '-[13]$')}&use_regex=true&page=1&page_size=10")
    assert [x["name"] for x in rx["items"]] == [names[1], names[3]]
    cols = api.until(base + "&page=1&page_size=5&sort=messages&columns=name,messages",
                     lambda j: [x.get("messages") for x in j["items"]] == [0, 1, 2, 3, 4])
    assert cols["items"][2] == {"name": names[2], "messages": 2}
    r = api.get(base + "&page=9&page_size=2")
    assert r.status_code == 400 and r.json() == {
        "error": "page_out_of_range", "reason": "Page out of range, page: 9 page size: 2, len: 5"}
    r = api.get(base + "&page=1&page_size=600")
    assert r.status_code == 400 and r.json()["error"] == "invalid_pagination_parameters"
    assert api.get(base + "&page=x").json() == {"error": "bad_request", "reason": "Pagination parameters are invalid"}
    # Without a page, the list is not filtered by name (as RabbitMQ), but columns apply.
    full = api.json("/queues/%2F?columns=name")
    assert {x["name"] for x in full} >= set(names) and all(set(x) == {"name"} for x in full)
    for n in names:
        ch.queue_delete(n)


def test_vhosts_users_permissions(broker, api, name):
    vh, user = f"{name}-vh", f"{name}-u"
    assert api.put(f"/vhosts/{q(vh)}").status_code == 201
    assert api.put(f"/vhosts/{q(vh)}").status_code == 204
    try:
        assert vh in [v["name"] for v in api.json("/vhosts")]
        assert api.put(f"/users/{user}", {"password": "pw", "tags": "management,policymaker"}).status_code == 201
        u = api.json(f"/users/{user}")
        assert sorted(u["tags"]) == ["management", "policymaker"] and u["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert api.put(f"/permissions/{q(vh)}/{user}", {"configure": "^x", "write": ".*", "read": ".*"}).status_code == 201
        p = api.json(f"/permissions/{q(vh)}/{user}")
        assert (p["configure"], p["write"], p["read"], p["vhost"], p["user"]) == ("^x", ".*", ".*", vh, user)
        assert any(x["user"] == user for x in api.json(f"/vhosts/{q(vh)}/permissions"))
        assert [x["vhost"] for x in api.json(f"/users/{user}/permissions")] == [vh]
        # The new user logs in over AMQP and sees only its vhost over HTTP.
        c = pika.BlockingConnection(pika.ConnectionParameters(
            host=broker.host, port=broker.port, virtual_host=vh, credentials=pika.PlainCredentials(user, "pw")))
        c.close()
        assert [v["name"] for v in api.json("/vhosts", auth=(user, "pw"))] == [vh]
        # Management users may not declare what their permissions refuse.
        r = api.put(f"/queues/{q(vh)}/nope", {"durable": False}, auth=(user, "pw"))
        assert (r.status_code, r.json()) == (401, {"error": "not_authorised", "reason": "Access refused."})
        assert api.put(f"/queues/{q(vh)}/xq", {"durable": False}, auth=(user, "pw")).status_code == 201
        assert api.put(f"/vhost-limits/{q(vh)}/max-queues", {"value": 5}).status_code == 204
        assert api.json(f"/vhost-limits/{q(vh)}") == [{"vhost": vh, "value": {"max-queues": 5}}]
        assert api.delete(f"/vhost-limits/{q(vh)}/max-queues").status_code == 204
        assert api.delete(f"/permissions/{q(vh)}/{user}").status_code == 204
        assert api.get(f"/permissions/{q(vh)}/{user}").status_code == 404
    finally:
        api.delete(f"/users/{user}")
        assert api.delete(f"/vhosts/{q(vh)}").status_code == 204
    assert api.get(f"/users/{user}").status_code == 404
    assert vh not in [v["name"] for v in api.json("/vhosts")]


def test_definitions_export_import(api, name):
    doc = api.json("/definitions")
    for key in ("users", "vhosts", "permissions", "exchanges", "queues", "bindings", "policies"):
        assert key in doc, key
    assert any(u["name"] == "guest" and u["password_hash"] for u in doc["users"])
    new = {
        "exchanges": [{"name": f"{name}-x", "vhost": "/", "type": "fanout", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}],
        "queues": [{"name": f"{name}-q", "vhost": "/", "durable": True, "auto_delete": False,
                    "arguments": {"x-max-length": 10}}],
        "bindings": [{"source": f"{name}-x", "vhost": "/", "destination": f"{name}-q",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
    }
    r = api.post("/definitions", new)
    assert r.status_code in (201, 204), r.text
    try:
        assert api.json(f"/queues/%2F/{name}-q")["arguments"] == {"x-max-length": 10}
        assert api.json(f"/exchanges/%2F/{name}-x")["type"] == "fanout"
        doc = api.json("/definitions")
        assert any(x["name"] == f"{name}-q" for x in doc["queues"])
        per_vhost = api.json("/definitions/%2F")
        mine = [x for x in per_vhost["queues"] if x["name"] == f"{name}-q"]
        assert mine and "vhost" not in mine[0]
    finally:
        api.delete(f"/queues/%2F/{name}-q")
        api.delete(f"/exchanges/%2F/{name}-x")


def test_health_checks(broker, api):
    assert api.json("/aliveness-test/%2F") == {"status": "ok"}
    assert api.json("/health/checks/alarms") == {"status": "ok"}
    assert api.json("/health/checks/local-alarms") == {"status": "ok"}
    assert api.json("/health/checks/virtual-hosts") == {"status": "ok"}
    assert api.json(f"/health/checks/port-listener/{broker.port}") == {"status": "ok", "port": broker.port}
    r = api.get("/health/checks/port-listener/1")
    assert r.status_code == 503 and r.json()["status"] == "failed" and r.json()["missing"] == 1
    nodes = api.json("/nodes")
    assert len(nodes) == 1 and nodes[0]["running"] is True and nodes[0]["mem_used"] > 0
    assert api.json(f"/nodes/{q(nodes[0]['name'])}")["name"] == nodes[0]["name"]
    api.delete("/queues/%2F/aliveness-test")


def test_bad_requests(broker, api, name):
    r = api.req("PUT", f"/queues/%2F/{name}", data="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    r = api.put(f"/exchanges/%2F/{name}", {"type": "no-such-type"})
    assert r.status_code == 400 and "no-such-type" in r.json()["reason"], r.text
    assert api.get("/no/such/path").status_code == 404
    assert api.get(f"/queues/no-such-vhost/{name}").status_code == 404
    r = api.post("/queues/%2F/nope/get", {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert r.status_code == 404
    r = api.put(f"/queues/%2F/{'q' * 256}", {"durable": False})
    assert (r.status_code, r.json()) == (
        400, {"error": "bad_request", "reason": "queue should be less than 255 bytes, actually was 256\n"})
    if broker.is_warren:
        # RabbitMQ creates such an exchange, which no AMQP client can then
        # name; Warren refuses it as it refuses queues.
        r = api.put(f"/exchanges/%2F/{'q' * 256}", {"durable": False, "type": "direct"})
        assert r.status_code == 400 and r.json()["reason"] == "exchange should be less than 255 bytes, actually was 256\n"
    assert api.put(f"/queues/%2F/{'é' * 127}", {"durable": False}).status_code == 201
    assert api.delete(f"/queues/%2F/{q('é' * 127)}").status_code == 204


def rabbitmqadmin(broker, *args):
    tool = subprocess.run([str(ROOT / "scripts" / "rabbitmqadmin-env.sh")], capture_output=True, text=True,
                          check=True).stdout.strip()
    url = urllib.parse.urlparse(broker.http)
    cmd = [sys.executable, tool, "-H", url.hostname, "-P", str(url.port), "-u", "guest", "-p", "guest", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout


def test_rabbitmqadmin(broker, api, name, tmp_path):
    rabbitmqadmin(broker, "declare", "queue", f"name={name}", "durable=true")
    rabbitmqadmin(broker, "declare", "exchange", f"name={name}-x", "type=direct", "durable=false")
    rabbitmqadmin(broker, "declare", "binding", f"source={name}-x", f"destination={name}", "routing_key=k")
    out = rabbitmqadmin(broker, "publish", f"exchange={name}-x", "routing_key=k", "payload=from the cli")
    assert "Message published" in out
    listed = rabbitmqadmin(broker, "-f", "tsv", "-q", "list", "queues", "name", "messages")
    assert any(line.split("\t") == [name, "1"] for line in listed.splitlines()) or wait_for(
        lambda: any(line.split("\t") == [name, "1"] for line in
                    rabbitmqadmin(broker, "-f", "tsv", "-q", "list", "queues", "name", "messages").splitlines()),
        timeout=20, interval=0.5)
    got = rabbitmqadmin(broker, "-f", "raw_json", "get", f"queue={name}", "ackmode=ack_requeue_false")
    assert json.loads(got)[0]["payload"] == "from the cli"
    bindings = rabbitmqadmin(broker, "-f", "tsv", "-q", "list", "bindings", "source", "destination", "routing_key")
    assert f"{name}-x\t{name}\tk" in bindings
    rabbitmqadmin(broker, "export", str(tmp_path / "defs.json"))
    defs = json.loads((tmp_path / "defs.json").read_text())
    assert any(x["name"] == name for x in defs["queues"])
    rabbitmqadmin(broker, "delete", "queue", f"name={name}")
    rabbitmqadmin(broker, "delete", "exchange", f"name={name}-x")
    assert api.get(f"/queues/%2F/{name}").status_code == 404
    rabbitmqadmin(broker, "import", str(tmp_path / "defs.json"))
    assert api.get(f"/queues/%2F/{name}").status_code == 200
    assert name in rabbitmqadmin(broker, "list", "connections", "name") or True
    overview = json.loads(rabbitmqadmin(broker, "-f", "raw_json", "show", "overview"))
    assert overview[0]["object_totals"]["queues"] >= 1
    rabbitmqadmin(broker, "delete", "queue", f"name={name}")


def test_flower_shows_queue_lengths(broker, api, name):
    """Flower, celery's monitor, on the broker page of a celery app: it reads
    queue lengths from the management API it is pointed at."""
    queue = f"celery-{name}"
    port = free_port()
    env = dict(os.environ, WARREN_CELERY_BROKER=broker.url, WARREN_CELERY_QUEUE=queue,
               FLOWER_UNAUTHENTICATED_API="true")
    api_url = broker.http.replace("http://", "http://guest:guest@") + "/api/"
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app.tasks", "flower", f"--port={port}",
         "--address=127.0.0.1", f"--broker-api={api_url}"],
        cwd=HERE, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sys.path.insert(0, HERE)
    os.environ["WARREN_CELERY_BROKER"] = broker.url
    os.environ["WARREN_CELERY_QUEUE"] = queue
    from celery_app import tasks

    tasks.app.conf.broker_url = broker.url
    tasks.app.conf.task_default_queue = queue
    try:
        for i in range(3):
            tasks.add.apply_async((i, i), queue=queue)

        def lengths():
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/queues/length", timeout=5)
            except requests.RequestException:
                return None
            if r.status_code != 200:
                return None
            return {q["name"]: q.get("messages") for q in r.json()["active_queues"]}

        assert wait_for(lambda: (lengths() or {}).get(queue) == 3, timeout=60, interval=0.5), lengths()
        page = requests.get(f"http://127.0.0.1:{port}/broker", timeout=10).text
        assert queue in page
        # A worker of the app drains the queue; Flower sees it go to 0.
        from test_celery import start_worker, stop

        worker = start_worker(broker, queue)
        try:
            assert wait_for(lambda: (lengths() or {}).get(queue) == 0, timeout=60, interval=0.5), lengths()
        finally:
            stop(worker)
    finally:
        import signal

        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(20)
        api.delete(f"/queues/%2F/{queue}")
