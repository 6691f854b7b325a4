#!/usr/bin/env bash
# Starts a Docker engine on a Debian/Ubuntu box (as root), even inside a container: no iptables,
# no bridge (sandboxes use network_mode=none anyway), the vfs storage driver. Idempotent.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; }
fi
nohup dockerd --iptables=false --bridge=none --storage-driver=vfs >/var/log/evoray-dockerd.log 2>&1 &
for _ in $(seq 60); do docker info >/dev/null 2>&1 && exit 0; sleep 1; done
echo "dockerd did not come up; see /var/log/evoray-dockerd.log" >&2
tail -20 /var/log/evoray-dockerd.log >&2
exit 1
