#!/usr/bin/env python3
"""Fair dispatch with celery: 4 workers (solo pool, prefetch multiplier 50,
acks late), one of them 10 × slower (50 ms a task against 5 ms); 1,000
tasks; time until all have run, with and without `x-fair-dispatch` on the
queue, on a fresh release Warren. Rounds alternate; prints each and the
medians, and how many tasks the slow worker ran.

    .venv/bin/python scripts/bench-fair-dispatch.py [ROUNDS] [RATE]

RATE: tasks sent per second (default 0: all at once, a backlog; with a
backlog larger than the workers' prefetch together, every worker is full
and only its own acks make room, so dispatch order cannot matter).
"""
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
TASKS = 1000
RATE = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(fair, r):
    port, data = free_port(), tempfile.mkdtemp()
    broker = subprocess.Popen([str(ROOT / "target/release/warren"), "--amqp-listen", f"127.0.0.1:{port}",
                               "--http-listen", "", "--prometheus-listen", "", "--data-dir", data],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    done = pathlib.Path(data) / "done"
    env = dict(os.environ, BENCH_BROKER=f"amqp://guest:guest@127.0.0.1:{port}//", BENCH_QUEUE=f"fair-{r}",
               BENCH_FAIR="1" if fair else "0", DONE_FILE=str(done), PYTHONPATH=str(ROOT / "scripts" / "bench_celery"))
    workers = []
    for i in range(4):
        slow = i == 0
        wenv = dict(env, WORKER_DELAY_MS="50" if slow else "5", WORKER_NAME="slow" if slow else f"fast{i}")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "fairapp", "worker", "-P", "solo", "-c", "1", "-n", f"w{i}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
            env=wenv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    sys.path.insert(0, str(ROOT / "scripts" / "bench_celery"))
    os.environ.update({k: v for k, v in env.items() if k.startswith(("BENCH_", "DONE_"))})
    import importlib

    import fairapp
    importlib.reload(fairapp)
    time.sleep(4)  # the workers connect and consume
    t0 = time.time()
    for i in range(TASKS):
        fairapp.work.delay(i)
        if RATE > 0:
            # Paced: sleep until this task's due time.
            time.sleep(max(0.0, t0 + (i + 1) / RATE - time.time()))
    while not done.exists() or len(done.read_text().splitlines()) < TASKS:
        time.sleep(0.02)
    elapsed = time.time() - t0
    slow_runs = sum(1 for line in done.read_text().splitlines() if line.endswith(" slow"))
    for w in workers:
        os.killpg(w.pid, signal.SIGTERM)
    for w in workers:
        w.wait()
    broker.terminate()
    broker.wait()
    shutil.rmtree(data, ignore_errors=True)
    return elapsed, slow_runs


def main():
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "warren"], cwd=ROOT, check=True)
    results = {False: [], True: []}
    for r in range(ROUNDS):
        for fair in (False, True):
            elapsed, slow = run(fair, f"{r}-{int(fair)}")
            results[fair].append((elapsed, slow))
            print(f"round {r + 1} {'fair' if fair else 'round-robin'}: {elapsed:.2f} s, slow worker ran {slow} of {TASKS}",
                  flush=True)
    for fair in (False, True):
        ts = [e for e, _ in results[fair]]
        print(f"median {'fair' if fair else 'round-robin'}: {statistics.median(ts):.2f} s "
              f"(slow worker: {statistics.median([s for _, s in results[fair]]):.0f} tasks)")
    print(f"ratio round-robin/fair: {statistics.median([e for e, _ in results[False]]) / statistics.median([e for e, _ in results[True]]):.2f}")


main()
