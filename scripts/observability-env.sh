#!/usr/bin/env bash
# Installs what the dashboard and metrics tests drive, idempotently, from
# Debian's packages: Prometheus (scrapes /metrics in a test) and Chromium
# with ChromeDriver (drives the dashboard headless). Nothing is started.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # No service is started: packages' init scripts find no init system here,
    # and policy-rc.d (when present) forbids it anyway.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
