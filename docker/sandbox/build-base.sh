#!/usr/bin/env bash
# Builds the sandbox's base image without any registry: a minimal Debian rootfs made by debootstrap,
# imported with `docker import`. Needs root, debootstrap and a Debian mirror (apt's own is enough).
# Usage: build-base.sh [TAG] [MIRROR]
set -euo pipefail
tag="${1:-evoray-sandbox-base:bookworm}"
mirror="${2:-http://deb.debian.org/debian}"
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag exists"; exit 0; fi
root="$(mktemp -d /tmp/evoray-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"   # mktemp makes it 0700: the image root must be traversable by the sandbox user
debootstrap --variant=minbase --include=python3 bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log"; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$tag"
echo "built $tag"
