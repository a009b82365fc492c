package main

// Faults of the chaos storms beyond kills, on both backends: the store lost
// (moved away, or Modal's queue cleared), corrupted and restored, the state
// dir made read-only, a viewer dashboard taking over from a controller
// killed -9 before the controller comes back. And the promises they
// threaten, checked at the end: the creation budget, a claimed sandbox never
// back in the pool, the store's errors shown while it is corrupt and gone
// once it is restored, the viewer serving the pool's API once it holds it.

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	modal "github.com/modal-labs/libmodal/modal-go"
	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
)

// fault records a promise broken while a fault was under way.
func (r *chaosRun) fault(format string, args ...any) {
	r.mu.Lock()
	r.faultErrs = append(r.faultErrs, time.Now().Format("15:04:05.000")+": "+fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// kill9Controller kills the controller, first noting how many creations it
// had in flight: their sandboxes are orphans the next one adopts or
// terminates, and creations that replace them are explained.
func (r *chaosRun) kill9Controller() {
	r.noteInflight()
	r.ctl.kill9()
}

// noteInflight records the current controller's creations in flight, as
// it goes.
func (r *chaosRun) noteInflight() {
	if v, ok := r.ctl.pool(); ok {
		if n := v.Counts.Creating + v.Counts.Warming; n > 0 {
			r.mu.Lock()
			for range n {
				r.inflightLost = append(r.inflightLost, time.Now())
			}
			r.mu.Unlock()
		}
	}
}

// storeError is the store's error as the controller shows it now: /healthz's
// reason or /v1/pool's error when it names the store file (base), "" when
// neither does or no controller answers.
func (r *chaosRun) storeError(base string) (string, bool) {
	if _, up := r.ctl.up(); !up {
		return "", false
	}
	cl := http.Client{Timeout: 3 * time.Second}
	resp, err := cl.Get("http://" + r.ctl.addr + "/healthz")
	if err != nil {
		return "", false
	}
	var b strings.Builder
	_, _ = fmt.Fprint(&b, resp.StatusCode, " ")
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	resp.Body.Close()
	b.Write(buf[:n])
	if resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(b.String(), base) {
		return b.String(), true
	}
	if v, ok := r.ctl.pool(); ok && strings.Contains(v.Error, base) {
		return "GET /v1/pool error: " + v.Error, true
	}
	return "", true
}

// corruptStore writes garbage over the local store file, waits until the
// controller shows the error, and restores the file as it was: then the
// error must go. A controller killed meanwhile makes the wait unjudged.
func (r *chaosRun) corruptStore(path string) {
	good, err := os.ReadFile(path)
	if err != nil {
		return // lost by another fault: nothing to corrupt
	}
	base := filepath.Base(path)
	upSince, up := r.ctl.up()
	if err := os.WriteFile(path, []byte(fmt.Sprintf("garbage{{{ chaos %d\n", r.rng.IntN(1000))), 0o600); err != nil {
		r.t.Logf("corrupt the store: %v", err)
		return
	}
	corruptAt := time.Now()
	// A pass reads the store at the latest every --maintain-every.
	wait := 2*r.timing.maintainEvery + 3*time.Second
	var shown string
	testkit.Until(wait, func() bool { s, _ := r.storeError(base); shown = s; return s != "" })
	still, upNow := r.ctl.up()
	switch {
	case shown != "":
		r.count("store: corrupt error shown")
	case up && upNow && still == upSince:
		r.fault("the store was corrupt for %s and neither /healthz nor /v1/pool said so", time.Since(corruptAt).Round(time.Millisecond))
	}
	time.Sleep(time.Duration(r.rng.Int64N(int64(1500 * time.Millisecond))))
	if err := os.WriteFile(path, good, 0o600); err != nil {
		r.t.Fatalf("restore the store: %v", err)
	}
	restoredAt := time.Now()
	upSince, up = r.ctl.up()
	var left string
	gone := testkit.Until(wait+5*time.Second, func() bool {
		s, answered := r.storeError(base)
		left = s
		return answered && s == ""
	})
	if still, upNow := r.ctl.up(); !gone && up && upNow && still == upSince {
		r.fault("the store was restored %s ago and the controller still shows its error: %s", time.Since(restoredAt).Round(time.Millisecond), left)
	}
}

// loseStore moves the local store file away, as the advice for a corrupt
// store says, and half the time puts it back a little later (over the one
// written meanwhile: an old copy coming back, its claims since forgotten).
func (r *chaosRun) loseStore(path string) {
	lost := path + ".lost"
	if err := os.Rename(path, lost); err != nil {
		return
	}
	time.Sleep(time.Second + time.Duration(r.rng.Int64N(int64(4*time.Second))))
	if r.rng.IntN(2) == 0 {
		r.count("store: the old file put back")
		if err := os.Rename(lost, path); err != nil {
			r.t.Fatalf("put the store back: %v", err)
		}
		return
	}
	_ = os.Remove(lost)
}

// readOnlyDir makes dir read-only for a while: permissions (the dir 0500,
// files 0400) and, where they stop nothing (root), a read-only bind mount;
// then writable again. The test's cleanup undoes it whatever happens, so
// that its removal works. Meanwhile `maintain --size` (a write) must answer
// at once (issue 10 case 4: it hung); with judge, a hang is a broken promise.
func (r *chaosRun) readOnlyDir(dir string, judge bool, files ...string) {
	var undo func()
	restore := func() {
		if undo != nil {
			undo()
			undo = nil
		}
		_ = os.Chmod(dir, 0o700)
		for _, f := range files {
			_ = os.Chmod(filepath.Join(dir, f), 0o600)
		}
	}
	r.t.Cleanup(restore)
	for _, f := range files {
		_ = os.Chmod(filepath.Join(dir, f), 0o400)
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		r.t.Fatalf("chmod %s: %v", dir, err)
	}
	if os.Geteuid() == 0 {
		u, err := readOnlyMount(dir)
		if err != nil {
			r.count("read-only: no bind mount, permissions only")
		}
		undo = u
	}
	roAt := time.Now()
	// A target that differs, so that maintain must write it.
	cur := r.currentTarget()
	n := cur + 1
	if cur > 1 {
		n = cur - 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Second)
	_, stderr, code := chaosCLI(ctx, r.env, "maintain", "--size", strconv.Itoa(n))
	cancel()
	switch took := time.Since(roAt); {
	case judge && took > 10*time.Second:
		r.fault("maintain --size %d on a read-only state dir took %s (exit %d): %s", n, took.Round(time.Millisecond), code, oneLine(stderr))
	case code == 0:
		// Written after all (on Modal the store is not in the dir).
		r.noteResize(n)
		r.count("read-only: maintain done")
	default:
		if strings.Contains(stderr, "not at target") { // written, then waited in vain
			r.noteResize(n)
			// Cut short by the test's timeout: whether its target reached
			// the store before, its exit does not say.
			r.mu.Lock()
			r.unsure = &chaosResize{at: time.Now(), from: cur, to: n}
			r.mu.Unlock()
		}
		r.count("read-only: maintain exit " + strconv.Itoa(code) + ": " + errWords(strings.ReplaceAll(stderr, dir, "<state>")))
	}
	if rest := time.Second + time.Duration(r.rng.Int64N(int64(3*time.Second))) - time.Since(roAt); rest > 0 {
		time.Sleep(rest)
	}
	restore()
}

// ---- a viewer dashboard that takes over ----

// viewerTakeover starts a dashboard (in tmux) beside the live controller:
// it attaches as a viewer; the controller is killed -9; the viewer must take
// the lease and serve the pool's API on the same address (issue 10 case 3),
// then maintains the pool for a while; then it quits (q) or is killed -9 and
// the controller comes back.
func (r *chaosRun) viewerTakeover(dashArgs ...string) {
	if _, up := r.ctl.up(); !up {
		return
	}
	t := r.t
	if _, err := exec.LookPath("tmux"); err != nil {
		r.count("viewer: skipped, no tmux")
		return
	}
	r.views++
	x := &dashTmux{t: t, socket: r.tmuxSocket, env: r.env, pane: fmt.Sprintf("v%d", r.views)}
	r.tmuxOnce.Do(func() {
		t.Cleanup(func() {
			if out, err := x.tmux("kill-server"); err != nil && !strings.Contains(out, "no server") {
				t.Logf("tmux kill-server: %v %s", err, out)
			}
			// tmux leaves its socket behind.
			dir := os.Getenv("TMUX_TMPDIR")
			if dir == "" {
				dir = "/tmp"
			}
			_ = os.Remove(filepath.Join(dir, fmt.Sprintf("tmux-%d", os.Getuid()), r.tmuxSocket))
		})
	})
	args := append([]string{"new-session", "-d", "-s", x.pane, "-x", "100", "-y", "30", "--", binary,
		"--listen", r.ctl.addr}, dashArgs...)
	if out, err := x.tmux(args...); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	_, _ = x.tmux("set-option", "-t", x.pane, "remain-on-exit", "on")
	pidOut, _ := x.tmux("display-message", "-p", "-t", x.pane, "#{pane_pid}")
	pid, _ := strconv.Atoi(strings.TrimSpace(pidOut))
	if pid <= 0 {
		t.Fatalf("no pid for the viewer dashboard: %q", pidOut)
	}
	proc, _ := os.FindProcess(pid)
	// Not our child (tmux's): kill and stop signal it, done follows /proc.
	dash := &controller{cmd: &exec.Cmd{Process: proc}, logs: &syncBuffer{}, done: make(chan struct{})}
	go func() {
		for alive(pid) && !zombie(pid) {
			time.Sleep(50 * time.Millisecond)
		}
		close(dash.done)
	}()
	screen := func() string { s, _ := x.tmux("capture-pane", "-p", "-t", x.pane); return s }
	if !testkit.Until(20*time.Second, func() bool { return strings.Contains(screen(), "maintained by") }) {
		// The controller died meanwhile, or the viewer is slow: not the
		// promise under test; the dashboard goes.
		t.Logf("the viewer dashboard never showed the holder; its screen:\n%s", screen())
		dash.kill()
		return
	}
	r.count("viewer: attached beside the controller")
	r.kill9Controller()
	killedAt := time.Now()
	// The lease frees at once on local (a lock), after a stale heartbeat on
	// Modal; the API binds within apiRetryEvery once the port is free.
	took := testkit.Until(20*time.Second, func() bool {
		select {
		case <-dash.done:
			return false
		default:
		}
		// The header says the API is served here, not off, and no other
		// process maintains the pool.
		s := screen()
		return strings.Contains(s, "api "+r.ctl.addr) && !strings.Contains(s, "api off") && !strings.Contains(s, "maintained by") &&
			getStatus("http://"+r.ctl.addr+"/v1/pool") == http.StatusOK
	})
	if !took && strings.Contains(screen(), "(a claim's backfill)") {
		// A claim that found no controller backfills under the lease: the
		// viewer waits for it. A backfill holding it 20s is the known Modal
		// lease issue (a claim's backfill and the controller), not this.
		r.count("viewer: KNOWN: the lease held 20s by a claim's backfill")
		t.Logf("the viewer did not take over within 20s: a claim's backfill holds the lease; its screen:\n%s", screen())
		dash.kill()
		r.ctl.start()
		return
	}
	if !took {
		r.fault("a viewer dashboard did not take over within 20s of the controller's kill -9 (lease and API on %s); its screen:\n%s", r.ctl.addr, screen())
		dash.kill()
		r.ctl.start()
		return
	}
	r.count("viewer: took over")
	r.mu.Lock()
	r.takeovers = append(r.takeovers, time.Since(killedAt))
	r.mu.Unlock()
	r.ctl.adopt(dash)
	time.Sleep(time.Second + time.Duration(r.rng.Int64N(int64(4*time.Second))))
	if r.rng.IntN(2) == 0 {
		r.count("viewer: quits (q)")
		r.noteInflight() // its creations in flight are orphans now, as at a kill
		_, _ = x.tmux("send-keys", "-t", x.pane, "q")
		select {
		case <-dash.done:
		case <-time.After(10 * time.Second):
			r.fault("the dashboard did not quit within 10s of q; its screen:\n%s", screen())
		}
		r.ctl.mu.Lock()
		r.ctl.cur = nil
		r.ctl.mu.Unlock()
	} else {
		r.count("viewer: kill -9")
		r.kill9Controller()
	}
	r.ctl.start()
	_, _ = x.tmux("kill-session", "-t", x.pane)
}

// zombie says whether pid has exited but is not reaped yet (its parent is
// tmux, not us).
func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}

// markedProcs lists the processes other than this one that carry the run's
// mark: after the teardown, none may remain.
func markedProcs(mark string) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !strings.Contains("\x00"+string(env), "\x00"+chaosMarkEnv+"="+mark+"\x00") || zombie(pid) {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		out = append(out, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(strings.TrimSpace(string(cmdline)), "\x00", " ")))
	}
	return out
}

// ---- the promises ----

// claimSeenWithin is how long a claim elsewhere may take to reach the
// controller's view: the promised second, and one for a loaded machine
// (on Modal one more: a poll of the queue at the control plane's latency,
// and 8 round trips of the slowest latency the storm set: a load of the
// queue reads its partitions, what is new in them and the claims' days;
// at 250 ms a round trip it took 1.5-1.7 s, and CI saw a claim reach the
// view 4.3 s after it).
func (r *chaosRun) claimSeenWithin() time.Duration {
	if r.modal {
		return 3*time.Second + 8*time.Duration(r.slowest.Load())
	}
	return 2 * time.Second
}

// noteRepooled: a sandbox once handed out by any claimer is never seen
// again in the pool (ready, unhealthy or expiring in a controller's view
// taken after the claim returned). Recorded by noteView.
func (r *chaosRun) noteRepooled(id, state string, at time.Time) {
	c, ok := r.claimedAt[id]
	// A claim by another process reaches the controller within a second
	// (issue 10): until then its view may still show the sandbox ready.
	if !ok || !c.Add(r.claimSeenWithin()).Before(at) {
		return
	}
	switch state {
	case "ready", "unhealthy", "expiring":
		if r.repooledSeen[id] {
			return
		}
		r.repooledSeen[id] = true
		r.repooled = append(r.repooled, fmt.Sprintf("%s claimed at %s is %s in the pool at %s",
			id, c.Format("15:04:05.000"), state, at.Format("15:04:05.000")))
	}
}

// checkBudget: in any window of the engine's length, the sandboxes really
// started (by every process: controllers, claims backfilling, viewers)
// never exceed what the target, its rises, the claims, the sandboxes
// killed, failed or sick, the creations a killed controller had in flight
// and the rotations explain, plus the engine's slack for each controller
// serving in the window (each keeps its budget in memory) and 2 for the
// test's own timing (a cause seen up to 5s before its window counts).
func (r *chaosRun) checkBudget(started, explained, starts []time.Time) {
	t := r.t
	t.Helper()
	slices.SortFunc(started, func(a, b time.Time) int { return a.Compare(b) })
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	slices.SortFunc(explained, func(a, b time.Time) int { return a.Compare(b) })
	// The engine's good life: the command line shortens a ttl by up to
	// DefaultTTLJitter to spread expiries (SpreadExpiry).
	goodLife := r.timing.ttl - time.Duration(pool.DefaultTTLJitter*float64(r.timing.ttl)) - r.timing.useDuration
	window := pool.BudgetWindow(goodLife)
	in := func(ts []time.Time, from, to time.Time) int {
		i, _ := slices.BinarySearchFunc(ts, from, func(a, b time.Time) int { return a.Compare(b) })
		j, _ := slices.BinarySearchFunc(ts, to.Add(time.Nanosecond), func(a, b time.Time) int { return a.Compare(b) })
		return j - i
	}
	worst, worstAt, worstText := math.MinInt, time.Time{}, ""
	for i, end := range started {
		from := end.Add(-window)
		n := i + 1 - in(started[:i+1], time.Time{}, from.Add(-time.Nanosecond))
		target, highest, ups := r.target0, 0, 0
		for _, rs := range r.resizes {
			if !rs.at.After(from) {
				target = rs.to
			}
		}
		highest = target
		for _, rs := range r.resizes {
			if rs.at.After(from) && !rs.at.After(end) {
				ups += max(0, rs.to-rs.from)
				highest = max(highest, rs.to)
			}
		}
		causes := in(explained, from.Add(-5*time.Second), end)
		rotations := int(math.Ceil(float64(highest) * float64(window) / float64(goodLife)))
		// Every controller keeps its budget in memory: one that starts in
		// the window brings its own slack.
		holders := 1 + in(starts, from, end)
		slack := holders*pool.BudgetSlack(highest) + 2
		allowed := target + ups + causes + rotations + slack
		if over := n - allowed; over > worst {
			worst, worstAt = over, end
			worstText = fmt.Sprintf("%d started in the %s to %s; target %d, rises %d, causes %d (claims, kills, failures, sick, orphaned creations), rotations %d, slack %d (%d controllers) + 2: %d",
				n, window, end.Format("15:04:05.000"), target, ups, causes, rotations, slack-2, holders, allowed)
		}
	}
	if worst > 0 {
		t.Errorf("creation budget exceeded by %d: %s", worst, worstText)
	} else if !worstAt.IsZero() {
		t.Logf("creation budget: tightest window %d under (%s)", -worst, worstText)
	}
}

// causes lists when every recorded cause of a creation happened: claims,
// kills, sick sandboxes, orphaned creations, and the failed tries the
// controllers logged.
func (r *chaosRun) causes(events []logEvent, extra []time.Time) []time.Time {
	var out []time.Time
	for _, c := range r.claims {
		out = append(out, c.at)
	}
	for _, at := range r.killed {
		out = append(out, at)
	}
	out = append(out, r.inflightLost...)
	for _, e := range events {
		switch e.kind {
		case "create_failed", "health_failed", "expired":
			out = append(out, e.at)
		}
	}
	return append(out, extra...)
}

// sickTimes is when each sick marker appeared (local workload).
func sickTimes(dir string) []time.Time {
	entries, _ := os.ReadDir(dir)
	var out []time.Time
	for _, e := range entries {
		if fi, err := e.Info(); err == nil {
			out = append(out, fi.ModTime())
		}
	}
	return out
}

// chaosStarts reads the local workload's decisions: when each started, and
// when those that failed or started late (some miss the health timeout) did.
func chaosStarts(t *testing.T, dir string) (started, failed []time.Time) {
	data, err := os.ReadFile(filepath.Join(dir, "decisions"))
	if err != nil {
		return nil, nil
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		ns, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			t.Errorf("decisions line %q", line)
			continue
		}
		at := time.Unix(0, ns)
		started = append(started, at)
		if f[2] == "fail" || f[2] == "slow" {
			failed = append(failed, at)
		}
	}
	return started, failed
}

// ---- when the faults come ----

type chaosFault struct {
	name string
	do   func()
}

// faultPlan gives each fault one seeded time in the first three quarters of
// the storm, so that every run meets each of them at least once.
type faultPlan struct {
	faults []chaosFault
	at     []time.Time
	done   []bool
}

func (r *chaosRun) planFaults(start time.Time, storm time.Duration, faults ...chaosFault) *faultPlan {
	p := &faultPlan{faults: faults, done: make([]bool, len(faults))}
	for range faults {
		p.at = append(p.at, start.Add(time.Duration(r.rng.Int64N(int64(storm*3/4)))))
	}
	return p
}

// due returns a fault whose time came, once.
func (p *faultPlan) due() (chaosFault, bool) {
	for i, f := range p.faults {
		if !p.done[i] && time.Now().After(p.at[i]) {
			p.done[i] = true
			return f, true
		}
	}
	return chaosFault{}, false
}

// finishFaults runs, once the storm is over, each fault whose time it did not
// reach (a long one before it, a viewer's takeover, used the time up): every
// run meets each fault, still under the storm's claimers and backend faults.
func (r *chaosRun) finishFaults(p *faultPlan) {
	for i, f := range p.faults {
		if !p.done[i] {
			p.done[i] = true
			r.runFault(chaosFault{f.name + " (after the storm's end)", f.do})
		}
	}
}

// run does f, counted.
func (r *chaosRun) runFault(f chaosFault) {
	r.count(f.name)
	f.do()
}

// any is one fault at random, for a repeat.
func (p *faultPlan) any(rng interface{ IntN(int) int }) chaosFault {
	return p.faults[rng.IntN(len(p.faults))]
}

// checkFaultPromises checks what the faults threatened: the promises broken
// while they were under way, claimed sandboxes back in the pool, and the
// creation budget over every process's creations.
func (r *chaosRun) checkFaultPromises(events []logEvent) {
	t := r.t
	t.Helper()
	var started, extra []time.Time
	if r.started != nil {
		started = r.started()
	}
	if r.extraCauses != nil {
		extra = r.extraCauses()
	}
	r.ctl.mu.Lock()
	starts := slices.Clone(r.ctl.startTimes)
	r.ctl.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.faultErrs {
		t.Errorf("during a fault: %s", f)
	}
	for _, s := range r.repooled {
		t.Errorf("claimed, then back in the pool: %s", s)
	}
	if started != nil {
		r.checkBudget(started, r.causes(events, extra), starts)
	}
	if len(r.takeovers) > 0 {
		t.Logf("viewer takeovers took %v", r.takeovers)
	}
}

// checkNothingLeft: once the pool is torn down and its controller stopped,
// no process of the run remains (claimers, controllers, viewers, the local
// agent, workloads): the agent exits on its own once idle. A creation the
// controller had in flight when terminate --all stopped the agent starts a
// new one (then shrunk to nothing): it exits 30 s after its last caller
// (local.Options.IdleExit), so the wait is that and the usual 15 s.
func (r *chaosRun) checkNothingLeft() {
	if r.mark == "" {
		return
	}
	x := &dashTmux{t: r.t, socket: r.tmuxSocket, env: r.env}
	_, _ = x.tmux("kill-server") // the viewers' terminal, not the pool's
	var left []string
	if !testkit.Until(45*time.Second, func() bool { left = markedProcs(r.mark); return len(left) == 0 }) {
		r.t.Errorf("processes of the run still there 45s after the teardown: %v", left)
	}
}

// dirFiles names the files in dir now.
func dirFiles(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			out = append(out, e.Name())
		}
	}
	return out
}

// modalStoreFaults are the store's faults on Modal, where the store is the
// pool's Queue (and every sandbox's tags).
type modalStoreFaults struct {
	r        *chaosRun
	f        *fakemodal.Server
	poolName string
	q        *modal.Queue // this process's SDK handle on the pool's queue
}

func (r *chaosRun) modalFaults(t *testing.T, f *fakemodal.Server, poolName string) *modalStoreFaults {
	// The SDK in this process reads the fake's address (startPythonClaimer
	// set the environment).
	client, err := modal.NewClientWithOptions(&modal.ClientParams{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	q, err := client.Queues.FromName(context.Background(), modalx.QueueName(poolName), &modal.QueueFromNameParams{CreateIfMissing: true})
	if err != nil {
		t.Fatal(err)
	}
	return &modalStoreFaults{r: r, f: f, poolName: poolName, q: q}
}

// lose clears the pool's queue, as Modal may (it is in memory, 24 h after
// the last put): pool, bids, claim, target and lease records go at once,
// and the pool is rebuilt from the sandboxes' tags. Unlike the local file,
// no old copy comes back: Modal never brings back items, and a claimer of
// the README's protocol trusts the bids alone, which the loss took. The
// live controller keeps its lease, claimed sandboxes stay claimed, reserved
// ones reserved, and no live sandbox is terminated as surplus (seeds 202,
// 203 of TestChaosModal broke these).
func (m *modalStoreFaults) lose() {
	m.f.ClearQueue(modalx.QueueName(m.poolName))
}

// corrupt puts garbage in the pool's partitions: the pool, its target
// records and today's claim records.
func (m *modalStoreFaults) corrupt() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, part := range []string{"", "meta", "log-" + time.Now().UTC().Format("20060102")} {
		var p *modal.QueuePutParams
		if part != "" {
			p = &modal.QueuePutParams{Partition: part}
		}
		for _, g := range []string{"garbage{{{", `{"id":`, `{"op":"claim","entry":{"id":42}}`, `{"has":"yes","target":-1}`} {
			if err := m.q.Put(ctx, g, p); err != nil {
				m.r.t.Logf("put garbage in %q: %v", part, err)
				return
			}
		}
	}
}
