#!/usr/bin/env bash
# Runs kombu's and py-amqp's own upstream integration suites
# (kombu t/integration/test_py_amqp.py, py-amqp t/integration/test_rmq.py),
# taken from the sdists of the versions pinned in tests/python/requirements.txt,
# against a fresh Warren (or against WARREN_TEST_ADDR=host:port if set).
#
# Deselected, with the reason:
# - py-amqp's TLS variants: Warren has no TLS listener yet.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/scripts/python-env.sh")
py=$venv/bin/python
cache=${WARREN_UPSTREAM_CACHE:-$root/target/upstream}
mkdir -p "$cache"

pin() { grep -E "^$1==" "$root/tests/python/requirements.txt" | cut -d= -f3; }
fetch() { # name version -> extracted dir
    local dir=$cache/$1-$2
    if [ ! -d "$dir/t/integration" ]; then
        "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
            --no-binary :all: -d "$cache" "$1==$2" >&2
        tar xzf "$cache/$1-$2.tar.gz" -C "$cache"
    fi
    echo "$dir"
}
kombu_dir=$(fetch kombu "$(pin kombu)")
amqp_dir=$(fetch amqp "$(pin amqp)")

pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
if [ -n "${WARREN_TEST_ADDR:-}" ]; then
    host=${WARREN_TEST_ADDR%:*}
    port=${WARREN_TEST_ADDR##*:}
else
    bin=${WARREN_BIN:-$root/target/debug/warren}
    [ -x "$bin" ] || (cd "$root" && cargo build --quiet -p warren)
    host=127.0.0.1
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    data=$(mktemp -d)
    log=$cache/warren-upstream.log
    "$bin" --amqp-listen "$host:$port" --data-dir "$data" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
fi

export RABBITMQ_HOST=$host RABBITMQ_5672_TCP=$port
echo "== kombu $(pin kombu): t/integration/test_py_amqp.py"
(cd "$kombu_dir" && "$py" -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning \
    t/integration/test_py_amqp.py)
echo "== py-amqp $(pin amqp): t/integration/test_rmq.py"
(cd "$amqp_dir" && "$py" -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning \
    t/integration/test_rmq.py -k "not tls")
