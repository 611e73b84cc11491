#!/usr/bin/env bash
# Warren's whole test suite, as CI runs it:
#   1. formatting, the crate split's size and cycle bars, and lints,
#   2. Rust unit tests and integration tests (the real binary, driven by lapin),
#   3. Python behaviour tests (pika, py-amqp, kombu, celery; the management
#      API with rabbitmqadmin and Flower; metrics scraped by Prometheus) in the
#      project's venv,
#   4. Node behaviour tests (amqplib, pinned in tests/node/package-lock.json),
#   5. kombu's, py-amqp's and amqplib's own upstream test suites.
# The Debian package is built and tested every run (from the debug build);
# the container image (a static build: minutes) under CI=true or with
# WARREN_TEST_IMAGE=1.
# Set WARREN_TEST_ADDR=host:port to run the behaviour tests against a broker
# that is already running (e.g. RabbitMQ, for the differential run).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
python3 scripts/code-size.py >/dev/null || { python3 scripts/code-size.py; exit 1; }   # the crate split's bars
# The test-only fault knobs (WARREN_FAULT_*) exist only with this feature.
features="--features warren/fault-injection"
cargo clippy --workspace --all-targets --quiet $features -- -D warnings
cargo build --workspace --quiet $features
# Before the Rust tests: the lapin cluster test starts a real etcd.
scripts/etcd-env.sh                # etcd for the cluster tests (Debian)
cargo test --workspace $features

venv=$(scripts/python-env.sh)
scripts/observability-env.sh      # Prometheus, Chromium, ChromeDriver (Debian)
scripts/rabbitmq-env.sh            # RabbitMQ on the far side of shovels and federation (Debian)
if [ "${CI:-}" = true ]; then export WARREN_TEST_IMAGE=1; fi
scripts/packaging-env.sh           # dpkg-deb, systemd-analyze, setpriv, openssl (+ podman)
export WARREN_BIN=${WARREN_BIN:-$PWD/target/debug/warren}
"$venv/bin/python" -m pytest tests/python -q -p no:cacheprovider --timeout 300 --durations=15
scripts/node-env.sh
(cd tests/node && npm test --silent)
scripts/upstream-suites.sh
