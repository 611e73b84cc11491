#!/usr/bin/env bash
# A/B of the per-message path between two commits (or the work tree):
#
#   scripts/bench-ab.sh BASE HEAD        e.g. scripts/bench-ab.sh main~1 main
#   scripts/bench-ab.sh BASE .           "." is the work tree as it is
#
# Builds Warren and warren-perf in release mode at both (each commit in a
# throwaway worktree, built in target/bench-ab, which is kept so that only
# what changed rebuilds; the work tree "." in target/ as usual),
# then alternates runs of the two scenarios every change to the per-message
# path is checked with — transient 16 B 1 -> 1 -> 1 (prefetch 1000, acks
# every 100) and persistent 1 KiB with confirms (window 1000, fsync) —
# ROUNDS times each (default 5, DURATION seconds per run, default 10), each
# run on a fresh broker with a fresh data directory, and prints every run
# and, per scenario, both medians and their ratio HEAD/BASE.
# BASE_BIN / HEAD_BIN: a warren binary already built from that side, used
# instead of building it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 2 ] || { echo "usage: $0 BASE HEAD   (a commit, or . for the work tree)" >&2; exit 64; }
rounds=${ROUNDS:-5}
duration=${DURATION:-10}
out=$(mktemp -d)
trap 'for w in "$out"/wt-*; do [ -d "$w" ] && git -C "$root" worktree remove --force "$w"; done; rm -rf "$out"' EXIT

build() { # label rev -> copies warren and warren-perf to $out/label/
    local label=$1 rev=$2 src=$root
    local given=${BASE_BIN:-}
    [ "$label" = head ] && given=${HEAD_BIN:-}
    if [ -n "$given" ]; then
        # A binary built before (both get this tree's warren-perf).
        (cd "$root" && cargo build --release --quiet -p warren-perf)
        mkdir -p "$out/$label"
        cp "$given" "$out/$label/warren"
        cp "$root/target/release/warren-perf" "$out/$label/"
        echo "$label = $given (given for $rev)"
        return
    fi
    # A commit is built in target/bench-ab (kept between runs, so only
    # what changed rebuilds): building it in target/ left that commit's
    # binaries in target/release, where the other scripts take the work
    # tree's. The work tree builds in target/ as usual.
    local target=$root/target
    if [ "$rev" != . ]; then
        src=$out/wt-$label
        target=$root/target/bench-ab
        git -C "$root" worktree add --quiet --detach "$src" "$rev"
    fi
    (cd "$src" && CARGO_TARGET_DIR=$target cargo build --release --quiet -p warren -p warren-perf)
    mkdir -p "$out/$label"
    cp "$target/release/warren" "$target/release/warren-perf" "$out/$label/"
    echo "built $label = $rev ($(cd "$src" && git rev-parse --short HEAD)$([ "$rev" = . ] && echo ' + work tree'))"
}
build base "$1"
build head "$2"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() { # label scenario args... -> one JSON line
    local label=$1 scenario=$2; shift 2
    local port data pid line
    port=$(free_port)
    data=$(mktemp -d)
    "$out/$label/warren" --amqp-listen "127.0.0.1:$port" --http-listen '' --prometheus-listen '' \
        --data-dir "$data" >"$data/warren.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$data/warren.log" && break; sleep 0.1; done
    line=$("$out/$label/warren-perf" --addr "127.0.0.1:$port" --duration "$duration" "$@")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$data"
    echo "{\"build\":\"$label\",\"scenario\":\"$scenario\",\"result\":$line}"
}
results=$out/results.jsonl
for r in $(seq "$rounds"); do
    # Alternate which build goes first, so neither always runs on a warmer machine.
    if [ $((r % 2)) -eq 1 ]; then order="base head"; else order="head base"; fi
    for label in $order; do
        run "$label" transient-16b --size 16 --prefetch 1000 --multi-ack 100 | tee -a "$results"
        run "$label" persistent-1k --size 1024 --persistent --durable --confirm 1000 --prefetch 1000 \
            --multi-ack 100 --queue pbench | tee -a "$results"
    done
done
python3 - "$results" "$1" "$2" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
base, head = sys.argv[2], sys.argv[3]
for scenario, key in (("transient-16b", "consumed_per_s"), ("persistent-1k", "confirmed_per_s")):
    med = {b: statistics.median(r["result"][key] for r in runs if r["build"] == b and r["scenario"] == scenario)
           for b in ("base", "head")}
    print(f"{scenario}: {key} median base ({base}) {med['base']:,.0f}, head ({head}) {med['head']:,.0f}, "
          f"head/base {med['head'] / med['base']:.3f}")
PY
