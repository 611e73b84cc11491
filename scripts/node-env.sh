#!/usr/bin/env bash
# Installs what the Node tests need, idempotently: Node.js and npm (Debian's
# packages, when the machine has none) and the packages pinned in
# tests/node/package-lock.json (`npm ci`, redone only when the lockfile
# changes) — or in the lockfile of the directory given as the argument
# (tests/node/upstream: amqplib's own suite).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/tests/node}
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq nodejs npm >&2
fi
stamp=$dir/node_modules/.lock.sha256
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" > "$stamp"
fi
