#!/usr/bin/env bash
# Restart benchmark: fill a durable queue with N persistent messages
# (default 1,000,000 × 256 B, with confirms), kill -9 Warren, and time how
# long the restart takes until it logs 'listening' (recovery included) and
# until a client sees the full queue. Also prints the data directory size.
#   scripts/bench-restart.sh [N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-1000000}
cd "$root"
cargo build --release --quiet -p warren -p warren-perf
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
log=$data/warren.log
start() {
    target/release/warren --amqp-listen "127.0.0.1:$port" --http-listen "" --prometheus-listen "" --data-dir "$data/d" >"$log" 2>&1 &
    pid=$!
}
trap 'kill -9 $pid 2>/dev/null; rm -rf "$data"' EXIT
start
for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
target/release/warren-perf --addr "127.0.0.1:$port" --consumers 0 --count "$n" --size 256 \
    --persistent --durable --confirm 1000 --queue restart
echo "data dir: $(du -sh "$data/d" | cut -f1)"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
t0=$(date +%s.%N)
start
while ! grep -q listening "$log"; do sleep 0.005; done
t1=$(date +%s.%N)
count=$("$root/.venv/bin/python" -c "
import pika
c = pika.BlockingConnection(pika.ConnectionParameters(port=$port))
print(c.channel().queue_declare('restart-0', durable=True, passive=True).method.message_count)" 2>/dev/null || echo '?')
t2=$(date +%s.%N)
grep "recovered durable state" "$log" | sed 's/^.*INFO //'
echo "restart to 'listening': $(python3 -c "print(f'{$t1-$t0:.2f}')") s; to first answer with $count messages: $(python3 -c "print(f'{$t2-$t0:.2f}')") s"
echo "RSS after recovery: $(ps -o rss= -p $pid | awk '{printf "%.0f MiB", $1/1024}')"
