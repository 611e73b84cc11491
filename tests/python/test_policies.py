"""Policies and operator policies as RabbitMQ 3.10 applies them: to existing
and new queues and exchanges, the highest priority alone, the lowest limit
of argument / policy / operator policy winning, set by `ctl` (rabbitmqctl's
arguments) and by the HTTP API, and carried by definitions.

Every behaviour here is checked over AMQP (message counts, dead-lettered
messages), so the same tests run against RabbitMQ (WARREN_TEST_ADDR)."""
import json
import subprocess

import pika
import pytest

from conftest import count, wait_for, warren_binary
from test_management import Api, q


@pytest.fixture
def api(broker):
    return Api(broker.http)


def put_policy(api, name, pattern, definition, priority=0, apply_to="queues", operator=False):
    kind = "operator-policies" if operator else "policies"
    r = api.put(f"/{kind}/%2F/{q(name)}",
                {"pattern": pattern, "definition": definition, "priority": priority, "apply-to": apply_to})
    assert r.status_code in (201, 204), r.text


def clear_policy(api, name, operator=False):
    kind = "operator-policies" if operator else "policies"
    api.delete(f"/{kind}/%2F/{q(name)}")


def test_max_length_policy_applies_to_existing_and_new_queues(conn, api, name):
    ch = conn.channel()
    ch.queue_declare(f"{name}-a", auto_delete=False)
    for i in range(10):
        ch.basic_publish("", f"{name}-a", f"m{i}".encode())
    assert wait_for(lambda: count(ch, f"{name}-a") == 10)
    put_policy(api, name, f"^{name}-", {"max-length": 5})
    try:
        # The existing queue drops its head down to the limit.
        assert wait_for(lambda: count(ch, f"{name}-a") == 5)
        m, _, body = ch.basic_get(f"{name}-a", auto_ack=True)
        assert body == b"m5"
        ch.queue_declare(f"{name}-b")
        for i in range(8):
            ch.basic_publish("", f"{name}-b", b"x")
        assert wait_for(lambda: count(ch, f"{name}-b") == 5)
        info = api.until(f"/queues/%2F/{name}-b", lambda j: j.get("policy") == name)
        assert info["effective_policy_definition"] == {"max-length": 5}
    finally:
        clear_policy(api, name)
    # Without the policy the queue grows again.
    for i in range(3):
        ch.basic_publish("", f"{name}-b", b"x")
    assert wait_for(lambda: count(ch, f"{name}-b") == 8)
    ch.queue_delete(f"{name}-a")
    ch.queue_delete(f"{name}-b")


def test_lowest_of_argument_policy_and_operator_policy_wins(conn, api, name):
    ch = conn.channel()
    ch.queue_declare(f"{name}-3", arguments={"x-max-length": 3})
    ch.queue_declare(f"{name}-10", arguments={"x-max-length": 10})
    ch.queue_declare(f"{name}-none")
    put_policy(api, name, f"^{name}-", {"max-length": 5}, priority=1)
    try:
        def fill_and_count(n):
            for _ in range(12):
                ch.basic_publish("", n, b"x")
            return n

        for queue, expected in ((f"{name}-3", 3), (f"{name}-10", 5), (f"{name}-none", 5)):
            fill_and_count(queue)
            assert wait_for(lambda: count(ch, queue) == expected), (queue, count(ch, queue))
        put_policy(api, f"{name}-op", f"^{name}-", {"max-length": 4}, operator=True)
        try:
            for queue, expected in ((f"{name}-3", 3), (f"{name}-10", 4), (f"{name}-none", 4)):
                assert wait_for(lambda: count(ch, queue) == expected), (queue, count(ch, queue))
            info = api.until(f"/queues/%2F/{name}-none", lambda j: j.get("operator_policy") == f"{name}-op")
            assert info["policy"] == name
            assert info["effective_policy_definition"] == {"max-length": 4}
        finally:
            clear_policy(api, f"{name}-op", operator=True)
    finally:
        clear_policy(api, name)
    for s in ("3", "10", "none"):
        ch.queue_delete(f"{name}-{s}")


def test_highest_priority_policy_applies_alone(conn, api, name):
    ch = conn.channel()
    put_policy(api, f"{name}-low", f"^{name}", {"max-length": 2, "message-ttl": 60000}, priority=1)
    put_policy(api, f"{name}-high", f"^{name}$", {"max-length": 4}, priority=7)
    try:
        ch.queue_declare(name)
        for _ in range(6):
            ch.basic_publish("", name, b"x")
        assert wait_for(lambda: count(ch, name) == 4)
        info = api.until(f"/queues/%2F/{name}", lambda j: j.get("policy") == f"{name}-high")
        assert info["effective_policy_definition"] == {"max-length": 4}
    finally:
        clear_policy(api, f"{name}-high")
        clear_policy(api, f"{name}-low")
    ch.queue_delete(name)


def test_ttl_and_dead_letter_policy_and_argument_precedence(conn, api, name):
    ch = conn.channel()
    dlq, mine = f"{name}-dlq", f"{name}-mine"
    ch.queue_declare(dlq)
    ch.queue_declare(mine)
    put_policy(api, name, f"^{name}-src", {"message-ttl": 50, "dead-letter-exchange": "",
                                           "dead-letter-routing-key": dlq})
    try:
        ch.queue_declare(f"{name}-src1")
        ch.basic_publish("", f"{name}-src1", b"expires")
        assert wait_for(lambda: count(ch, dlq) == 1)
        m, props, body = ch.basic_get(dlq, auto_ack=True)
        assert body == b"expires"
        death = props.headers["x-death"][0]
        assert (death["reason"], death["queue"]) == ("expired", f"{name}-src1")
        # A queue's own dead-letter arguments win over the policy's.
        ch.queue_declare(f"{name}-src2", arguments={"x-dead-letter-exchange": "",
                                                    "x-dead-letter-routing-key": mine})
        ch.basic_publish("", f"{name}-src2", b"to mine")
        assert wait_for(lambda: count(ch, mine) == 1)
        assert count(ch, dlq) == 0
    finally:
        clear_policy(api, name)
    for n in (dlq, mine, f"{name}-src1", f"{name}-src2"):
        ch.queue_delete(n)


def test_alternate_exchange_policy(conn, api, name):
    ch = conn.channel()
    x, ae, caught = f"{name}-x", f"{name}-ae", f"{name}-caught"
    ch.exchange_declare(x, "direct")
    ch.exchange_declare(ae, "fanout")
    ch.queue_declare(caught)
    ch.queue_bind(caught, ae)
    put_policy(api, name, f"^{name}-x$", {"alternate-exchange": ae}, apply_to="exchanges")
    try:
        def delivered():
            ch.basic_publish(x, "nowhere", b"unroutable")
            return wait_for(lambda: count(ch, caught) >= 1, timeout=1)

        assert wait_for(delivered, timeout=20)
        info = api.until(f"/exchanges/%2F/{x}", lambda j: j.get("policy") == name)
        assert info["name"] == x
    finally:
        clear_policy(api, name)
    ch.queue_purge(caught)
    ch.basic_publish(x, "nowhere", b"dropped now")
    # The passive declare in count() follows the publish on the same channel.
    assert count(ch, caught) == 0
    ch.queue_delete(caught)
    ch.exchange_delete(x)
    ch.exchange_delete(ae)


def test_policy_validation(api, broker, name):
    path = f"/policies/%2F/{name}"
    cases = [
        ({"pattern": "^x", "definition": {"foo": 1}}, "are not recognised policy settings"),
        ({"pattern": "^x", "definition": {"max-length": -1}}, "is not a valid maximum length"),
        ({"pattern": "^x", "definition": {"max-length": 1}, "apply-to": "bogus"},
         "apply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'"),
        ({"pattern": "^x", "definition": {}}, "no policy provided"),
    ]
    for body, reason in cases:
        r = api.put(path, body)
        assert r.status_code == 400, r.text
        assert r.json()["reason"].startswith("Validation failed\n\n") and reason in r.json()["reason"], r.text
    r = api.put(path, {"definition": {"max-length": 1}})
    assert (r.status_code, r.json()) == (400, {"error": "bad_request", "reason": "[{key_missing,pattern}]"})
    assert api.get(path).status_code == 404
    assert api.delete(path).status_code == 404
    r = broker.ctl("set_policy", name, "^x", '{"foo":1}', check=False)
    assert r.returncode == 69 and "are not recognised policy settings" in r.stdout + r.stderr
    r = broker.ctl("clear_policy", name, check=False)
    assert r.returncode == 69 and "Parameter does not exist" in r.stdout + r.stderr


def test_policies_with_ctl_and_definitions(conn, api, broker, name):
    r = broker.ctl("set_policy", "--priority", "3", "--apply-to", "queues", name, f"^{name}", '{"max-length":7}')
    assert f'Setting policy "{name}" for pattern "^{name}" to "{{"max-length":7}}" with priority "3"' in r.stdout
    broker.ctl("set_operator_policy", f"{name}-op", f"^{name}", '{"message-ttl":600000}')
    try:
        listed = broker.ctl("list_policies", "-q").stdout
        assert any(line.split("\t")[:3] == ["/", name, f"^{name}"] for line in listed.splitlines()), listed
        row = next(line.split("\t") for line in listed.splitlines() if line.split("\t")[1] == name)
        assert (row[3], json.loads(row[4]), row[5]) == ("queues", {"max-length": 7}, "3")
        listed = broker.ctl("list_operator_policies", "-q").stdout
        assert any(line.split("\t")[1] == f"{name}-op" for line in listed.splitlines()), listed
        assert api.json(f"/policies/%2F/{name}") == {
            "vhost": "/", "name": name, "pattern": f"^{name}", "apply-to": "queues",
            "definition": {"max-length": 7}, "priority": 3}
        doc = api.json("/definitions")
        assert any(p["name"] == name and p["definition"] == {"max-length": 7} for p in doc["policies"])
        ops = [p for p in doc["parameters"] if p["component"] == "operator_policy" and p["name"] == f"{name}-op"]
        assert ops and ops[0]["value"]["definition"] == {"message-ttl": 600000}
        ch = conn.channel()
        ch.queue_declare(f"{name}-q")
        for _ in range(9):
            ch.basic_publish("", f"{name}-q", b"x")
        assert wait_for(lambda: count(ch, f"{name}-q") == 7)
        ch.queue_delete(f"{name}-q")
        # Import brings a policy back with its effect.
        broker.ctl("clear_policy", name)
        mine = [p for p in doc["policies"] if p["name"] == name]
        assert api.post("/definitions", {"policies": mine}).status_code in (201, 204)
        assert api.json(f"/policies/%2F/{name}")["definition"] == {"max-length": 7}
    finally:
        broker.ctl("clear_policy", name, check=False)
        broker.ctl("clear_operator_policy", f"{name}-op", check=False)


def test_policies_survive_a_restart(broker, name, tmp_path):
    """Warren only: policies are kept with the users and vhosts."""
    if not broker.is_warren:
        pytest.skip("restarts a Warren of its own")
    from conftest import free_port

    data = str(tmp_path / "data")

    def run():
        port = free_port()
        proc = subprocess.Popen([warren_binary(), "--amqp-listen", f"127.0.0.1:{port}", "--http-listen", "", "--prometheus-listen", "",
                                 "--data-dir", data], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        params = pika.ConnectionParameters(port=port)

        def up():
            try:
                pika.BlockingConnection(params).close()
                return True
            except pika.exceptions.AMQPConnectionError:
                return False

        assert wait_for(up, timeout=20)
        return proc, params

    proc, params = run()
    ctl = [warren_binary(), "ctl", "--data-dir", data]
    try:
        subprocess.run(ctl + ["set_policy", name, f"^{name}", '{"max-length":2}'], check=True, capture_output=True)
        c = pika.BlockingConnection(params)
        c.channel().queue_declare(name, durable=True)
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)
    proc, params = run()
    try:
        c = pika.BlockingConnection(params)
        ch = c.channel()
        for _ in range(5):
            ch.basic_publish("", name, b"x")
        assert wait_for(lambda: count(ch, name) == 2)
        c.close()
        out = subprocess.run(ctl + ["list_policies", "-q"], check=True, capture_output=True, text=True).stdout
        assert name in out
    finally:
        proc.terminate()
        proc.wait(10)
