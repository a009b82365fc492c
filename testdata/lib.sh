# lib.sh: what perf.sh, createcpu.sh, claimcpu.sh and autosize.sh share, sourced by each
# (from the repository's root): reading the tools' key=value lines, waiting
# for a pool's API, and stopping a pool with everything it started. The
# caller defines say and sets bin (the sandboxpool binary), load
# (claimload), and for the pool at hand pid (its `run` process), state (its
# state dir) and api.

# start_script NAME: what the CPU scripts (claimcpu, burstcpu, createcpu) set
# up first: no SANDBOXPOOL_ setting of the caller's shell, a work dir
# (work), claimload's path in it (load), no pool yet, and say.
start_script() {
	local v
	for v in $(compgen -e | grep '^SANDBOXPOOL_' || true); do unset "$v"; done
	work=$(mktemp -d "${TMPDIR:-/tmp}/sp-$1.XXXXXX")
	load=$work/claimload
	pid=
	state=
	straces=()
	script_name=$1
	say() { echo "$script_name: $*" >&2; }
}

# kv LINE KEY: the value of KEY in a key=value line.
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n1; }

# metric NAME: the value of one sample of the pool's /metrics.
metric() { curl -sf "$api/metrics" | awk -v m="$1" '$1==m {print $2}'; }

# cpu: CPU ms (utime+stime) of every process of the pool, $pid's included.
cpu() { kv "$("$load" cpu -state-dir "$state" -pid "$pid")" cpu_ms; }

# created: the pool's successful creations so far.
created() { metric 'sandboxpool_creations_total{result="ok"}'; }

# agentpid: the pid of the pool's local agent.
agentpid() { "$load" cpu -state-dir "$state" -pid "$pid" | sed -n 's/.* pids=\(.*\)/\1/p' | tr , '\n' | grep -vx "$pid" | head -n1; }

# median [DIGITS]: the median of the numbers on stdin, one a line, with
# DIGITS (2) decimals when it falls between two; "-" for none.
median() { sort -g | awk -v d="${1:-2}" '{a[NR]=$1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.*f\n", d, (a[NR/2]+a[NR/2+1])/2}'; }

# wait_api LOG: prints the API address that $pid writes to LOG, waiting up
# to 10 s; fails, showing LOG, if it never comes or $pid exits first.
wait_api() {
	local a=
	for _ in $(seq 200); do
		a=$(grep -so 'api=http://[0-9.:]*' "$1" | head -n1 | sed 's/^api=//') || true
		[ -n "$a" ] && { echo "$a"; return 0; }
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	say "the API never came up"
	cat "$1" >&2
	return 1
}

# stop_pool: stops $pid (SIGINT, SIGKILL 5 s later), terminates the pool in
# $state, and kills whatever of it still runs 10 s later; then pid and
# state are empty, so a second call does nothing.
stop_pool() {
	set +e
	if [ -n "$pid" ]; then
		kill -INT "$pid" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		pid=
	fi
	if [ -n "$state" ] && [ -d "$state" ] && [ -x "$bin" ]; then
		"$bin" terminate --all --state-dir "$state" >/dev/null 2>&1
	fi
	if [ -n "$state" ] && [ -d "$state" ] && [ -x "$load" ]; then
		local left=
		for _ in $(seq 50); do
			left=$("$load" cpu -state-dir "$state" | sed -n 's/.* pids=\(.*\)/\1/p')
			[ -z "$left" ] && break
			sleep 0.2
		done
		if [ -n "$left" ]; then
			say "killing what the pool left running: $left"
			for p in ${left//,/ }; do kill -KILL "$p" 2>/dev/null; done
		fi
	fi
	state=
	set -e
}

# stop_traces: stops the tracers (strace, perf) whose pids are in the
# straces array, and waits for them to write what they saw.
stop_traces() {
	for s in "${straces[@]}"; do kill -INT "$s" 2>/dev/null || true; wait "$s" 2>/dev/null || true; done
	straces=()
}
