"""Prometheus metrics with rabbitmq_prometheus's names: parsed with the
`prometheus_client` parser, checked to move with traffic, and scraped by a
real Prometheus (Debian's package, installed by scripts/observability-env.sh).

Against RabbitMQ (WARREN_TEST_ADDR), the endpoint is WARREN_TEST_PROMETHEUS
(default http://HOST:15692; `rabbitmq-plugins enable rabbitmq_prometheus`).
"""
import shutil
import subprocess
import tempfile
import urllib.parse

import pika
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, wait_for

REQUIRED = [
    "rabbitmq_connections", "rabbitmq_channels", "rabbitmq_consumers", "rabbitmq_queues",
    "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
    "rabbitmq_global_messages_received_total", "rabbitmq_global_messages_delivered_total",
    "rabbitmq_global_messages_acknowledged_total", "rabbitmq_global_messages_confirmed_total",
    "rabbitmq_global_messages_routed_total", "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_process_resident_memory_bytes", "rabbitmq_disk_space_available_bytes", "rabbitmq_process_open_fds",
    "rabbitmq_alarms_memory_used_watermark", "rabbitmq_alarms_free_disk_space_watermark",
    "rabbitmq_alarms_file_descriptor_limit", "rabbitmq_identity_info", "rabbitmq_build_info",
]


def scrape(broker, path="/metrics"):
    r = requests.get(broker.prometheus + path, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples, name):
    """Sum over every label set (RabbitMQ splits some counters by queue type)."""
    return sum(v for (n, _), v in samples.items() if n == name)


def test_metric_names_and_values_move_with_traffic(broker, conn, name):
    before = scrape(broker)
    names = {n for n, _ in before}
    missing = [m for m in REQUIRED if m not in names]
    assert not missing, missing
    assert value(before, "rabbitmq_alarms_memory_used_watermark") == 0
    assert value(before, "rabbitmq_process_resident_memory_bytes") > 0
    info = [labels for (n, labels) in before if n == "rabbitmq_identity_info"]
    assert info and {"rabbitmq_node", "rabbitmq_cluster"} <= {k for k, _ in info[0]}
    received = total(before, "rabbitmq_global_messages_received_total")
    acked = total(before, "rabbitmq_global_messages_acknowledged_total")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(name)
    for _ in range(10):
        ch.basic_publish("", name, b"x")
    for _ in range(4):
        m, _, _ = ch.basic_get(name)
        ch.basic_ack(m.delivery_tag)

    def moved():
        s = scrape(broker)
        g = lambda n: total(s, n)  # noqa: E731
        return (g("rabbitmq_global_messages_received_total") >= received + 10
                and g("rabbitmq_global_messages_confirmed_total") >= 10
                and g("rabbitmq_global_messages_acknowledged_total") >= acked + 4
                and value(s, "rabbitmq_connections") >= 1 and value(s, "rabbitmq_queues") >= 1)

    assert wait_for(moved, timeout=30, interval=0.5)

    def per_queue():
        s = scrape(broker, "/metrics/per-object")
        return (value(s, "rabbitmq_queue_messages_ready", vhost="/", queue=name) == 6
                and value(s, "rabbitmq_queue_messages_unacked", vhost="/", queue=name) == 0)

    assert wait_for(per_queue, timeout=30, interval=0.5)
    ch.queue_delete(name)


DEAD_LETTERED = {
    "confirmed": [("rabbit_quorum_queue", "at_least_once")],
    "delivery_limit": [("rabbit_quorum_queue", s) for s in ("at_least_once", "at_most_once", "disabled")],
    "expired": [("rabbit_classic_queue", "at_most_once"), ("rabbit_classic_queue", "disabled")]
    + [("rabbit_quorum_queue", s) for s in ("at_least_once", "at_most_once", "disabled")],
    "maxlen": [(t, s) for t in ("rabbit_classic_queue", "rabbit_quorum_queue") for s in ("at_most_once", "disabled")],
    "rejected": [("rabbit_classic_queue", "at_most_once"), ("rabbit_classic_queue", "disabled")]
    + [("rabbit_quorum_queue", s) for s in ("at_least_once", "at_most_once", "disabled")],
}


def dead(samples, what, queue_type, strategy):
    return value(samples, f"rabbitmq_global_messages_dead_lettered_{what}_total",
                 queue_type=queue_type, dead_letter_strategy=strategy)


def test_dead_lettered_and_received_confirm_counters(broker, conn, name):
    """RabbitMQ 3.10's global counters of messages that left a queue
    rejected, expired, over its length or its delivery limit (by queue type,
    and `at_most_once` with a dead-letter exchange or `disabled` without),
    and of messages published in confirm mode."""
    before = scrape(broker)
    for what, rows in DEAD_LETTERED.items():
        for queue_type, strategy in rows:
            assert dead(before, what, queue_type, strategy) is not None, (what, queue_type, strategy)
    ch = conn.channel()
    ch.confirm_delivery()
    with_dlx = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{name}-dlq"}
    ch.queue_declare(f"{name}-dlq")
    ch.queue_declare(f"{name}-plain")
    ch.queue_declare(f"{name}-dlx", arguments=with_dlx)
    ch.queue_declare(f"{name}-ttl", arguments={"x-message-ttl": 1})
    ch.queue_declare(f"{name}-max", arguments={"x-max-length": 1, **with_dlx})
    ch.queue_declare(f"{name}-qq", durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 0})
    for q in (f"{name}-plain", f"{name}-dlx"):
        ch.basic_publish("", q, b"r")
        m, _, _ = ch.basic_get(q)
        ch.basic_reject(m.delivery_tag, requeue=False)
        ch.basic_publish("", q, b"n")
        m, _, _ = ch.basic_get(q)
        ch.basic_nack(m.delivery_tag, requeue=False)
    ch.basic_publish("", f"{name}-ttl", b"t")
    ch.basic_publish("", f"{name}-max", b"1")
    ch.basic_publish("", f"{name}-max", b"2")
    # A quorum queue's delivery limit: requeued once, then over it.
    ch.basic_publish("", f"{name}-qq", b"q")
    m, _, _ = ch.basic_get(f"{name}-qq")
    ch.basic_nack(m.delivery_tag, requeue=True)
    published = 8

    def delta(s, what, queue_type, strategy):
        return dead(s, what, queue_type, strategy) - dead(before, what, queue_type, strategy)

    def counted():
        ch.basic_get(f"{name}-ttl")  # expiry is noticed when the queue is read
        ch.basic_get(f"{name}-qq")
        s = scrape(broker)
        received = value(s, "rabbitmq_global_messages_received_confirm_total", protocol="amqp091") - value(
            before, "rabbitmq_global_messages_received_confirm_total", protocol="amqp091")
        return (received >= published
                and delta(s, "rejected", "rabbit_classic_queue", "disabled") >= 2
                and delta(s, "rejected", "rabbit_classic_queue", "at_most_once") >= 2
                and delta(s, "expired", "rabbit_classic_queue", "disabled") >= 1
                and delta(s, "maxlen", "rabbit_classic_queue", "at_most_once") >= 1
                and delta(s, "delivery_limit", "rabbit_quorum_queue", "disabled") >= 1)
    assert wait_for(counted, timeout=30, interval=0.5)
    assert ch.queue_declare(f"{name}-dlq", passive=True).method.message_count == 3  # 2 rejected, 1 pushed out
    for q in ("dlq", "plain", "dlx", "ttl", "max", "qq"):
        ch.queue_delete(f"{name}-{q}")


def test_scraped_by_a_real_prometheus(broker, conn, name, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run scripts/observability-env.sh (scripts/test.sh does)"
    target = urllib.parse.urlparse(broker.prometheus)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: warren
    metrics_path: /metrics/per-object
    static_configs:
      - targets: ["{target.hostname}:{target.port}"]
""")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ch = conn.channel()
        ch.queue_declare(name)
        for _ in range(7):
            ch.basic_publish("", name, b"x")

        def query(q):
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": q}, timeout=5)
            except requests.RequestException:
                return None
            if r.status_code != 200:
                return None
            result = r.json()["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        assert wait_for(lambda: query('up{job="warren"}') == 1.0, timeout=60, interval=0.5)
        assert wait_for(lambda: query(f'rabbitmq_queue_messages_ready{{queue="{name}"}}') == 7.0,
                        timeout=60, interval=0.5)
        assert wait_for(lambda: (query('rabbitmq_global_messages_received_total{protocol="amqp091"}') or 0) >= 7,
                        timeout=60, interval=0.5)
        # The RabbitMQ-Overview dashboard joins every panel on rabbitmq_identity_info.
        assert query("count(rabbitmq_identity_info)") == 1.0
        ch.queue_delete(name)
    finally:
        proc.terminate()
        proc.wait(20)
