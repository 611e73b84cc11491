#!/usr/bin/env bash
# Side-by-side benchmark: a fresh release Warren against a running RabbitMQ,
# same load generator (warren-perf), rounds alternating between the two so
# that machine noise hits both alike. Prints every run's JSON and the medians.
#
#   scripts/bench.sh [warren-perf args...]      e.g. --size 16 --prefetch 1000 --multi-ack 1000
#
# ROUNDS (default 5), DURATION seconds per run (default 10),
# RABBITMQ_ADDR (default 127.0.0.1:5672; empty = Warren only).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-5}
duration=${DURATION:-10}
rabbit=${RABBITMQ_ADDR-127.0.0.1:5672}
cd "$root"
cargo build --release --quiet -p warren -p warren-perf
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
target/release/warren --amqp-listen "127.0.0.1:$port" --http-listen "${WARREN_BENCH_HTTP:-}" --prometheus-listen "" --data-dir "$data" >"$data/warren.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do grep -q listening "$data/warren.log" && break; sleep 0.1; done

results=$data/results.jsonl
for r in $(seq "$rounds"); do
    for target in warren rabbitmq; do
        if [ "$target" = warren ]; then addr=127.0.0.1:$port; else addr=$rabbit; fi
        [ -n "$addr" ] || continue
        line=$(target/release/warren-perf --addr "$addr" --duration "$duration" "$@")
        echo "{\"broker\":\"$target\",\"round\":$r,\"result\":$line}" | tee -a "$results"
    done
done
python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for b in ("warren", "rabbitmq"):
    rs = [r["result"] for r in runs if r["broker"] == b]
    if not rs:
        continue
    m = {k: statistics.median(x[k] for x in rs) for k in ("published_per_s", "consumed_per_s", "confirmed_per_s")}
    m["p99_us"] = statistics.median(x["latency_us"]["p99"] or 0 for x in rs)
    med[b] = m
    print(f"median {b}: " + ", ".join(f"{k}={v:,.0f}" for k, v in m.items()))
if "rabbitmq" in med and med["rabbitmq"]["consumed_per_s"]:
    print(f"ratio consumed_per_s warren/rabbitmq: {med['warren']['consumed_per_s'] / med['rabbitmq']['consumed_per_s']:.2f}")
PY
