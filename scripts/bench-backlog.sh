#!/usr/bin/env bash
# Backlog benchmark: fill a durable queue with N persistent 256 B messages
# (publisher confirms, window 1000, no consumer), report the broker's RSS with
# the backlog queued, then drain it with one consumer (prefetch 1000, acks
# every 1000) and report how long that took. Runs against a fresh Warren
# (release build) and, if RABBIT_ADDR (default 127.0.0.1:5672) answers, against
# that RabbitMQ node (RSS of its beam.smp).
#   scripts/bench-backlog.sh [N]        (default 10,000,000)
# TRANSIENT=1: transient messages on a non-durable queue instead (no
# confirms), the backlog that lives in memory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-10000000}
rabbit=${RABBIT_ADDR:-127.0.0.1:5672}
cd "$root"
cargo build --release --quiet -p warren -p warren-perf
perf=target/release/warren-perf
if [ "${TRANSIENT:-0}" = 1 ]; then
    kind="transient" fill=() keep=() queue=backlog-transient
else
    kind="persistent" fill=(--persistent --durable --confirm 1000) keep=(--durable) queue=backlog
fi
mib() { awk '{printf "%.0f MiB", $1/1024}'; }

run() { # name addr rss-command
    local name=$1 addr=$2 rss=$3
    echo "== $name: fill $n x 256 B $kind"
    $perf --addr "$addr" --consumers 0 --count "$n" --size 256 "${fill[@]}" --queue "$queue"
    sleep 2
    echo "$name RSS with the backlog queued: $(eval "$rss" | mib)"
    echo "== $name: drain"
    $perf --addr "$addr" --publishers 0 --consumers 1 --keep "${keep[@]}" --queue "$queue" --drain "$n"
    echo "$name RSS after the drain: $(eval "$rss" | mib)"
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
target/release/warren --amqp-listen "127.0.0.1:$port" --http-listen "" --prometheus-listen "" --data-dir "$data/d" >"$data/warren.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do grep -q "AMQP listening" "$data/warren.log" && break; sleep 0.1; done
run Warren "127.0.0.1:$port" "ps -o rss= -p $pid"
echo "Warren peak RSS: $(grep VmHWM /proc/$pid/status | awk '{print $2}' | mib)"

if python3 -c "import socket,sys; socket.create_connection(('${rabbit%:*}', ${rabbit##*:}), 2)" 2>/dev/null; then
    run RabbitMQ "$rabbit" "ps -o rss= -C beam.smp | awk '{s+=\$1} END {print s}'"
else
    echo "(no RabbitMQ at $rabbit: skipped)"
fi
