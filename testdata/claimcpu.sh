#!/usr/bin/env bash
# claimcpu.sh: CPU, context switches and syscalls per claim, of the
# controller and of the local agent apart, repeated so that an A/B
# comparison is quick and robust on a loaded machine (counts and CPU time,
# not latency).
#
# Each run starts a fresh `sandboxpool run --size POOL --max-size MAX --ttl
# 10m` (local backend, built-in workload, its own state dir and port),
# waits for POOL ready, then:
#   grow:   PUT the target POOL+GROW, wait for it ready, PUT it back to POOL
#           and wait for the surplus to go: CPU per created sandbox (to
#           take the backfill's creations out of the claim's figures)
#   b2b:    N claims back to back, then waits until the backfill has
#           replaced them (POOL ready, none creating): CPU and switches per
#           claim with its backfill; "net" takes the creations out at the
#           grow's cost per creation
#   burst:  perf.sh's bursts (BURST_CLIENTS clients share BURST_N claims,
#           BURSTS times, refilled to POOL before each), then waits until
#           the backfill is done: CPU and switches per claim, "net" as b2b's
#   paced:  PACED claims PACED_GAP apart (wake-ups per claim on an idle pool;
#           the same spell idle is measured first and taken out)
# CPU is the sum over the live threads' schedstat (ns, finer than /proc
# ticks); switches are voluntary/nonvoluntary_ctxt_switches summed over
# /proc/PID/task/*/status.
#
#   bash testdata/claimcpu.sh
#   RUNS=5 BIN=/tmp/old-sandboxpool bash testdata/claimcpu.sh   # A/B
#
# Knobs (env): RUNS (3), POOL (50), MAX (100), N (100), GROW (50), BURSTS
# (5; 0 skips), BURST_CLIENTS (20), BURST_N (POOL*9/10), PACED (20; 0 skips), PACED_GAP (300ms), BIN (built from this tree when unset),
# PROFILE (a path prefix: CPU profiles of controller and agent over the b2b
# phase, or the paced one with PROFILE_PHASE=paced, via
# SANDBOXPOOL_DEBUG_CPUPROFILE: PROFILE.<pid>), PERF (a path prefix: `perf
# record -g` of both over that phase, PERF.<run>.<phase>.{controller,agent}), STRACE (1: `strace -c -f` of
# both over the b2b phase into STRACE_OUT.<phase>.<pid>), ARGS (more flags
# for run). Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
POOL=${POOL:-50}
MAX=${MAX:-100}
N=${N:-100}
GROW=${GROW:-50}
PACED=${PACED:-20}
BURSTS=${BURSTS:-5}
BURST_CLIENTS=${BURST_CLIENTS:-20}
BURST_N=${BURST_N:-$((POOL * 9 / 10))}
PACED_GAP=${PACED_GAP:-300ms}
STRACE=${STRACE:-}
STRACE_OUT=${STRACE_OUT:-$PWD/claimcpu.strace}
ARGS=${ARGS:-}

. testdata/lib.sh
start_script claimcpu

# stop_run: the run's tracers, then its pool.
stop_run() {
	stop_traces
	stop_pool
}
cleanup() { stop_run; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# snap PID: "cpu_us vol nonvol" of its live threads.
snap() {
	local us sw
	us=$(cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END {printf "%d", s/1000}')
	sw=$(cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/ {v+=$2} /^nonvoluntary_ctxt/ {n+=$2} END {printf "%d %d", v, n}')
	echo "$us $sw"
}
# per A B COUNT: (B-A)/COUNT for each of the three fields, as cpu_ms vol nonvol.
per() {
	awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		printf "%.3f %.2f %.2f", (y[1]-x[1])/1000/n, (y[2]-x[2])/n, (y[3]-x[3])/n }'
}
settled() {
	for _ in $(seq 300); do
		[ "$(metric 'sandboxpool_sandboxes{state="ready"}')" = "$1" ] &&
			[ "$(metric 'sandboxpool_sandboxes{state="creating"}')" = "0" ] &&
			[ "$(metric 'sandboxpool_sandboxes{state="warming"}')" = "0" ] &&
			[ "$(metric 'sandboxpool_sandboxes{state="terminating"}')" = "0" ] && return 0
		sleep 0.1
	done
	say "never settled at $1 ready"
	return 1
}
trace() { # trace PHASE: strace both processes until stop_traces
	[ -n "$STRACE" ] || return 0
	for p in "$pid" "$apid"; do
		strace -c -f -p "$p" -o "$STRACE_OUT.$1.$p" 2>/dev/null &
		straces+=($!)
	done
	sleep 0.5 # attached
}
prof() { # prof PHASE SIGNAL: start or stop the profiles of PROFILE_PHASE
	[ "$1" = "${PROFILE_PHASE:-b2b}" ] || return 0
	if [ -n "${PROFILE:-}" ]; then kill -"$2" "$pid" "$apid"; fi
	if [ -n "${PERF:-}" ] && [ "$2" = USR1 ]; then
		# Finer than the Go profiler, whose per-thread timers fire at the
		# kernel's tick at most: short bursts on many threads go unseen.
		perf record -q -e cpu-clock -F 4000 -g -p "$pid" -o "$PERF.$run.$1.controller" 2>/dev/null &
		straces+=($!)
		perf record -q -e cpu-clock -F 4000 -g -p "$apid" -o "$PERF.$run.$1.agent" 2>/dev/null &
		straces+=($!)
		sleep 0.5 # attached
	fi
	return 0
}

bin=${BIN:-}
if [ -z "$bin" ]; then
	say "building"
	bin=$work/sandboxpool
	go build -o "$bin" .
fi
go build -o "$load" ./internal/cmd/claimload

declare -A col
add() { col[$1]="${col[$1]:-} $2"; }
for run in $(seq "$RUNS"); do
	state=$work/state$run
	env=()
	[ -n "${PROFILE:-}" ] && env=(SANDBOXPOOL_DEBUG_CPUPROFILE="$PROFILE")
	# shellcheck disable=SC2086
	env "${env[@]}" "$bin" run --state-dir "$state" --size "$POOL" --max-size "$MAX" --ttl 10m \
		--listen 127.0.0.1:0 $ARGS 2>"$work/run$run.log" &
	pid=$!
	api=$(wait_api "$work/run$run.log")
	"$load" wait-ready -url "$api" -want "$POOL" >/dev/null
	settled "$POOL"
	apid=$(agentpid)

	# grow: CPU per creation
	sc0=$(snap "$pid") sa0=$(snap "$apid") n0=$(created)
	curl -sf -X PUT -d "{\"size\":$((POOL + GROW))}" "$api/v1/pool/size" >/dev/null
	"$load" wait-ready -every 50ms -url "$api" -want $((POOL + GROW)) >/dev/null
	sc1=$(snap "$pid") sa1=$(snap "$apid") n1=$(created)
	nc=$(awk -v a="$n1" -v b="$n0" 'BEGIN{print a-b}')
	read -r gc _ _ <<<"$(per "$sc0" "$sc1" "$nc")"
	read -r ga _ _ <<<"$(per "$sa0" "$sa1" "$nc")"
	curl -sf -X PUT -d "{\"size\":$POOL}" "$api/v1/pool/size" >/dev/null
	settled "$POOL"
	sleep 1

	# b2b: N claims and their backfill
	prof b2b USR1
	trace b2b
	sc0=$(snap "$pid") sa0=$(snap "$apid") n0=$(created)
	b2b=$("$load" b2b -url "$api" -n "$N")
	settled "$POOL"
	sc1=$(snap "$pid") sa1=$(snap "$apid") n1=$(created)
	stop_traces
	prof b2b USR2
	nb=$(awk -v a="$n1" -v b="$n0" 'BEGIN{print a-b}')
	read -r bc bcv bcn <<<"$(per "$sc0" "$sc1" "$N")"
	read -r ba bav ban <<<"$(per "$sa0" "$sa1" "$N")"
	netc=$(awk -v t="$bc" -v g="$gc" -v c="$nb" -v n="$N" 'BEGIN{printf "%.3f", t - g*c/n}')
	neta=$(awk -v t="$ba" -v g="$ga" -v c="$nb" -v n="$N" 'BEGIN{printf "%.3f", t - g*c/n}')
	p50=$(tr ' ' '\n' <<<"$b2b" | sed -n 's/^p50_ms=//p')
	echo "run=$run b2b claims=$N created=$nb ctl_ms=$bc agent_ms=$ba ctl_net_ms=$netc agent_net_ms=$neta ctl_vol=$bcv ctl_nonvol=$bcn agent_vol=$bav agent_nonvol=$ban grow_ctl_ms=$gc grow_agent_ms=$ga p50_ms=$p50 load=$(cut -d' ' -f1 /proc/loadavg)"
	add ctl "$bc"; add agent "$ba"; add ctlnet "$netc"; add agentnet "$neta"
	add ctlvol "$bcv"; add ctlnon "$bcn"; add agvol "$bav"; add agnon "$ban"

	if [ "$BURSTS" -gt 0 ]; then
		sleep 1
		sc0=$(snap "$pid") sa0=$(snap "$apid") n0=$(created)
		burst=$("$load" burst -url "$api" -clients "$BURST_CLIENTS" -n "$BURST_N" -repeat "$BURSTS" -refill "$POOL")
		settled "$POOL"
		sc1=$(snap "$pid") sa1=$(snap "$apid") n1=$(created)
		nu=$((BURST_N * BURSTS))
		nb=$(awk -v a="$n1" -v b="$n0" 'BEGIN{print a-b}')
		read -r uc ucv ucn <<<"$(per "$sc0" "$sc1" "$nu")"
		read -r ua uav uan <<<"$(per "$sa0" "$sa1" "$nu")"
		netc=$(awk -v t="$uc" -v g="$gc" -v c="$nb" -v n="$nu" 'BEGIN{printf "%.3f", t - g*c/n}')
		neta=$(awk -v t="$ua" -v g="$ga" -v c="$nb" -v n="$nu" 'BEGIN{printf "%.3f", t - g*c/n}')
		echo "run=$run burst claims=$nu created=$nb ctl_ms=$uc agent_ms=$ua ctl_net_ms=$netc agent_net_ms=$neta ctl_vol=$ucv ctl_nonvol=$ucn agent_vol=$uav agent_nonvol=$uan p50_ms=$(kv "$burst" p50_ms) p99_ms=$(kv "$burst" p99_ms) load=$(cut -d' ' -f1 /proc/loadavg)"
		add uctl "$uc"; add uagent "$ua"; add uctlnet "$netc"; add uagentnet "$neta"
		add uctlvol "$ucv"; add uctlnon "$ucn"; add uagvol "$uav"; add uagnon "$uan"
	fi

	if [ "$PACED" -gt 0 ]; then
		sleep 1
		# the same spell idle, then paced
		secs=$(awk -v n="$PACED" -v g="${PACED_GAP%ms}" 'BEGIN{printf "%.3f", n*g/1000}')
		sc0=$(snap "$pid") sa0=$(snap "$apid")
		sleep "$secs"
		sc1=$(snap "$pid") sa1=$(snap "$apid")
		read -r ic icv icn <<<"$(per "$sc0" "$sc1" "$PACED")"
		read -r ia iav ian <<<"$(per "$sa0" "$sa1" "$PACED")"
		prof paced USR1
		trace paced
		sc0=$(snap "$pid") sa0=$(snap "$apid")
		paced=$("$load" paced -url "$api" -n "$PACED" -gap "$PACED_GAP")
		sc1=$(snap "$pid") sa1=$(snap "$apid")
		stop_traces
		prof paced USR2
		read -r pc pcv pcn <<<"$(per "$sc0" "$sc1" "$PACED")"
		read -r pa pav pan <<<"$(per "$sa0" "$sa1" "$PACED")"
		d() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a-b}'; }
		pp50=$(tr ' ' '\n' <<<"$paced" | sed -n 's/^p50_ms=//p')
		echo "run=$run paced claims=$PACED ctl_ms=$(d "$pc" "$ic") agent_ms=$(d "$pa" "$ia") ctl_vol=$(d "$pcv" "$icv") ctl_nonvol=$(d "$pcn" "$icn") agent_vol=$(d "$pav" "$iav") agent_nonvol=$(d "$pan" "$ian") idle_ctl_ms=$ic idle_agent_ms=$ia p50_ms=$pp50 load=$(cut -d' ' -f1 /proc/loadavg)"
		add pctl "$(d "$pc" "$ic")"; add pagent "$(d "$pa" "$ia")"
		sw() { awk -v a="$1" -v b="$2" -v c="$3" -v d="$4" 'BEGIN{printf "%.3f", a-b+c-d}'; } # switches more than idle
		add pctlsw "$(sw "$pcv" "$icv" "$pcn" "$icn")"; add pagsw "$(sw "$pav" "$iav" "$pan" "$ian")"
	fi
	stop_run
done
m() { tr ' ' '\n' <<<"${col[$1]:-}" | grep . | median 3; }
echo "median runs=$RUNS b2b: ctl_ms=$(m ctl) agent_ms=$(m agent) ctl_net_ms=$(m ctlnet) agent_net_ms=$(m agentnet) ctl_switches=$(m ctlvol)+$(m ctlnon) agent_switches=$(m agvol)+$(m agnon)${col[uctl]:+ burst: ctl_ms=$(m uctl) agent_ms=$(m uagent) ctl_net_ms=$(m uctlnet) agent_net_ms=$(m uagentnet) ctl_switches=$(m uctlvol)+$(m uctlnon) agent_switches=$(m uagvol)+$(m uagnon)}${PACED:+ paced: ctl_ms=$(m pctl) agent_ms=$(m pagent) ctl_switches=$(m pctlsw) agent_switches=$(m pagsw)}"
