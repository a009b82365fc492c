#!/usr/bin/env bash
# Soak: `sandboxpool run` on the local backend for DURATION (default 1h) with a
# --cmd workload (real processes to kill), a claim every second, a random
# workload process killed with -9 about every KILL_EVERY seconds and the local
# agent itself about every AGENT_KILL_EVERY seconds (the controller must start
# a new one and refill). Every minute it samples RSS and open fds of the
# controller and of the current agent, the controller's goroutines, the store
# file and agent log sizes, the live workload processes and the claims. At the
# end: `terminate --all`, then no process of this run may be left. Not in CI.
#   bash testdata/soak.sh                # one hour
#   DURATION=600 bash testdata/soak.sh
# Needs curl; the default workload needs python3 (set WORKLOAD to replace it:
# any command serving HTTP on {port}, with exec so it is one process).
set -euo pipefail
# All in one { ...; exit; }: bash reads the whole of it before running, so
# editing this file during a run does not derail the run.
{
cd "$(dirname "$0")/.."
DURATION=${DURATION:-3600}
KILL_EVERY=${KILL_EVERY:-20}
AGENT_KILL_EVERY=${AGENT_KILL_EVERY:-600}
SAMPLE_EVERY=${SAMPLE_EVERY:-60}
POOL=soak

tmp=$(mktemp -d /tmp/sp-soak.XXXXXX)
bin="$tmp/sandboxpool"
stdir="$tmp/state"
ctl= finished=
# Every process of every sandbox of this run's agent carries this marker.
mark="SANDBOXPOOL_AGENT_SOCKET=$stdir/$POOL.agent.sock"

# Pids of this run's workload processes: SANDBOXPOOL_SANDBOX=<id> and our
# agent's marker in their environment (one grep over /proc, not a fork each).
workloads() {
  local f
  f=$(grep -lzxF "$mark" /proc/[0-9]*/environ 2>/dev/null || true)
  [ -n "$f" ] || return 0
  grep -lz '^SANDBOXPOOL_SANDBOX=' $f 2>/dev/null | sed 's|/proc/\([0-9]*\)/environ|\1|' || true
}
# The pid of this run's agent: its argv, and its cwd is our state dir.
agent_pid() {
  local c p
  for c in $(grep -lzxF sandboxpool-local-agent /proc/[0-9]*/cmdline 2>/dev/null || true); do
    p=${c#/proc/}; p=${p%/cmdline}
    [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$stdir" ] && { echo "$p"; return; }
  done
  return 0
}


cleanup() {
  if [ -n "$ctl" ]; then kill "$ctl" 2>/dev/null || true; wait "$ctl" 2>/dev/null || true; fi
  [ -n "$finished" ] || [ ! -x "$bin" ] || "$bin" terminate --all >/dev/null 2>&1 || true
  local p
  for p in $(agent_pid) $(workloads); do kill -9 "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
go build -o "$bin" .
if [ -z "${WORKLOAD:-}" ]; then
  # The real interpreter, not a pyenv shim: a shim is a shell script per start.
  py=$(python3 -c 'import sys; print(sys.executable)')
  WORKLOAD="exec $py -m http.server {port} --bind 127.0.0.1"
fi

# A free loopback port (nothing answers on it), unless PORT is given.
free_port() {
  local p
  while :; do
    p=$(( 20000 + RANDOM % 40000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
PORT=${PORT:-$(free_port)}

export SANDBOXPOOL_STATE_DIR="$stdir" SANDBOXPOOL_POOL=$POOL SANDBOXPOOL_TTL=2m SANDBOXPOOL_USE_DURATION=30s
"$bin" run --size 5 --listen "127.0.0.1:$PORT" --cmd "$WORKLOAD" --health-every 2s --maintain-every 10s \
  --log-level "${LOG_LEVEL:-info}" 2>"$tmp/run.log" &
ctl=$!

for _ in $(seq 300); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "127.0.0.1:$PORT/healthz" >/dev/null || { echo "controller not up:"; cat "$tmp/run.log"; exit 1; }
echo "soak: commit $(git log -1 --format='%h %cs' 2>/dev/null || echo "?") built $(date -u +%F), pid $ctl on 127.0.0.1:$PORT, ${DURATION}s, workload: $WORKLOAD"

metric() { curl -sf -m 5 "127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1==m {print $2}' || true; }
# RSS, and its anonymous part (heap, stacks): the rest is the binary's pages,
# clean and shared by the controller and the agent, which grows as more of
# its code runs for the first time.
rss() { awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} END {if (r) printf "%.1f (anon %.1f)", r/1024, a/1024; else print "-"}' "/proc/$1/status" 2>/dev/null || echo -; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l || true; }
size() { stat -c %s "$1" 2>/dev/null || echo 0; }
sample() {
  local a; a=$(agent_pid)
  printf '%6ds | ctl rss %5s MB fds %4s goroutines %4s | agent %7s rss %5s MB fds %4s | workloads %3d ready %2s | store %8d B agent log %7d B | claims ok %5d failed %d | kills %d + agent %d\n' \
    "$(( $(date +%s) - start ))" "$(rss "$ctl")" "$(fds "$ctl")" "$(metric go_goroutines)" \
    "${a:--}" "$( [ -n "$a" ] && rss "$a" || echo -)" "$( [ -n "$a" ] && fds "$a" || echo -)" \
    "$(workloads | wc -l)" "$(metric 'sandboxpool_sandboxes{state="ready"}')" \
    "$(size "$stdir/$POOL.json")" "$(size "$stdir/$POOL.agent.log")" "$ok" "$fail" "$kills" "$akills"
}

start=$(date +%s); ok=0; fail=0; kills=0; akills=0
next_sample=$start; next_kill=$(( start + KILL_EVERY )); next_akill=$(( start + AGENT_KILL_EVERY ))
dead_agent=; dead_at=0
while (( $(date +%s) - start < DURATION )); do
  now=$(date +%s)
  sleep 1 & tick=$! # one claim a second, however long the work below takes
  if (( now >= next_sample )); then sample; next_sample=$(( next_sample + SAMPLE_EVERY )); fi
  if curl -sf -m 10 -X POST "127.0.0.1:$PORT/v1/claims?timeout=5s" >/dev/null; then ok=$((ok+1)); else fail=$((fail+1)); fi
  if (( now >= next_kill )); then
    victim=$(workloads | shuf -n1 || true)
    if [ -n "$victim" ] && kill -9 "$victim" 2>/dev/null; then kills=$((kills+1)); fi
    next_kill=$(( now + KILL_EVERY / 2 + RANDOM % (KILL_EVERY + 1) ))
  fi
  if (( now >= next_akill )); then
    dead_agent=$(agent_pid)
    if [ -n "$dead_agent" ] && kill -9 "$dead_agent" 2>/dev/null; then
      akills=$((akills+1)); dead_at=$now
      echo "$(( now - start ))s: killed the agent (pid $dead_agent)"
    else dead_agent=; fi
    next_akill=$(( now + AGENT_KILL_EVERY ))
  fi
  if [ -n "$dead_agent" ]; then
    a=$(agent_pid); r=0
    [ -n "$a" ] && [ "$a" != "$dead_agent" ] && r=$(metric 'sandboxpool_sandboxes{state="ready"}')
    # Refilled: a new agent, and the claims (one a second) leave >= 4 of 5 ready.
    if [ "${r:-0}" -ge 4 ] 2>/dev/null; then
      echo "$(( $(date +%s) - start ))s: new agent (pid $a), pool refilled (>= 4 of 5 ready) $(( $(date +%s) - dead_at ))s after the kill"
      dead_agent=
    fi
  fi
  wait "$tick"
done
sample

kill "$ctl"; wait "$ctl" 2>/dev/null || true
"$bin" terminate --all >/dev/null; finished=1
for _ in $(seq 50); do
  left=$( (agent_pid; workloads) | sort -u | tr '\n' ' ')
  [ -z "$left" ] && break; sleep 0.1
done
if [ -n "$left" ]; then
  echo "leak: processes of this run left after terminate --all: $left"
  for p in $left; do tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null; echo; done
else
  echo "no leak: no process of this run left after terminate --all"
fi
echo "claims: $ok ok, $fail failed over ${DURATION}s; kills: $kills workload processes, $akills agents"
echo "controller log: $(grep -c . "$tmp/run.log" || true) lines, $(grep -cE 'WARN|ERROR|level=(warn|error)' "$tmp/run.log" || true) warn/error"
if [ -n "${LOG_COPY:-}" ]; then cp "$tmp/run.log" "$LOG_COPY"; cp "$stdir/$POOL.agent.log" "$LOG_COPY.agent" 2>/dev/null || true; fi
exit
}
