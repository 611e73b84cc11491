#!/usr/bin/env bash
# Instructions the broker spends on a run, counted by callgrind: a figure
# that repeats within about 0.5 % from run to run on this shared machine,
# where wall-clock rates move by 10 % or more. COUNT messages of SIZE bytes
# go through one queue (1 publisher, 1 consumer, prefetch 1000, acks every
# 100) to a release build of Warren run under valgrind with one worker; the
# whole process is counted, start-up included.
#
#   scripts/bench-instructions.sh SIZE COUNT [BIN] [warren-perf options...]
#
# BIN defaults to target/release/warren (built if missing). Prints the
# total and the instructions per message; the callgrind output is kept
# as callgrind-SIZE.out in the working directory for callgrind_annotate.
# Needs valgrind (apt-get install valgrind).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { echo "usage: $0 SIZE COUNT [BIN] [warren-perf options...]" >&2; exit 64; }
size=$1 count=$2
shift 2
bin=${1:-$root/target/release/warren}
[ $# -gt 0 ] && shift
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 69; }
(cd "$root" && cargo build --release --quiet -p warren-perf)
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet -p warren)
perf=$root/target/release/warren-perf
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" --workers 1 \
    --amqp-listen "127.0.0.1:$port" --http-listen "" --prometheus-listen "" --data-dir "$work/data" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q "AMQP listening" "$work/log" && break; sleep 0.2; done
"$perf" --addr "127.0.0.1:$port" --publishers 0 --consumers 1 --prefetch 1000 --multi-ack 100 \
    --drain "$count" --queue cg >"$work/drain.out" 2>&1 &
drain=$!
# The consumer first (given a second to subscribe under valgrind), so
# messages are delivered as they arrive rather than queued.
sleep 1
"$perf" --addr "127.0.0.1:$port" --consumers 0 --keep --count "$count" --size "$size" --duration 900 --queue cg "$@" >"$work/perf.out" 2>&1
wait $drain
kill -TERM $pid
wait $pid || true
total=$(grep -E "^(summary|totals):" "$work/cg.out" | head -1 | awk '{print $2}')
cp "$work/cg.out" "callgrind-$size.out"
echo "instructions: $total ($(( total / count )) a message) for $count x $size B"
