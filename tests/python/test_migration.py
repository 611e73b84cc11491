"""Moving a live system from RabbitMQ to Warren, as docs/migrating.md walks
through it, end to end with a celery application: tasks wait in a RabbitMQ
vhost; its definitions are exported with rabbitmqctl and imported into
Warren (users with their RabbitMQ password hashes, vhosts, permissions,
queues); a shovel per queue moves the backlog; a celery worker pointed at
Warren runs every task, with the application's own credentials."""
import json
import os
import subprocess
import sys

import pytest

from conftest import own_warren, wait_for
from test_management import Api




def test_migrate_a_celery_application_from_rabbitmq(rabbit, tmp_path):
    from test_celery import HERE, start_worker, stop

    # The system as it runs on RabbitMQ: a vhost, an application user, and
    # 20 tasks waiting for a worker.
    rabbit.ctl("add_vhost", "prod")
    rabbit.ctl("add_user", "app", "app-secret")
    rabbit.ctl("set_permissions", "-p", "prod", "app", ".*", ".*", ".*")
    queue = "billing"
    log = tmp_path / "runs"
    old_url = f"amqp://app:app-secret@127.0.0.1:{rabbit.port}/prod"
    code = ("import sys; from celery_app import tasks\n"
            "for i in range(int(sys.argv[3])): tasks.record.apply_async((sys.argv[1], f'{sys.argv[2]}-{i}'), ignore_result=True)")

    def send(url, tag, n):
        env = dict(os.environ, WARREN_CELERY_BROKER=url, WARREN_CELERY_QUEUE=queue)
        subprocess.run([sys.executable, "-c", code, str(log), tag, str(n)], cwd=HERE, env=env, check=True, timeout=120)
    send(old_url, "old", 20)

    # 1. Export the definitions from RabbitMQ and import them into Warren.
    defs = json.loads(rabbit.ctl("export_definitions", "-").stdout)
    assert any(q["name"] == queue for q in defs["queues"])
    with own_warren() as warren:
        api = Api(warren.http)
        r = api.post("/definitions", defs)
        assert r.status_code in (200, 201, 204), r.text
        # 2. A shovel per queue moves the backlog, then removes itself. (The
        #    administrator setting a shovel into a vhost needs access to
        #    it, as on RabbitMQ.)
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        assert api.put("/permissions/prod/guest", perms).status_code in (201, 204)
        for q in (q for q in defs["queues"] if q["vhost"] == "prod"):
            r = api.put(f"/parameters/shovel/prod/migrate-{q['name']}", {"value": {
                "src-uri": f"amqp://app:app-secret@127.0.0.1:{rabbit.port}/prod", "src-queue": q["name"],
                "dest-uri": "amqp:///prod", "dest-queue": q["name"], "src-delete-after": "queue-length"}})
            assert r.status_code == 201, r.text
        assert wait_for(lambda: api.json("/parameters/shovel") == [], timeout=60)
        assert api.json(f"/queues/prod/{queue}")["messages"] == 20
        # 3. Point the workers (and the clients) at Warren: same user,
        #    same password, same vhost.
        new_url = f"amqp://app:app-secret@127.0.0.1:{warren.port}/prod"
        import types
        # (A solo worker with no broker heartbeat pauses ~10 s between
        # bursts of prefetch-1 tasks on RabbitMQ and Warren alike; with a
        # heartbeat its event loop wakes every second.)
        w = start_worker(types.SimpleNamespace(url=new_url), queue, env={"WARREN_CELERY_HEARTBEAT": "2"})
        try:
            def ran():
                return log.exists() and len({l.split()[0] for l in log.read_text().splitlines()}) == 25
            send(new_url, "new", 5)
            assert wait_for(ran, timeout=120, interval=0.2), log.read_text() if log.exists() else "nothing ran"
        finally:
            stop(w)
        tags = [l.split()[0] for l in log.read_text().splitlines()]
        assert sorted(set(tags)) == sorted([f"old-{i}" for i in range(20)] + [f"new-{i}" for i in range(5)])
    # Nothing was left behind on RabbitMQ.
    out = rabbit.ctl("list_queues", "-p", "prod", "name", "messages").stdout
    assert f"{queue}\t0" in out.splitlines(), out
