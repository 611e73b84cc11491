"""The HTTP listeners as a stranger on the network, or a hostile web page in
an operator's browser, would use them: half-sent requests, held
connections, cross-site form posts, and scrapes that ask for everything.

Tests that a client can observe the same way on RabbitMQ's management
plugin run against it too (WARREN_TEST_ADDR / WARREN_TEST_HTTP); the rest
are Warren's own hardening, which RabbitMQ 3.10 does not have.
"""
import socket
import time
import urllib.parse

import pika
import pytest
import requests

from conftest import own_warren, wait_for

GUEST = ("guest", "guest")


def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's own hardening: RabbitMQ 3.10 does not have it")


def host_port(base):
    u = urllib.parse.urlparse(base)
    return u.hostname, u.port


def read_until_closed(sock, limit):
    """Reads until the peer closes (returns what came and how long it took)
    or `limit` seconds pass (returns None)."""
    start = time.time()
    data = b""
    sock.settimeout(0.5)
    while time.time() - start < limit:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, time.time() - start
        if not chunk:
            return data, time.time() - start
        data += chunk
    return None


def vhost_names(broker):
    r = requests.get(broker.http + "/api/vhosts", auth=GUEST, timeout=30)
    assert r.status_code == 200, r.text
    return {v["name"] for v in r.json()}


def test_a_half_sent_request_is_closed(broker):
    """Headers that never end hold the connection only for a few seconds
    (RabbitMQ: 5 s; Warren: --http-request-timeout, 10 s by default)."""
    with socket.create_connection(host_port(broker.http), timeout=10) as s:
        s.sendall(b"GET /api/overview HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n")
        closed = read_until_closed(s, 30)
        assert closed is not None, "a half-sent request still held its connection after 30 s"
        # Nothing was answered as if the request had been whole.
        assert b"200 OK" not in closed[0]


def test_a_cross_site_form_post_changes_nothing(broker, name):
    """What a page on another site can make a browser send with the
    operator's cached Basic credentials: a form post, which carries a form
    or text body. Definitions are not imported from it (415, as RabbitMQ)."""
    body = '{"vhosts": [{"name": "%s"}]}' % name
    for content_type in ["text/plain", "application/x-www-form-urlencoded"]:
        r = requests.post(broker.http + "/api/definitions", auth=GUEST, data=body,
                          headers={"Content-Type": content_type}, timeout=30)
        assert r.status_code == 415, (content_type, r.status_code, r.text)
    assert name not in vhost_names(broker)
    # The same body as JSON is imported (the refusal is about the type).
    r = requests.post(broker.http + "/api/definitions", auth=GUEST, data=body,
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code in (200, 201, 204), r.text
    try:
        assert name in vhost_names(broker)
    finally:
        requests.delete(broker.http + "/api/vhosts/" + name, auth=GUEST, timeout=30)


def test_an_empty_body_needs_no_content_type(broker, name):
    """`curl -X PUT -u ... /api/vhosts/NAME`, as operators type it: no body,
    no Content-Type, and the vhost is made."""
    r = requests.put(broker.http + "/api/vhosts/" + name, auth=GUEST, timeout=30)
    try:
        assert r.status_code == 201, r.text
        assert name in vhost_names(broker)
    finally:
        requests.delete(broker.http + "/api/vhosts/" + name, auth=GUEST, timeout=30)


def test_state_changes_need_json_and_the_same_origin(broker, name):
    warren_only(broker)
    url = broker.http + "/api/vhosts/" + name
    refused = [
        # A form's body on any route (RabbitMQ checks only definitions).
        ({"Content-Type": "text/plain"}, "x", 415),
        ({"Content-Type": "multipart/form-data; boundary=b"}, "--b--", 415),
        # A JSON body with a cross-site origin (fetch from another site).
        ({"Content-Type": "application/json", "Origin": "https://evil.example"}, "{}", 403),
        ({"Content-Type": "application/json", "Origin": "null"}, "{}", 403),
        ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, "{}", 403),
        # A body without a type.
        ({}, "{}", 415),
    ]
    for headers, body, status in refused:
        r = requests.put(url, auth=GUEST, data=body, headers=headers, timeout=30)
        assert r.status_code == status, (headers, r.status_code, r.text)
    assert name not in vhost_names(broker)
    # The dashboard's own requests: same origin, JSON.
    host, port = host_port(broker.http)
    r = requests.put(url, auth=GUEST, data="{}", timeout=30,
                     headers={"Content-Type": "application/json; charset=utf-8",
                              "Origin": f"http://{host}:{port}", "Sec-Fetch-Site": "same-origin"})
    try:
        assert r.status_code == 201, r.text
        # Reading needs neither (a browser keeps a cross-site page from
        # reading the answer).
        r = requests.get(url, auth=GUEST, headers={"Origin": "https://evil.example"}, timeout=30)
        assert r.status_code == 200
    finally:
        requests.delete(url, auth=GUEST, timeout=30)


def test_answers_are_never_sniffed_or_framed(broker):
    warren_only(broker)
    for url, auth in [(broker.http + "/api/overview", GUEST), (broker.http + "/", None),
                      (broker.http + "/api/overview", ("guest", "wrong")), (broker.prometheus + "/metrics", None)]:
        r = requests.get(url, auth=auth, timeout=30)
        assert r.headers.get("X-Content-Type-Options") == "nosniff", url
        assert "frame-ancestors 'none'" in r.headers.get("Content-Security-Policy", ""), url
        assert r.headers.get("X-Frame-Options") == "DENY", url


def test_get_takes_a_bounded_count(broker, name):
    warren_only(broker)
    with pika.BlockingConnection(broker.params()) as c:
        ch = c.channel()
        ch.queue_declare(name)
        ch.basic_publish("", name, b"x")
        try:
            url = broker.http + "/api/queues/%2F/" + name + "/get"
            r = requests.post(url, auth=GUEST, timeout=30,
                              json={"count": 10_000_000, "ackmode": "ack_requeue_true", "encoding": "auto"})
            assert r.status_code == 400 and "at most 10000" in r.json()["reason"], r.text
            r = requests.post(url, auth=GUEST, timeout=30,
                              json={"count": 10_000, "ackmode": "ack_requeue_true", "encoding": "auto"})
            assert r.status_code == 200 and len(r.json()) == 1, r.text
        finally:
            ch.queue_delete(name)


def test_held_connections_are_capped():
    """Past --http-max-connections, a new connection waits to be accepted
    until a held one ends; the request timeout ends idle ones."""
    with own_warren(extra=["--http-max-connections", "2", "--http-request-timeout", "3"]) as b:
        addr = host_port(b.http)
        held = [socket.create_connection(addr, timeout=10) for _ in range(2)]
        for s in held:
            s.sendall(b"GET /api/overview HTTP/1.1\r\nHost: x\r\n")
        try:
            # Both held slots are taken: a third request is not answered
            # while they last (a slot frees when a held one is closed).
            third = requests.Session()
            start = time.time()
            with pytest.raises(requests.exceptions.Timeout):
                third.get(b.http + "/api/overview", auth=GUEST, timeout=1.5)
            assert time.time() - start < 3, "the held connections should still be held"
        finally:
            for s in held:
                s.close()
        assert wait_for(lambda: requests.get(b.http + "/api/overview", auth=GUEST, timeout=5).status_code == 200,
                        timeout=20)
        # The timeout frees slots without the client's help.
        held = [socket.create_connection(addr, timeout=10) for _ in range(2)]
        try:
            for s in held:
                s.sendall(b"GET /api/overview HTTP/1.1\r\n")
            for s in held:
                assert read_until_closed(s, 20) is not None
            r = requests.get(b.http + "/api/overview", auth=GUEST, timeout=10)
            assert r.status_code == 200
        finally:
            for s in held:
                s.close()


def scrape_text(broker, path):
    r = requests.get(broker.prometheus + path, timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def series(text, metric):
    """{(vhost, queue): value} of one metric's samples."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric:
                out[(s.labels.get("vhost"), s.labels.get("queue"))] = s.value
    return out


def test_detailed_metrics_take_families_and_vhosts(broker, name):
    """rabbitmq_prometheus's /metrics/detailed: only the families and vhosts
    asked for."""
    vhost = name + "-v"
    assert requests.put(broker.http + "/api/vhosts/" + vhost, auth=GUEST, timeout=30).status_code == 201
    try:
        r = requests.put(broker.http + f"/api/permissions/{vhost}/guest", auth=GUEST, timeout=30,
                         json={"configure": ".*", "write": ".*", "read": ".*"})
        assert r.status_code in (201, 204)
        with pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port, vhost)) as c:
            ch = c.channel()
            ch.queue_declare(name)
            ch.basic_publish("", name, b"x")
            ch.basic_publish("", name, b"y")
            mine = (vhost, name)
            q = urllib.parse.quote(vhost)
            coarse = f"/metrics/detailed?family=queue_coarse_metrics&vhost={q}"

            # RabbitMQ's figures follow its statistics interval: poll.
            def ready_is_two():
                return series(scrape_text(broker, coarse), "rabbitmq_detailed_queue_messages_ready").get(mine) == 2

            assert wait_for(ready_is_two, timeout=30, interval=0.5)
            text = scrape_text(broker, coarse)
            assert set(series(text, "rabbitmq_detailed_queue_messages_ready")) == {mine}
            assert series(text, "rabbitmq_detailed_queue_messages").get(mine) == 2
            assert not series(text, "rabbitmq_detailed_queue_consumers")
            consumers = scrape_text(broker, f"/metrics/detailed?family=queue_consumer_count&vhost={q}")
            assert series(consumers, "rabbitmq_detailed_queue_consumers").get(mine) == 0
            assert not series(consumers, "rabbitmq_detailed_queue_messages_ready")
            # Another vhost's queues are left out; no family, no queues.
            other = scrape_text(broker, "/metrics/detailed?family=queue_coarse_metrics&vhost=%2F")
            assert mine not in series(other, "rabbitmq_detailed_queue_messages_ready")
            bare = scrape_text(broker, "/metrics/detailed")
            assert not series(bare, "rabbitmq_detailed_queue_messages_ready")
            assert "rabbitmq_identity_info" in bare
            ch.queue_delete(name)
    finally:
        requests.delete(broker.http + "/api/vhosts/" + vhost, auth=GUEST, timeout=30)
