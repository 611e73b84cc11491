#!/usr/bin/env bash
# Builds Warren's container image with Debian's podman: a statically linked
# binary (glibc, `-C target-feature=+crt-static`: no other toolchain), then
# `podman build -f Containerfile` around it (FROM scratch).
#
#   scripts/build-image.sh [--debug] [TAG]     # default tag: warren:<version>
#
# --debug packages the debug build (what the tests build: quicker).
# Prints the image's tag.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
if [ "${1:-}" = --debug ]; then profile=debug; shift; fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=${1:-warren:$version}
target=$(rustc -vV | sed -n 's/^host: //p')
flags=(-p warren --target "$target" --target-dir target/static --quiet)
[ "$profile" = release ] && flags+=(--release)
RUSTFLAGS="-C target-feature=+crt-static" cargo build "${flags[@]}"
mkdir -p target/image
install -m 0755 "target/static/$target/$profile/warren" target/image/warren
strip --strip-debug target/image/warren
# The binary must need no shared library (the image has none).
if ldd target/image/warren 2>&1 | grep -q '=>'; then
    echo "target/image/warren is not statically linked" >&2
    exit 1
fi
podman build --quiet -f Containerfile -t "$tag" . >/dev/null
echo "$tag"
