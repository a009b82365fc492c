package ui

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest"
	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// Golden tests run the real program (teatest) at a fixed size with a fake
// clock, then compare the final model's View with testdata/<TestName>.golden.
// `go test ./ui -update` rewrites them.

const waitLong = 10 * time.Second

type tui struct {
	t  *testing.T
	tm *teatest.TestModel
}

func startTUI(t *testing.T, eng Engine, opts Options, w, h int) *tui {
	t.Helper()
	if opts.Clipboard == nil {
		opts.Clipboard = func(string) error { return nil }
	}
	m := NewModel(eng, opts)
	u := &tui{t: t, tm: teatest.NewTestModel(t, m, teatest.WithInitialTermSize(w, h))}
	t.Cleanup(func() { _ = u.tm.Quit() })
	return u
}

// waitFor waits until what was drawn since the last wait contains all of
// subs (each changed line is redrawn whole).
func (u *tui) waitFor(subs ...string) {
	u.t.Helper()
	teatest.WaitFor(u.t, u.tm.Output(), func(b []byte) bool {
		for _, s := range subs {
			if !bytes.Contains(b, []byte(s)) {
				return false
			}
		}
		return true
	}, teatest.WithDuration(waitLong), teatest.WithCheckInterval(5*time.Millisecond))
}

func (u *tui) keys(keys ...string) {
	for _, k := range keys {
		u.tm.Send(keyMsg(k))
	}
}

func (u *tui) typeText(s string) { u.tm.Type(s) }

// final quits (ctrl+c works in every mode) and returns the final model.
func (u *tui) final() Model {
	u.t.Helper()
	u.tm.Send(keyMsg("ctrl+c"))
	return u.tm.FinalModel(u.t, teatest.WithFinalTimeout(waitLong)).(Model)
}

// golden quits and compares the final screen with the golden file.
func (u *tui) golden() Model {
	u.t.Helper()
	m := u.final()
	golden.RequireEqual(u.t, []byte(m.View()))
	return m
}

// fakeTUI starts the dashboard over a scripted engine.
func fakeTUI(t *testing.T, opts Options, w, h int, mod func(s *pool.Snapshot)) (*tui, *fakeEngine) {
	t.Helper()
	clk := clockwork.NewFakeClockAt(t0)
	f := newFakeEngine(clk)
	if mod != nil {
		f.set(mod)
	}
	opts.Clock = clk
	if opts.APIAddr == "" {
		opts.APIAddr = "127.0.0.1:7780"
	}
	return startTUI(t, f, opts, w, h), f
}

// waitSubscribed waits until the dashboard listens to the fake's events.
func waitSubscribed(t *testing.T, f *fakeEngine) {
	t.Helper()
	testkit.Eventually(t, waitLong, "the dashboard to subscribe", func() bool { return f.subscribers() > 0 })
}

func threeReady(s *pool.Snapshot) {
	s.Sandboxes = []pool.Sandbox{ready(1, 150*time.Second), ready(2, 80*time.Second), ready(3, 20*time.Second)}
}

// ---- over the real controller (pooltest backend and store) ----

type engineHarness struct {
	clk *clockwork.FakeClock
	be  *pooltest.Backend
	st  *pooltest.Store
	c   *pool.Controller
}

// newController fills a real controller to n ready sandboxes one at a time,
// so that ids and pool order are deterministic (sb-0001 first).
func newController(t *testing.T, n int) *engineHarness {
	t.Helper()
	clk := clockwork.NewFakeClockAt(t0)
	be := pooltest.NewBackend(clk)
	st := pooltest.NewStore()
	cfg := pool.DefaultConfig()
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk, Checker: be.Checker, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx := context.Background()
	for i := 1; i <= n; i++ {
		if err := c.Resize(ctx, i); err != nil {
			t.Fatal(err)
		}
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, waitLong, fmt.Sprintf("%d ready", i), func() bool { return c.Snapshot().Counts[pool.StateReady] >= i })
	}
	c.WaitIdle(ctx)
	return &engineHarness{clk: clk, be: be, st: st, c: c}
}

// ---- the goldens ----

func TestGoldenSteady(t *testing.T) {
	h := newController(t, 3)
	u := startTUI(t, h.c, Options{Clock: h.clk, APIAddr: "127.0.0.1:7780"}, 80, 24)
	u.waitFor("sb-0003", "ready 3")
	u.golden()
}

func TestGoldenSteady100x30(t *testing.T) {
	h := newController(t, 3)
	u := startTUI(t, h.c, Options{Clock: h.clk, APIAddr: "127.0.0.1:7780"}, 100, 30)
	u.waitFor("sb-0003", "ready 3")
	u.golden()
}

func TestGoldenClaim(t *testing.T) {
	h := newController(t, 3)
	var copied []string
	var mu sync.Mutex
	clip := func(s string) error { mu.Lock(); copied = append(copied, s); mu.Unlock(); return nil }
	u := startTUI(t, h.c, Options{Clock: h.clk, APIAddr: "127.0.0.1:7780", Clipboard: clip}, 80, 24)
	u.waitFor("sb-0003", "ready 3")
	u.keys("c")
	u.waitFor("sent to clipboard", "◆ claimed", "claimed by dashboard (warm)", "ready 2")
	m := u.golden()
	mu.Lock()
	defer mu.Unlock()
	if len(copied) != 1 || copied[0] != "fake://sb-0001" {
		t.Fatalf("copied %q", copied)
	}
	if m.flash.banner.id != "sb-0001" {
		t.Fatalf("banner for %q", m.flash.banner.id)
	}
	if s, _ := h.st.Load(context.Background()); !s.Entries[0].Claimed() || s.Entries[0].ClaimedBy != "dashboard" {
		t.Fatalf("store: %+v", s.Entries[0])
	}
}

func TestGoldenFilling(t *testing.T) {
	u, f := fakeTUI(t, Options{}, 80, 24, func(s *pool.Snapshot) {
		s.Sandboxes = []pool.Sandbox{ready(1, 3*time.Second), warming(2, 2*time.Second), creating("new-3", time.Second)}
	})
	u.waitFor("new-3")
	waitSubscribed(t, f)
	f.emit(pool.Event{Time: t0.Add(-1500 * time.Millisecond), Kind: pool.EventCreated, SandboxID: "sb-0001", Message: "sb-0001 created in 1.2s"})
	f.emit(pool.Event{Kind: pool.EventCreating, SandboxID: "new-3", Message: "creating a sandbox"}) // hidden
	u.waitFor("created in 1.2s")
	u.golden()
}

func TestGoldenSizePromptRejected(t *testing.T) {
	u, f := fakeTUI(t, Options{}, 80, 24, threeReady)
	u.waitFor("sb-0003")
	u.keys("s")
	u.typeText("500")
	u.keys("enter")
	u.waitFor("cannot be above 100")
	m := u.golden()
	if m.mode != modePrompt || len(f.Calls()) != 0 {
		t.Fatalf("mode %d, calls %q", m.mode, f.Calls())
	}
}

func TestGoldenTerminateConfirm(t *testing.T) {
	u, f := fakeTUI(t, Options{}, 80, 24, threeReady)
	u.waitFor("sb-0003")
	u.keys("j", "t")
	u.waitFor("(y/N)")
	u.golden()
	if len(f.Calls()) != 0 {
		t.Fatalf("calls %q", f.Calls())
	}
}

func TestGoldenFilter(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 80, 24, func(s *pool.Snapshot) {
		s.Target = 4
		s.Sandboxes = []pool.Sandbox{
			withState(ready(1, 4*time.Minute), pool.StateClaimed), ready(2, 80*time.Second), ready(3, 60*time.Second),
			withState(ready(4, 3*time.Minute), pool.StateClaimed), warming(5, time.Second),
		}
		s.Sandboxes[0].ClaimedBy, s.Sandboxes[3].ClaimedBy = "api 127.0.0.1:5555", "cli"
	})
	u.waitFor("sb-0005")
	u.keys("/")
	u.typeText("claimed")
	u.keys("enter")
	u.waitFor("esc clears")
	u.golden()
}

func TestGoldenReadOnly(t *testing.T) {
	u, _ := fakeTUI(t, Options{ReadOnly: true}, 80, 24, threeReady)
	u.waitFor("sb-0003", "read-only")
	u.golden()
}

func TestGoldenViewer(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 80, 24, func(s *pool.Snapshot) {
		threeReady(s)
		s.Role, s.LeaseHolder, s.NextPass = "viewer", "pid 4242 on build-1", time.Time{}
	})
	u.waitFor("sb-0003", "maintained by pid 4242 on build-1")
	u.golden()
}

func TestGoldenUnhealthyExpiring(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 80, 24, func(s *pool.Snapshot) {
		s.Target = 5
		bad500 := withState(ready(1, 100*time.Second), pool.StateUnhealthy)
		bad500.Health = pool.Health{Status: 500, Error: "500", CheckedAt: t0.Add(-time.Second), Latency: 2 * time.Millisecond}
		timeout := withState(ready(2, 90*time.Second), pool.StateUnhealthy)
		timeout.Health = pool.Health{Error: "timeout", CheckedAt: t0.Add(-time.Second)}
		refused := withState(ready(3, 80*time.Second), pool.StateUnhealthy)
		refused.Health = pool.Health{Error: "refused", CheckedAt: t0.Add(-time.Second)}
		expiring := withState(ready(4, 3*time.Minute+20*time.Second), pool.StateExpiring) // 1:40 left: red
		amber := ready(5, 2*time.Minute+20*time.Second)                                   // 2:40 left: amber
		s.Sandboxes = []pool.Sandbox{bad500, timeout, refused, expiring, amber, ready(6, 10*time.Second)}
	})
	u.waitFor("sb-0006")
	u.golden()
}

func TestGoldenDetail(t *testing.T) {
	u, f := fakeTUI(t, Options{}, 80, 24, func(s *pool.Snapshot) {
		threeReady(s)
		s.Sandboxes[1].State, s.Sandboxes[1].ClaimedBy, s.Sandboxes[1].ClaimedAt = pool.StateClaimed, "cli", t0.Add(-10*time.Second)
	})
	u.waitFor("sb-0003")
	waitSubscribed(t, f)
	f.emit(pool.Event{Time: t0.Add(-80 * time.Second), Kind: pool.EventCreated, SandboxID: "sb-0002", Duration: 1100 * time.Millisecond, Message: "sb-0002 created in 1.1s"})
	f.emit(pool.Event{Time: t0.Add(-40 * time.Second), Kind: pool.EventHealthFailed, SandboxID: "sb-0002", Err: "timeout", Message: "sb-0002 failed health: timeout"})
	f.emit(pool.Event{Time: t0.Add(-30 * time.Second), Kind: pool.EventHealthRecovery, SandboxID: "sb-0002", Health: pool.Health{OK: true, Status: 200, Latency: 2 * time.Millisecond, CheckedAt: t0.Add(-30 * time.Second)}, Message: "sb-0002 answers again"})
	f.emit(pool.Event{Time: t0.Add(-10 * time.Second), Kind: pool.EventClaimed, SandboxID: "sb-0002", By: "cli", Warm: true, Message: "sb-0002 claimed by cli (warm) · pid 4242"})
	u.waitFor("claimed by cli (warm) · pid 4242")
	u.keys("j", "enter")
	u.waitFor("health checks")
	u.golden()
}

func TestGoldenHelp(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 80, 24, threeReady)
	u.waitFor("sb-0003")
	u.keys("?")
	u.waitFor("q quits; the sandboxes keep running.")
	u.golden()
}

func TestGoldenEmpty(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 80, 24, func(s *pool.Snapshot) { s.Target = 0 })
	u.waitFor("the target is 0")
	u.golden()
}

func TestGoldenBackendError(t *testing.T) {
	u, f := fakeTUI(t, Options{}, 80, 24, func(s *pool.Snapshot) {
		s.Sandboxes = []pool.Sandbox{ready(1, 150*time.Second),
			{ID: "new-7", State: pool.StateFailed, CreatedAt: t0.Add(-20 * time.Second), Err: "injected create failure"}}
		s.LastError = "injected create failure"
		s.BackoffUntil = t0.Add(12 * time.Second)
	})
	u.waitFor("new-7")
	waitSubscribed(t, f)
	f.emit(pool.Event{Time: t0.Add(-3 * time.Second), Kind: pool.EventCreateFailed, SandboxID: "new-7", Err: "injected create failure",
		Message: "creation failed (try 3 of 3): injected create failure"})
	u.waitFor("try 3 of 3")
	u.golden()
}

// localIDs look like the local backend's: 15 characters.
func localIDs(s *pool.Snapshot) {
	threeReady(s)
	for i, id := range []string{"sb-3f2a9c1d0b7e", "sb-81c4e07a5d22", "sb-0b9e6f13a8c4"} {
		s.Sandboxes[i].ID = id
	}
	s.Sandboxes[2].State = pool.StateWarming
}

func TestGolden60Columns(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 60, 24, localIDs)
	u.waitFor("sb-0b9e6f13a8c4")
	u.golden()
}

func TestGolden80ColumnsLocalIDs(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 80, 24, localIDs)
	u.waitFor("sb-0b9e6f13a8c4")
	u.golden()
}

func TestGoldenNarrow(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 50, 20, threeReady)
	u.waitFor("too narrow")
	u.golden()
}

// fakeLogs is a LogReader holding one text per sandbox.
type fakeLogs struct {
	mu   sync.Mutex
	logs map[string]string
}

func (f *fakeLogs) ReadLog(_ context.Context, id string, off int64, n int) ([]byte, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.logs[id]
	if !ok {
		return nil, 0, pool.ErrNotFound
	}
	if off < 0 {
		off = max(int64(len(s)-n), 0)
	}
	off = min(off, int64(len(s)))
	end := min(off+int64(n), int64(len(s)))
	return []byte(s[off:end]), end, nil
}

func (f *fakeLogs) add(id, text string) {
	f.mu.Lock()
	f.logs[id] += text
	f.mu.Unlock()
}

func TestGoldenLogView(t *testing.T) {
	logs := &fakeLogs{logs: map[string]string{}}
	var b strings.Builder
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&b, "GET /health 200 %dms\n", i)
	}
	// Escape sequences and control characters from a workload never reach the terminal.
	b.WriteString("\x1b[31mred\x1b[0m and a bell\a\ttab\nprogress 10%\rprogress 100%\n")
	logs.add("sb-0002", b.String())
	u, _ := fakeTUI(t, Options{Logs: logs}, 80, 24, threeReady)
	u.waitFor("sb-0003")
	u.keys("j", "l")
	u.waitFor("following", "progress 100%")
	logs.add("sb-0002", "one more line\n") // followed: read within a second
	u.waitFor("one more line")
	u.golden()
}

func TestGoldenLogNoReader(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 80, 24, threeReady)
	u.waitFor("sb-0003")
	u.keys("l")
	u.waitFor("no log for this backend")
	u.golden()
}

func TestGoldenSorted(t *testing.T) {
	u, _ := fakeTUI(t, Options{}, 80, 24, func(s *pool.Snapshot) {
		young, old, mid := ready(1, 20*time.Second), ready(2, 150*time.Second), ready(3, 80*time.Second)
		old.Health.Latency = 40 * time.Millisecond
		mid.State, mid.Health = pool.StateUnhealthy, pool.Health{Error: "timeout", CheckedAt: t0.Add(-time.Second)}
		s.Sandboxes = []pool.Sandbox{young, old, mid}
	})
	u.waitFor("sb-0003")
	u.keys("o") // age: oldest first
	u.waitFor("sort: age")
	u.keys("o", "o", "o") // ttl, state, health latency: failing, then slowest first
	u.waitFor("sort: health latency")
	m := u.golden()
	var ids []string
	for _, r := range m.tbl.rows {
		ids = append(ids, r.ID)
	}
	if got := strings.Join(ids, " "); got != "sb-0003 sb-0002 sb-0001" {
		t.Fatalf("by health latency: %s", got)
	}
}

// sparkTUI runs ten minutes of a pool on the fake clock: the ready count
// climbs and falls, claims come faster, then slower, each waiting longer.
func sparkTUI(t *testing.T, w int) *tui {
	u, f := fakeTUI(t, Options{}, w, 24, threeReady)
	u.waitFor("sb-0003")
	waitSubscribed(t, f)
	readyN := []int{1, 2, 3, 4, 5, 5, 4, 3, 3, 2}
	for i := range 10 {
		f.clk.Advance(time.Minute)
		f.set(func(s *pool.Snapshot) {
			s.Sandboxes = nil
			for n := range readyN[i] {
				sb := ready(n+1, 30*time.Second)
				sb.CreatedAt, sb.ExpiresAt = sb.CreatedAt.Add(time.Duration(i+1)*time.Minute), sb.ExpiresAt.Add(time.Duration(i+1)*time.Minute)
				s.Sandboxes = append(s.Sandboxes, sb)
			}
		})
		for c := range i%4 + 1 {
			f.emit(pool.Event{Kind: pool.EventClaimed, SandboxID: fmt.Sprintf("sb-%02d%02d", i, c), By: "api", Warm: i < 5,
				Duration: time.Duration(i+1) * 40 * time.Millisecond, Message: fmt.Sprintf("sb-%02d%02d claimed by api", i, c)})
		}
		u.waitFor(fmt.Sprintf("sb-%02d%02d claimed by api", i, i%4))
	}
	return u
}

func TestGoldenSparklines80(t *testing.T) {
	sparkTUI(t, 80).golden()
}

func TestGoldenSparklines60(t *testing.T) {
	sparkTUI(t, 60).golden()
}
