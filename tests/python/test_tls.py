"""AMQP over TLS (amqps): pika and py-amqp against Warren's TLS listener,
with certificates this test makes (trustme), with and without client
certificates.

These start their own Warren with TLS configured; pointing them at another
broker would need that broker's TLS set up to match, so with
WARREN_TEST_ADDR they are skipped.
"""
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

import amqp
import pika
import pytest
import trustme

from conftest import free_port, start_warren, stop_warren, warren_binary


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def start_tls_warren(ca, *extra):
    d = tempfile.mkdtemp(prefix="warren-tls-")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {n: os.path.join(d, n) for n in ("cert.pem", "key.pem", "ca.pem")}
    cert.private_key_pem.write_to_path(paths["key.pem"])
    with open(paths["cert.pem"], "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    ca.cert_pem.write_to_path(paths["ca.pem"])
    tls_port = free_port()
    args = [
        "--amqps-listen", f"127.0.0.1:{tls_port}",
        "--tls-cert", paths["cert.pem"],
        "--tls-key", paths["key.pem"],
    ]
    # "CA" in the extra flags stands for the CA file's path.
    args += [paths["ca.pem"] if a == "CA" else a for a in extra]
    try:
        proc, port, data = start_warren(extra=args)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    proc.plain_port = port
    return proc, tls_port, data, paths["ca.pem"]


class TlsBroker(tuple):
    """(TLS port, data directory, CA file); `.plain` is its plain AMQP port."""


@pytest.fixture
def tls_broker(broker, ca, request):
    if not broker.is_warren:
        pytest.skip("starts its own Warren with TLS")
    proc, port, data, ca_file = start_tls_warren(ca, *getattr(request, "param", ()))
    t = TlsBroker((port, data, ca_file))
    t.plain = proc.plain_port
    yield t
    stop_warren(proc, data, os.path.dirname(ca_file))


def client_context(ca, client_cert=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    if client_cert is not None:
        client_cert.configure_cert(ctx)
    return ctx


def pika_tls(port, ctx):
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1", port=port, ssl_options=pika.SSLOptions(ctx, server_hostname="localhost")
        )
    )


def test_pika_over_tls(tls_broker, ca):
    port, data, _ = tls_broker
    c = pika_tls(port, client_context(ca))
    ch = c.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    body = os.urandom(300_000)  # several frames, several TLS records
    for i in range(50):
        ch.basic_publish("", q, body if i == 0 else b"m%d" % i)
    got = []
    for method, _props, payload in ch.consume(q, inactivity_timeout=5):
        if method is None:
            break
        got.append(payload)
        ch.basic_ack(method.delivery_tag)
        if len(got) == 50:
            break
    assert got[0] == body
    assert got[1:] == [b"m%d" % i for i in range(1, 50)]
    out = subprocess.run(
        [warren_binary(), "ctl", "--data-dir", data, "list_connections", "-q", "user", "ssl"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "guest\ttrue" in out.splitlines()
    c.close()


def test_py_amqp_over_tls(tls_broker):
    port, _, ca_file = tls_broker
    sslopts = {"ca_certs": ca_file, "server_hostname": "localhost", "cert_reqs": ssl.CERT_REQUIRED}
    c = amqp.Connection(f"127.0.0.1:{port}", ssl=sslopts)
    c.connect()
    ch = c.channel()
    q, _, _ = ch.queue_declare("", exclusive=True)
    ch.confirm_select()
    ch.basic_publish(amqp.Message(b"over tls"), routing_key=q)
    msg = ch.basic_get(q, no_ack=True)
    assert msg is not None and msg.body == b"over tls"
    c.close()


def test_plain_amqp_on_the_tls_port_is_dropped_and_the_broker_goes_on(tls_broker, ca):
    port, _, _ = tls_broker
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        s.settimeout(5)
        try:
            data = s.recv(100)
        except (ConnectionResetError, socket.timeout):
            data = b""
        assert not data.startswith(b"\x01\x00\x00"), "no AMQP frame over a non-TLS stream"
    pika_tls(port, client_context(ca)).close()


@pytest.mark.parametrize("tls_broker", [("--tls-ca", "CA", "--tls-verify-peer")], indirect=True)
def test_client_certificate_required(tls_broker, ca):
    port, _, _ = tls_broker
    with pytest.raises(Exception):
        pika_tls(port, client_context(ca))
    client = ca.issue_cert("client@example.test")
    pika_tls(port, client_context(ca, client)).close()
    other_ca = trustme.CA()
    with pytest.raises(Exception):
        pika_tls(port, client_context(ca, other_ca.issue_cert("stranger@example.test")))


@pytest.mark.parametrize("tls_broker", [("--tls-ca", "CA")], indirect=True)
def test_client_certificate_optional_without_verify_peer(tls_broker, ca):
    port, _, _ = tls_broker
    pika_tls(port, client_context(ca)).close()
    pika_tls(port, client_context(ca, ca.issue_cert("client@example.test"))).close()


def mechanisms_offered(port, ctx=None):
    """The mechanisms connection.start offers, over TLS with `ctx` or plain."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="localhost") if ctx else raw
    with s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        data = b""
        while len(data) < 7 or len(data) < 8 + int.from_bytes(data[3:7], "big"):
            chunk = s.recv(65536)
            assert chunk, "closed before connection.start"
            data += chunk
    # class, method, versions, server properties (a table), then mechanisms.
    at = 7 + 4 + 2
    at += 4 + int.from_bytes(data[at:at + 4], "big")
    n = int.from_bytes(data[at:at + 4], "big")
    return data[at + 4:at + 4 + n].decode().split()


def pika_external(port, ctx):
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=port, credentials=pika.credentials.ExternalCredentials(), connection_attempts=1,
        ssl_options=pika.SSLOptions(ctx, server_hostname="localhost")))


def ctl(data, *args):
    r = subprocess.run([warren_binary(), "ctl", "--data-dir", data, *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def subject_rfc4514(cert):
    """The certificate's subject as OpenSSL writes it in RFC 2253 form."""
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:
        f.write(cert.cert_chain_pems[0].bytes())
        f.flush()
        out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", f.name],
                             capture_output=True, text=True, check=True).stdout
    return out.strip().removeprefix("subject=").strip()


@pytest.mark.parametrize("tls_broker", [("--tls-ca", "CA", "--auth-mechanisms", "PLAIN,EXTERNAL",
                                         "--ssl-cert-login-from", "common_name")], indirect=True)
def test_external_logs_in_as_the_certificates_common_name(tls_broker, ca, broker):
    port, data, _ = tls_broker
    alice = ca.issue_cert("alice@example.test", common_name="alice")
    # Offered only to a client whose certificate was verified.
    assert mechanisms_offered(port, client_context(ca, alice)) == ["PLAIN", "EXTERNAL"]
    assert mechanisms_offered(port, client_context(ca)) == ["PLAIN"]
    assert mechanisms_offered(tls_broker.plain) == ["PLAIN"]
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_external(port, client_context(ca, alice))  # no user 'alice' yet
    ctl(data, "add_user", "alice", "not-used-by-external")
    ctl(data, "set_permissions", "-p", "/", "alice", ".*", ".*", ".*")
    c = pika_external(port, client_context(ca, alice))
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"by certificate")
    assert ch.basic_get(q, auto_ack=True)[2] == b"by certificate"
    c.close()
    # Without a certificate, EXTERNAL is refused; PLAIN still works.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_external(port, client_context(ca))
    pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=port, credentials=pika.PlainCredentials("alice", "not-used-by-external"),
        ssl_options=pika.SSLOptions(client_context(ca), server_hostname="localhost"))).close()
    # A certificate from another CA does not get through the handshake.
    with pytest.raises(Exception):
        pika_external(port, client_context(ca, trustme.CA().issue_cert("x@example.test", common_name="alice")))


@pytest.mark.parametrize("tls_broker", [("--tls-ca", "CA", "--tls-verify-peer", "--auth-mechanisms", "EXTERNAL")],
                         indirect=True)
def test_external_by_distinguished_name_and_nothing_else(tls_broker, ca):
    port, data, _ = tls_broker
    bob = ca.issue_cert("bob@example.test", common_name="bob")
    dn = subject_rfc4514(bob)
    assert dn.startswith("CN=bob,") and "O=" in dn
    assert mechanisms_offered(port, client_context(ca, bob)) == ["EXTERNAL"]
    ctl(data, "add_user", "bob", "pw")
    ctl(data, "set_permissions", "-p", "/", "bob", ".*", ".*", ".*")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_external(port, client_context(ca, bob))  # the user is the whole DN, not its CN
    ctl(data, "add_user", dn, "pw")
    ctl(data, "set_permissions", "-p", "/", dn, ".*", ".*", ".*")
    pika_external(port, client_context(ca, bob)).close()
    # PLAIN is not offered: a password login is refused even for a real user.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.ConnectionParameters(
            host="127.0.0.1", port=port, credentials=pika.PlainCredentials("bob", "pw"), connection_attempts=1,
            ssl_options=pika.SSLOptions(client_context(ca, bob), server_hostname="localhost"))).close()


def test_external_is_not_offered_by_default(tls_broker, ca, broker):
    port, _, _ = tls_broker
    assert mechanisms_offered(port, client_context(ca)) == ["PLAIN", "AMQPLAIN"]
    assert mechanisms_offered(broker.port) == ["PLAIN", "AMQPLAIN"]
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_external(port, client_context(ca))
