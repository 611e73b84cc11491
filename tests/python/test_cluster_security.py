"""The cluster as a stranger on the network would attack it (issue 24):
nodes linked by mutual TLS (certificates made here with openssl), and
what someone without the cluster's certificates can do to its cluster
listeners and its etcd keys — nothing: no message data, no change to the
in-sync replica set, no client traffic. Warren only."""
import json
import os
import socket
import ssl
import struct
import subprocess
import time

import pika
import pytest

from conftest import free_port, start_warren, wait_for
from pki import Pki
from test_cluster import (Node, Publisher, agreed_leader, check_kept, cluster, drain, durable_queue, etcd,  # noqa: F401,E501
                          failover_loop, in_sync, settled)

SECRET = "top-secret-body"


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's cluster mode")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = Pki(d / "cluster")
    certs = {n: ca.leaf(n, dns=[n]) for n in ["n0", "n1", "n2"]}
    other = Pki(d / "other", name="stranger-ca")
    return {"ca": ca.ca, "ca_obj": ca, "certs": certs, "other": other, "other_n1": other.leaf("n1", dns=["n1"])}


def tls_args(pki, name, listen):
    cert, key = pki["certs"][name]
    return ["--cluster-tls-cert", str(cert), "--cluster-tls-key", str(key), "--cluster-tls-ca", str(pki["ca"]),
            "--cluster-listen", f"127.0.0.1:{listen}"]


@pytest.fixture
def tls_cluster(etcd, pki):  # noqa: F811
    name = f"c{free_port()}"
    nodes = []
    for i in range(3):
        listen = free_port()
        n = Node(etcd.url, name, f"n{i}", extra=tls_args(pki, f"n{i}", listen))
        n.listen = listen
        n.cluster_name = name
        nodes.append(n)
    yield nodes
    for n in nodes:
        n.stop()


def frame(kind, payload):
    return struct.pack(">BI", kind, len(payload)) + payload


def s16(text):
    b = text.encode()
    return struct.pack(">H", len(b)) + b


def hello(cluster_name, node):
    """What a follower holding nothing says first (kind 1)."""
    return frame(1, s16(cluster_name) + s16(node))


def forged_acks():
    """Acknowledgements of the highest position (kind 2)."""
    return frame(2, struct.pack(">QQ", 2**63, 2**63)) * 4


def read_all(sock, limit=3.0):
    """What the peer sends until it closes or `limit` seconds pass."""
    sock.settimeout(0.2)
    data = b""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return data


def attack(port, cluster_name, member, pki):
    """Every way in a stranger has: plain TCP, TLS without a certificate,
    TLS with another CA's certificate naming a member; each says a
    follower's hello naming `member` and forges ACKs. Returns what came back."""
    got = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(hello(cluster_name, member) + forged_acks())
        got.append(read_all(s))
    for cert in [None, pki["other_n1"]]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s = ctx.wrap_socket(raw, server_hostname=member)
            s.sendall(hello(cluster_name, member) + forged_acks())
            got.append(read_all(s))
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError):
            got.append(b"")
        finally:
            raw.close()
    return got


def test_without_tls_a_cluster_listener_off_loopback_is_refused(etcd):  # noqa: F811
    port = free_port()
    args = ["--cluster-etcd", etcd.url, "--cluster-name", f"c{port}", "--node-name", "n0",
            "--cluster-listen", f"0.0.0.0:{port}"]
    from conftest import warren_binary
    r = subprocess.run([warren_binary(), "--amqp-listen", f"127.0.0.1:{free_port()}", "--http-listen", "",
                        "--prometheus-listen", "", "--data-dir", f"/tmp/warren-insecure-{port}", *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "without TLS" in r.stdout + r.stderr and "--cluster-insecure" in r.stdout + r.stderr
    # Accepted with --cluster-insecure, with a warning at start.
    proc, _, data = start_warren(extra=[*args, "--cluster-insecure"])
    try:
        assert wait_for(lambda: any("--cluster-insecure" in line for line in proc.log), timeout=10)
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["rm", "-rf", data, f"/tmp/warren-insecure-{port}"])


def test_a_stranger_gets_nothing_from_a_tls_cluster(tls_cluster, pki):
    lead, leader, epoch = settled(tls_cluster)
    follower = next(n for n in tls_cluster if n is not lead)
    # Clients through a follower reach the leader inside the nodes' TLS.
    durable_queue(follower, "secrets")
    c = pika.BlockingConnection(follower.params())
    ch = c.channel()
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("", "secrets", f"{SECRET}:{i}".encode(), pika.BasicProperties(delivery_mode=2))
    c.close()
    isr_before = sorted(lead.status()["isr"])
    for node in tls_cluster:
        for member in ["n0", "n1", "n2"]:
            for answer in attack(node.listen, node.cluster_name, member, pki):
                assert SECRET.encode() not in answer
                assert b"segment" not in answer and b".seg" not in answer
    assert sorted(lead.status()["isr"]) == isr_before == ["n0", "n1", "n2"]
    assert agreed_leader(tls_cluster) == (leader, epoch)
    # A publisher through a follower went on meanwhile; after the leader's
    # kill -9 nothing confirmed is lost.
    pub = Publisher(follower, "secrets", "after")
    pub.start()
    assert wait_for(lambda: len(pub.confirmed) >= 20, timeout=60, interval=0.05), pub.error
    lead.kill()
    pub.finish()
    survivors = [n for n in tls_cluster if n is not lead]
    assert wait_for(lambda: (agreed_leader(survivors) or (None, 0))[1] > epoch, timeout=30, interval=0.1)
    left = drain(survivors[0], "secrets")
    assert sum(1 for b, _ in left if b.startswith(SECRET)) == 50
    check_kept([pub], [(b, r) for b, r in left if b.startswith("after:")])


def test_a_forged_leader_key_gets_no_client_traffic_nor_replication(tls_cluster, pki, etcd):  # noqa: F811
    lead, leader, epoch = settled(tls_cluster)
    follower = next(n for n in tls_cluster if n is not lead)
    # The stranger listens with a certificate of its own CA naming a member.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    received = []
    import threading

    def take():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                s, _ = server.accept()
            except socket.timeout:
                continue
            received.append(read_all(s, 1.0))
            s.close()

    stop = threading.Event()
    t = threading.Thread(target=take, daemon=True)
    t.start()
    try:
        other = next(n for n in tls_cluster if n is not lead and n is not follower)
        forged = json.dumps({"node": other.name, "epoch": epoch + 100, "amqp": f"127.0.0.1:{port}",
                             "repl": f"127.0.0.1:{port}", "http": f"127.0.0.1:{port}"})
        key = f"/warren/{lead.cluster_name}/leader"
        env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
        deadline = time.monotonic() + 20
        # The real leader keeps writing its key back: write it until a
        # follower has tried the stranger (or the deadline).
        while time.monotonic() < deadline and not received:
            subprocess.run(["etcdctl", "--endpoints", etcd.url, "put", key, forged], env=env, check=True,
                           capture_output=True)
            time.sleep(0.1)
        # A client through the follower while the forged key stands is
        # never served: the tunnel to the "leader" fails its TLS check.
        served = False
        try:
            c = pika.BlockingConnection(pika.ConnectionParameters(
                "127.0.0.1", follower.port, connection_attempts=1, socket_timeout=5,
                blocked_connection_timeout=5))
            served = True
            c.close()
        except pika.exceptions.AMQPError:
            pass
        assert not served
    finally:
        stop.set()
        t.join(5)
        server.close()
    assert received, "no follower tried the forged leader: the test proves nothing"
    for data in received:
        # TLS handshakes only: no AMQP header, no credentials, no hello.
        assert b"AMQP" not in data and b"guest" not in data and SECRET.encode() not in data
        assert lead.cluster_name.encode() not in data


def tls_etcd(pki, client_cert_auth=False):
    """etcd over TLS (its certificate from the cluster CA), asking for
    client certificates if `client_cert_auth`; `ctl(...)` runs etcdctl
    against it."""
    import tempfile
    server = pki["ca_obj"].leaf("etcd", dns=["localhost"], ips=["127.0.0.1"])
    data = tempfile.mkdtemp(prefix="warren-etcd-")
    client, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{client}"
    extra = ["--trusted-ca-file", str(pki["ca"]), "--client-cert-auth"] if client_cert_auth else []
    proc = subprocess.Popen([
        "etcd", "--name", "s", "--data-dir", data,
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"s=http://127.0.0.1:{peer}",
        "--cert-file", str(server[0]), "--key-file", str(server[1]), *extra,
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = pki["ca_obj"].leaf("etcd-admin", dns=["etcd-admin"]) if client_cert_auth else None

    def ctl(*args, user=None, check=True):
        cmd = ["etcdctl", "--endpoints", url, "--cacert", str(pki["ca"])]
        if admin:
            cmd += ["--cert", str(admin[0]), "--key", str(admin[1])]
        if user:
            cmd += ["--user", user]
        r = subprocess.run(cmd + list(args), capture_output=True, text=True,
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, timeout=30)
        assert not check or r.returncode == 0, r.stderr
        return r

    assert wait_for(lambda: ctl("endpoint", "health", check=False).returncode == 0, timeout=30, interval=0.2)
    proc.url, proc.ctl, proc.data = url, ctl, data
    return proc


def stop_etcd(proc):
    import shutil
    proc.kill()
    proc.wait()
    shutil.rmtree(proc.data, ignore_errors=True)


@pytest.fixture
def secure_etcd(pki, tmp_path):
    """etcd with TLS and auth enabled: a user `warren` whose role may only
    touch `/warren/`. (etcd 3.4's JSON gateway refuses requests that carry
    a client certificate once auth is enabled — "CommonName of client
    sending a request against gateway will be ignored" — so this etcd does
    not ask for one; `test_etcd_client_certificates` covers those.)"""
    proc = tls_etcd(pki)
    ctl = proc.ctl
    ctl("user", "add", "root:rootpw", "--interactive=false")
    ctl("user", "add", "warren:warren-pw", "--interactive=false")
    ctl("role", "add", "warren")
    ctl("role", "grant-permission", "warren", "--prefix=true", "readwrite", "/warren/")
    ctl("user", "grant-role", "warren", "warren")
    ctl("auth", "enable")
    password = tmp_path / "etcd-password"
    password.write_text("warren-pw\n")
    proc.args = ["--cluster-etcd-ca", str(pki["ca"]), "--cluster-etcd-user", "warren",
                 "--cluster-etcd-password-file", str(password)]
    yield proc
    stop_etcd(proc)


def test_etcd_client_certificates(pki):
    """An etcd that asks for client certificates is reached with
    --cluster-etcd-cert/--cluster-etcd-key, and not without them."""
    etcd_proc = tls_etcd(pki, client_cert_auth=True)
    cert, key = pki["ca_obj"].leaf("warren-etcd-client", dns=["warren-etcd-client"])
    name = f"c{free_port()}"
    base = ["--cluster-etcd-ca", str(pki["ca"]), "--cluster-listen", f"127.0.0.1:{free_port()}"]
    nodes = []
    try:
        without = Node(etcd_proc.url, name, "n0", extra=base)
        nodes.append(without)
        assert wait_for(lambda: any("cannot reach etcd" in line for line in without.proc.log), timeout=20)
        assert (without.status() or {}).get("role") != "leader"
        without.stop()
        nodes.remove(without)
        base[-1] = f"127.0.0.1:{free_port()}"
        with_cert = Node(etcd_proc.url, name, "n0",
                         extra=[*base, "--cluster-etcd-cert", str(cert), "--cluster-etcd-key", str(key)])
        nodes.append(with_cert)
        assert wait_for(lambda: (with_cert.status() or {}).get("role") == "leader", timeout=30, interval=0.2)
    finally:
        for n in nodes:
            n.stop()
        stop_etcd(etcd_proc)


def test_the_failover_loop_passes_with_tls_between_nodes_and_to_etcd_with_auth(pki, secure_etcd):
    name = f"c{free_port()}"
    nodes = []
    try:
        for i in range(3):
            listen = free_port()
            nodes.append(Node(secure_etcd.url, name, f"n{i}",
                              extra=[*secure_etcd.args, *tls_args(pki, f"n{i}", listen)]))
        assert wait_for(lambda: in_sync(nodes), timeout=30, interval=0.2)
        # The cluster's keys are there, and only its user reads them.
        keys = secure_etcd.ctl("get", "--prefix", "--keys-only", f"/warren/{name}/", user="warren:warren-pw")
        assert f"/warren/{name}/leader" in keys.stdout
        stranger = secure_etcd.ctl("get", "--prefix", f"/warren/{name}/", check=False)
        assert stranger.returncode != 0 or f"/warren/{name}/leader" not in stranger.stdout
        failover_loop(nodes)
    finally:
        for n in nodes:
            n.stop()


def outward_address():
    """An IPv4 address of this machine other than loopback (None if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_through_a_follower_a_client_keeps_its_address_and_amqps_is_passed_on(etcd, pki):  # noqa: F811
    """A follower passes clients on with their own address: `guest` (a
    loopback user) is refused when it comes from another address through a
    co-located follower, as it would be at the leader. An amqps client of
    a follower reaches the leader's broker (no placeholder of its own)."""
    outward = outward_address()
    if outward is None:
        pytest.skip("this machine has no address besides loopback")
    server = pki["ca_obj"].leaf("amqps", dns=["localhost"])
    name = f"c{free_port()}"
    nodes = []
    try:
        for i in range(2):
            amqps = free_port()
            n = Node(etcd.url, name, f"n{i}", listen_host="0.0.0.0",
                     extra=["--cluster-listen", f"127.0.0.1:{free_port()}", "--amqps-listen", f"127.0.0.1:{amqps}",
                            "--tls-cert", str(server[0]), "--tls-key", str(server[1])])
            n.amqps = amqps
            nodes.append(n)
        lead, _, _ = settled(nodes)
        follower = next(n for n in nodes if n is not lead)
        from conftest import warren_binary
        subprocess.run([warren_binary(), "ctl", "--data-dir", lead.data, "add_user", "remote", "pw"], check=True,
                       capture_output=True, timeout=30)
        subprocess.run([warren_binary(), "ctl", "--data-dir", lead.data, "set_permissions", "remote", ".*", ".*",
                        ".*"], check=True, capture_output=True, timeout=30)

        def connect(host, user, password, port=None):
            return pika.BlockingConnection(pika.ConnectionParameters(
                host, port or follower.port, credentials=pika.PlainCredentials(user, password),
                connection_attempts=1))

        # From the outward address, through the follower: guest is refused,
        # another user is not (the path works); from loopback guest is served.
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            connect(outward, "guest", "guest")
        connect(outward, "remote", "pw").close()
        connect("127.0.0.1", "guest", "guest").close()
        # amqps at the follower: published there, read at the leader.
        import ssl as _ssl
        ctx = _ssl.create_default_context(cafile=str(pki["ca"]))
        c = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", follower.amqps, ssl_options=pika.SSLOptions(ctx, server_hostname="localhost"),
            connection_attempts=1))
        ch = c.channel()
        ch.queue_declare("via-amqps", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", "via-amqps", b"over tls", pika.BasicProperties(delivery_mode=2))
        c.close()
        c = pika.BlockingConnection(lead.params())
        method, _, body = c.channel().basic_get("via-amqps", auto_ack=True)
        assert body == b"over tls"
        c.close()
    finally:
        for n in nodes:
            n.stop()


def test_with_no_leader_known_nothing_is_served():
    """A cluster node that knows no leader serves no broker of its own:
    the API answers 503 (a write is not taken), AMQP clients are closed."""
    import requests
    port = free_port()
    proc, amqp, data = start_warren(extra=["--cluster-etcd", f"http://127.0.0.1:{free_port()}", "--cluster-name",
                                           f"c{port}", "--node-name", "n0"])
    try:
        auth = ("guest", "guest")
        r = requests.put(proc.http + "/api/vhosts/placeholder", auth=auth, timeout=30)
        assert r.status_code == 503, r.text
        assert requests.get(proc.http + "/api/overview", auth=auth, timeout=30).status_code == 503
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp, connection_attempts=1,
                                                              socket_timeout=20))
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["rm", "-rf", data])


def test_a_followers_api_does_not_read_a_body_before_the_leader_authenticates(cluster):  # noqa: F811
    """A follower streams an API request to the leader, which answers a bad
    login before reading the body: a client announcing 20 MiB and sending
    none of it gets its 401 at once (the follower used to read the whole
    body first)."""
    lead, _, _ = settled(cluster)
    follower = next(n for n in cluster if n is not lead)
    host, port = follower.proc.http.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /api/definitions HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6d3Jvbmc=\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 20971520\r\n\r\n")
        s.settimeout(10)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer


def test_a_followers_own_api_answers_log_in_at_the_leader(cluster):  # noqa: F811
    """`/api/nodes` on a follower answers for the follower, but whoever
    calls is logged in by the leader (a follower has no users of its own):
    a user made on the leader is let in, a wrong password is not."""
    import requests
    from conftest import warren_binary
    lead, _, _ = settled(cluster)
    follower = next(n for n in cluster if n is not lead)
    for args in (["add_user", "watcher", "pw"], ["set_user_tags", "watcher", "monitoring"]):
        subprocess.run([warren_binary(), "ctl", "--data-dir", lead.data, *args], check=True, capture_output=True,
                       timeout=30)
    url = follower.proc.http + "/api/nodes"
    r = requests.get(url, auth=("watcher", "pw"), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()[0]["warren_cluster"]["node"] == follower.name
    assert requests.get(url, auth=("watcher", "wrong"), timeout=30).status_code == 401
    assert requests.get(url, timeout=30).status_code == 401
