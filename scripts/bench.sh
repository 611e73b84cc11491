#!/usr/bin/env bash
# Side-by-side benchmark: a fresh release Warren against RabbitMQ, same load
# generator (warren-perf), rounds alternating between the two so that
# machine noise hits both alike. Prints every run's JSON (with the broker's
# CPU time per consumed message) and the medians.
#
#   scripts/bench.sh [warren-perf args...]      e.g. --size 16 --prefetch 1000 --multi-ack 1000
#
# ROUNDS (default 5), DURATION seconds per run (default 10).
# BENCH_NO_BUILD=1: use target/release as it is (no cargo build).
# RABBITMQ_ADDR: unset = a private RabbitMQ node started (and stopped) by
# this script (Debian's rabbitmq-server, default configuration, no
# plugins); host:port = that running RabbitMQ; empty = Warren only.
# PIN_BROKER=CPUS PIN_LOAD=CPUS (taskset lists, e.g. 0 and 1): every thread
# of each broker on PIN_BROKER, the load generator on PIN_LOAD. A diagnosis
# of what each broker does with the same core(s), the load generator's CPU
# kept off them. Each broker is started pinned, so it sizes its threads
# (Warren's workers, Erlang's schedulers) to what it sees. Unset (the
# default) = no pinning.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-5}
duration=${DURATION:-10}
cd "$root"
# BENCH_NO_BUILD=1: the caller built target/release (bench-summary.py
# builds once, so an edit made while it runs changes nothing measured).
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --quiet -p warren -p warren-perf
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
data=$(mktemp -d)
broker=() load=()
[ -z "${PIN_BROKER:-}" ] || broker=(taskset -c "$PIN_BROKER")
[ -z "${PIN_LOAD:-}" ] || load=(taskset -c "$PIN_LOAD")
rabbit_node=
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "$rabbit_node" ] && rabbitmqctl -q -n "$rabbit_node" stop >/dev/null 2>&1 || true
    rm -rf "$data"
}
"${broker[@]}" target/release/warren --amqp-listen "127.0.0.1:$port" --http-listen "${WARREN_BENCH_HTTP:-}" --prometheus-listen "" --data-dir "$data/warren" >"$data/warren.log" 2>&1 &
pid=$!
trap cleanup EXIT
for _ in $(seq 100); do grep -q listening "$data/warren.log" && break; sleep 0.1; done

rabbit_pid=
if [ -z "${RABBITMQ_ADDR+set}" ]; then
    # A private node: its own name, ports, data and no plugins.
    rport=$(free_port)
    rabbit_node="bench$$@localhost"
    mkdir -p "$data/rabbit"
    echo '[].' > "$data/rabbit/enabled_plugins"
    # Run as root, rabbitmq-server switches to the rabbitmq user: its
    # directory must be that user's.
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
        chmod 755 "$data"
        chown -R rabbitmq:rabbitmq "$data/rabbit"
    fi
    RABBITMQ_NODENAME=$rabbit_node RABBITMQ_NODE_PORT=$rport RABBITMQ_DIST_PORT=$(free_port) \
        RABBITMQ_MNESIA_BASE=$data/rabbit/mnesia RABBITMQ_LOG_BASE=$data/rabbit/log \
        RABBITMQ_PID_FILE=$data/rabbit/pid RABBITMQ_ENABLED_PLUGINS_FILE=$data/rabbit/enabled_plugins \
        "${broker[@]}" rabbitmq-server -detached >/dev/null 2>&1
    rabbitmqctl -q -n "$rabbit_node" wait "$data/rabbit/pid" --timeout 120 >/dev/null
    rabbit=127.0.0.1:$rport
    rabbit_pid=$(cat "$data/rabbit/pid")
    echo "private RabbitMQ $(rabbitmqctl -q -n "$rabbit_node" version 2>/dev/null) on $rabbit" >&2
else
    rabbit=$RABBITMQ_ADDR
    rabbit_pid=$(pgrep -o beam.smp || true)
fi

# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }

results=$data/results.jsonl
for r in $(seq "$rounds"); do
    for target in warren rabbitmq; do
        if [ "$target" = warren ]; then addr=127.0.0.1:$port; else addr=$rabbit; fi
        [ -n "$addr" ] || continue
        if [ "$target" = warren ]; then bpid=$pid; else bpid=$rabbit_pid; fi
        before=$( [ -n "$bpid" ] && cpu_s "$bpid" || echo 0)
        line=$("${load[@]}" target/release/warren-perf --addr "$addr" --duration "$duration" "$@")
        after=$( [ -n "$bpid" ] && cpu_s "$bpid" || echo 0)
        echo "{\"broker\":\"$target\",\"round\":$r,\"broker_cpu_s\":$(awk -v a="$after" -v b="$before" 'BEGIN{print a - b}'),\"duration_s\":$duration,\"result\":$line}" | tee -a "$results"
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
    # Broker CPU per consumed message (the whole run, warm-up included).
    per = [r["broker_cpu_s"] * 1e6 / (r["result"]["consumed_per_s"] * r["duration_s"])
           for r in runs if r["broker"] == b and r["result"]["consumed_per_s"]]
    m["cpu_us_per_msg"] = statistics.median(per) if per else 0
    med[b] = m
    print(f"median {b}: " + ", ".join(f"{k}={v:,.2f}" if k == "cpu_us_per_msg" else f"{k}={v:,.0f}"
                                      for k, v in m.items()))
import os
if os.environ.get("BENCH_SUMMARY_OUT"):
    with open(os.environ["BENCH_SUMMARY_OUT"], "w") as f:
        json.dump(med, f)
if "rabbitmq" in med and med["rabbitmq"]["consumed_per_s"]:
    print(f"ratio consumed_per_s warren/rabbitmq: {med['warren']['consumed_per_s'] / med['rabbitmq']['consumed_per_s']:.2f}")
PY
