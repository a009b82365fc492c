#!/usr/bin/env bash
# idle-cost.sh: what the dashboard costs while it sits idle over a ready pool.
#
# Starts `sandboxpool --size 20` (the dashboard, local backend, a fresh state
# dir) in a private tmux server at 100x30, waits until the header says
# "ready 20", then reads /proc/<pid>/stat (utime+stime) and /proc/<pid>/status
# (VmRSS) of the dashboard process at the start and at the end of the window,
# and prints CPU as a share of one core and the RSS. The sandboxes are other
# processes and are not counted; the dashboard's own health probes, store
# watching and maintenance passes are. Exit 1 when over budget:
# CPU <= 2% of one core, RSS <= 60 MB.
#
# Usage: testdata/idle-cost.sh [seconds]   (default 30)
# Env:   SANDBOXPOOL_BIN  a built binary (default: go build into a temp dir)
#        SIZE             pool size (default 20)
#        CAPTURE          a file to write the screen to at the end of the window
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-30}
size=${SIZE:-20}
max_cpu=2   # percent of one core
max_rss=60  # MB

for v in $(compgen -e | grep '^SANDBOXPOOL_' || true); do
	[ "$v" = SANDBOXPOOL_BIN ] || unset "$v"
done
work=$(mktemp -d)
bin=${SANDBOXPOOL_BIN:-}
if [ -z "$bin" ]; then
	bin=$work/sandboxpool
	go build -o "$bin" .
fi
export SANDBOXPOOL_STATE_DIR=$work/state
sock=sbp-idle-$$
tm() { tmux -L "$sock" -f /dev/null "$@"; }
socket_path=
cleanup() {
	tm kill-server 2>/dev/null || true
	[ -n "$socket_path" ] && rm -f "$socket_path"
	"$bin" terminate --all >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

tm new-session -d -s t -x 100 -y 30 -- "$bin" --size "$size" --listen 127.0.0.1:0
socket_path=$(tm display-message -p '#{socket_path}')
pid=$(tm display-message -p -t t '#{pane_pid}')

deadline=$((SECONDS + 120))
until tm capture-pane -p -t t | grep -q "^ready $size\b"; do
	if [ $SECONDS -ge $deadline ]; then
		echo "timed out waiting for $size ready; the screen:" >&2
		tm capture-pane -p -t t >&2
		exit 1
	fi
	sleep 0.2
done

ticks() { # utime+stime: fields 14 and 15, counted after the ")" of comm
	sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'
}
status_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }

hz=$(getconf CLK_TCK)
t0=$(ticks)
w0=$(date +%s.%N)
rss0=$(status_kb VmRSS)
sleep "$secs"
t1=$(ticks)
w1=$(date +%s.%N)
rss1=$(status_kb VmRSS)
hwm=$(status_kb VmHWM)
threads=$(status_kb Threads)
[ -n "${CAPTURE:-}" ] && tm capture-pane -p -t t >"$CAPTURE"
tm capture-pane -p -t t | head -2

awk -v t0="$t0" -v t1="$t1" -v w0="$w0" -v w1="$w1" -v hz="$hz" \
	-v rss0="$rss0" -v rss1="$rss1" -v hwm="$hwm" -v th="$threads" -v size="$size" -v pid="$pid" \
	-v max_cpu="$max_cpu" -v max_rss="$max_rss" 'BEGIN {
	wall = w1 - w0; cpu = (t1 - t0) / hz
	pct = 100 * cpu / wall
	printf "dashboard idle over %d ready sandboxes for %.1f s (pid %s, %d threads)\n", size, wall, pid, th
	printf "cpu: %.2f s user+sys = %.2f%% of one core (budget %d%%)\n", cpu, pct, max_cpu
	printf "rss: %.1f MB at start, %.1f MB at end, peak %.1f MB (budget %d MB)\n", rss0 / 1024, rss1 / 1024, hwm / 1024, max_rss
	ok = pct <= max_cpu && rss1 / 1024 <= max_rss
	print (ok ? "PASS" : "FAIL")
	exit ok ? 0 : 1
}'
tm send-keys -t t q
