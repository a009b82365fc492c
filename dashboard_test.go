package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest"
	"github.com/muesli/termenv"
	"github.com/spf13/pflag"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/ui"
)

func init() {
	// Goldens are plain text: no colour, a fixed background (no terminal query).
	lipgloss.SetColorProfile(termenv.Ascii)
	lipgloss.SetHasDarkBackground(true)
}

const dashWait = 20 * time.Second

// dashSubscribed is the real controller; it says when the dashboard listens to
// its events, so that the events the test causes are all on screen.
type dashSubscribed struct {
	*pool.Controller
	once sync.Once
	ch   chan struct{}
}

func (s *dashSubscribed) Subscribe(buffer int) (<-chan pool.Event, func()) {
	ch, cancel := s.Controller.Subscribe(buffer)
	s.once.Do(func() { close(s.ch) })
	return ch, cancel
}

// dashboardOptions parses args as the command line would (defaults from the
// flag table) with the state in stateDir.
func dashboardOptions(t *testing.T, stateDir string, args ...string) (*options, pool.Config) {
	t.Helper()
	o := &options{}
	fs := pflag.NewFlagSet("sandboxpool", pflag.ContinueOnError)
	o.register(fs)
	if err := fs.Parse(append([]string{"--state-dir", stateDir}, args...)); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config(fs.Changed("size"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.TTLJitter = 0 // the goldens show pool order as creation order
	return o, cfg
}

func dashKey(s string) tea.KeyMsg { return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)} }

// dashWaitDrawn waits until what was drawn since the last wait contains all of
// subs (a changed line is redrawn whole).
func dashWaitDrawn(t *testing.T, tm *teatest.TestModel, subs ...string) {
	t.Helper()
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return dashContains(b, subs...) }, teatest.WithDuration(dashWait), teatest.WithCheckInterval(10*time.Millisecond))
}

func dashContains(b []byte, subs ...string) bool {
	for _, s := range subs {
		if !bytes.Contains(b, []byte(s)) {
			return false
		}
	}
	return true
}

// dashWaitEngine waits until cond holds for what was drawn since the last
// wait and the engine's snapshot.
func dashWaitEngine(t *testing.T, tm *teatest.TestModel, cond func(drawn []byte, s pool.Snapshot) bool, c *pool.Controller) {
	t.Helper()
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return cond(b, c.Snapshot()) },
		teatest.WithDuration(dashWait), teatest.WithCheckInterval(10*time.Millisecond))
}

func dashGet(t *testing.T, url string) int {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// The dashboard end to end over the real local backend and file store, wired
// as `sandboxpool` wires it: fill to 2 from the keyboard, claim with c, and
// the claimed URL answers.
func TestDashboardEndToEnd(t *testing.T) {
	stateDir := t.TempDir()
	o, cfg := dashboardOptions(t, stateDir, "--size", "0", "--listen", "127.0.0.1:0")
	logger := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := startController(ctx, o, cfg, logger, true)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			s.stop(true, logger) // terminate every sandbox of the test's pool
		}
	}
	t.Cleanup(stop)

	eng := &dashSubscribed{Controller: s.ctrl, ch: make(chan struct{})}
	var mu sync.Mutex
	var copied []string
	clip := func(text string) error { mu.Lock(); copied = append(copied, text); mu.Unlock(); return nil }
	tm := teatest.NewTestModel(t, ui.NewModel(eng, ui.Options{APIAddr: s.apiAddr, Clipboard: clip}),
		teatest.WithInitialTermSize(100, 30))
	t.Cleanup(func() { _ = tm.Quit() })
	dashWaitDrawn(t, tm, "local/default", "target 0")
	select {
	case <-eng.ch:
	case <-time.After(dashWait):
		t.Fatal("the dashboard never subscribed to events")
	}

	// Fill to 2, one at a time so that the pool order and the events are
	// the same on every run.
	for n := 1; n <= 2; n++ {
		tm.Send(dashKey("+"))
		dashWaitEngine(t, tm, func(b []byte, sn pool.Snapshot) bool {
			return len(sn.Sandboxes) == n && sn.Counts[pool.StateReady] == n &&
				dashContains(b, fmt.Sprintf("target %d", n), fmt.Sprintf("ready %d", n), sn.Sandboxes[n-1].ID+" created in")
		}, s.ctrl)
	}
	first := s.ctrl.Snapshot().Sandboxes[0]

	// c claims the first; the claim backfills at once: wait for the third
	// sandbox to be on screen too.
	tm.Send(dashKey("c"))
	dashWaitEngine(t, tm, func(b []byte, sn pool.Snapshot) bool {
		if len(sn.Sandboxes) != 3 || sn.Counts[pool.StateReady] != 2 {
			return false
		}
		third := sn.Sandboxes[2].ID
		return third != first.ID && dashContains(b, "✓ claimed "+first.ID, "sent to clipboard",
			first.ID+" claimed by dashboard (warm)", third+" created in", "ready 2  claimed 1")
	}, s.ctrl)

	snap := s.ctrl.Snapshot()
	var claimed *pool.Sandbox
	for i := range snap.Sandboxes {
		if snap.Sandboxes[i].State == pool.StateClaimed {
			claimed = &snap.Sandboxes[i]
		}
	}
	if claimed == nil || claimed.ID != first.ID || claimed.ClaimedBy != "dashboard" {
		t.Fatalf("claimed %+v, want %s by dashboard", claimed, first.ID)
	}
	mu.Lock()
	clipped := append([]string(nil), copied...)
	mu.Unlock()
	if len(clipped) != 1 || clipped[0] != claimed.URL {
		t.Fatalf("copied %q, want [%s]", clipped, claimed.URL)
	}
	if code := dashGet(t, claimed.URL); code != http.StatusOK {
		t.Fatalf("GET %s: %d", claimed.URL, code)
	}

	tm.Send(dashKey("q"))
	view := tm.FinalModel(t, teatest.WithFinalTimeout(dashWait)).View()
	if !strings.Contains(view, "✓ claimed "+claimed.ID+"  "+claimed.URL+"  ") || !strings.Contains(view, "URL sent to clipboard") {
		t.Fatalf("no banner for %s %s in:\n%s", claimed.ID, claimed.URL, view)
	}
	golden.RequireEqual(t, []byte(normalizeDashboard(view)))

	// Quitting leaves the sandboxes running.
	if code := dashGet(t, claimed.URL); code != http.StatusOK {
		t.Fatalf("after quit, GET %s: %d", claimed.URL, code)
	}
	stop()
}

var (
	reDashID       = regexp.MustCompile(`sb-[0-9a-f]{12}`)
	reDashAddr     = regexp.MustCompile(`127\.0\.0\.1:\d+`)
	reDashClock    = regexp.MustCompile(`\b\d\d:\d\d:\d\d\b`)
	reDashMinSec   = regexp.MustCompile(`\b\d+:\d\d\b`)
	reDashHealth   = regexp.MustCompile(`ok 200 \S+ +\d+[smh] `)
	reDashAge      = regexp.MustCompile(` +\d+[smh] http`)
	reDashDur      = regexp.MustCompile(`in (\d+(\.\d+)?(ns|µs|ms|s|m))+`)
	reDashTrailing = regexp.MustCompile(`(?m) +$`)
	reDashSparks   = regexp.MustCompile(`(?m)^ready .*claims/min.*$`)
)

// normalizeDashboard replaces what changes from run to run in a real pool with
// placeholders of the same width, so the layout is still compared: ids
// become sb-aaaaaaaaaaaa, sb-bbbbbbbbbbbb... in order of appearance, ports
// PORT, clock times hh:mm:ss, countdowns m:ss, latencies and ages ~.
// Trailing spaces go (a URL of another length pads the line differently).
func normalizeDashboard(v string) string {
	ids := map[string]string{}
	v = reDashID.ReplaceAllStringFunc(v, func(id string) string {
		if p, ok := ids[id]; ok {
			return p
		}
		p := "sb-" + strings.Repeat(string(rune('a'+len(ids)%26)), 12)
		ids[id] = p
		return p
	})
	v = reDashAddr.ReplaceAllString(v, "127.0.0.1:PORT")
	v = reDashClock.ReplaceAllString(v, "hh:mm:ss")
	v = reDashMinSec.ReplaceAllStringFunc(v, func(s string) string { return dashPadLeft("m:ss", len(s)) })
	v = reDashHealth.ReplaceAllStringFunc(v, func(s string) string {
		return "ok 200 ~" + dashPadLeft("~ ", len(s)-len("ok 200 ~"))
	})
	v = reDashAge.ReplaceAllStringFunc(v, func(s string) string { return dashPadLeft("~ http", len(s)) })
	v = reDashDur.ReplaceAllString(v, "in ~")
	v = reDashSparks.ReplaceAllString(v, "ready ~ · claims/min ~ · claim p50 ~") // drawn from real time
	return reDashTrailing.ReplaceAllString(v, "")
}

func dashPadLeft(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return strings.Repeat(" ", n-len(s)) + s
}

// ---- the dashboard as a person sees it: the binary in tmux ----

type dashTmux struct {
	t      *testing.T
	socket string
	env    []string
	pane   string // the session keys go to and screens come from; "" is "t"
}

func (x *dashTmux) target() string {
	if x.pane == "" {
		return "t"
	}
	return x.pane
}

func (x *dashTmux) tmux(args ...string) (string, error) {
	cmd := exec.Command("tmux", append([]string{"-L", x.socket, "-f", "/dev/null"}, args...)...)
	cmd.Env = x.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (x *dashTmux) must(args ...string) string {
	x.t.Helper()
	out, err := x.tmux(args...)
	if err != nil {
		x.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (x *dashTmux) capture() string {
	x.t.Helper()
	return x.must("capture-pane", "-p", "-t", x.target())
}

func (x *dashTmux) keys(keys ...string) {
	x.t.Helper()
	x.must(append([]string{"send-keys", "-t", x.target()}, keys...)...)
}

// waitScreen polls the screen until cond holds, and returns that screen.
func (x *dashTmux) waitScreen(what string, timeout time.Duration, cond func(screen string) bool) string {
	x.t.Helper()
	var s string
	if !testkit.Until(timeout, func() bool { s = x.capture(); return cond(s) }) {
		x.t.Fatalf("timed out after %s waiting for %s; the screen:\n%s", timeout, what, s)
	}
	return s
}

// dashRow is one line of the dashboard's table.
type dashRow struct {
	selected bool
	id       string
	state    string
	url      string
}

var reDashRow = regexp.MustCompile(`^([▸ ]) (sb-[0-9a-f]+) +\S (\w+) .*?(https?://\S+)?$`)

func dashRows(screen string) []dashRow {
	var rs []dashRow
	for _, l := range strings.Split(screen, "\n") {
		if m := reDashRow.FindStringSubmatch(strings.TrimRight(l, " ")); m != nil {
			rs = append(rs, dashRow{selected: m[1] == "▸", id: m[2], state: m[3], url: m[4]})
		}
	}
	return rs
}

func dashCountState(rs []dashRow, state string) int {
	n := 0
	for _, r := range rs {
		if r.state == state {
			n++
		}
	}
	return n
}

func dashHasRow(rs []dashRow, id string) bool {
	for _, r := range rs {
		if r.id == id {
			return true
		}
	}
	return false
}

var (
	reDashBanner = regexp.MustCompile(`✓ claimed (sb-[0-9a-f]+)  (http://\S+)  .*sent to clipboard`)
	reDashAPI    = regexp.MustCompile(`api (127\.0\.0\.1:\d+)`)
)

// The binary in tmux at 100x30, driven by keys as a person would: claim,
// grow, terminate, a claim through the API, quit; the sandboxes outlive the
// dashboard until `terminate --all`.
func TestDashboardTmux(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed")
	}
	stateDir := t.TempDir()
	env := cliEnv(stateDir)
	x := &dashTmux{t: t, socket: fmt.Sprintf("sbp-test-%d-%d", os.Getpid(), time.Now().UnixNano()), env: env}
	var socketPath string
	t.Cleanup(func() {
		_, _ = x.tmux("kill-server")
		if socketPath != "" {
			os.Remove(socketPath) // tmux leaves it behind
		}
		cli(t, env, "terminate", "--all") // whatever the test left
	})
	// sh writes the dashboard's exit status: tmux's #{pane_dead_status} is
	// sometimes never set when the pane's output ends before the child is reaped.
	exitFile := filepath.Join(t.TempDir(), "exit")
	x.must("new-session", "-d", "-s", "t", "-x", "100", "-y", "30", "--",
		"sh", "-c", `"$0" "$@"; echo $? >'`+exitFile+`'`,
		binary, "--listen", "127.0.0.1:0", "--maintain-every", "2s", "--health-every", "1s")
	socketPath = strings.TrimSpace(x.must("display-message", "-p", "#{socket_path}"))
	x.must("set-option", "-t", "t", "remain-on-exit", "on")
	shPid := strings.TrimSpace(x.must("display-message", "-p", "-t", "t", "#{pane_pid}"))
	var pid int
	testkit.Eventually(t, dashWait, "the dashboard process", func() bool {
		b, _ := os.ReadFile("/proc/" + shPid + "/task/" + shPid + "/children")
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return pid > 0
	})

	screen := x.waitScreen("3 ready rows and their created events", dashWait, func(s string) bool {
		rs := dashRows(s)
		// The first creations happen before the screen is up: their
		// events are on it all the same.
		return len(rs) == 3 && dashCountState(rs, "ready") == 3 && strings.Contains(s, "ready 3") &&
			strings.Count(s, " created in ") >= 3
	})
	m := reDashAPI.FindStringSubmatch(screen)
	if m == nil {
		t.Fatalf("no API address in the header:\n%s", screen)
	}
	apiAddr := m[1]

	// c: the banner, and the URL answers.
	x.keys("c")
	screen = x.waitScreen("the claim banner", dashWait, func(s string) bool { return reDashBanner.MatchString(s) })
	b := reDashBanner.FindStringSubmatch(screen)
	claimedID, claimedURL := b[1], b[2]
	if code := dashGet(t, claimedURL); code != http.StatusOK {
		t.Fatalf("GET %s: %d", claimedURL, code)
	}

	// +: target 4 and a fourth ready row.
	x.keys("+")
	x.waitScreen("target 4 with 4 ready rows", dashWait, func(s string) bool {
		rs := dashRows(s)
		return strings.Contains(s, "target 4") && dashCountState(rs, "ready") == 4 && dashCountState(rs, "claimed") == 1
	})

	// j then t: the selected sandbox asks (y/N); y terminates it.
	x.keys("j")
	var victim string
	x.waitScreen("the selection on a ready row", dashWait, func(s string) bool {
		for _, r := range dashRows(s) {
			if r.selected && r.state == "ready" {
				victim = r.id
				return true
			}
		}
		return false
	})
	x.keys("t")
	x.waitScreen("the terminate prompt", dashWait, func(s string) bool {
		return strings.Contains(s, victim) && strings.Contains(s, "(y/N)")
	})
	x.keys("y")
	x.waitScreen("the terminated row to go", dashWait, func(s string) bool { return !dashHasRow(dashRows(s), victim) })

	// A claim through the API shows at once as claimed by api.
	resp, err := http.Post("http://"+apiAddr+"/v1/claims", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var cv httpapi.ClaimView
	err = json.NewDecoder(resp.Body).Decode(&cv)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/claims: %d %v", resp.StatusCode, err)
	}
	screen = x.waitScreen("the API claim on screen", 5*time.Second, func(s string) bool {
		for _, r := range dashRows(s) {
			if r.id == cv.ID && r.state == "claimed" {
				return strings.Contains(s, cv.ID+" claimed by api")
			}
		}
		return false
	})

	if strings.Contains(screen, "✗") {
		t.Fatalf("an error on screen:\n%s", screen)
	}
	// Let the backfills end: what is on screen now must outlive the dashboard.
	screen = x.waitScreen("4 ready and 2 claimed", dashWait, func(s string) bool {
		rs := dashRows(s)
		return strings.Contains(s, "ready 4  claimed 2") && len(rs) == 6 && dashCountState(rs, "ready") == 4
	})
	before := dashRows(screen)

	// q: the process exits 0 and the sandboxes keep running.
	x.keys("q")
	var code string
	if !testkit.Until(15*time.Second, func() bool {
		b, _ := os.ReadFile(exitFile)
		code = strings.TrimSpace(string(b))
		return code != ""
	}) {
		// Where is it stuck? A goroutine dump lands in the pane.
		stuck := testkit.Alive(pid)
		if stuck {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
			time.Sleep(time.Second)
		}
		t.Fatalf("the dashboard did not exit 15s after q (alive %v):\n%s", stuck, x.must("capture-pane", "-p", "-t", "t", "-S", "-3000"))
	}
	if code != "0" {
		t.Fatalf("the dashboard exited with %s:\n%s", code, x.must("capture-pane", "-p", "-t", "t", "-S", "-3000"))
	}
	if testkit.Alive(pid) {
		t.Fatalf("the dashboard (pid %d) is still running", pid)
	}
	v := check(t, env)
	states := map[string]string{}
	for _, sb := range v.Sandboxes {
		states[sb.ID] = string(sb.State)
	}
	if states[claimedID] != "claimed" || states[cv.ID] != "claimed" {
		t.Fatalf("after quit: %v", states)
	}
	for _, r := range before {
		if states[r.id] != r.state {
			t.Fatalf("after quit, %s is %q, was %s on screen; the pool: %v", r.id, states[r.id], r.state, states)
		}
		if code := dashGet(t, r.url); code != http.StatusOK {
			t.Fatalf("after quit, GET %s (%s): %d", r.url, r.id, code)
		}
	}

	r := cli(t, env, "terminate", "--all")
	if r.code != 0 {
		t.Fatalf("terminate --all: exit %d: %s", r.code, r.stderr)
	}
	if v := check(t, env); len(v.Sandboxes) != 0 {
		t.Fatalf("after terminate --all: %+v", v.Sandboxes)
	}
}
