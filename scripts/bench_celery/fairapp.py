"""Celery app for scripts/bench-fair-dispatch.py: one task that sleeps the
worker's WORKER_DELAY_MS and appends a line to DONE_FILE."""
import os
import time

from celery import Celery
from kombu import Queue

app = Celery("fairbench", broker=os.environ["BENCH_BROKER"])
queue_args = {"x-fair-dispatch": True} if os.environ.get("BENCH_FAIR") == "1" else {}
app.conf.update(
    task_queues=[Queue(os.environ["BENCH_QUEUE"], queue_arguments=queue_args)],
    task_default_queue=os.environ["BENCH_QUEUE"],
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "50")),
    task_acks_late=True,
    task_ignore_result=True,
)


@app.task
def work(i):
    time.sleep(int(os.environ.get("WORKER_DELAY_MS", "5")) / 1000)
    with open(os.environ["DONE_FILE"], "a") as f:
        f.write(f"{i} {os.environ.get('WORKER_NAME', '?')}\n")
