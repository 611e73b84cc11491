#!/usr/bin/env bash
# Runs kombu's and py-amqp's own upstream integration suites
# (kombu t/integration/test_py_amqp.py, py-amqp t/integration/test_rmq.py),
# taken from the sdists of the versions pinned in tests/python/requirements.txt,
# and amqplib's own test suite (test/ of the amqplib 0.10.9 package — the 2.x
# packages ship no tests — installed with mocha from
# tests/node/upstream/package-lock.json), against a fresh Warren (or against
# WARREN_TEST_ADDR=host:port if set).
#
# amqplib's suite takes the broker from URL; two of its tests ("serverProperties",
# "using custom heartbeat option") take host and port from URL's query string
# instead, so they run a second time with those in it (a query string hides
# the one "wrongly typed open option" adds, hence not for every test).
# Deselected: "ipv6", which dials [::1]:5672 whatever URL says.
#
# py-amqp's TLS variants run against Warren's TLS listener with certificates
# made here (the sdist has no t/certs). Deselected, with the reason:
# - test_tls_default_certs / test_tls_no_default_certs_fails: they dial
#   tls-v1-2.badssl.com on the internet.
# - against WARREN_TEST_ADDR, every TLS variant (that broker's TLS setup is
#   not ours to make).
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
    tls_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    data=$(mktemp -d)
    certs=$amqp_dir/t/certs
    mkdir -p "$certs"
    "$py" - "$certs" <<'PY'
import sys, trustme
d = sys.argv[1]
ca = trustme.CA()
ca.cert_pem.write_to_path(f"{d}/ca_certificate.pem")
server = ca.issue_cert("localhost", "127.0.0.1")
server.private_key_pem.write_to_path(f"{d}/server_key.pem")
with open(f"{d}/server_certificate.pem", "wb") as f:
    for blob in server.cert_chain_pems:
        f.write(blob.bytes())
client = ca.issue_cert("client@upstream.test")
client.private_key_pem.write_to_path(f"{d}/client_key.pem")
client.cert_chain_pems[0].write_to_path(f"{d}/client_certificate.pem")
# "Broken": a certificate with somebody else's key.
other = trustme.CA().issue_cert("stranger@upstream.test")
other.private_key_pem.write_to_path(f"{d}/client_key_broken.pem")
client.cert_chain_pems[0].write_to_path(f"{d}/client_certificate_broken.pem")
PY
    log=$cache/warren-upstream.log
    "$bin" --amqp-listen "$host:$port" --http-listen 127.0.0.1:0 --prometheus-listen 127.0.0.1:0 --data-dir "$data" --amqps-listen "$host:$tls_port" \
        --tls-cert "$certs/server_certificate.pem" --tls-key "$certs/server_key.pem" \
        --tls-ca "$certs/ca_certificate.pem" --tls-verify-peer >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q "AMQP listening" "$log" && break; sleep 0.1; done
fi

export RABBITMQ_HOST=$host RABBITMQ_5672_TCP=$port RABBITMQ_5671_TCP=${tls_port:-5671}
if [ -n "${WARREN_TEST_ADDR:-}" ]; then amqp_filter="not tls"; else amqp_filter="not default_certs"; fi
echo "== kombu $(pin kombu): t/integration/test_py_amqp.py"
(cd "$kombu_dir" && "$py" -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning \
    t/integration/test_py_amqp.py)
echo "== py-amqp $(pin amqp): t/integration/test_rmq.py"
(cd "$amqp_dir" && "$py" -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning \
    t/integration/test_rmq.py -k "$amqp_filter")
echo "== amqplib $(node -p 'require("'"$root"'/tests/node/upstream/package.json").dependencies.amqplib'): test/"
"$root/scripts/node-env.sh" "$root/tests/node/upstream"
amqplib_dir=$root/tests/node/upstream/node_modules/amqplib
mocha=$root/tests/node/upstream/node_modules/.bin/mocha
url="amqp://guest:guest@$host:$port"
own_address="serverProperties|using custom heartbeat option"
(cd "$amqplib_dir" && URL=$url "$mocha" --check-leaks -u tdd --exit -R dot test/ \
    --grep "^Connect API ($own_address|ipv6)\$" --invert)
(cd "$amqplib_dir" && URL="$url?hostname=$host&port=$port" "$mocha" --check-leaks -u tdd --exit -R dot test/ \
    --grep "^Connect API ($own_address)\$")
if [ -z "${WARREN_TEST_ADDR:-}" ] && grep -q panicked "$log"; then
    echo "panic in the broker's log ($log):" >&2
    grep panicked "$log" >&2
    exit 1
fi
