#!/usr/bin/env bash
# `make run`: three demo app servers on 127.0.0.1:9001-9003 behind lb on :8080.
# Usage: bash tests/demo/run.sh BUILD_DIR
set -u
BUILD_DIR=${1:-build}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
LB="$BUILD_DIR/lb/lb"
CONFIG="config/lb.yaml"

if [ ! -x "$LB" ]; then
  echo "demo: $LB not found; build first (make build)" >&2
  exit 1
fi

TMP=$(mktemp -d -t lb-demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for i in 1 2 3; do
  python3 tests/origin/origin.py --name "app-$i" --listen "127.0.0.1:900$i" \
    >"$TMP/app-$i.out" 2>&1 &
  PIDS+=($!)
done

# Wait (at most 10 s) until each app server has printed "listening on ...".
for i in 1 2 3; do
  ok=0
  for _ in $(seq 1 100); do
    if grep -q '^listening on ' "$TMP/app-$i.out" 2>/dev/null; then ok=1; break; fi
    if ! kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    echo "demo: app-$i did not start on 127.0.0.1:900$i:" >&2
    cat "$TMP/app-$i.out" >&2
    exit 1
  fi
done

echo "demo: app servers on 9001-9003; try: curl -s localhost:8080/ ; status page: http://127.0.0.1:9901/  (Ctrl-C stops)"
# lb runs in the foreground (not exec'd, so the trap can stop the app servers
# when it exits). Ctrl-C reaches lb directly: it drains and exits 0.
trap ':' INT
"$LB" run -c "$CONFIG"
status=$?
exit "$status"
