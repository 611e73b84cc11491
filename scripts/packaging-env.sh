#!/usr/bin/env bash
# Installs what the packaging tests use, idempotently: dpkg-deb (dpkg),
# systemd-analyze (systemd), setpriv (util-linux), openssl; and podman when
# the image is built too (WARREN_TEST_IMAGE=1).
set -euo pipefail
need=()
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v setpriv >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
if [ "${WARREN_TEST_IMAGE:-}" = 1 ]; then
    command -v podman >/dev/null || need+=(podman)
fi
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
