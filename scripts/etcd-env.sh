#!/usr/bin/env bash
# Installs etcd (Debian's etcd-server, and etcd-client for etcdctl), which
# the cluster tests start on free ports of their own, idempotently. Nothing
# is started here.
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
