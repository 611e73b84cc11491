"""AMQP over TLS (amqps): pika and py-amqp against Warren's TLS listener,
with certificates this test makes (trustme), with and without client
certificates.

These start their own Warren with TLS configured; pointing them at another
broker would need that broker's TLS set up to match, so with
WARREN_TEST_ADDR they are skipped.
"""
import os
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
    proc, _port, data = start_warren(extra=args)
    return proc, tls_port, data, paths["ca.pem"]


@pytest.fixture
def tls_broker(broker, ca, request):
    if not broker.is_warren:
        pytest.skip("starts its own Warren with TLS")
    proc, port, data, ca_file = start_tls_warren(ca, *getattr(request, "param", ()))
    yield port, data, ca_file
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
