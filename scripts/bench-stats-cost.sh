#!/usr/bin/env bash
# What the management API's statistics cost the message path: transient
# 16 B 1→1→1 (prefetch 1000, ack every 1000) on fresh release brokers,
# alternating rounds of
#   off: --http-listen ''
#   on:  the HTTP API listening, and a client polling /api/queues (and
#        /api/overview) every second during the run
#   base (when BASE_BIN names a release binary of an earlier build): that build.
# Prints every run's JSON and the medians; ROUNDS (default 5), DURATION (8 s).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-5}
duration=${DURATION:-8}
cd "$root"
cargo build --release --quiet -p warren -p warren-perf
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
results=$work/results.jsonl
variants="off on"
[ -n "${BASE_BIN:-}" ] && variants="base off on"
for r in $(seq "$rounds"); do
    for v in $variants; do
        port=$(free_port); hport=$(free_port)
        bin=target/release/warren
        http=""
        [ "$v" = on ] && http=127.0.0.1:$hport
        [ "$v" = base ] && bin=$BASE_BIN
        rm -rf "$work/data"
        if [ "$v" = base ]; then
            "$bin" --amqp-listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/log" 2>&1 &
        else
            "$bin" --amqp-listen "127.0.0.1:$port" --http-listen "$http" --prometheus-listen "" --data-dir "$work/data" >"$work/log" 2>&1 &
        fi
        pid=$!
        for _ in $(seq 100); do grep -q listening "$work/log" && break; sleep 0.1; done
        poller=""
        if [ "$v" = on ]; then
            (while sleep 1; do
                curl -s -o /dev/null -u guest:guest "http://$http/api/queues"
                curl -s -o /dev/null -u guest:guest "http://$http/api/overview"
            done) &
            poller=$!
        fi
        line=$(target/release/warren-perf --addr "127.0.0.1:$port" --duration "$duration" --size 16 --prefetch 1000 --multi-ack 1000)
        [ -n "$poller" ] && kill "$poller" 2>/dev/null
        kill "$pid"; wait "$pid" 2>/dev/null || true
        echo "{\"v\":\"$v\",\"round\":$r,\"result\":$line}" | tee -a "$results"
    done
done
python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for v in ("base", "off", "on"):
    rs = [r["result"]["consumed_per_s"] for r in runs if r["v"] == v]
    if rs:
        med[v] = statistics.median(rs)
        print(f"{v}: consumed msg/s " + " / ".join(f"{x:,.0f}" for x in rs) + f"; median {med[v]:,.0f}")
print(f"ratio on/off: {med['on'] / med['off']:.3f}")
if "base" in med:
    print(f"ratio off/base: {med['off'] / med['base']:.3f}")
PY
