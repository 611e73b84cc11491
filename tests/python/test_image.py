"""The container image (Containerfile, scripts/build-image.sh): built with
Debian's podman FROM scratch around a static binary. Containers cannot run
on every test machine (cgroups), so the test takes the binary out of the
image and runs it as the image would: its user, its environment, its data
volume. Behind WARREN_TEST_IMAGE=1 (scripts/test.sh sets it under CI): the
static build takes minutes. Warren only."""
import json
import os
import shutil
import signal
import subprocess

import pika
import pytest
import requests

from conftest import ROOT, free_port, wait_for
from test_config_file import Launched

TAG = "warren:test"

# The fixture builds the static binary from nothing (its own target
# directory): on a fresh clone with a busy machine that took over the
# suite's 300 s default.
pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(autouse=True)
def warren_only(broker):
    if not broker.is_warren:
        pytest.skip("Warren's own image")
    if os.environ.get("WARREN_TEST_IMAGE") != "1":
        pytest.skip("the image build is slow: WARREN_TEST_IMAGE=1 runs it (CI does)")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    assert shutil.which("podman"), "podman is missing: scripts/packaging-env.sh installs it"
    r = subprocess.run([str(ROOT / "scripts" / "build-image.sh"), "--debug", TAG], capture_output=True, text=True,
                       timeout=1800, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    inspect = json.loads(subprocess.run(["podman", "image", "inspect", TAG], capture_output=True, text=True,
                                        check=True).stdout)[0]
    out = tmp_path_factory.mktemp("image")
    cid = subprocess.run(["podman", "create", TAG], capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["podman", "cp", f"{cid}:/usr/bin/warren", str(out / "warren")], check=True)
        listing = subprocess.run(["podman", "export", cid], capture_output=True, check=True).stdout
    finally:
        subprocess.run(["podman", "rm", cid], capture_output=True)
    return inspect, out / "warren", listing


def test_the_image_is_warren_alone_as_a_non_root_user(image):
    inspect, binary, tar = image
    config = inspect["Config"]
    assert config["User"] == "65532:65532"
    assert set(config["ExposedPorts"]) == {"5672/tcp", "15672/tcp", "15692/tcp"}
    assert "/var/lib/warren" in config["Volumes"]
    assert config["Entrypoint"] == ["/usr/bin/warren"]
    import io
    import tarfile
    files = {m.name.strip("./") for m in tarfile.open(fileobj=io.BytesIO(tar)).getmembers() if not m.isdir()}
    # Nothing but the binary and the data directory: no base image.
    assert files == {"usr/bin/warren", "var/lib/warren/README"}, files
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    assert "=>" not in ldd.stdout, ldd.stdout


def test_the_images_binary_runs_as_the_image_runs_it(image):
    inspect, binary, _ = image
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is missing")
    env = dict(e.split("=", 1) for e in inspect["Config"]["Env"])
    # A place the image's user can reach (pytest's own is root's alone).
    import pathlib
    import tempfile
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="warren-image-"))
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "volume"
    data.mkdir()
    os.chown(data, 65532, 65532)
    amqp, http = free_port(), free_port()
    # The image's environment, with this machine's free ports and the
    # volume's place here.
    env.update({"WARREN_DATA_DIR": str(data), "WARREN_AMQP_LISTEN": f"127.0.0.1:{amqp}",
                "WARREN_HTTP_LISTEN": f"127.0.0.1:{http}", "WARREN_PROMETHEUS_LISTEN": f"127.0.0.1:{free_port()}"})
    shutil.copy(binary, tmp_path / "warren")
    w = Launched(["--reuid", "65532", "--regid", "65532", "--clear-groups", str(tmp_path / "warren")], env=env,
                 binary=shutil.which("setpriv"))
    try:
        w.wait_listening()
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp))
        c.channel().queue_declare("in-the-image", durable=True)
        c.close()
        assert requests.get(f"http://127.0.0.1:{http}/api/queues", auth=("guest", "guest"), timeout=10).ok
        assert all(p.stat().st_uid == 65532 for p in data.rglob("*"))
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(30) == 0
    finally:
        w.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)
