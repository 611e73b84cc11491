#!/usr/bin/env bash
# Replicated throughput, all in one run: a 3-node Warren cluster on etcd, a
# single Warren node, and a 3-node RabbitMQ cluster with quorum queues (three
# RabbitMQ nodes on this machine, started and clustered here), the same load
# generator against each, rounds alternating so that machine noise hits all
# alike. Default load: persistent 1 KiB messages on a durable queue,
# confirms with a window of 1000, manual acks every 1000.
#
#   scripts/bench-cluster.sh [warren-perf args...]
#
# ROUNDS (default 3), DURATION seconds per run (default 10), RABBITMQ=0 to
# leave RabbitMQ out. Needs etcd (scripts/etcd-env.sh) and, for RabbitMQ,
# Debian's rabbitmq-server. WARREN_BIN: a warren binary to measure instead
# of this tree's release build (an A/B of two builds, one run each).
# DATA_ROOT: where the nodes' data directories go (default /tmp; /dev/shm
# takes the disk out of the measurement — nothing is durable there).
#
# All the nodes on this machine write to the same disk. Each run's line
# carries what that disk took meanwhile (/proc/diskstats: MB written a
# second, and per confirmed message) and the share of CPU time spent
# waiting for it (iowait, /proc/stat), so that a run limited by the disk
# shows as such.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-3}
duration=${DURATION:-10}
with_rabbit=${RABBITMQ:-1}
load=("$@")
[ ${#load[@]} -gt 0 ] || load=(--size 1024 --persistent --durable --confirm 1000 --prefetch 1000 --multi-ack 1000)
cd "$root"
cargo build --release --quiet -p warren -p warren-perf
warren=${WARREN_BIN:-$root/target/release/warren}
work=$(mktemp -d -p "${DATA_ROOT:-/tmp}")
pids=()
rabbit_nodes=()
cleanup() {
    for n in "${rabbit_nodes[@]}"; do rabbitmqctl -q -n "$n" stop >/dev/null 2>&1 || true; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_log() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timeout waiting for $2 in $1" >&2; exit 1; }

ec=$(port); ep=$(port)
etcd --name b --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$ec" \
    --advertise-client-urls "http://127.0.0.1:$ec" --listen-peer-urls "http://127.0.0.1:$ep" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ep" --initial-cluster "b=http://127.0.0.1:$ep" \
    >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_log "$work/etcd.log" "ready to serve client requests"

declare -A amqp
for i in 1 2 3; do
    amqp[n$i]=$(port)
    "$warren" --amqp-listen "127.0.0.1:${amqp[n$i]}" --http-listen "" --prometheus-listen "" \
        --data-dir "$work/w$i" --cluster-etcd "http://127.0.0.1:$ec" --cluster-name bench --node-name "n$i" \
        >"$work/w$i.log" 2>&1 &
    pids+=($!)
done
# The leader, once both followers are in its in-sync replica set.
leader=""
for _ in $(seq 300); do
    leader=$(for i in 1 2 3; do "$warren" ctl --data-dir "$work/w$i" cluster_status 2>/dev/null || true; done |
        python3 -c '
import json, sys
text = sys.stdin.read()
dec, i, out = json.JSONDecoder(), 0, []
while (j := text.find("{", i)) >= 0:
    v, i = dec.raw_decode(text, j)
    out.append(v)
lead = [s for s in out if s["role"] == "leader" and len(s["isr"]) == 3]
print(lead[0]["node"] if lead else "")')
    [ -n "$leader" ] && break
    sleep 0.2
done
[ -n "$leader" ] || { echo "no Warren cluster leader with a full ISR" >&2; exit 1; }
echo "warren cluster: leader $leader" >&2

single=$(port)
"$warren" --amqp-listen "127.0.0.1:$single" --http-listen "" --prometheus-listen "" \
    --data-dir "$work/single" >"$work/single.log" 2>&1 &
pids+=($!)
wait_log "$work/single.log" "AMQP listening"

rabbit=""
if [ "$with_rabbit" = 1 ]; then
    echo "[]." >"$work/no-plugins"
    # Debian's rabbitmq-server runs the node as the rabbitmq user.
    chmod 755 "$work"
    for i in 1 2 3; do
        node="bench$i-$$@localhost"
        rp=$(port); dp=$(port)
        mkdir -p "$work/r$i"
        if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq: "$work/r$i" "$work/no-plugins"; fi
        RABBITMQ_NODENAME=$node RABBITMQ_NODE_PORT=$rp RABBITMQ_DIST_PORT=$dp \
            RABBITMQ_MNESIA_BASE="$work/r$i/mnesia" RABBITMQ_LOG_BASE="$work/r$i/log" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$work/no-plugins" RABBITMQ_PID_FILE="$work/r$i/pid" \
            RABBITMQ_CONFIG_FILE="$work/r$i/none" RABBITMQ_ADVANCED_CONFIG_FILE="$work/r$i/none.config" \
            rabbitmq-server -detached
        rabbit_nodes+=("$node")
        rabbitmqctl -q -n "$node" wait "$work/r$i/pid" --timeout 120 >/dev/null
        [ "$i" = 1 ] && rabbit=127.0.0.1:$rp
        if [ "$i" != 1 ]; then
            rabbitmqctl -q -n "$node" stop_app
            rabbitmqctl -q -n "$node" join_cluster "${rabbit_nodes[0]}"
            rabbitmqctl -q -n "$node" start_app
        fi
    done
    echo "rabbitmq cluster: ${rabbit_nodes[*]}" >&2
fi

# The block device holding the data directories (none for tmpfs).
dev=$(df --output=source "$work" | tail -1)
dev=${dev#/dev/}
disk() { # sectors written on $dev; iowait and total CPU ticks
    awk -v d="$dev" '$3 == d {print $10}' /proc/diskstats | grep . || echo 0
    awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $6, t}' /proc/stat
}
results=$work/results.jsonl
for r in $(seq "$rounds"); do
    for target in warren-cluster warren-single rabbitmq-quorum; do
        extra=()
        case $target in
            warren-cluster) addr=127.0.0.1:${amqp[$leader]} ;;
            warren-single) addr=127.0.0.1:$single ;;
            rabbitmq-quorum) addr=$rabbit; extra=(--queue-type quorum) ;;
        esac
        [ -n "$addr" ] || continue
        before=$(disk)
        line=$(target/release/warren-perf --addr "$addr" --duration "$duration" "${load[@]}" "${extra[@]}")
        after=$(disk)
        io=$(python3 -c '
import json, sys
(s0, w0, t0), (s1, w1, t1) = ([int(x) for x in a.split()] for a in sys.argv[2:4])
r = json.loads(sys.argv[1])
mb = (s1 - s0) * 512 / 1e6
n = r["confirmed_per_s"] * r["seconds"] or 1
print(json.dumps({"disk_mb_s": round(mb / r["seconds"], 1), "disk_bytes_per_msg": round(mb * 1e6 / n),
                  "iowait_pct": round(100 * (w1 - w0) / max(t1 - t0, 1), 1)}))' "$line" "$(echo $before)" "$(echo $after)")
        echo "{\"broker\":\"$target\",\"round\":$r,\"result\":$line,\"disk\":$io}" | tee -a "$results"
    done
done
python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for b in ("warren-cluster", "warren-single", "rabbitmq-quorum"):
    rs = [r["result"] for r in runs if r["broker"] == b]
    if not rs:
        continue
    m = {k: statistics.median(x[k] for x in rs) for k in ("published_per_s", "consumed_per_s", "confirmed_per_s")}
    m["p99_us"] = statistics.median(x["latency_us"]["p99"] or 0 for x in rs)
    ds = [r["disk"] for r in runs if r["broker"] == b]
    for k in ("disk_mb_s", "disk_bytes_per_msg", "iowait_pct"):
        m[k] = statistics.median(d[k] for d in ds)
    med[b] = m
    print(f"median {b}: " + ", ".join(f"{k}={v:,.0f}" for k, v in m.items()))
for b in ("warren-single", "rabbitmq-quorum"):
    if b in med and med[b]["confirmed_per_s"]:
        print(f"ratio confirmed_per_s warren-cluster/{b}: "
              f"{med['warren-cluster']['confirmed_per_s'] / med[b]['confirmed_per_s']:.2f}")
PY
