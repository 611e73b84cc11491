#!/usr/bin/env bash
# Builds target/debian/warren_<version>_<arch>.deb with dpkg-deb (Debian's
# own tool: nothing to install): /usr/bin/warren, /etc/warren/warren.conf (a
# commented example, kept on upgrade), the systemd unit, a logrotate
# snippet, and maintainer scripts that create the `warren` system user.
#
#   scripts/build-deb.sh            # from a release build (cargo build --release)
#   scripts/build-deb.sh --debug    # from the debug build (what the tests package)
#
# Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
[ "${1:-}" = --debug ] && profile=debug
if [ "$profile" = release ]; then
    cargo build --release -p warren --quiet
else
    cargo build -p warren --quiet
fi
binary="target/$profile/warren"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$binary" "$stage/usr/bin/warren"
strip --strip-debug "$stage/usr/bin/warren"
install -D -m 0644 packaging/warren.conf "$stage/etc/warren/warren.conf"
install -D -m 0644 packaging/warren.service "$stage/lib/systemd/system/warren.service"
install -D -m 0644 packaging/warren.logrotate "$stage/etc/logrotate.d/warren"
install -D -m 0644 README.md "$stage/usr/share/doc/warren/README.md"
install -d "$stage/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"
printf '/etc/warren/warren.conf\n/etc/logrotate.d/warren\n' > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: warren
Version: $version
Architecture: $arch
Maintainer: Warren developers <warren@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), adduser
Section: net
Priority: optional
Description: AMQP 0-9-1 message broker that RabbitMQ clients use unchanged
 One small binary speaking AMQP 0-9-1 as RabbitMQ does, with RabbitMQ's
 management API, Prometheus metrics, durable queues, publisher confirms,
 dead-lettering, TTLs, priorities and a cluster mode on etcd. It reads
 rabbitmq.conf (/etc/warren/warren.conf) and runs as a systemd service.
CONTROL
mkdir -p target/debian
out="target/debian/warren_${version}_${arch}.deb"
compress=()
[ "$profile" = debug ] && compress=(-Zgzip -z1)   # quick, for the tests
dpkg-deb --root-owner-group "${compress[@]}" --build "$stage" "$out" >/dev/null
echo "$out"
