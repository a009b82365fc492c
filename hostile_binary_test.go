package main

// Issue 13's remaining cases on the built binary: rotation at 300 and at 3
// (case 6), a workload's escapees (case 5), a chatty workload (case 2) and
// the reason of a normal expiry (case 8).

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// hostileServeEnv makes this test binary, started by a sandbox's --cmd, a
// plain HTTP server on the port it names: a workload that needs nothing
// installed (CI has no python).
const hostileServeEnv = "HOSTILE_SERVE_PORT"

func init() {
	if port := os.Getenv(hostileServeEnv); port != "" {
		os.Exit(hostileServe(port))
	}
}

func hostileServe(port string) int {
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostile workload:", err)
		return 1
	}
	err = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hostile workload\n")
	}))
	fmt.Fprintln(os.Stderr, "hostile workload:", err)
	return 1
}

// workloadCmd is a --cmd that runs before in the sandbox's shell, then
// becomes the test binary serving the sandbox's port.
func workloadCmd(t *testing.T, before string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return before + " exec env " + hostileServeEnv + "={port} '" + exe + "'"
}

// pidsWithArgv returns the live processes whose argv is exactly argv.
func pidsWithArgv(argv ...string) []int {
	want := []byte(strings.Join(argv, "\x00") + "\x00")
	return pidsWhere(func(cmdline []byte) bool { return bytes.Equal(cmdline, want) })
}

// agentPids returns the live local agents of pool p: detached processes
// with "sandboxpool-local-agent <pool>" at the end of their argv.
func agentPids(p string) []int {
	suffix := []byte("\x00sandboxpool-local-agent\x00" + p + "\x00")
	return pidsWhere(func(cmdline []byte) bool { return bytes.HasSuffix(cmdline, suffix) })
}

// pidsWhere returns the live processes whose raw /proc cmdline matches.
func pidsWhere(match func(cmdline []byte) bool) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && match(b) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// uniquePool is a pool name no other test or helper uses: the local agent's
// argv carries it.
func uniquePool(what string) string { return fmt.Sprintf("hostile-%s-%d", what, os.Getpid()) }

// ---- case 6: rotation ----

var createdInRE = regexp.MustCompile(`msg="\S+ created in (\S+)"`)

// rotationWatch polls a controller's GET /v1/pool through two full
// rotations after the fill and checks, at each poll:
//   - ready >= minReady;
//   - live (ready + creating + warming) <= target + needed, where needed is
//     the number of ready sandboxes rotated out, by the engine's own rule:
//     a sandbox is rotated out once its good-end (expires_at - use-duration)
//     is within its rotation lead (pool.RotationLeads: the p95 of recent
//     creations, the creations queued ahead of it behind the creation
//     limit, capped at half a good life). From outside the lead is bounded
//     above: the p95 by the largest p95 of 20 creations in a row among the
//     last 30 logged, the limit by its floor (10: nothing is refused here),
//     the creations in flight by --max-creating (20), the queue by every
//     sandbox's good-end; each sandbox keeps the largest
//     lead seen for it (rotation is sticky), and a poll's lag adds a second.
//     The engine decides at its passes, between two polls: 1% of the target
//     is allowed for what a poll cannot see of them.
type rotationWatch struct {
	t             *testing.T
	a             api
	ctl           *controller
	target        int
	use, ttl      time.Duration
	minReady      int
	logOff        int
	created       []time.Duration // the latest creations' durations, from the log
	leads         map[string]time.Duration
	figMinReady   int
	figMaxOver    int // live - target
	figMaxNeeded  int
	figMaxLive    int
	figMaxListed  int // every sandbox listed, expiring and terminating ones too
	polls         int
	rotationTimes []time.Duration
}

// The creation limit's bounds with --max-creating at its default: it
// falls to 10 at the lowest when nothing is refused, and at most 20
// creations are in flight.
const rotationLimitFloor, rotationMaxCreating = 10, 20

// p95 bounds the engine's time-to-ready p95 (pool.P95 of its last 20
// creations, the durations its "created in" lines log) from above: the
// largest p95 of the last 20 ending anywhere in the last 10 logged, since
// the log and the engine's pass need not be at the same creation.
func (w *rotationWatch) p95() time.Duration {
	logs := w.ctl.logs.String()
	for _, m := range createdInRE.FindAllStringSubmatch(logs[w.logOff:], -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			w.created = append(w.created, d)
		}
	}
	w.logOff = len(logs)
	if len(w.created) > 30 {
		w.created = w.created[len(w.created)-30:]
	}
	if len(w.created) == 0 {
		return 10 * time.Second // the engine's fallback: the health timeout
	}
	var p time.Duration
	for k := range min(10, len(w.created)) {
		end := len(w.created) - k
		p = max(p, pool.P95(w.created[max(0, end-20):end], 0))
	}
	return p
}

func (w *rotationWatch) check(v httpapi.PoolView, now time.Time) {
	t := w.t
	t.Helper()
	type end struct {
		id string
		at time.Time
	}
	var ends []end
	for _, s := range v.Sandboxes {
		if s.State == "ready" || s.State == "expiring" {
			ends = append(ends, end{s.ID, s.ExpiresAt.Add(-w.use)})
		}
	}
	slices.SortFunc(ends, func(a, b end) int { return a.at.Compare(b.at) })
	at := make([]time.Time, len(ends))
	for i, e := range ends {
		at[i] = e.at
	}
	inflight := v.Counts.Creating + v.Counts.Warming
	leads := pool.RotationLeads(at, w.p95(), rotationMaxCreating, rotationLimitFloor, (w.ttl-w.use)/2)
	needed := 0
	for i, e := range ends {
		w.leads[e.id] = max(w.leads[e.id], leads[i])
		if e.at.Before(now.Add(w.leads[e.id] + time.Second)) {
			needed++
		}
	}
	live := v.Counts.Ready + inflight
	w.polls++
	w.figMinReady = min(w.figMinReady, v.Counts.Ready)
	w.figMaxOver = max(w.figMaxOver, live-w.target)
	w.figMaxNeeded = max(w.figMaxNeeded, needed)
	w.figMaxLive = max(w.figMaxLive, live)
	w.figMaxListed = max(w.figMaxListed, len(v.Sandboxes))
	if v.Counts.Ready < w.minReady {
		t.Fatalf("ready %d of a target of %d (want >= %d) at a rotation: %+v\n%s", v.Counts.Ready, w.target, w.minReady, v.Counts, events(w.ctl.logs.String(), 60))
	}
	if live > w.target+needed+w.target/100 {
		t.Fatalf("live %d (ready %d, creating %d, warming %d) > target %d + %d the rotation needs now; counts %+v\n%s",
			live, v.Counts.Ready, v.Counts.Creating, v.Counts.Warming, w.target, needed, v.Counts, events(w.ctl.logs.String(), 60))
	}
}

// run waits for the fill, then watches two full rotations: every sandbox of
// the fill gone from ready, then every sandbox ready at that moment gone too.
func (w *rotationWatch) run(fillWithin, rotationsWithin time.Duration) {
	t := w.t
	t.Helper()
	w.leads = map[string]time.Duration{}
	w.figMinReady = w.target
	var gen map[string]bool
	start := time.Now()
	testkit.Eventually(t, fillWithin, fmt.Sprintf("%d ready", w.target), func() bool {
		v, ok := w.a.pool()
		if ok && v.Counts.Ready >= w.target {
			gen = map[string]bool{}
			for _, id := range readyIDs(v) {
				gen[id] = true
			}
			return true
		}
		return false
	})
	filled := time.Now()
	t.Logf("%d ready in %s", w.target, filled.Sub(start).Round(100*time.Millisecond))
	deadline := filled.Add(rotationsWithin)
	for len(w.rotationTimes) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d rotations in %s", len(w.rotationTimes), rotationsWithin)
		}
		v, ok := w.a.pool()
		if !ok {
			t.Fatalf("GET /v1/pool failed:\n%s", events(w.ctl.logs.String(), 20))
		}
		w.check(v, time.Now())
		left := 0
		for _, id := range readyIDs(v) {
			if gen[id] {
				left++
			}
		}
		if left == 0 {
			w.rotationTimes = append(w.rotationTimes, time.Since(filled).Round(100*time.Millisecond))
			gen = map[string]bool{}
			for _, id := range readyIDs(v) {
				gen[id] = true
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if strings.Contains(w.ctl.logs.String(), "creation budget") {
		t.Errorf("the creation budget paused a plain rotation:\n%s", grepLines(w.ctl.logs.String(), "budget"))
	}
	t.Logf("rotations done at +%v after the fill; %d polls: ready >= %d (%.1f%%), live <= %d (target + %d; at most %d needed at once), listed <= %d",
		w.rotationTimes, w.polls, w.figMinReady, 100*float64(w.figMinReady)/float64(w.target), w.figMaxLive, w.figMaxOver, w.figMaxNeeded, w.figMaxListed)
}

// events is the last n lines of a controller's log that are not API requests.
func events(logs string, n int) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(logs, "\n"), "\n") {
		if !strings.Contains(l, `msg="http request"`) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Issue 13 case 6 on the built binary: a pool of 300 (the built-in
// workload) keeps >= 95% of its target ready through two rotations, and
// live sandboxes stay within target + what the rotation needs at the time.
func TestRotationHoldsAt300(t *testing.T) {
	if testing.Short() {
		t.Skip("300 sandboxes through two rotations")
	}
	const target = 300
	ttl, use := 20*time.Second, 4*time.Second
	state := t.TempDir()
	env := cliEnv(state)
	addr := testkit.FreeAddr(t)
	t.Cleanup(func() { tearDown(t, env) })
	ctl := startRun(t, env, "--size", fmt.Sprint(target), "--max-size", fmt.Sprint(target),
		"--ttl", ttl.String(), "--use-duration", use.String(), "--listen", addr)
	w := &rotationWatch{t: t, a: api{t: t, base: "http://" + addr}, ctl: ctl, target: target,
		ttl: ttl, use: use, minReady: (target*95 + 99) / 100}
	w.run(45*time.Second, 60*time.Second)
}

// Issue 13 case 6, the small case: at 3 with a ttl of 20s, live sandboxes
// never reach twice the target at a rotation, and the ready count holds.
func TestSmallPoolRotationOnTheBinary(t *testing.T) {
	const target = 3
	ttl, use := 20*time.Second, 5*time.Second
	state := t.TempDir()
	env := cliEnv(state)
	addr := testkit.FreeAddr(t)
	t.Cleanup(func() { tearDown(t, env) })
	ctl := startRun(t, env, "--size", fmt.Sprint(target), "--ttl", ttl.String(), "--use-duration", use.String(),
		"--listen", addr)
	w := &rotationWatch{t: t, a: api{t: t, base: "http://" + addr}, ctl: ctl, target: target,
		ttl: ttl, use: use, minReady: target}
	w.run(30*time.Second, 50*time.Second)
	// Nor do all the sandboxes listed: an expiring one is terminated as it
	// stops being good, not at the next regular pass.
	if w.figMaxLive >= 2*target || w.figMaxListed >= 2*target {
		t.Fatalf("live reached %d, sandboxes listed %d: twice the target", w.figMaxLive, w.figMaxListed)
	}
}

// ---- case 5: escapees ----

// escapees starts a pool of one sandbox whose workload leaves a process in
// its own session and a double-forked one, each a sleep of a unique length,
// and returns their pids once both run.
func escapees(t *testing.T, n int) (cmd string, find func() []int) {
	t.Helper()
	a := strconv.Itoa(7_000_000 + os.Getpid()%100_000*10 + 2*n)
	b := strconv.Itoa(7_000_000 + os.Getpid()%100_000*10 + 2*n + 1)
	find = func() []int { return append(pidsWithArgv("sleep", a), pidsWithArgv("sleep", b)...) }
	t.Cleanup(func() {
		for _, pid := range find() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return workloadCmd(t, "setsid sleep "+a+" & ( (sleep "+b+" &) & );"), find
}

func waitEscapees(t *testing.T, find func() []int) []int {
	t.Helper()
	var pids []int
	testkit.Eventually(t, 20*time.Second, "the setsid and double-forked sleeps", func() bool {
		pids = find()
		return len(pids) == 2
	})
	return pids
}

func waitGone(t *testing.T, what string, within time.Duration, pids []int) {
	t.Helper()
	if testkit.Until(within, func() bool { return !slices.ContainsFunc(pids, alive) }) {
		return
	}
	var left []string
	for _, p := range pids {
		if alive(p) {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
			stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
			left = append(left, fmt.Sprintf("%d %q %s", p, cmdline, stat))
		}
	}
	t.Fatalf("%s: still running after %s:\n%s", what, within, strings.Join(left, "\n"))
}

// Issue 13 case 5 on the built binary: what a workload starts in its own
// session (setsid) or double-forks away dies with its sandbox, whether the
// sandbox is terminated, expires, or its agent is killed with -9.
func TestEscapeesDieWithTheirSandbox(t *testing.T) {
	t.Run("terminate --all", func(t *testing.T) {
		env := cliEnv(t.TempDir())
		p := uniquePool("term")
		cmd, find := escapees(t, 0)
		t.Cleanup(func() { tearDown(t, env, "--pool", p) })
		if r := cli(t, env, "maintain", "--pool", p, "--size", "1", "--cmd", cmd); r.code != 0 {
			t.Fatalf("maintain: exit %d %s", r.code, r.stderr)
		}
		pids := waitEscapees(t, find)
		if r := cli(t, env, "terminate", "--all", "--pool", p); r.code != 0 {
			t.Fatalf("terminate --all: exit %d %s", r.code, r.stderr)
		}
		waitGone(t, "after terminate --all", 10*time.Second, pids)
	})
	t.Run("expiry", func(t *testing.T) {
		env := cliEnv(t.TempDir())
		p := uniquePool("exp")
		cmd, find := escapees(t, 1)
		t.Cleanup(func() { tearDown(t, env, "--pool", p) })
		// No controller: the agent alone ends the sandbox at its expiry.
		if r := cli(t, env, "maintain", "--pool", p, "--size", "1", "--ttl", "6s", "--use-duration", "1s", "--cmd", cmd); r.code != 0 {
			t.Fatalf("maintain: exit %d %s", r.code, r.stderr)
		}
		pids := waitEscapees(t, find)
		waitGone(t, "after the sandbox's expiry (ttl 6s)", 15*time.Second, pids)
	})
	t.Run("agent kill -9", func(t *testing.T) {
		env := cliEnv(t.TempDir())
		p := uniquePool("kill")
		cmd, find := escapees(t, 2)
		t.Cleanup(func() { tearDown(t, env, "--pool", p) })
		ctl := startRun(t, env, "--pool", p, "--size", "1", "--cmd", cmd, "--maintain-every", "1s", "--listen", "")
		pids := waitEscapees(t, find)
		agents := agentPids(p)
		if len(agents) != 1 {
			t.Fatalf("agents of pool %s: %v, want one", p, agents)
		}
		if err := syscall.Kill(agents[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// The workload dies with its agent; the escapees when the
		// controller's next pass starts a new agent.
		waitGone(t, "after kill -9 of the agent", 15*time.Second, pids)
		// The pool refills with a new sandbox (and its own new sleeps).
		testkit.Eventually(t, 30*time.Second, "the pool refilled by a new agent", func() bool {
			return len(agentPids(p)) == 1 && len(find()) == 2
		})
		if r := cli(t, env, "terminate", "--all", "--pool", p); r.code != 0 {
			t.Fatalf("terminate --all: exit %d %s", r.code, r.stderr)
		}
		ctl.stop(t)
		waitGone(t, "the new sandbox's escapees after terminate --all", 10*time.Second, find())
	})
}

// ---- case 2: a chatty workload ----

// Issue 13 case 2 on the built binary: a workload that writes as fast as it
// can keeps at most --log-max on disk (its last output, rotated), and the
// pool's logs together stay within 64 x --log-max.
func TestChattyWorkloadLogIsCapped(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	p := uniquePool("chatty")
	const logMax = 256 << 10
	t.Cleanup(func() { tearDown(t, env, "--pool", p) })
	if r := cli(t, env, "maintain", "--pool", p, "--size", "1", "--log-max", "256KB",
		"--cmd", workloadCmd(t, `yes "chatty $PORT" &`)); r.code != 0 {
		t.Fatalf("maintain: exit %d %s", r.code, r.stderr)
	}
	v := check(t, env, "--pool", p)
	if len(v.Sandboxes) != 1 {
		t.Fatalf("%d sandboxes, want 1", len(v.Sandboxes))
	}
	sb := v.Sandboxes[0]
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(sb.URL, "http://"))
	yes := pidsWithArgv("yes", "chatty "+port)
	if len(yes) != 1 {
		t.Fatalf("the chatty writer: pids %v", yes)
	}
	be, err := local.New(local.Options{Pool: p, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var written int64
	testkit.Eventually(t, 30*time.Second, "16 MB written (64 times the cap)", func() bool {
		_, next, err := be.ReadLog(ctx, sb.ID, -1, 0)
		written = next
		return err == nil && next > 64*logMax
	})
	dir := filepath.Join(state, p+".sandboxes")
	var own, all int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			all += info.Size()
			if strings.HasPrefix(e.Name(), sb.ID+".log") {
				own += info.Size()
			}
		}
	}
	if own > logMax || all > 64*logMax {
		t.Fatalf("logs on disk: %d bytes for the sandbox (cap %d), %d for the pool (cap %d)", own, logMax, all, 64*logMax)
	}
	last, _, err := be.ReadLog(ctx, sb.ID, -1, 1000)
	if err != nil || !strings.Contains(string(last), "chatty "+port+"\n") {
		t.Fatalf("the log's last part %q (%v): want the latest output", last, err)
	}
	first, from, err := be.ReadLog(ctx, sb.ID, 0, 100)
	if err != nil || len(first) == 0 || from <= 100 {
		t.Fatalf("ReadLog(0) = %d bytes up to %d, %v: want the oldest part kept, past what rotated away", len(first), from, err)
	}
	t.Logf("%d MB written, %d KB kept", written>>20, own>>10)
	if r := cli(t, env, "terminate", "--all", "--pool", p); r.code != 0 {
		t.Fatalf("terminate --all: %d %s", r.code, r.stderr)
	}
	waitGone(t, "the chatty writer after terminate --all", 10*time.Second, yes)
}

// ---- case 8: expiry is not a health failure ----

// Issue 13 case 8 on the built binary: normal expiries, with the controller
// running or stopped meanwhile, are logged as expired (never as a failed
// health check or "unhealthy") and counted so in /metrics.
func TestExpiryIsNotAHealthFailure(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	addr := testkit.FreeAddr(t)
	t.Cleanup(func() { tearDown(t, env) })
	args := []string{"--size", "2", "--ttl", "5s", "--use-duration", "1s", "--health-every", "200ms", "--listen", addr}
	first := startRun(t, env, args...)
	testkit.Eventually(t, 30*time.Second, "4 expiries", func() bool { return countEvents(first.logs.String(), "expired") >= 4 })
	a := api{t: t, base: "http://" + addr}
	_, metrics := a.do("GET", "/metrics", "")
	first.stop(t)
	// Stopped: the pool's sandboxes expire with no controller to see it.
	be := localBackend(t, state, "default")
	testkit.Eventually(t, 20*time.Second, "the sandboxes ended at their expiry", func() bool {
		refs, err := be.List(context.Background())
		return err == nil && len(refs) == 0
	})
	second := startRun(t, env, args...)
	testkit.Eventually(t, 20*time.Second, "the expiries while stopped seen", func() bool { return countEvents(second.logs.String(), "expired") >= 2 })
	for i, logs := range []string{first.logs.String(), second.logs.String()} {
		for _, e := range parseEvents(logs) {
			if e.kind == "health_failed" || e.kind == "terminated" && e.reason != "expired" {
				t.Errorf("controller %d: %s %s: %q\n%s", i+1, e.kind, e.reason, e.message, logs)
			}
		}
	}
	for _, want := range []string{
		`sandboxpool_health_checks_total{result="failed"} 0`,
		`sandboxpool_terminations_total{reason="unhealthy"} 0`,
		`sandboxpool_terminations_total{reason="failed"} 0`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics: want %s, got:\n%s", want, grepLines(metrics, strings.SplitN(want, "{", 2)[0]))
		}
	}
	if !regexp.MustCompile(`sandboxpool_terminations_total\{reason="expired"\} [1-9]`).MatchString(metrics) {
		t.Errorf("/metrics: no expiry counted:\n%s", grepLines(metrics, "terminations_total"))
	}
	testkit.Eventually(t, 10*time.Second, "the second controller's API", func() bool {
		code, _ := a.do("GET", "/healthz", "")
		return code == http.StatusOK
	})
	code, metrics := a.do("GET", "/metrics", "")
	if !strings.Contains(metrics, `sandboxpool_health_checks_total{result="failed"} 0`+"\n") {
		t.Errorf("after a restart over expiries: %d %s\n%s", code, grepLines(metrics, "health_checks_total"), second.logs.String())
	}
}
