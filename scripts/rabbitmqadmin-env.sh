#!/usr/bin/env bash
# Provides rabbitmqadmin, the management CLI that Debian's rabbitmq-server
# package ships, for the management API tests. Idempotent. Prints its path.
# Uses the machine's /usr/bin/rabbitmqadmin when there is one; otherwise
# downloads the Debian package (no install, nothing started) and keeps just
# that script under .cache/bin.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if command -v rabbitmqadmin >/dev/null; then
    command -v rabbitmqadmin
    exit 0
fi
out=$root/.cache/bin/rabbitmqadmin
if [ ! -x "$out" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    if ! (cd "$work" && apt-get download rabbitmq-server >&2 2>/dev/null); then
        apt-get update -qq >&2
        (cd "$work" && apt-get download rabbitmq-server >&2)
    fi
    dpkg-deb -x "$work"/rabbitmq-server_*.deb "$work/x"
    mkdir -p "$(dirname "$out")"
    cp "$work/x/usr/bin/rabbitmqadmin" "$out"
    chmod +x "$out"
fi
echo "$out"
