"""A private RabbitMQ node for the tests that need a real RabbitMQ on the
other side of a shovel or federation link: Debian's rabbitmq-server
(scripts/rabbitmq-env.sh installs it) started with its own node name,
ports, data directory and no plugins; killed with -9 and started again on
the same data when a test asks."""
import os
import shutil
import signal
import subprocess
import tempfile
import uuid

from conftest import free_port, wait_for


class RabbitNode:
    def __init__(self):
        assert shutil.which("rabbitmq-server"), "rabbitmq-server is missing: scripts/rabbitmq-env.sh installs it"
        self.dir = tempfile.mkdtemp(prefix="warren-rabbit-")
        os.chmod(self.dir, 0o755)
        self.name = f"wt{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        # Run as root, rabbitmq-server switches to the rabbitmq user: its
        # directory must be that user's.
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", self.dir], check=False)
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.dir, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.dir, "log"),
            "RABBITMQ_PID_FILE": os.path.join(self.dir, "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
        }
        self.start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def uri(self, vhost="%2F"):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def params(self):
        import pika

        return pika.ConnectionParameters("127.0.0.1", self.port, heartbeat=0)

    def ctl(self, *args, check=True):
        r = subprocess.run(["rabbitmqctl", "-q", "-n", self.name, *args], capture_output=True, text=True,
                           timeout=120, env=self.env)
        if check and r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args} failed: {r.stdout}{r.stderr}")
        return r

    def start(self):
        pidfile = self.env["RABBITMQ_PID_FILE"]
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: os.path.exists(pidfile), timeout=60), "RabbitMQ wrote no pid file"
        self.ctl("wait", pidfile, "--timeout", "120")
        with open(pidfile) as f:
            self.pid = int(f.read().strip())

    def kill9(self):
        os.kill(self.pid, signal.SIGKILL)

        def gone():
            try:
                os.kill(self.pid, 0)
                return False
            except ProcessLookupError:
                return True
        assert wait_for(gone, timeout=20)

    def stop(self):
        self.ctl("stop", check=False)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
