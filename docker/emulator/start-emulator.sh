#!/usr/bin/env bash
# Start Android emulators for evoray, then run the given command (a Ray worker) in front of them.
#
#   start-emulator.sh ray start --address=HEAD:6379 --resources='{"kvm": 1}' --block
#
# 1. Once per container: boot the AVD *writable* and save the snapshot "$EMULATOR_SNAPSHOT"
#    (the emulator refuses `avd snapshot save` under -read-only); quitting also saves the
#    Quickboot state that later -read-only instances boot from (copy-on-write).
# 2. Launch one emulator per port in $EMULATOR_PORTS with the flags of
#    actors/emulator/adb.py:emulator_command, wait for sys.boot_completed=1 on each.
# 3. exec "$@" (or, with no command, wait on the emulators).
set -euo pipefail

AVD="${EVORAY_AVD:-evoray}"
PORTS="${EMULATOR_PORTS:-5554}"               # even console ports, 5554..5682; empty: launch none
SNAPSHOT="${EMULATOR_SNAPSHOT:-evoray-clean}"
BOOT_TIMEOUT="${EMULATOR_BOOT_TIMEOUT:-300}"
READ_ONLY="${EMULATOR_READ_ONLY:-1}"          # 0 keeps console snapshot loads (one emulator per AVD only)
EXTRA="${EMULATOR_EXTRA:-}"                   # extra emulator flags, word-split (e.g. "-gpu swiftshader_indirect")
LOG_DIR="${EMULATOR_LOG_DIR:-/tmp/evoray-emulator}"
AVD_HOME="${ANDROID_AVD_HOME:-$HOME/.android/avd}"

FLAGS=(-no-window -no-audio -no-boot-anim)
[ "$READ_ONLY" = "1" ] && FLAGS+=(-read-only)
# shellcheck disable=SC2206
EXTRA_ARGS=($EXTRA)

log() { echo "start-emulator: $*" >&2; }

if [ ! -e /dev/kvm ]; then
  log "/dev/kvm is missing: run privileged with a /dev/kvm hostPath, or with a KVM device plugin"
  exit 1
fi
mkdir -p "$LOG_DIR"
adb start-server >/dev/null

wait_boot() {  # serial pid
  local deadline=$((SECONDS + BOOT_TIMEOUT)) state=""
  while [ "$state" != "1" ]; do
    if ! kill -0 "$2" 2>/dev/null; then
      log "$1: emulator exited while booting; see $LOG_DIR"; return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$1 did not finish booting within ${BOOT_TIMEOUT}s (sys.boot_completed=${state:-none})"; return 1
    fi
    sleep 2
    state="$(adb -s "$1" shell getprop sys.boot_completed 2>/dev/null | tr -d '\r' || true)"
  done
  log "$1 booted"
}

first_port="${PORTS%% *}"
first_port="${first_port:-5554}"
if [ ! -d "$AVD_HOME/$AVD.avd/snapshots/$SNAPSHOT" ]; then
  log "no snapshot $SNAPSHOT yet: one writable boot on port $first_port to take it"
  emulator -avd "$AVD" -no-window -no-audio -no-boot-anim -port "$first_port" "${EXTRA_ARGS[@]}" \
    >"$LOG_DIR/prepare-$first_port.log" 2>&1 &
  pid=$!
  wait_boot "emulator-$first_port" "$pid"
  adb -s "emulator-$first_port" shell input keyevent 3   # the clean state is the home screen
  sleep 5
  adb -s "emulator-$first_port" emu avd snapshot save "$SNAPSHOT"
  adb -s "emulator-$first_port" emu kill
  wait "$pid" || true
fi

pids=()
for port in $PORTS; do
  if [ $((port % 2)) -ne 0 ] || [ "$port" -lt 5554 ] || [ "$port" -gt 5682 ]; then
    log "port $port must be even and in 5554..5682"; exit 1
  fi
  emulator -avd "$AVD" "${FLAGS[@]}" -port "$port" "${EXTRA_ARGS[@]}" >"$LOG_DIR/emulator-$port.log" 2>&1 &
  pids+=("$!")
done
i=0
for port in $PORTS; do
  wait_boot "emulator-$port" "${pids[$i]}"
  i=$((i + 1))
done

if [ "$#" -gt 0 ]; then
  exec "$@"
fi
wait
