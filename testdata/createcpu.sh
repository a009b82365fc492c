#!/usr/bin/env bash
# createcpu.sh: machine CPU per created sandbox, the grow step of perf.sh
# alone, repeated so that an A/B comparison is quick.
#
# Each run starts a fresh `sandboxpool run --size POOL --max-size MAX --ttl
# 10m` (local backend, built-in workload, its own state dir and port), waits
# for POOL ready, then PUTs the target MAX and waits for MAX ready, exactly
# as perf.sh does; CPU is utime+stime of every process of the pool
# (controller, agent, children) across that grow, divided by the creations.
# With GROWS > 1 the same process then shrinks back to POOL and grows again
# (the later grows are usually cheaper than the first, which perf.sh
# measures). It prints one line per grow and the median of the first grows.
#
#   bash testdata/createcpu.sh            # 3 runs, first grow each
#   RUNS=5 GROWS=3 bash testdata/createcpu.sh
#   BIN=/path/to/sandboxpool bash testdata/createcpu.sh   # A/B an older build
#
# Knobs (env): RUNS (3), GROWS (1), POOL (50), MAX (100), BIN (built from
# this tree when unset), PROFILE (a path prefix: CPU profiles of the
# controller and the agent over each grow, PROFILE.<pid>, via the hidden
# SANDBOXPOOL_DEBUG_CPUPROFILE hook), STRACE (1: `strace -c -f` of the
# controller and of the agent over each grow, into STRACE_OUT, default
# ./createcpu.strace.<pid>), PERF (a path prefix: `perf record -g` of
# both over each grow, PERF.<run>.<grow>.{controller,agent};
# PERF_EVENT=page-faults records every fault instead of CPU samples). Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
GROWS=${GROWS:-1}
POOL=${POOL:-50}
MAX=${MAX:-100}
STRACE=${STRACE:-}
STRACE_OUT=${STRACE_OUT:-$PWD/createcpu.strace}

. testdata/lib.sh
start_script createcpu

# stop_run: the run's tracers, then its pool.
stop_run() {
	stop_traces
	stop_pool
}
cleanup() { stop_run; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ticks PID: utime+stime (+ reaped children) of one process, in ms.
ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print ($12+$13+$14+$15)*10}'; }
# runns PID: CPU time of the live threads of one process, in µs (finer
# than the 10 ms ticks of /proc/PID/stat; Go rarely ends a thread).
runus() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END {printf "%d", s/1000}'; }
# wakes PID: context switches (voluntary + not) of its live threads, and
# its minor page faults: counts that load on the machine hardly blurs.
wakes() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s+=$2} END {printf "%d", s}'; }
faults() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $8}'; }

bin=${BIN:-}
if [ -z "$bin" ]; then
	say "building"
	bin=$work/sandboxpool
	go build -o "$bin" .
fi
go build -o "$load" ./internal/cmd/claimload

firsts=()
finefirsts=()
for run in $(seq "$RUNS"); do
	state=$work/state$run
	env=()
	[ -n "${PROFILE:-}" ] && env=(SANDBOXPOOL_DEBUG_CPUPROFILE="$PROFILE")
	env "${env[@]}" "$bin" run --state-dir "$state" --size "$POOL" --max-size "$MAX" --ttl 10m \
		--listen 127.0.0.1:0 2>"$work/run$run.log" &
	pid=$!
	api=$(wait_api "$work/run$run.log") || exit 1
	"$load" wait-ready -url "$api" -want "$POOL" >/dev/null
	apid=$(agentpid)
	for grow in $(seq "$GROWS"); do
		if [ "$grow" -gt 1 ]; then
			curl -sf -X PUT -d "{\"size\":$POOL}" "$api/v1/pool/size" >/dev/null
			# Settled: the surplus is terminated and gone from the agent's list.
			for _ in $(seq 100); do
				[ "$(metric 'sandboxpool_sandboxes{state="ready"}')" = "$POOL" ] &&
					[ "$(metric 'sandboxpool_sandboxes{state="terminating"}')" = "0" ] && break
				sleep 0.1
			done
			sleep 1
		fi
		if [ -n "${PROFILE:-}" ]; then kill -USR1 "$pid" "$apid"; fi
		if [ -n "${PERF:-}" ]; then
			# Finer than the Go profiler, whose samples come at the kernel's tick at most.
			ev=(-e cpu-clock -F 4000)
			[ -n "${PERF_EVENT:-}" ] && ev=(-e "$PERF_EVENT" -c 1) # e.g. page-faults, every one
			perf record -q "${ev[@]}" -g -p "$pid" -o "$PERF.$run.$grow.controller" 2>/dev/null &
			straces+=($!)
			perf record -q "${ev[@]}" -g -p "$apid" -o "$PERF.$run.$grow.agent" 2>/dev/null &
			straces+=($!)
			sleep 0.5 # attached
		fi
		if [ -n "$STRACE" ]; then
			for p in "$pid" "$apid"; do
				strace -c -f -p "$p" -o "$STRACE_OUT.$p" 2>/dev/null &
				straces+=($!)
			done
			sleep 0.5 # attached
		fi
		# Counted before the window opens: a /metrics scrape costs the
		# controller ~1-3 ms, which is this script's, not the creations'.
		n0=$(created)
		c0=$(cpu)
		t0=$(ticks "$pid") a0=$(ticks "$apid") u0=$(runus "$pid") v0=$(runus "$apid")
		w0=$(($(wakes "$pid") + $(wakes "$apid"))) f0=$(($(faults "$pid") + $(faults "$apid")))
		curl -sf -X PUT -d "{\"size\":$MAX}" "$api/v1/pool/size" >/dev/null
		"$load" wait-ready -every 50ms -url "$api" -want "$MAX" >/dev/null
		c1=$(cpu)
		t1=$(ticks "$pid") a1=$(ticks "$apid") u1=$(runus "$pid") v1=$(runus "$apid")
		w1=$(($(wakes "$pid") + $(wakes "$apid"))) f1=$(($(faults "$pid") + $(faults "$apid")))
		n1=$(created)
		if [ -n "${PROFILE:-}" ]; then kill -USR2 "$pid" "$apid"; fi
		stop_traces
		n=$(awk -v a="$n1" -v b="$n0" 'BEGIN{print a-b}')
		fine=$(awk -v c=$((u1 - u0 + v1 - v0)) -v n="$n" 'BEGIN{printf "%.3f", n ? c/n/1000 : 0}')
		per=$(awk -v c=$((c1 - c0)) -v n="$n" 'BEGIN{printf "%.2f", n ? c/n : 0}')
		echo "run=$run grow=$grow cpu_ms=$((c1 - c0)) creations=$n ms_per_creation=$per controller_ms=$((t1 - t0)) agent_ms=$((a1 - a0)) sched_ms_per_creation=$fine sched_controller_ms=$(((u1 - u0) / 1000)) sched_agent_ms=$(((v1 - v0) / 1000)) switches=$((w1 - w0)) faults=$((f1 - f0)) load=$(cut -d' ' -f1 /proc/loadavg)"
		[ "$grow" -eq 1 ] && firsts+=("$per") && finefirsts+=("$fine")
	done
	stop_run
done
echo "median_first_grow_ms_per_creation=$(printf '%s\n' "${firsts[@]}" | median) sched=$(printf '%s\n' "${finefirsts[@]}" | median) runs=$RUNS"
