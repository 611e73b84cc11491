#!/usr/bin/env bash
# One warren-perf run against a fresh broker, and the broker's CPU per
# consumed message (user and system, from /proc/PID/stat over the run):
#
#   scripts/bench-cpu.sh BIN [warren-perf options...]
#   e.g. scripts/bench-cpu.sh target/release/warren --size 16 --prefetch 1000 --multi-ack 100
#
# DURATION seconds (default 10). PRE: an environment assignment for the
# broker only (e.g. PRE=LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2).
# Prints: consumed/s, p99 latency (us), user, system and total us a message.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 BIN [warren-perf options...]" >&2; exit 64; }
bin=$1
shift
(cd "$root" && cargo build --release --quiet -p warren-perf)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
d=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$d"' EXIT
env ${PRE:-WARREN_BENCH=1} "$bin" --amqp-listen "127.0.0.1:$port" --http-listen "" --prometheus-listen "" --data-dir "$d/data" >"$d/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q listening "$d/log" && break; sleep 0.1; done
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
"$root/target/release/warren-perf" --addr "127.0.0.1:$port" --duration "${DURATION:-10}" "$@" 2>&1 | tail -1 >"$d/out"
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
ticks=$(getconf CLK_TCK)
U=$((u1 - u0)) S=$((s1 - s0)) TICKS=$ticks python3 - "$d/out" <<'PY'
import json, os, sys
j = json.load(open(sys.argv[1]))
n = j["consumed_per_s"] * j["seconds"]
us = 1e6 / int(os.environ["TICKS"])
u, s = int(os.environ["U"]) * us / n, int(os.environ["S"]) * us / n
print(round(j["consumed_per_s"]), "p99", j["latency_us"]["p99"], "user_us %.3f sys_us %.3f total %.3f" % (u, s, u + s))
PY
