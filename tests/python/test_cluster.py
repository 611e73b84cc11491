"""Cluster mode, first slice (issue "Warren cluster"): three Warren nodes on
a real etcd (Debian's etcd-server, started here on free ports). One leader
at a time serves; followers proxy AMQP connections to it; a killed leader is
replaced within seconds; a leader that loses etcd steps down. Replication
is not there yet, so nothing here checks messages across a failover.
Warren only."""
import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time

import pika
import pytest
import requests

from conftest import free_port, start_warren, wait_for, warren_binary


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's cluster mode")


@pytest.fixture
def etcd():
    assert shutil.which("etcd"), "etcd is missing: scripts/etcd-env.sh installs it"
    data = tempfile.mkdtemp(prefix="warren-etcd-")
    client, peer = free_port(), free_port()
    proc = subprocess.Popen([
        "etcd", "--name", "t", "--data-dir", data,
        "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"t=http://127.0.0.1:{peer}",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{client}"

    def healthy():
        r = subprocess.run(["etcdctl", "--endpoints", url, "endpoint", "health"], capture_output=True,
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return r.returncode == 0

    assert wait_for(healthy, timeout=30, interval=0.2)
    proc.url = url
    yield proc
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait()
    shutil.rmtree(data, ignore_errors=True)


class Node:
    def __init__(self, etcd_url, cluster, name):
        self.name = name
        self.proc, self.port, self.data = start_warren(extra=[
            "--cluster-etcd", etcd_url, "--cluster-name", cluster, "--node-name", name])

    def status(self):
        r = subprocess.run([warren_binary(), "ctl", "--data-dir", self.data, "cluster_status"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout[r.stdout.index("{"):])

    def params(self):
        return pika.ConnectionParameters(host="127.0.0.1", port=self.port, connection_attempts=1)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def cluster(etcd):
    name = f"c{free_port()}"
    nodes = [Node(etcd.url, name, f"n{i}") for i in range(3)]
    yield nodes
    for n in nodes:
        n.stop()


def agreed_leader(nodes):
    """The leader every given node names, if they agree and it is one of them."""
    statuses = [n.status() for n in nodes]
    if any(s is None for s in statuses):
        return None
    leaders = {(s["leader"], s["epoch"]) for s in statuses}
    if len(leaders) != 1:
        return None
    leader, epoch = leaders.pop()
    roles = sorted(s["role"] for s in statuses)
    live = {n.name for n in nodes}
    if leader not in live or roles.count("leader") != 1 or roles.count("follower") != len(nodes) - 1:
        return None
    return leader, epoch


def test_one_leader_serves_and_followers_proxy_to_it(cluster):
    assert wait_for(lambda: agreed_leader(cluster), timeout=30, interval=0.2)
    leader, epoch = agreed_leader(cluster)
    assert epoch >= 1
    assert wait_for(lambda: sorted(m["name"] for m in cluster[0].status()["members"]) == ["n0", "n1", "n2"])
    # Through every node: the same queue, on the leader.
    for n in cluster:
        c = pika.BlockingConnection(n.params())
        ch = c.channel()
        ch.confirm_delivery()
        ch.queue_declare("shared", durable=True)
        ch.basic_publish("", "shared", n.name.encode(), pika.BasicProperties(delivery_mode=2))
        c.close()
    c = pika.BlockingConnection(cluster[1].params())
    ch = c.channel()
    bodies = sorted(ch.basic_get("shared", auto_ack=True)[2] for _ in range(3))
    assert bodies == [b"n0", b"n1", b"n2"]
    assert ch.basic_get("shared", auto_ack=True)[0] is None
    c.close()
    # The management API of every node shows its view of the cluster.
    for n in cluster:
        node = requests.get(f"{n.proc.http}/api/nodes", auth=("guest", "guest"), timeout=10).json()[0]
        view = node["warren_cluster"]
        assert view["node"] == n.name and view["leader"] == leader and view["epoch"] == epoch
        assert view["role"] == ("leader" if n.name == leader else "follower")


def test_a_killed_leader_is_replaced_within_seconds(cluster):
    assert wait_for(lambda: agreed_leader(cluster), timeout=30, interval=0.2)
    leader, epoch = agreed_leader(cluster)
    old = next(n for n in cluster if n.name == leader)
    survivors = [n for n in cluster if n is not old]
    t0 = time.monotonic()
    old.proc.send_signal(signal.SIGKILL)
    old.proc.wait()
    # A client that connects during the election is held until there is a
    # new leader, then served by it: one attempt, no retry.
    c = pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=survivors[0].port, connection_attempts=1, stack_timeout=30))
    c.channel().queue_declare("during-election", durable=True)
    c.close()
    assert wait_for(lambda: (agreed_leader(survivors) or (None, 0))[1] > epoch, timeout=30, interval=0.1)
    took = time.monotonic() - t0
    new, new_epoch = agreed_leader(survivors)
    assert new != leader and new_epoch == epoch + 1
    assert took < 10, f"new leader after {took:.1f} s"

    def serves(node):
        try:
            c = pika.BlockingConnection(node.params())
        except pika.exceptions.AMQPConnectionError:
            return False
        c.channel().queue_declare("after-failover", durable=True)
        c.close()
        return True

    for n in survivors:
        assert wait_for(lambda: serves(n), timeout=20, interval=0.2)


def test_a_leader_cut_off_from_etcd_steps_down_and_closes_its_clients(etcd, cluster):
    assert wait_for(lambda: agreed_leader(cluster), timeout=30, interval=0.2)
    leader, _ = agreed_leader(cluster)
    node = next(n for n in cluster if n.name == leader)
    c = pika.BlockingConnection(node.params())
    closed = []
    t0 = time.monotonic()
    etcd.send_signal(signal.SIGSTOP)
    try:
        def gone():
            try:
                c.process_data_events(0.1)
            except pika.exceptions.ConnectionClosedByBroker as e:
                closed.append((e.reply_code, e.reply_text, time.monotonic() - t0))
                return True
            return False

        assert wait_for(gone, timeout=20, interval=0.05)
        code, text, after = closed[0]
        assert code == 320 and "not the cluster leader" in text
        # Before its 3 s lease can have expired in etcd.
        assert after < 3.0, f"stepped down after {after:.1f} s"
        assert node.status()["role"] == "unknown"
    finally:
        etcd.send_signal(signal.SIGCONT)
    assert wait_for(lambda: agreed_leader(cluster), timeout=30, interval=0.2)


def test_cluster_status_outside_a_cluster(broker):
    r = subprocess.run([warren_binary(), "ctl", "--data-dir", broker.data, "cluster_status"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 69 and "not in a cluster" in (r.stdout + r.stderr)


def test_a_celery_worker_carries_on_after_a_failover(cluster, tmp_path):
    """A celery worker and a client given every node's address (celery's
    failover list): tasks run before and after the leader is killed; celery
    reconnects by itself. (Without replication, only tasks sent after the
    failover are checked.)"""
    import os
    import sys
    import types

    from test_celery import HERE, start_worker, stop

    assert wait_for(lambda: agreed_leader(cluster), timeout=30, interval=0.2)
    leader, _ = agreed_leader(cluster)
    url = ";".join(f"amqp://guest:guest@127.0.0.1:{n.port}//" for n in cluster)
    queue = f"celery-cluster-{free_port()}"
    log = tmp_path / "runs"
    env = {"WARREN_CELERY_HEARTBEAT": "2"}
    w = start_worker(types.SimpleNamespace(url=url), queue, env=env)

    def send(tag):
        code = "import sys; from celery_app import tasks; tasks.record.delay(sys.argv[1], sys.argv[2])"
        penv = dict(os.environ, WARREN_CELERY_BROKER=url, WARREN_CELERY_QUEUE=queue, **env)
        subprocess.run([sys.executable, "-c", code, str(log), tag], cwd=HERE, env=penv, check=True, timeout=60)

    def ran(tag):
        return log.exists() and tag in log.read_text().split()

    try:
        send("before")
        assert wait_for(lambda: ran("before"), timeout=60, interval=0.1)
        old = next(n for n in cluster if n.name == leader)
        old.proc.send_signal(signal.SIGKILL)
        old.proc.wait()
        survivors = [n for n in cluster if n is not old]
        assert wait_for(lambda: agreed_leader(survivors), timeout=30, interval=0.2)
        # The worker re-declares its queue on the new leader when it reconnects;
        # a task sent before that would have no queue to go to.
        deadline = time.monotonic() + 60
        while not ran("after") and time.monotonic() < deadline:
            send("after")
            wait_for(lambda: ran("after"), timeout=5, interval=0.1)
        assert ran("after"), "the worker never ran a task after the failover"
    finally:
        stop(w)
