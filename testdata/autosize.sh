#!/usr/bin/env bash
# autosize.sh: README's autosize figure. The same claim load (0 -> 8/s for
# 30 s -> 0) against three pools of the shipped binary, one after the other:
# autosized (--min-size 2 --max-size 40 --autosize-window 10s), a fixed pool
# of 3 and a fixed pool of 40, all with --warmup 1s (local backend). Prints
# the autosized run second by second (5 s buckets), then warm share and idle
# sandbox-seconds of each (idle: the ready count integrated over the run, from
# /metrics once a second). Markdown on stdout, progress on stderr.
#
#   bash testdata/autosize.sh > autosize.md
#
# Env: PROFILE (0x5s,8x30s,0x35s). It leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-0x5s,8x30s,0x35s}
for v in $(compgen -e | grep '^SANDBOXPOOL_' || true); do unset "$v"; done
work=$(mktemp -d "${TMPDIR:-/tmp}/sp-autosize.XXXXXX")
bin=$work/sandboxpool
load=$work/claimload
pid=
state=
say() { echo "autosize: $*" >&2; }
. testdata/lib.sh

trap 'stop_pool; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# run NAME FLOOR FLAGS...: one pool under the profile; rows go to $work/NAME.rows.
run() {
	local name=$1 floor=$2
	shift 2
	state=$work/$name
	say "$name: sandboxpool run $*"
	"$bin" run --state-dir "$state" --warmup 1s --listen 127.0.0.1:0 "$@" 2>"$work/$name.log" &
	pid=$!
	local api
	api=$(wait_api "$work/$name.log") || exit 1
	"$load" wait-ready -url "$api" -want "$floor" >/dev/null
	"$load" steps -url "$api" -profile "$PROFILE" -floor "$floor" >"$work/$name.rows"
	tail -n1 "$work/$name.rows" >&2
	stop_pool
}

go build -o "$bin" .
go build -o "$load" ./internal/cmd/claimload
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
run auto 2 --autosize --min-size 2 --max-size 40 --autosize-window 10s
run fixed3 3 --size 3
run fixed40 40 --size 40 --max-size 40
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

echo "Load: \`$PROFILE\` (claims/s x duration), one claim every 1/rate s, open loop; \`--warmup 1s\`, local backend."
echo "Machine: $(nproc) cores, load average $load_start at the start, $load_end at the end, $(date -u '+%Y-%m-%d %H:%M UTC')."
echo
echo "Autosized (\`--autosize --min-size 2 --max-size 40 --autosize-window 10s\`), per 5 s:"
echo
echo "| t (s) | load (claims/s) | claims done | warm | target (max) | ready (end) |"
echo "|---|---|---|---|---|---|"
# Rows: t rate claims errors warm waited target ready creating.
awk 'NR > 1 && $1 ~ /^[0-9]+$/ {
	b = int(($1 - 1) / 5); claims[b] += $3; if ($2 > rate[b]) rate[b] = $2
	w[b] += $5; n[b] += $5 + $6
	if ($7 > tmax[b]) tmax[b] = $7; ready[b] = $8; last = b
}
END {
	for (i = 0; i <= last; i++) {
		warm = (n[i] > 0) ? sprintf("%.0f%%", 100 * w[i] / n[i]) : "-"
		printf "| %d-%d | %g | %d | %s | %d | %d |\n", 5 * i, 5 * i + 5, rate[i] + 0, claims[i], warm, tmax[i], ready[i]
	}
}' "$work/auto.rows"
echo
echo "| pool | warm share, last 10 s of load | warm share, all claims | failed claims (10 s timeout) | idle sandbox-seconds | max target | back to its floor after the last claim |"
echo "|---|---|---|---|---|---|---|"
for name in auto fixed3 fixed40; do
	s=$(tail -n1 "$work/$name.rows")
	case $name in
	auto) label="autosized 2..40" ;;
	fixed3) label="fixed 3" ;;
	fixed40) label="fixed 40" ;;
	esac
	back=$(sed -n 's/.*back_to_[0-9]*_after_s=\([^ ]*\).*/\1/p' <<<"$s")
	[ "$back" != never ] && back="${back} s"
	[ "$name" != auto ] && back="-"
	echo "| $label | $(kv "$s" warm_last10_pct)% | $(kv "$s" warm_all_pct)% | $(kv "$s" errors) of $(kv "$s" claims) | $(kv "$s" idle_sandbox_s) | $(kv "$s" max_target) | $back |"
done
