"""Warren run as RabbitMQ operators run a server (issue 26): settings from a
rabbitmq.conf (`--config`), with environment variables and flags over it;
definitions loaded at every start; the default user made on the first
start only; logs as JSON lines, or to a file reopened on SIGHUP. Warren
only (these are the broker's own command line and files)."""
import json
import os
import shutil
import signal
import subprocess
import tempfile

import pika
import pytest
import requests

from conftest import PANIC_LINES, free_port, wait_for, warren_binary


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's own command line")


class Launched:
    """A warren process with the given arguments; its output collected."""

    def __init__(self, args, env=None, data=None, binary=None):
        # A data directory made here is removed by stop().
        self.made = data is None
        self.data = data or tempfile.mkdtemp(prefix="warren-conf-")
        self.out = tempfile.NamedTemporaryFile(prefix="warren-out-", delete=False)
        self.proc = subprocess.Popen([binary or warren_binary(), *args], stdout=self.out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def output(self):
        with open(self.out.name, errors="replace") as f:
            return f.read()

    def wait_listening(self, text=None):
        assert wait_for(lambda: "listening" in (text() if text else self.output()) or self.proc.poll() is not None,
                        timeout=20), "warren did not start"
        assert self.proc.poll() is None, self.output()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        PANIC_LINES.extend(line for line in self.output().splitlines(True) if "panicked" in line)
        os.unlink(self.out.name)
        if self.made:
            shutil.rmtree(self.data, ignore_errors=True)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_rabbitmq_conf_runs_warren(tmp_path):
    amqp, http, prom = free_port(), free_port(), free_port()
    data = tempfile.mkdtemp(prefix="warren-conf-")
    defs = write(tmp_path, "defs.json", json.dumps({
        "vhosts": [{"name": "shop"}],
        "queues": [{"name": "orders", "vhost": "shop", "durable": True, "auto_delete": False, "arguments": {}}],
        "permissions": [{"user": "admin", "vhost": "shop", "configure": ".*", "write": ".*", "read": ".*"}],
    }))
    conf = write(tmp_path, "rabbitmq.conf", f"""\
# An operator's rabbitmq.conf
listeners.tcp.default = 127.0.0.1:{amqp}
management.tcp.port = {http}
management.tcp.ip = 127.0.0.1
prometheus.tcp.port = {prom}
prometheus.tcp.ip = 127.0.0.1
default_user = admin
default_pass = s3cret
default_vhost = main
heartbeat = 17
mqtt.listeners.tcp.default = 1883
load_definitions = {defs}
warren.data_dir = {data}
""")
    w = Launched(["--config", str(conf)], data=data)
    try:
        w.wait_listening()
        # The key Warren does not implement: one warning naming it and its line.
        assert wait_for(lambda: "rabbitmq.conf:11: mqtt.listeners.tcp.default is ignored" in w.output())
        params = pika.ConnectionParameters("127.0.0.1", amqp, "main", pika.PlainCredentials("admin", "s3cret"),
                                           connection_attempts=1)
        c = pika.BlockingConnection(params)
        assert c._impl.params.heartbeat == 17
        c.close()
        # guest was not made (another default user); the definitions were.
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp, connection_attempts=1))
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp, "shop",
                                                              pika.PlainCredentials("admin", "s3cret")))
        c.channel().queue_declare("orders", passive=True)
        c.close()
        r = requests.get(f"http://127.0.0.1:{http}/api/overview", auth=("admin", "s3cret"), timeout=10)
        assert r.status_code == 200
        assert requests.get(f"http://127.0.0.1:{prom}/metrics", timeout=10).status_code == 200
    finally:
        w.stop()
    # Again on the same data directory: the definitions load again
    # (idempotently), and the default user is not made anew — a changed
    # default_pass does not change the password.
    conf.write_text(conf.read_text().replace("default_pass = s3cret", "default_pass = other"))
    w = Launched(["--config", str(conf)], data=data)
    try:
        w.wait_listening()
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp, "shop",
                                                              pika.PlainCredentials("admin", "s3cret")))
        c.channel().queue_declare("orders", passive=True)
        c.close()
        assert w.output().count("definitions loaded") == 1
    finally:
        w.stop()
        shutil.rmtree(data, ignore_errors=True)


def test_environment_and_flags_win_over_the_file(tmp_path):
    conf = write(tmp_path, "rabbitmq.conf", "heartbeat = 30\nframe_max = 131072\nchannel_max = 100\n")
    r = subprocess.run([warren_binary(), "--config", str(conf), "--channel-max", "7", "--print-config"],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "WARREN_FRAME_MAX": "65536", "WARREN_CHANNEL_MAX": "9"})
    assert r.returncode == 0, r.stderr
    lines = {line.split(" = ")[0]: line for line in r.stdout.splitlines()}
    assert "= 30" in lines["--heartbeat"] and f"{conf}:1 (heartbeat)" in lines["--heartbeat"]
    assert "= 65536" in lines["--frame-max"] and "environment (WARREN_FRAME_MAX)" in lines["--frame-max"]
    assert "= 7" in lines["--channel-max"] and "command line" in lines["--channel-max"]
    assert "# default" in lines["--max-message-size"]


def test_a_syntax_error_refuses_to_start_naming_file_and_line(tmp_path):
    conf = write(tmp_path, "rabbitmq.conf", "heartbeat = 30\n# fine\nlisteners.tcp.default 5672\n")
    r = subprocess.run([warren_binary(), "--config", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert f"{conf}:3:" in r.stderr, r.stderr
    bad = write(tmp_path, "bad.conf", "vm_memory_high_watermark.relative = lots\n")
    r = subprocess.run([warren_binary(), "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and f"{bad}:1:" in r.stderr, r.stderr


def test_json_log_lines(tmp_path):
    port = free_port()
    w = Launched(["--amqp-listen", f"127.0.0.1:{port}", "--http-listen", "", "--prometheus-listen", "",
                  "--data-dir", str(tmp_path / "data"), "--log-format", "json"])
    try:
        w.wait_listening()
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)).close()
        lines = [json.loads(line) for line in w.output().splitlines() if line.strip()]
        assert lines
        for line in lines:
            assert {"time", "level", "target", "message", "fields"} <= set(line), line
        listening = [x for x in lines if "AMQP listening" in x["message"]]
        assert listening and listening[0]["level"] == "INFO" and listening[0]["fields"]["addr"]
    finally:
        w.stop()


def test_the_log_file_is_reopened_on_sighup(tmp_path):
    port = free_port()
    log = tmp_path / "warren.log"
    w = Launched(["--amqp-listen", f"127.0.0.1:{port}", "--http-listen", "", "--prometheus-listen", "",
                  "--data-dir", str(tmp_path / "data"), "--log-file", str(log)])
    try:
        w.wait_listening(text=lambda: log.read_text() if log.exists() else "")
        assert "listening" not in w.output()  # the log went to the file
        rotated = tmp_path / "warren.log.1"
        log.rename(rotated)
        w.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: log.exists() and "log file reopened" in log.read_text(), timeout=10)
        assert "log file reopened" not in rotated.read_text()
        assert oct(log.stat().st_mode & 0o777) == oct(0o600)
    finally:
        w.stop()


def test_the_management_api_over_https_from_management_ssl_keys(tmp_path):
    from pki import Pki
    ca = Pki(tmp_path / "pki")
    cert, key = ca.leaf("localhost", dns=["localhost"], ips=["127.0.0.1"])
    https, amqp = free_port(), free_port()
    conf = write(tmp_path, "rabbitmq.conf", f"""\
listeners.tcp.default = 127.0.0.1:{amqp}
management.tcp.port = {free_port()}
management.tcp.ip = 127.0.0.1
management.ssl.port = {https}
management.ssl.ip = 127.0.0.1
management.ssl.certfile = {cert}
management.ssl.keyfile = {key}
management.ssl.cacertfile = {ca.ca}
prometheus.tcp.port = {free_port()}
prometheus.tcp.ip = 127.0.0.1
warren.data_dir = {tmp_path / "data"}
""")
    w = Launched(["--config", str(conf)])
    try:
        w.wait_listening()
        r = requests.get(f"https://127.0.0.1:{https}/api/overview", auth=("guest", "guest"), verify=str(ca.ca),
                         timeout=10)
        assert r.status_code == 200 and r.json()["management_version"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        # Plain HTTP on the HTTPS port gets no API answer.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{https}/api/overview", auth=("guest", "guest"), timeout=10)
        # The one key not taken is named.
        assert "management.ssl.cacertfile is ignored" in w.output()
    finally:
        w.stop()


def test_listeners_tcp_none_serves_amqps_only(tmp_path):
    """RabbitMQ's TLS-only setup: `listeners.tcp = none` with an amqps
    listener. The plain port is not listened on; amqps serves."""
    import ssl
    from pki import Pki
    ca = Pki(tmp_path / "pki")
    cert, key = ca.leaf("localhost", dns=["localhost"])
    amqps = free_port()
    conf = write(tmp_path, "rabbitmq.conf", f"""\
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:{amqps}
ssl_options.certfile = {cert}
ssl_options.keyfile = {key}
management.tcp.port = {free_port()}
management.tcp.ip = 127.0.0.1
prometheus.tcp.port = {free_port()}
prometheus.tcp.ip = 127.0.0.1
warren.data_dir = {tmp_path / "data"}
""")
    r = subprocess.run([warren_binary(), "--config", str(conf), "--print-config"], capture_output=True, text=True,
                       timeout=30)
    assert "--amqp-listen = none" in r.stdout, r.stdout
    w = Launched(["--config", str(conf)])
    try:
        w.wait_listening()
        assert "TLS only" in w.output()
        # No plain listener: the node says so.
        st = subprocess.run([warren_binary(), "ctl", "--data-dir", str(tmp_path / "data"), "status"],
                            capture_output=True, text=True, timeout=30)
        rows = dict(line.split("\t", 1) for line in st.stdout.splitlines() if "\t" in line)
        assert rows["amqp_listener"] == "off" and rows["amqps_listener"] == f"127.0.0.1:{amqps}", st.stdout
        ctx = ssl.create_default_context(cafile=str(ca.ca))
        c = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", amqps, ssl_options=pika.SSLOptions(ctx, server_hostname="localhost")))
        c.channel().queue_declare("tls-only")
        c.close()
    finally:
        w.stop()
    # With no listener at all, Warren refuses to start.
    r = subprocess.run([warren_binary(), "--amqp-listen", "none", "--data-dir", str(tmp_path / "d2"), "--http-listen",
                        "", "--prometheus-listen", ""], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--amqps-listen" in (r.stdout + r.stderr)
