"""Celery tasks for the end-to-end tests. The broker URL and queue come from
the environment, set by the test that starts the worker."""
import json
import os
import pathlib
import time

from celery import Celery
from kombu import Exchange, Queue

app = Celery("warren_tests", broker=os.environ["WARREN_CELERY_BROKER"], backend="rpc://")
app.conf.update(
    task_default_queue=os.environ.get("WARREN_CELERY_QUEUE", "celery"),
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=300,
)
if os.environ.get("WARREN_CELERY_HEARTBEAT"):
    app.conf.broker_heartbeat = int(os.environ["WARREN_CELERY_HEARTBEAT"])
if os.environ.get("WARREN_CELERY_NATIVE_DELAYED"):
    # Celery 5.5's native delayed delivery: it is on when the task queues are
    # quorum queues; countdown/ETA tasks then wait in the broker's
    # celery_delayed_* queues, not in the worker. It needs a topic exchange.
    _q = app.conf.task_default_queue
    app.conf.task_queues = [
        Queue(_q, Exchange(_q, type="topic"), routing_key=_q, queue_arguments={"x-queue-type": "quorum"})
    ]
    app.conf.broker_transport_options = {"confirm_publish": True}
elif os.environ.get("WARREN_CELERY_DELAYED_EXCHANGE"):
    # The task queue behind an x-delayed-message exchange: tasks sent with
    # an `x-delay` header wait in the broker.
    _q = app.conf.task_default_queue
    _x = Exchange(_q + "-delayed", type="x-delayed-message", arguments={"x-delayed-type": "direct"})
    app.conf.task_queues = [Queue(_q, _x, routing_key=_q)]
elif os.environ.get("WARREN_CELERY_QUEUE_ARGS"):
    # Queue arguments for the task queue (JSON), as a celery configuration
    # declaring Warren's queue features would set them.
    app.conf.task_queues = [
        Queue(app.conf.task_default_queue, queue_arguments=json.loads(os.environ["WARREN_CELERY_QUEUE_ARGS"]))
    ]


@app.task
def record(path, tag):
    """Appends `tag` and the time to the file at `path`: when and how often
    a task ran."""
    with open(path, "a") as f:
        f.write(f"{tag} {time.time()}\n")
    return tag


@app.task
def add(x, y):
    return x + y


@app.task(acks_late=True)
def slow_once(marker):
    """First run: leave a marker and hang (the test kills the worker).
    Second run (redelivered): finish at once."""
    p = pathlib.Path(marker)
    if p.exists():
        return "second run"
    p.write_text(str(os.getpid()))
    time.sleep(120)
    return "first run"


@app.task(bind=True, max_retries=3)
def flaky(self, marker):
    p = pathlib.Path(marker)
    if not p.exists():
        p.write_text("1")
        raise self.retry(countdown=1)
    return "ok after retry"


@app.task(bind=True, acks_late=True)
def poison(self, path):
    """A poison message: records the delivery count it sees (the
    `x-delivery-count` header), then rejects
    itself with requeue, every time."""
    from celery.exceptions import Reject

    with open(path, "a") as f:
        f.write(f"{self.request.get('x-delivery-count')}\n")
    raise Reject("poison", requeue=True)
