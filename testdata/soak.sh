#!/usr/bin/env bash
# Soak: a controller for DURATION (default 1h) with a claim every second and a
# random sandbox killed every KILL_EVERY seconds; samples RSS, goroutines and
# open file descriptors of the controller every minute. Not run in CI.
#   bash testdata/soak.sh            # one hour
#   DURATION=600 bash testdata/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-3600}
KILL_EVERY=${KILL_EVERY:-20}
PORT=${PORT:-17790}
state=$(mktemp -d)
go build -o "$state/sandboxpool" .
bin="$state/sandboxpool"
export SANDBOXPOOL_STATE_DIR="$state/state" SANDBOXPOOL_POOL=soak SANDBOXPOOL_TTL=2m SANDBOXPOOL_USE_DURATION=30s
"$bin" run --size 5 --listen "127.0.0.1:$PORT" --health-every 2s --maintain-every 10s --log-level warn 2>"$state/run.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; "$bin" terminate --all >/dev/null; rm -rf "$state"' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

metric() { curl -sf "127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1==m {print $2}'; }
sample() {
  local rss fds gor
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  fds=$(ls /proc/$pid/fd | wc -l)
  gor=$(metric go_goroutines)
  printf '%6ds  rss %6d KB  goroutines %4s  fds %4d  claims ok %s\n' "$(( $(date +%s) - start ))" "$rss" "$gor" "$fds" "$ok"
}
start=$(date +%s); ok=0; fail=0; next_sample=$start
while (( $(date +%s) - start < DURATION )); do
  now=$(date +%s)
  if (( now >= next_sample )); then sample; next_sample=$(( now + 60 )); fi
  if curl -sf -X POST "127.0.0.1:$PORT/v1/claims?timeout=5s" >/dev/null; then ok=$((ok+1)); else fail=$((fail+1)); fi
  if (( RANDOM % KILL_EVERY == 0 )); then
    victim=$(ls "$SANDBOXPOOL_STATE_DIR/soak.sandboxes" 2>/dev/null | grep '\.json$' | shuf -n1 || true)
    if [ -n "$victim" ]; then
      vpid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$SANDBOXPOOL_STATE_DIR/soak.sandboxes/$victim")
      [ -n "$vpid" ] && kill -9 -"$vpid" 2>/dev/null || true
    fi
  fi
  sleep 1
done
sample
echo "claims: $ok ok, $fail failed over ${DURATION}s"
