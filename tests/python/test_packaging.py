"""The Debian package (scripts/build-deb.sh, from the debug build here):
its contents, its systemd unit checked by `systemd-analyze verify`, and
the packaged binary started as the unit's ExecStart starts it, with the
packaged configuration file, telling "systemd" it is ready and stopping
cleanly on SIGTERM. Warren only."""
import os
import shlex
import shutil
import signal
import socket
import subprocess

import pika
import pytest

from conftest import ROOT, free_port
from test_config_file import Launched


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's own package")


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    r = subprocess.run([str(ROOT / "scripts" / "build-deb.sh"), "--debug"], capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    path = ROOT / r.stdout.strip().splitlines()[-1]
    root = tmp_path_factory.mktemp("deb-root")
    subprocess.run(["dpkg-deb", "-x", str(path), str(root)], check=True)
    control = tmp_path_factory.mktemp("deb-control")
    subprocess.run(["dpkg-deb", "-e", str(path), str(control)], check=True)
    return path, root, control


def test_the_package_holds_what_a_service_needs(deb):
    path, root, control = deb
    assert path.name.startswith("warren_") and path.name.endswith(".deb")
    for f in ["usr/bin/warren", "etc/warren/warren.conf", "lib/systemd/system/warren.service",
              "etc/logrotate.d/warren"]:
        assert (root / f).is_file(), f
    assert os.access(root / "usr/bin/warren", os.X_OK)
    fields = dict(line.split(": ", 1) for line in (control / "control").read_text().splitlines()
                  if ": " in line and not line.startswith(" "))
    assert fields["Package"] == "warren" and fields["Architecture"]
    assert "/etc/warren/warren.conf" in (control / "conffiles").read_text()
    for script in ["postinst", "prerm", "postrm"]:
        assert subprocess.run(["sh", "-n", str(control / script)]).returncode == 0, script
    assert "adduser --system" in (control / "postinst").read_text()
    unit = (root / "lib/systemd/system/warren.service").read_text()
    for line in ["Type=notify", "User=warren", "StateDirectory=warren", "LimitNOFILE=65536",
                 "Restart=on-failure"]:
        assert line in unit, line


def test_systemd_accepts_the_unit(deb, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing: scripts/test.sh installs Debian's systemd")
    _, root, _ = deb
    unit = (root / "lib/systemd/system/warren.service").read_text()
    # Verified where the package's binary is (it is not installed here).
    (tmp_path / "warren.service").write_text(unit.replace("/usr/bin/warren", str(root / "usr/bin/warren")))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "warren.service")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_the_packaged_binary_runs_as_the_unit_starts_it(deb, tmp_path):
    _, root, _ = deb
    unit = (root / "lib/systemd/system/warren.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = [a.replace("/etc/warren/", f"{root}/etc/warren/") for a in shlex.split(exec_start)]
    argv[0] = str(root / argv[0].lstrip("/"))
    notify = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify)
    sock.settimeout(30)
    port = free_port()
    # The unit's environment here: the package's configuration file, with
    # what this machine's test needs (free ports, a private data
    # directory) over it, as an operator's drop-in would set it.
    env = {"NOTIFY_SOCKET": notify, "WARREN_AMQP_LISTEN": f"127.0.0.1:{port}",
           "WARREN_HTTP_LISTEN": f"127.0.0.1:{free_port()}", "WARREN_PROMETHEUS_LISTEN": f"127.0.0.1:{free_port()}",
           "WARREN_DATA_DIR": str(tmp_path / "var-lib-warren")}
    w = Launched(argv[1:], env=env, binary=argv[0])
    try:
        assert sock.recv(64) == b"READY=1"
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        c.channel().queue_declare("packaged", durable=True)
        c.close()
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(30) == 0
        assert (tmp_path / "var-lib-warren").stat().st_mode & 0o777 == 0o700
        assert "is ignored" not in w.output(), w.output()
    finally:
        w.stop()
        sock.close()


def test_the_compose_files_prometheus_configuration_is_valid():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool is missing: scripts/observability-env.sh installs Debian's prometheus")
    r = subprocess.run([promtool, "check", "config", str(ROOT / "packaging" / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    compose = (ROOT / "compose.yaml").read_text()
    assert "packaging/prometheus.yml:/etc/prometheus/prometheus.yml" in compose
    version = next(line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines()
                   if line.startswith("version = "))
    assert f"image: warren:{version}" in compose, "compose.yaml names the image scripts/build-image.sh tags"
