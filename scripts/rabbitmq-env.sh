#!/usr/bin/env bash
# Installs RabbitMQ (Debian's rabbitmq-server) for the tests that need a
# real RabbitMQ on the other side of a shovel or federation link; they start
# private nodes of their own (tests/python/rabbitnode.py). Idempotent.
# Nothing is started here: Debian's service start at install is held back.
set -euo pipefail
command -v rabbitmq-server >/dev/null && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# Hold back the service start that the package's postinst asks for.
held=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    held=1
fi
apt-get install -y -qq --no-install-recommends rabbitmq-server >&2 || { [ -n "$held" ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
[ -n "$held" ] && rm -f /usr/sbin/policy-rc.d
exit 0
