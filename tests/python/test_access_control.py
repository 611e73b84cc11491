"""Users, vhosts and permissions, as RabbitMQ enforces them.

Administration goes through `broker.ctl` (`warren ctl`, or `rabbitmqctl`
in the differential run), so every expectation here is checked against
RabbitMQ too.
"""
import ast
import os
import shutil
import subprocess
import tempfile
import uuid

import pika
import pika.exceptions as pe
import pytest

from conftest import start_warren, stop_warren, wait_for


@pytest.fixture
def vhost(broker):
    """A fresh vhost where guest may do anything."""
    v = f"vh-{uuid.uuid4().hex[:10]}"
    broker.ctl("add_vhost", v)
    broker.ctl("set_permissions", "-p", v, "guest", ".*", ".*", ".*")
    yield v
    broker.ctl("delete_vhost", v, check=False)


@pytest.fixture
def user(broker):
    """A fresh user with a password and no permissions anywhere."""
    u = f"u-{uuid.uuid4().hex[:10]}"
    broker.ctl("add_user", u, "pw-" + u)
    yield u
    broker.ctl("delete_user", u, check=False)


def connect(broker, user, password, vhost="/"):
    creds = pika.PlainCredentials(user, password)
    return pika.BlockingConnection(broker.params(virtual_host=vhost, credentials=creds))


def test_wrong_password_is_refused_with_403(broker, user):
    with pytest.raises(pe.ProbableAuthenticationError) as e:
        connect(broker, user, "not-the-password")
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in str(e.value)
    with pytest.raises(pe.ProbableAuthenticationError):
        connect(broker, "no-such-user-" + user, "x")


def test_new_user_logs_in_and_password_changes_take_effect(broker, user, vhost):
    broker.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    connect(broker, user, "pw-" + user, vhost).close()
    broker.ctl("change_password", user, "new-secret")
    with pytest.raises(pe.ProbableAuthenticationError):
        connect(broker, user, "pw-" + user, vhost)
    connect(broker, user, "new-secret", vhost).close()


def test_password_left_out_is_read_from_standard_input(broker, vhost):
    """As rabbitmqctl: `add_user NAME` and `change_password NAME` take the
    password from standard input, so it stays off the command line."""
    u = f"u-{uuid.uuid4().hex[:10]}"
    broker.ctl("add_user", u, input="from-stdin\n")
    try:
        broker.ctl("set_permissions", "-p", vhost, u, ".*", ".*", ".*")
        connect(broker, u, "from-stdin", vhost).close()
        broker.ctl("change_password", u, input="changed-on-stdin\n")
        with pytest.raises(pe.ProbableAuthenticationError):
            connect(broker, u, "from-stdin", vhost)
        connect(broker, u, "changed-on-stdin", vhost).close()
    finally:
        broker.ctl("delete_user", u, check=False)


def test_vhost_without_permission_is_not_allowed(broker, user, vhost):
    with pytest.raises(pe.ProbableAccessDeniedError) as e:
        connect(broker, user, "pw-" + user, vhost)
    assert f"(530) \"NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}'\"" in str(e.value)


def test_vhosts_are_isolated(broker, vhost):
    """The same queue name in two vhosts names two queues."""
    q = f"iso-{uuid.uuid4().hex[:8]}"
    a = pika.BlockingConnection(broker.params())
    b = pika.BlockingConnection(broker.params(virtual_host=vhost))
    try:
        ca, cb = a.channel(), b.channel()
        ca.queue_declare(q)
        cb.queue_declare(q)
        ca.basic_publish("", q, b"in-root")
        cb.basic_publish("", q, b"in-vhost")
        cb.basic_publish("", q, b"in-vhost-2")
        assert wait_for(lambda: cb.queue_declare(q, passive=True).method.message_count == 2)
        assert ca.queue_declare(q, passive=True).method.message_count == 1
        assert ca.basic_get(q, auto_ack=True)[2] == b"in-root"
        assert cb.basic_get(q, auto_ack=True)[2] == b"in-vhost"
        ca.queue_delete(q)
        assert cb.queue_declare(q, passive=True).method.message_count == 1
    finally:
        a.close()
        b.close()


# The permission matrix: configure / write / read on names by prefix.
PERMS = ("^(ok|cfg)-", "^(ok|wr)-", "^(ok|rd)-")


@pytest.fixture
def limited(broker, user, vhost):
    """A vhost with queues and exchanges made by guest, and a user whose
    permissions there are PERMS. Yields (vhost, user, connection)."""
    setup = pika.BlockingConnection(broker.params(virtual_host=vhost))
    ch = setup.channel()
    for q in ("ok-q", "cfg-q", "wr-q", "rd-q"):
        ch.queue_declare(q)
    for x in ("ok-x", "cfg-x", "wr-x", "rd-x"):
        ch.exchange_declare(x, "fanout")
    setup.close()
    broker.ctl("set_permissions", "-p", vhost, user, *PERMS)
    c = connect(broker, user, "pw-" + user, vhost)
    yield vhost, user, c
    if c.is_open:
        c.close()


def refused(kind, name, vhost, user):
    return f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"


def queue_declare(ch, name, **args):
    ch.queue_declare(name, arguments=args or None)


def publish(ch, exchange):
    ch.confirm_delivery()
    ch.basic_publish(exchange, "k", b"x")


def consume(ch, q):
    ch.basic_consume(q, lambda *a: None)


# (operation, allowed call, denied call, (kind, name) named in the refusal)
MATRIX = [
    ("queue.declare", lambda c: queue_declare(c, "cfg-new"), lambda c: queue_declare(c, "wr-new"), ("queue", "wr-new")),
    ("queue.declare passive", lambda c: c.queue_declare("wr-q", passive=True), None, None),
    ("queue.delete", lambda c: c.queue_delete("cfg-q"), lambda c: c.queue_delete("wr-q"), ("queue", "wr-q")),
    ("queue.purge", lambda c: c.queue_purge("rd-q"), lambda c: c.queue_purge("wr-q"), ("queue", "wr-q")),
    ("exchange.declare", lambda c: c.exchange_declare("cfg-new", "topic"), lambda c: c.exchange_declare("rd-new"), ("exchange", "rd-new")),
    ("exchange.delete", lambda c: c.exchange_delete("cfg-x"), lambda c: c.exchange_delete("rd-x"), ("exchange", "rd-x")),
    ("queue.bind needs write on the queue", lambda c: c.queue_bind("wr-q", "rd-x"), lambda c: c.queue_bind("rd-q", "rd-x"), ("queue", "rd-q")),
    ("queue.bind needs read on the exchange", None, lambda c: c.queue_bind("wr-q", "wr-x"), ("exchange", "wr-x")),
    ("queue.unbind", lambda c: c.queue_unbind("wr-q", "rd-x"), lambda c: c.queue_unbind("rd-q", "rd-x"), ("queue", "rd-q")),
    ("exchange.bind", lambda c: c.exchange_bind("wr-x", "rd-x"), lambda c: c.exchange_bind("rd-x", "ok-x"), ("exchange", "rd-x")),
    ("exchange.bind needs read on the source", None, lambda c: c.exchange_bind("ok-x", "wr-x"), ("exchange", "wr-x")),
    ("basic.publish", lambda c: publish(c, "wr-x"), lambda c: publish(c, "rd-x"), ("exchange", "rd-x")),
    ("basic.publish default exchange", None, lambda c: publish(c, ""), ("exchange", "amq.default")),
    ("basic.consume", lambda c: consume(c, "rd-q"), lambda c: consume(c, "wr-q"), ("queue", "wr-q")),
    ("basic.get", lambda c: c.basic_get("rd-q"), lambda c: c.basic_get("cfg-q"), ("queue", "cfg-q")),
    (
        "queue.declare with a DLX needs read on the queue",
        lambda c: queue_declare(c, "ok-dl", **{"x-dead-letter-exchange": "wr-x"}),
        lambda c: queue_declare(c, "cfg-dl", **{"x-dead-letter-exchange": "wr-x"}),
        ("queue", "cfg-dl"),
    ),
    (
        "queue.declare with a DLX needs write on it",
        None,
        lambda c: queue_declare(c, "ok-dl2", **{"x-dead-letter-exchange": "rd-x"}),
        ("exchange", "rd-x"),
    ),
    (
        "exchange.declare with an alternate exchange needs write on it",
        lambda c: c.exchange_declare("ok-ae", arguments={"alternate-exchange": "wr-x"}),
        lambda c: c.exchange_declare("ok-ae2", arguments={"alternate-exchange": "rd-x"}),
        ("exchange", "rd-x"),
    ),
]


@pytest.mark.parametrize("op,allowed,denied,named", MATRIX, ids=[m[0] for m in MATRIX])
def test_permission_matrix(limited, op, allowed, denied, named):
    vhost, user, c = limited
    if allowed is not None:
        allowed(c.channel())
    if denied is not None:
        ch = c.channel()
        with pytest.raises(pe.ChannelClosedByBroker) as e:
            denied(ch)
        assert e.value.reply_code == 403
        assert e.value.reply_text == refused(named[0], named[1], vhost, user)
        # A denied operation costs the channel, not the connection.
        assert c.is_open
        c.channel().queue_declare("ok-q", passive=True)


def test_cleared_permissions_refuse_new_connections(broker, user, vhost):
    broker.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    connect(broker, user, "pw-" + user, vhost).close()
    broker.ctl("clear_permissions", "-p", vhost, user)
    with pytest.raises(pe.ProbableAccessDeniedError) as e:
        connect(broker, user, "pw-" + user, vhost)
    assert "(530)" in str(e.value)


def test_user_id_must_match_the_login(conn, name):
    ch = conn.channel()
    ch.queue_declare(name, exclusive=True)
    ch.basic_publish("", name, b"ok", pika.BasicProperties(user_id="guest"))
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.confirm_delivery()
        ch.basic_publish("", name, b"forged", pika.BasicProperties(user_id="someone-else"))
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - user_id property set to 'someone-else' but authenticated user was 'guest'"


def test_deleting_a_vhost_closes_its_connections(broker, vhost):
    c = pika.BlockingConnection(broker.params(virtual_host=vhost))
    c.channel().queue_declare("doomed")
    broker.ctl("delete_vhost", vhost)
    with pytest.raises(pe.ConnectionClosedByBroker) as e:
        for _ in range(100):
            c.process_data_events(time_limit=0.1)
    assert e.value.reply_code == 320
    # RabbitMQ sends either, depending on whether the vhost's processes or
    # the connection tracker get there first.
    assert e.value.reply_text in (
        f"CONNECTION_FORCED - vhost '{vhost}' is deleted",
        f"CONNECTION_FORCED - vhost '{vhost}' is down",
    )
    # Re-created, it is empty.
    broker.ctl("add_vhost", vhost)
    broker.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    c = pika.BlockingConnection(broker.params(virtual_host=vhost))
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        c.channel().queue_declare("doomed", passive=True)
    assert e.value.reply_code == 404
    c.close()


def test_deleting_a_user_closes_their_connections(broker, user, vhost):
    broker.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    c = connect(broker, user, "pw-" + user, vhost)
    broker.ctl("delete_user", user)
    with pytest.raises(pe.ConnectionClosedByBroker) as e:
        for _ in range(100):
            c.process_data_events(time_limit=0.1)
    assert e.value.reply_code == 320
    assert e.value.reply_text == f"CONNECTION_FORCED - user '{user}' is deleted"


def test_vhost_queue_limit(broker, vhost):
    broker.ctl("set_vhost_limits", "-p", vhost, '{"max-queues": 2}')
    c = pika.BlockingConnection(broker.params(virtual_host=vhost))
    ch = c.channel()
    ch.queue_declare("q1")
    ch.queue_declare("q2")
    ch.queue_declare("q1")  # redeclaring is not a new queue
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_declare("q3")
    assert e.value.reply_code == 406
    assert e.value.reply_text == f"PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '{vhost}' (2) is reached"
    c.close()


def test_vhost_connection_limit(broker, vhost):
    broker.ctl("set_vhost_limits", "-p", vhost, '{"max-connections": 1}')
    first = pika.BlockingConnection(broker.params(virtual_host=vhost))
    with pytest.raises(pe.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(broker.params(virtual_host=vhost))
    assert (
        f"(530) \"NOT_ALLOWED - access to vhost '{vhost}' refused for user 'guest': connection limit (1) is reached\""
        in str(e.value)
    )
    first.close()
    # The slot is free again once the first one has gone.
    assert wait_for(lambda: _opens(broker, vhost), timeout=10)


def _opens(broker, vhost):
    try:
        pika.BlockingConnection(broker.params(virtual_host=vhost)).close()
        return True
    except pe.AMQPConnectionError:
        return False


def non_loopback_ip():
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for ip in out.split():
        if "." in ip and not ip.startswith("127."):
            return ip
    return None


def test_guest_may_connect_only_from_loopback(broker):
    ip = non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address")
    proc = None
    port = broker.port
    if broker.is_warren:
        # The session's Warren listens on loopback only: start one on all addresses.
        proc, port, data = start_warren("0.0.0.0")
    try:
        params = pika.ConnectionParameters(host=ip, port=port)
        with pytest.raises(pe.ProbableAuthenticationError) as e:
            pika.BlockingConnection(params)
        assert "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in str(e.value)
        # From loopback, guest is welcome.
        pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=port)).close()
    finally:
        if proc is not None:
            stop_warren(proc, data)


def test_ctl_lists_like_rabbitmqctl(broker, user, vhost):
    broker.ctl("set_user_tags", user, "monitoring", "management")
    broker.ctl("set_permissions", "-p", vhost, user, "^a", "^b", "^c")
    out = broker.ctl("list_users", "-q").stdout.splitlines()
    assert out[0] == "user\ttags"
    assert f"{user}\t[monitoring, management]" in out
    out = broker.ctl("list_permissions", "-p", vhost).stdout.splitlines()
    assert out[0] == f'Listing permissions for vhost "{vhost}" ...'
    assert out[1] == "user\tconfigure\twrite\tread"
    assert f"{user}\t^a\t^b\t^c" in out
    assert vhost in broker.ctl("list_vhosts", "-q").stdout.splitlines()
    c = pika.BlockingConnection(broker.params(virtual_host=vhost))
    ch = c.channel()
    ch.queue_declare("listed")
    ch.basic_publish("", "listed", b"1")
    ch.basic_publish("", "listed", b"2")
    assert wait_for(lambda: ch.queue_declare("listed", passive=True).method.message_count == 2)
    rows = broker.ctl("list_queues", "-q", "-p", vhost, "name", "messages", "durable").stdout.splitlines()
    assert rows[0] == "name\tmessages\tdurable"
    assert "listed\t2\tfalse" in rows
    conns = broker.ctl("list_connections", "-q", "user", "vhost").stdout.splitlines()
    assert f"guest\t{vhost}" in conns
    c.close()
    r = broker.ctl("add_user", user, "again", check=False)
    assert r.returncode != 0
    assert f'User "{user}" already exists' in r.stderr


def test_topic_permissions(broker, user, vhost):
    """Topic permissions restrict routing keys on topic exchanges: write for
    publishing, read for binding; `{username}` expands."""
    broker.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    broker.ctl("set_topic_permissions", "-p", vhost, user, "amq.topic", "^{username}\\.", "^allowed\\.")
    out = broker.ctl("list_topic_permissions", "-q", "-p", vhost).stdout.splitlines()
    assert out == ["user\texchange\twrite\tread", f"{user}\tamq.topic\t^{{username}}\\.\t^allowed\\."]
    c = connect(broker, user, "pw-" + user, vhost)
    ch = c.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("amq.topic", f"{user}.orders", b"mine")
    ch.basic_publish("amq.direct", "anything", b"not a topic exchange: unrestricted")
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.basic_publish("amq.topic", "someone.orders", b"theirs")
    assert e.value.reply_code == 403
    assert e.value.reply_text == (
        f"ACCESS_REFUSED - access to topic 'someone.orders' in exchange 'amq.topic' in vhost '{vhost}' refused for user '{user}'"
    )
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "allowed.#")
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.queue_bind(q, "amq.topic", "secret.#")
    assert e.value.reply_code == 403
    assert e.value.reply_text == (
        f"ACCESS_REFUSED - access to topic 'secret.#' in exchange 'amq.topic' in vhost '{vhost}' refused for user '{user}'"
    )
    broker.ctl("clear_topic_permissions", "-p", vhost, user)
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "someone.orders", b"allowed again")
    c.close()


def test_import_definitions(broker):
    """A definitions document in RabbitMQ's export format: users (with a
    password hash made by RabbitMQ), vhost, permissions, and topology."""
    import json

    v = f"vh-{uuid.uuid4().hex[:10]}"
    u = f"u-{uuid.uuid4().hex[:10]}"
    doc = {
        "users": [{
            "name": u,
            # `rabbitmqctl add_user fixture fixture-password` on RabbitMQ 3.10.8
            "password_hash": "TFnnURhaI8D6lie5loWcpp7gh1pJ391s71ZovnK85Cr/d1er",
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [], "limits": {},
        }],
        "vhosts": [{"name": v, "limits": [], "metadata": {"description": "", "tags": []}}],
        "permissions": [{"user": u, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"}],
        "exchanges": [{"name": "orders", "vhost": v, "type": "topic", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}],
        "queues": [{"name": "eu-orders", "vhost": v, "durable": True, "auto_delete": False,
                    "arguments": {"x-max-priority": 5, "x-queue-type": "classic"}}],
        "bindings": [{"source": "orders", "vhost": v, "destination": "eu-orders",
                      "destination_type": "queue", "routing_key": "eu.#", "arguments": {}}],
    }
    # rabbitmqctl reads the file as the rabbitmq user: a world-readable place.
    d = tempfile.mkdtemp(prefix="warren-defs-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "definitions.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    os.chmod(path, 0o644)
    broker.ctl("import_definitions", path)
    try:
        c = connect(broker, u, "fixture-password", v)
        ch = c.channel()
        ch.confirm_delivery()
        ch.basic_publish("orders", "eu.fr", b"bonjour", pika.BasicProperties(priority=3))
        ch.basic_publish("orders", "us.ny", b"unrouted")
        assert ch.queue_declare("eu-orders", passive=True).method.message_count == 1
        method, props, body = ch.basic_get("eu-orders", auto_ack=True)
        assert body == b"bonjour"
        # The imported arguments are the queue's: redeclaring with them is equivalent.
        ch.queue_declare("eu-orders", durable=True, arguments={"x-max-priority": 5, "x-queue-type": "classic"})
        c.close()
    finally:
        broker.ctl("delete_vhost", v, check=False)
        broker.ctl("delete_user", u, check=False)
        shutil.rmtree(d, ignore_errors=True)


def test_export_then_import_restores_a_vhost(broker, vhost):
    """export_definitions writes what import_definitions reads: a deleted
    vhost comes back with its durable topology and arguments."""
    import json

    c = pika.BlockingConnection(broker.params(virtual_host=vhost))
    ch = c.channel()
    ch.exchange_declare("ex-ae", "fanout", durable=True)
    ch.exchange_declare("ex-main", "topic", durable=True, arguments={"alternate-exchange": "ex-ae"})
    ch.queue_declare("q-main", durable=True, arguments={"x-max-length": 10, "x-dead-letter-exchange": "ex-ae"})
    ch.queue_bind("q-main", "ex-main", "a.#")
    ch.exchange_bind("ex-ae", "ex-main", "b.*")
    c.close()
    d = tempfile.mkdtemp(prefix="warren-export-")
    os.chmod(d, 0o777)  # rabbitmqctl writes it as the rabbitmq user
    path = os.path.join(d, "export.json")
    try:
        broker.ctl("export_definitions", path)
        with open(path) as f:
            doc = json.load(f)
        mine = lambda key: [e for e in doc[key] if e["vhost"] == vhost]
        assert {q["name"]: q["arguments"] for q in mine("queues")} == {
            "q-main": {"x-max-length": 10, "x-dead-letter-exchange": "ex-ae"}
        }
        assert {(x["name"], x["type"]) for x in mine("exchanges")} == {("ex-ae", "fanout"), ("ex-main", "topic")}
        assert {(b["source"], b["destination"], b["destination_type"], b["routing_key"]) for b in mine("bindings")} == {
            ("ex-main", "q-main", "queue", "a.#"),
            ("ex-main", "ex-ae", "exchange", "b.*"),
        }
        assert any(u["name"] == "guest" and u["password_hash"] for u in doc["users"])
        broker.ctl("delete_vhost", vhost)
        broker.ctl("import_definitions", path)
        c = pika.BlockingConnection(broker.params(virtual_host=vhost))
        ch = c.channel()
        ch.confirm_delivery()
        # Equivalent redeclarations: the arguments came back as they were.
        ch.queue_declare("q-main", durable=True, arguments={"x-max-length": 10, "x-dead-letter-exchange": "ex-ae"})
        ch.exchange_declare("ex-main", "topic", durable=True, arguments={"alternate-exchange": "ex-ae"})
        ch.basic_publish("ex-main", "a.b", b"routed")
        assert ch.queue_declare("q-main", passive=True).method.message_count == 1
        c.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_ctl_lists_consumers(broker, vhost):
    c = pika.BlockingConnection(broker.params(virtual_host=vhost))
    ch = c.channel()
    ch.basic_qos(prefetch_count=7)
    ch.queue_declare("consumed")
    ch.basic_consume("consumed", lambda *a: None, consumer_tag="ctag-x")
    rows = broker.ctl(
        "list_consumers", "-q", "-p", vhost, "queue_name", "consumer_tag", "ack_required", "prefetch_count", "active"
    ).stdout.splitlines()
    assert rows == ["queue_name\tconsumer_tag\tack_required\tprefetch_count\tactive", "consumed\tctag-x\ttrue\t7\ttrue"]
    c.close()


def test_user_limits(broker, user, vhost):
    broker.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    broker.ctl("set_user_limits", user, '{"max-connections": 1, "max-channels": 2}')
    out = broker.ctl("list_user_limits", "-q", "--user", user).stdout.splitlines()
    assert out == ['{"max-channels":2,"max-connections":1}']
    first = connect(broker, user, "pw-" + user, vhost)
    with pytest.raises(pe.ProbableAccessDeniedError) as e:
        connect(broker, user, "pw-" + user, vhost)
    assert f"(530) \"NOT_ALLOWED - connection refused for user '{user}': user connection limit (1) is reached\"" in str(e.value)
    first.channel()
    first.channel()
    with pytest.raises(pe.ConnectionClosedByBroker) as e:
        first.channel()
    assert e.value.reply_code == 530
    assert e.value.reply_text == (
        f"NOT_ALLOWED - number of channels opened for user '{user}' has reached the maximum allowed user limit of (2)"
    )
    broker.ctl("clear_user_limits", user, "max-connections")
    assert broker.ctl("list_user_limits", "-q", "--user", user).stdout.splitlines() == ['{"max-channels":2}']


def test_access_refused_quoting_three_long_names(broker):
    """255-octet user, vhost and queue names in one 403 text (well over 255
    octets): the text is cut as RabbitMQ cuts it, the channel closes with
    403, and the connection goes on."""
    tag = uuid.uuid4().hex[:8]
    u = ("u-" + tag + "-").ljust(255, "ü")[:255]
    u = u.encode()[:255].decode(errors="ignore")
    v = ("v-" + tag + "-" + "€" * 90).encode()[:255].decode(errors="ignore")
    q = ("q-" + tag + "-").ljust(255, "x")
    broker.ctl("add_user", u, "pw")
    broker.ctl("add_vhost", v)
    try:
        broker.ctl("set_permissions", "-p", v, u, "", "", "")  # may log in, may do nothing
        c = connect(broker, u, "pw", v)
        with pytest.raises(pe.ChannelClosedByBroker) as e:
            c.channel().queue_declare(q)
        code, text = e.value.args
        assert code == 403
        raw = ast.literal_eval(text) if text[:2] in ('b"', "b'") else text.encode()
        assert len(raw) == 255 and raw.endswith(b"...")
        assert raw[:252] == f"ACCESS_REFUSED - access to queue '{q}' in vhost '{v}'".encode()[:252]
        c.channel().basic_publish("amq.direct", "k", b"")  # another channel on the same connection
        assert c.is_open
        c.close()
    finally:
        broker.ctl("delete_vhost", v, check=False)
        broker.ctl("delete_user", u, check=False)
