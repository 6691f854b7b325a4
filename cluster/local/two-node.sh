#!/usr/bin/env bash
# A two-node Ray cluster on this one machine, for trying `evoray submit` without a cloud: a head
# node and a second node that alone offers the `sandbox` resource; Ray's token authentication on.
#   cluster/local/two-node.sh start    # prints the two exports a client needs
#   cluster/local/two-node.sh stop     # `ray stop`: stops every Ray process on this machine
set -euo pipefail
RAY=${RAY:-$(dirname "$0")/../../.venv/bin/ray}
DIR=${EVORAY_CLUSTER_DIR:-/tmp/evoray-cluster}
case "${1:-}" in
  start)
    mkdir -p "$DIR"
    [ -s "$DIR/token" ] || python3 -c "import secrets; print(secrets.token_hex(32))" > "$DIR/token"
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat "$DIR/token")"
    export PATH="$(cd "$(dirname "$RAY")" && pwd):$PATH"   # a job's `python` is the venv's
    "$RAY" start --head --port=6379 --num-cpus=2 --include-dashboard=true --dashboard-port=8265 \
      --metrics-export-port=8080 --disable-usage-stats >/dev/null
    "$RAY" start --address=127.0.0.1:6379 --num-cpus=2 --resources='{"sandbox": 2}' \
      --disable-usage-stats >/dev/null
    echo "two nodes up; dashboard and Jobs API: http://127.0.0.1:8265, metrics: http://127.0.0.1:8080/metrics"
    echo "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat "$DIR/token")"
    ;;
  stop)
    "$RAY" stop --force >/dev/null && echo stopped
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
