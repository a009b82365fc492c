#!/usr/bin/env bash
# burstcpu.sh: the controller's CPU per claim in bursts (perf.sh's bursts:
# CLIENTS clients share N claims on a pool of POOL, connections opened
# before the first burst and kept), and a same-minute A/B. Each run starts
# a fresh `sandboxpool run --size POOL --max-size MAX --ttl 10m` of BIN
# and, with BIN2, one of BIN2 beside it; the bursts go to each in turn,
# every pool refilled to POOL (and resting SETTLE) before each burst, so
# both see the machine's load of the same minutes: B/A is each run's ratio,
# and its median the comparison. A controller's CPU (its live threads'
# schedstat) is read right before and right after each burst's claims: the
# backfill and the /metrics scrapes between bursts are not in it (the
# backfill waits 2 ms after a burst's last claim).
#
#   bash testdata/burstcpu.sh
#   RUNS=7 BIN=/tmp/old BIN2=./sandboxpool bash testdata/burstcpu.sh   # A/B
#
# Knobs (env): RUNS (3), BURSTS (10 per run and pool), POOL (50), MAX
# (100), N (45), CLIENTS (20), SETTLE (0s: as perf.sh, whose bursts start
# as the pool is back to POOL ready), BIN (built from this tree when
# unset), BIN2, PROFILE (a path prefix: CPU and allocs profiles of the
# controllers over each run's bursts, refills included, via
# SANDBOXPOOL_DEBUG_CPUPROFILE: PROFILE.<A|B>.<run>.<pid>), PERF (a path
# prefix: `perf record -g` of A's controller, or of every process with
# PERF_ALL=1, over the same span, PERF.A.<run>, on CLOCK_MONOTONIC, with
# each of A's bursts' span in PERF.A.<run>.spans: keep the bursts' samples
# alone with `perf script --time`), ARGS (more flags for run). Leaves
# nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
BURSTS=${BURSTS:-10}
POOL=${POOL:-50}
MAX=${MAX:-100}
N=${N:-45}
CLIENTS=${CLIENTS:-20}
SETTLE=${SETTLE:-0s}
ARGS=${ARGS:-}

. testdata/lib.sh
start_script burstcpu
trap 'exit 130' INT TERM

bin=${BIN:-}
if [ -z "$bin" ]; then
	say "building"
	bin=$work/sandboxpool
	go build -o "$bin" .
fi
go build -o "$load" ./internal/cmd/claimload
declare -A col
# start LABEL BIN: a controller of BIN; sets pid_LABEL, api_LABEL, state_LABEL.
start() {
	local st=$work/state.$1.$run env=()
	[ -n "${PROFILE:-}" ] && env=(SANDBOXPOOL_DEBUG_CPUPROFILE="$PROFILE.$1.$run")
	# shellcheck disable=SC2086
	env "${env[@]}" "$2" run --state-dir "$st" --size "$POOL" --max-size "$MAX" --ttl 10m \
		--listen 127.0.0.1:0 $ARGS 2>"$work/run.$1.$run.log" &
	pid=$!
	printf -v "pid_$1" %s "$pid"
	printf -v "state_$1" %s "$st"
	local a
	a=$(wait_api "$work/run.$1.$run.log") || exit 1
	printf -v "api_$1" %s "$a"
}
# stop_all: both controllers of the run and their pools.
stop_all() {
	for l in A B; do
		local p=pid_$l s=state_$l
		pid=${!p:-} state=${!s:-}
		stop_pool
		printf -v "pid_$l" %s ""
		printf -v "state_$l" %s ""
	done
}
cleanup() { stop_traces; stop_all; rm -rf "$work"; }
trap cleanup EXIT

ratios=
for run in $(seq "$RUNS"); do
	start A "$bin"
	args=(-url "$api_A" -cpu-pid "$pid_A")
	if [ -n "${BIN2:-}" ]; then
		start B "$BIN2"
		args+=(-url2 "$api_B" -cpu-pid2 "$pid_B")
	fi
	"$load" wait-ready -url "$api_A" -want "$POOL" >/dev/null
	[ -n "${BIN2:-}" ] && "$load" wait-ready -url "$api_B" -want "$POOL" >/dev/null
	[ -n "${PROFILE:-}" ] && kill -USR1 "$pid_A" ${pid_B:+"$pid_B"}
	if [ -n "${PERF:-}" ]; then
		who=(-p "$pid_A")
		[ -n "${PERF_ALL:-}" ] && who=(-a) # every process: what the rest of the machine does meanwhile
		perf record -q -k CLOCK_MONOTONIC -e cpu-clock -F 4000 -g "${who[@]}" -o "$PERF.A.$run" 2>/dev/null &
		straces+=($!)
		sleep 0.5 # attached
		args+=(-spans "$PERF.A.$run.spans")
	fi
	out=$("$load" burst "${args[@]}" -clients "$CLIENTS" -n "$N" -repeat "$BURSTS" -refill "$POOL" \
		-settle "$SETTLE" -every 5ms)
	stop_traces
	[ -n "${PROFILE:-}" ] && { kill -USR2 "$pid_A" ${pid_B:+"$pid_B"}; sleep 1; }
	a=$(grep -m1 'mode=burst' <<<"$out")
	b=$(grep -m1 'mode=burst-b' <<<"$out" || true)
	ca=$(kv "$a" cpu_ms_per_claim)
	line="run=$run A cpu_ms_per_claim=$ca p50_ms=$(kv "$a" p50_ms) p99_ms=$(kv "$a" p99_ms) errors=$(kv "$a" errors)"
	col[A]="${col[A]:-} $ca"
	if [ -n "$b" ]; then
		cb=$(kv "$b" cpu_ms_per_claim)
		r=$(awk -v a="$ca" -v b="$cb" 'BEGIN{printf "%.3f", b/a}')
		line+=" B cpu_ms_per_claim=$cb p50_ms=$(kv "$b" p50_ms) p99_ms=$(kv "$b" p99_ms) errors=$(kv "$b" errors) B/A=$r"
		col[B]="${col[B]:-} $cb"
		ratios+=" $r"
	fi
	echo "$line load=$(cut -d' ' -f1 /proc/loadavg)"
	stop_all
done
m() { tr ' ' '\n' <<<"${col[$1]:-}" | grep . | median 3; }
line="median runs=$RUNS bursts=$BURSTS of $N: A cpu_ms_per_claim=$(m A)"
[ -n "${BIN2:-}" ] && line+=" B cpu_ms_per_claim=$(m B) B/A=$(tr ' ' '\n' <<<"$ratios" | grep . | median 3)"
echo "$line"
