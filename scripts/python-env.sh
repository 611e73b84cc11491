#!/usr/bin/env bash
# Creates (or reuses) the Python venv the tests use, with pinned client
# libraries. Idempotent: reinstalls only when requirements.txt changes.
# Prints the venv's path on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${WARREN_VENV:-$root/.venv}
req=$root/tests/python/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" > "$stamp"
fi
echo "$venv"
