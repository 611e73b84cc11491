"""What other local users can read of a broker's data: nothing. The data
directory holds every persistent message and every password hash, so it is
0700 and what Warren writes in it 0600 (directories 0700), whatever umask
Warren was started under; the ctl socket is 0600 from the moment it exists.
Warren-only: it is about Warren's own files."""
import os
import shutil
import stat
import tempfile

import pika
import pytest

from conftest import own_warren, wait_for


def modes(root):
    """(path, mode bits) of the directory and everything under it."""
    out = [(root, stat.S_IMODE(os.lstat(root).st_mode))]
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            out.append((p, stat.S_IMODE(os.lstat(p).st_mode)))
    return out


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_data_directory_is_private_whatever_the_umask(broker, name, existing):
    if not broker.is_warren:
        pytest.skip("Warren's own data directory")
    parent = tempfile.mkdtemp(prefix="warren-umask-")
    data = os.path.join(parent, "data")
    if existing:
        os.mkdir(data)
        os.chmod(data, 0o755)
    old = os.umask(0o022)  # Warren inherits it
    try:
        with own_warren(data=data) as b:
            c = pika.BlockingConnection(b.params())
            ch = c.channel()
            ch.confirm_delivery()
            ch.queue_declare(name, durable=True)
            ch.basic_publish("", name, b"secret", pika.BasicProperties(delivery_mode=2))
            c.close()
            segments = os.path.join(data, "messages")
            assert wait_for(lambda: any(f.endswith(".seg") for f in os.listdir(segments)))
            found = modes(data)
            assert any(p.endswith("access.json") for p, _ in found), found
            assert any(p.endswith(".sock") for p, _ in found), found
            for path, mode in found:
                assert mode & 0o077 == 0, f"{path} is {oct(mode)}: readable by others"
    finally:
        os.umask(old)
        shutil.rmtree(parent, ignore_errors=True)
