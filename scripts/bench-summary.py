#!/usr/bin/env python3
"""Runs the benchmark scenarios of docs/benchmarks.md's summary through
scripts/bench.sh (Warren and a private RabbitMQ it starts, alternating
rounds) and rewrites the table between the `bench-summary` markers of
docs/benchmarks.md with the medians, their ratios, the broker CPU per
message, the date, the commit and the commands. Nothing is typed by hand.

    scripts/bench-summary.py            # ROUNDS (default 3), DURATION (default 10) as bench.sh
"""
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCENARIOS = [
    ("transient 16 B, 1 → 1 → 1, prefetch 1000, acks every 100", "consumed_per_s",
     ["--size", "16", "--prefetch", "1000", "--multi-ack", "100"]),
    ("transient 16 B with a celery task's properties (`--headers`)", "consumed_per_s",
     ["--size", "16", "--prefetch", "1000", "--multi-ack", "100", "--headers"]),
    ("transient 1 KiB", "consumed_per_s", ["--size", "1024", "--prefetch", "1000", "--multi-ack", "100"]),
    ("transient 64 KiB", "consumed_per_s", ["--size", "65536", "--prefetch", "1000", "--multi-ack", "100"]),
    # The same load with each broker on one core and the load generator on
    # the other (bench.sh's PIN_*): at 64 KiB the unpinned run is the two
    # cores' limit, shared by broker and load generator.
    ("transient 64 KiB, broker on CPU 0, load generator on CPU 1", "consumed_per_s",
     ["--size", "65536", "--prefetch", "1000", "--multi-ack", "100"], {"PIN_BROKER": "0", "PIN_LOAD": "1"}),
    ("persistent 1 KiB, confirms 1000 (Warren fsyncs)", "confirmed_per_s",
     ["--size", "1024", "--persistent", "--durable", "--confirm", "1000", "--prefetch", "1000", "--multi-ack", "100",
      "--queue", "pbench"]),
    ("fanout 1 → 8, 256 B, delivered", "consumed_per_s",
     ["--size", "256", "--fanout", "8", "--prefetch", "1000", "--multi-ack", "100", "--queue", "fan"]),
    ("4 → 4 queues → 4, 256 B", "consumed_per_s",
     ["--publishers", "4", "--consumers", "4", "--queues", "4", "--size", "256", "--prefetch", "1000",
      "--multi-ack", "100", "--queue", "four"]),
    ("latency at 1,000 msg/s, p99 (µs)", "p99_us",
     ["--size", "16", "--rate", "1000", "--prefetch", "1000", "--multi-ack", "10", "--queue", "lat"]),
    ("latency at 100,000 msg/s, p99 (µs)", "p99_us",
     ["--size", "16", "--rate", "100000", "--prefetch", "1000", "--multi-ack", "100", "--queue", "lat100k"]),
]
START, END = "<!-- bench-summary:start -->", "<!-- bench-summary:end -->"


def main():
    rows = []
    env = {k: v for k, v in os.environ.items() if k != "RABBITMQ_ADDR"}  # a private node each time
    env.setdefault("ROUNDS", "3")
    env.setdefault("DURATION", "10")
    # Built once, and the commit read now: the binaries measured are the
    # ones of the commit named, whatever is edited while this runs.
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "warren", "-p", "warren-perf"], check=True,
                   cwd=ROOT)
    env["BENCH_NO_BUILD"] = "1"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    for title, key, args, *extra in SCENARIOS:
        extra = extra[0] if extra else {}
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([str(ROOT / "scripts" / "bench.sh"), *args], check=True, cwd=ROOT,
                           env={**env, **extra, "BENCH_SUMMARY_OUT": out.name}, stdout=sys.stderr)
            med = json.load(open(out.name))
        w, r = med["warren"], med.get("rabbitmq", {})
        ratio = (w[key] / r[key]) if r.get(key) else float("nan")
        fmt = (lambda v: f"{v:,.0f}") if key == "p99_us" else (lambda v: f"{v / 1000:,.1f} k/s")
        rows.append(f"| {title} | {fmt(r.get(key, 0))} | {fmt(w[key])} | {ratio:.2f} × | "
                    f"{w['cpu_us_per_msg']:.2f} | {r.get('cpu_us_per_msg', 0):.2f} | "
                    f"`{''.join(f'{k}={v} ' for k, v in extra.items())}scripts/bench.sh {' '.join(args)}` |")
        print(rows[-1], file=sys.stderr)
    table = "\n".join([
        START,
        f"Written by `scripts/bench-summary.py` on {datetime.date.today()} at {commit}"
        f"{' + uncommitted changes' if dirty else ''}, ROUNDS={env['ROUNDS']} DURATION={env['DURATION']}: "
        "medians, Warren and a private RabbitMQ alternating in the same run; CPU is the broker "
        "process's user + system time per consumed message over the whole run.",
        "",
        "| scenario | RabbitMQ | Warren | ratio | Warren CPU µs/msg | RabbitMQ CPU µs/msg | command |",
        "|---|---|---|---|---|---|---|",
        *rows,
        END,
    ])
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text()
    if START in text:
        text = text[:text.index(START)] + table + text[text.index(END) + len(END):]
    else:
        marker = "## Summary: the bars"
        text = text.replace(marker, "## Summary: the latest scripted run\n\n" + table + "\n\n" + marker, 1)
    doc.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
