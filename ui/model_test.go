package ui

import (
	"errors"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
	"github.com/muesli/termenv"

	"github.com/sandboxpool/sandboxpool/pool"
)

func TestKeysAskTheEngine(t *testing.T) {
	for _, tc := range []struct {
		name string
		keys []string
		want []string
	}{
		{"c claims for the dashboard, health checked", []string{"c"}, []string{"claim by=dashboard health=true"}},
		{"+ grows the target by one", []string{"+"}, []string{"resize 4"}},
		{"- shrinks the target by one", []string{"-"}, []string{"resize 2"}},
		{"s takes a typed target", []string{"s", "1", "2", "enter"}, []string{"resize 12"}},
		{"s trims spaces", []string{"s", "space", "7", "space", "enter"}, []string{"resize 7"}},
		{"s after a rejected value takes a corrected one", []string{"s", "5", "0", "0", "enter", "backspace", "backspace", "enter"}, []string{"resize 5"}},
		{"t y terminates the selected sandbox", []string{"j", "t", "y"}, []string{"terminate sb-0002"}},
		{"t terminates what was selected when asked", []string{"G", "t", "y"}, []string{"terminate sb-0003"}},
		{"r refills now", []string{"r"}, []string{"maintain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDriver(t, Options{})
			d.keys(tc.keys...)
			d.wantCalls(tc.want...)
		})
	}
}

func TestNothingAskedWhenCancelled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		keys   []string
		screen string
	}{
		{"esc leaves the size prompt", []string{"s", "7", "esc"}, "target unchanged"},
		{"a word is rejected in place", []string{"s", "a", "b", "c", "enter"}, `"abc" is not a whole number`},
		{"too big is rejected in place", []string{"s", "5", "0", "0", "enter"}, "500: the target cannot be above 100"},
		{"negative is rejected in place", []string{"s", "-", "1", "enter"}, "-1: the target cannot be below 0"},
		{"nothing typed is rejected", []string{"s", "enter"}, "type a number from 0 to 100"},
		{"n cancels terminate", []string{"t", "n"}, "terminate sb-0001 cancelled"},
		{"esc cancels terminate", []string{"t", "esc"}, "terminate sb-0001 cancelled"},
		{"enter cancels terminate", []string{"t", "enter"}, "terminate sb-0001 cancelled"},
		{"Y is not y", []string{"t", "Y"}, "terminate sb-0001 cancelled"},
		{"q cancels terminate, it does not quit", []string{"t", "q"}, "terminate sb-0001 cancelled"},
		{"esc leaves the filter", []string{"/", "c", "esc"}, "sb-0003"},
		{"keys typed in the filter are text", []string{"/", "c", "t", "r", "s", "+", "-"}, "/ ctrs+-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDriver(t, Options{})
			d.keys(tc.keys...)
			d.wantCalls()
			d.wantScreen(tc.screen)
			if d.quit {
				t.Fatal("quit")
			}
		})
	}
}

func TestPromptStaysOpenOnBadInput(t *testing.T) {
	d := newDriver(t, Options{})
	d.keys("s", "x", "enter")
	if d.m.mode != modePrompt {
		t.Fatalf("mode %d, want the prompt still open", d.m.mode)
	}
	d.wantScreen(`✗ "x" is not a whole number: type 0 to 100`)
	d.keys("backspace", "4", "enter")
	d.wantCalls("resize 4")
	if d.m.mode != modeNormal {
		t.Fatalf("mode %d after a good value", d.m.mode)
	}
}

func TestReadOnlyChangesNothing(t *testing.T) {
	d := newDriver(t, Options{ReadOnly: true})
	d.keys("c", "+", "-", "s", "t", "y", "r", "j", "t", "y")
	d.wantCalls()
	d.wantScreen("read-only", "? help", "q quit")
	d.wantNotScreen("c claim", "terminate", "refill", "target:")
	if d.m.mode != modeNormal {
		t.Fatalf("mode %d: a dropped key opened something", d.m.mode)
	}
	// The maintenance ticker does not maintain either.
	d.f.set(func(s *pool.Snapshot) { s.Role = ""; s.NextPass = time.Time{} })
	d.refresh()
	d.send(maintainTickMsg{})
	d.wantCalls()
	// Watching still works.
	d.keys("enter")
	d.wantScreen("sandbox sb-0002", "health checks")
	d.keys("esc", "?")
	d.wantScreen("read-only: claim, target, size, terminate and refill are off")
}

func TestResizesGoOneAtATimeLastWins(t *testing.T) {
	d := newDriver(t, Options{})
	// Three quick +: the first goes out, the others wait for it.
	var cmds []tea.Cmd
	for range 3 {
		next, cmd := d.m.Update(keyMsg("+"))
		d.m = next.(Model)
		cmds = append(cmds, cmd)
	}
	if cmds[1] != nil || cmds[2] != nil {
		t.Fatal("a second resize went out while the first was in flight")
	}
	d.wantScreen("target 3→6")
	d.run(cmds[0], 0)
	d.wantCalls("resize 4", "resize 6")
	d.wantScreen("target 6 ", "target set to 6")
}

func TestClaimShowsBannerAndCopies(t *testing.T) {
	d := newDriver(t, Options{})
	d.keys("c")
	d.wantScreen("✓ claimed sb-0001  http://127.0.0.1:40101  4:00 left · URL sent to clipboard", "◆ claimed")
	if len(d.clip) != 1 || d.clip[0] != "http://127.0.0.1:40101" {
		t.Fatalf("clipboard got %q", d.clip)
	}
	d.keys("esc")
	d.wantNotScreen("✓ claimed")
}

func TestClaimFailureShowsAndKeepsRunning(t *testing.T) {
	d := newDriver(t, Options{})
	d.f.claimErr = errors.New(`no good sandbox available within 1m0s in pool "default"`)
	d.keys("c")
	d.wantScreen(`✗ claim failed: no good sandbox available within 1m0s in pool "default"`)
	if n := strings.Count(d.view(), "no good sandbox"); n != 2 {
		t.Fatalf("the error shows %d times, want the status line and one event line:\n%s", n, d.view())
	}
	d.keys("+")
	d.wantCalls("claim by=dashboard health=true", "resize 4")
}

func TestCommandErrorInStatusAndLog(t *testing.T) {
	d := newDriver(t, Options{})
	d.f.resizeErr = errors.New("set target: store is read-only")
	d.keys("+")
	d.wantScreen("✗ set the target to 4: set target: store is read-only")
	if got := d.m.log[len(d.m.log)-1].text; !strings.Contains(got, "store is read-only") {
		t.Fatalf("last event line %q", got)
	}
	if d.m.hasWant {
		t.Fatal("a failed resize still shows as pending")
	}
	d.f.termErr = errors.New("terminate sb-0001: backend timeout")
	d.keys("t", "y")
	d.wantScreen("✗ terminate sb-0001: terminate sb-0001: backend timeout")
}

func TestLastErrorComesAndGoes(t *testing.T) {
	d := newDriver(t, Options{})
	d.f.set(func(s *pool.Snapshot) { s.LastError = errBackend.Error() })
	d.refresh()
	d.wantScreen("✗ list sandboxes: connection refused", "error: list sandboxes: connection refused")
	d.refresh() // the same error again is not a new line
	if n := strings.Count(d.view(), "connection refused"); n != 2 {
		t.Fatalf("the error shows %d times, want 2", n)
	}
	d.f.set(func(s *pool.Snapshot) { s.LastError = "" })
	d.refresh()
	d.wantScreen("✓ no errors")
}

func TestSelectionFollowsTheSandbox(t *testing.T) {
	d := newDriver(t, Options{})
	d.keys("j")
	if d.m.tbl.sel != "sb-0002" {
		t.Fatalf("selected %q", d.m.tbl.sel)
	}
	// A new row before it, and a reorder: still sb-0002.
	d.f.set(func(s *pool.Snapshot) {
		s.Sandboxes = []pool.Sandbox{ready(3, time.Minute), ready(1, time.Minute), ready(4, 0), ready(2, time.Minute)}
	})
	d.refresh()
	if d.m.tbl.sel != "sb-0002" || d.m.tbl.cur != 3 {
		t.Fatalf("selected %q at %d, want sb-0002 at 3", d.m.tbl.sel, d.m.tbl.cur)
	}
	d.wantScreen("▸ sb-0002")
	// It leaves: the row that took its place is selected.
	d.f.set(func(s *pool.Snapshot) { s.Sandboxes = s.Sandboxes[:3] })
	d.refresh()
	if d.m.tbl.sel != "sb-0004" {
		t.Fatalf("selected %q after sb-0002 left", d.m.tbl.sel)
	}
	// All leave, then some come back: the first is selected, not "-1".
	d.f.set(func(s *pool.Snapshot) { s.Sandboxes = nil; s.Target = 0 })
	d.refresh()
	d.wantScreen("no sandboxes: the target is 0")
	d.keys("j", "t")
	d.wantCalls()
	d.f.set(func(s *pool.Snapshot) { s.Sandboxes = []pool.Sandbox{ready(7, 0)} })
	d.refresh()
	d.keys("t", "y")
	d.wantCalls("terminate sb-0007")
}

func TestStaleSnapshotIsDropped(t *testing.T) {
	d := newDriver(t, Options{})
	d.send(snapshotMsg{seq: 10, snap: d.f.Snapshot()})
	old := d.f.Snapshot()
	old.Sandboxes = old.Sandboxes[:1]
	d.send(snapshotMsg{seq: 9, snap: old})
	if len(d.m.tbl.rows) != 3 {
		t.Fatalf("a stale snapshot was applied: %d rows", len(d.m.tbl.rows))
	}
}

func TestFilter(t *testing.T) {
	rows := []pool.Sandbox{ready(1, time.Minute), withState(ready(2, time.Minute), pool.StateClaimed), warming(3, 0)}
	d := newDriver(t, Options{}, rows...)
	d.keys("/")
	d.typeText("CLAIM")
	if len(d.m.tbl.rows) != 1 || d.m.tbl.sel != "sb-0002" {
		t.Fatalf("filter by state: %d rows, selected %q", len(d.m.tbl.rows), d.m.tbl.sel)
	}
	d.keys("enter")
	d.wantScreen("filter “CLAIM”  1 of 3 · esc clears")
	d.keys("/", "ctrl+c")
	if !d.quit {
		t.Fatal("ctrl+c in the filter did not quit")
	}

	d = newDriver(t, Options{}, rows...)
	d.keys("/")
	d.typeText(":40103") // by URL
	if len(d.m.tbl.rows) != 1 || d.m.tbl.sel != "sb-0003" {
		t.Fatalf("filter by URL: %d rows", len(d.m.tbl.rows))
	}
	d.keys("enter", "esc") // esc in normal mode clears it
	if len(d.m.tbl.rows) != 3 || d.m.filter != "" {
		t.Fatalf("esc left %d rows, filter %q", len(d.m.tbl.rows), d.m.filter)
	}
	d.keys("/")
	d.typeText("nothing")
	d.wantScreen("no sandbox matches “nothing”")
	d.keys("t", "enter") // typed, not terminate
	d.wantCalls()
}

func TestMaintenanceTicker(t *testing.T) {
	// No loop runs here (Role ""): the UI's ticker runs the passes.
	d := newDriver(t, Options{})
	d.f.set(func(s *pool.Snapshot) { s.Role = ""; s.NextPass = time.Time{} })
	d.refresh()
	d.wantScreen("next pass 0:30")
	d.send(maintainTickMsg{})
	d.wantCalls("maintain")

	// A controller runs its own loop: the UI shows its NextPass and never doubles passes.
	d = newDriver(t, Options{})
	d.wantScreen("next pass 0:27")
	d.send(maintainTickMsg{})
	d.wantCalls()
	d.clk.Advance(30 * time.Second)
	d.refresh()
	d.wantScreen("next pass now")

	// A viewer leaves passes to the holder, r included.
	d = newDriver(t, Options{})
	d.f.set(func(s *pool.Snapshot) {
		s.Role = "viewer"
		s.LeaseHolder = "pid 4242 on build-1"
		s.NextPass = time.Time{}
	})
	d.refresh()
	d.send(maintainTickMsg{})
	d.keys("r")
	d.wantCalls()
	d.wantScreen("maintained by pid 4242 on build-1", "next pass –", "maintained by pid 4242 on build-1")
}

func TestCountdownTicks(t *testing.T) {
	d := newDriver(t, Options{})
	d.wantScreen(" 4:00 ")
	d.clk.Advance(61 * time.Second)
	d.send(clockTickMsg{})
	d.wantScreen(" 2:59 ", "next pass now")
}

func TestWindowSizeRelayouts(t *testing.T) {
	d := newDriver(t, Options{})
	d.send(tea.WindowSizeMsg{Width: 59, Height: 24})
	d.wantScreen("too narrow: 59 columns")
	d.wantNotScreen("sb-0001")
	d.send(tea.WindowSizeMsg{Width: 60, Height: 24})
	d.wantScreen("sb-0001")
	d.send(tea.WindowSizeMsg{Width: 100, Height: 30})
	d.wantScreen("http://127.0.0.1:40101", "l log")
}

// TestViewFitsTheScreen: every mode, at every size, draws exactly the
// screen's height and never wider than it.
func TestViewFitsTheScreen(t *testing.T) {
	t.Run("ascii", testViewFits)
	t.Run("truecolor", func(t *testing.T) {
		lipgloss.SetColorProfile(termenv.TrueColor)
		defer lipgloss.SetColorProfile(termenv.Ascii)
		testViewFits(t)
	})
}

func testViewFits(t *testing.T) {
	many := make([]pool.Sandbox, 0, 40)
	for i := range 40 {
		sb := ready(i+1, time.Duration(i)*7*time.Second)
		sb.ID = "sb-3f2a9c1d0b7e" + string(rune('a'+i%26)) + "0123456789"
		sb.URL = "https://" + strings.Repeat("x", 30) + ".r5.modal.host"
		many = append(many, sb)
	}
	modes := map[string][]string{
		"normal": nil, "filter": {"/", "x"}, "prompt": {"s", "z", "enter"}, "confirm": {"t"},
		"detail": {"enter"}, "help": {"?"}, "banner": {"c"}, "sorted": {"o", "o", "o", "o"},
		"log": {"l"}, "no log": {"l"},
	}
	for name, keys := range modes {
		opts := Options{APIAddr: "127.0.0.1:7780"}
		if name == "log" {
			logs := &fakeLogs{logs: map[string]string{}}
			logs.add(many[0].ID, strings.Repeat("a very long line of output, ", 20)+"\n\x1b[2J\x1b[31mred\ttab\n")
			opts.Logs = logs
		}
		d := newDriver(t, opts, many...)
		d.f.set(func(s *pool.Snapshot) {
			s.LastError = strings.Repeat("a very long backend error ", 10) + "\nwith a second line"
			s.Sandboxes[1].Health = pool.Health{CheckedAt: t0, Error: "dial tcp:\nconnection reset"}
			s.Sandboxes[1].Err = "multi\nline"
			s.BackoffUntil = t0.Add(12 * time.Second)
			s.Role, s.LeaseHolder = "viewer", "pid 4242 on a-very-long-host-name.example.com"
		})
		d.refresh()
		d.keys(keys...)
		for _, w := range []int{20, 59, 60, 61, 80, 100, 137, 200} {
			for _, h := range []int{5, 10, 24, 30, 60} {
				d.send(tea.WindowSizeMsg{Width: w, Height: h})
				v := d.view()
				lines := strings.Split(v, "\n")
				if w >= minWidth && len(lines) != h {
					t.Errorf("%s %dx%d: %d lines", name, w, h, len(lines))
				}
				if len(lines) > h {
					t.Errorf("%s %dx%d: %d lines", name, w, h, len(lines))
				}
				for i, l := range lines {
					if lw := lipgloss.Width(l); lw > w {
						t.Errorf("%s %dx%d: line %d is %d wide: %q", name, w, h, i, lw, l)
					}
				}
			}
		}
	}
}

func TestQuitStopsTheDashboard(t *testing.T) {
	d := newDriver(t, Options{})
	d.keys("q")
	if !d.quit {
		t.Fatal("q did not quit")
	}
	if d.m.life.ctx.Err() == nil {
		t.Fatal("engine calls are not cancelled on quit")
	}
	// Keys after quit reach nothing.
	d.keys("c")
	d.wantCalls()
}

// TestColourIsOnlyDecoration: with colour on, the text is the same as
// without (styles add escape codes and nothing else), and the selected row
// is one highlighted run.
func TestColourIsOnlyDecoration(t *testing.T) {
	plain := newDriver(t, Options{}).view()
	lipgloss.SetColorProfile(termenv.TrueColor)
	defer lipgloss.SetColorProfile(termenv.Ascii)
	coloured := newDriver(t, Options{}).view()
	if coloured == plain {
		t.Fatal("no colour at all")
	}
	if got := ansi.Strip(coloured); got != plain {
		t.Fatalf("colour changed the text:\n%s\nwant\n%s", got, plain)
	}
	for _, l := range strings.Split(coloured, "\n") {
		if strings.Contains(l, "▸") && strings.Count(l, "\x1b[0m") != 1 {
			t.Fatalf("the selected row has nested styles: %q", l)
		}
	}
}

// TestRunesTogetherAreKeysInTurn: keys that arrive in one read (fast
// typing, tmux send-keys) come as one message; each is a key.
func TestRunesTogetherAreKeysInTurn(t *testing.T) {
	d := newDriver(t, Options{})
	d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("jty")})
	d.wantCalls("terminate sb-0002")
	d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("s12")})
	d.send(keyMsg("enter"))
	d.wantCalls("terminate sb-0002", "resize 12")
	d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("/ab")})
	if d.m.filter != "ab" {
		t.Fatalf("filter %q", d.m.filter)
	}
	d.send(keyMsg("esc"))
	d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("qc")})
	if !d.quit {
		t.Fatal("q did not quit")
	}
	d.wantCalls("terminate sb-0002", "resize 12")
	// A paste into the filter is text.
	d = newDriver(t, Options{})
	d.keys("/")
	d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("sb-0003"), Paste: true})
	if d.m.filter != "sb-0003" || len(d.m.tbl.rows) != 1 {
		t.Fatalf("pasted filter %q, %d rows", d.m.filter, len(d.m.tbl.rows))
	}
}

// TestInputEditing pins the two one-line inputs (bubbles' textinput): the
// editing keys, the char limit, text typed in one read, a static cursor (no
// command, so nothing blinks), the placeholder and a long filter's tail.
func TestInputEditing(t *testing.T) {
	line := func(d *driver) string {
		t.Helper()
		for _, l := range strings.Split(d.view(), "\n") {
			if strings.HasPrefix(l, "/ ") || strings.HasPrefix(l, "target: ") {
				return l
			}
		}
		t.Fatalf("no input line:\n%s", d.view())
		return ""
	}
	noCmd := func(d *driver, k tea.KeyMsg) {
		t.Helper()
		next, cmd := d.m.Update(k)
		if cmd != nil {
			t.Fatalf("key %q returned a command", k)
		}
		d.m = next.(Model)
	}

	d := newDriver(t, Options{})
	noCmd(d, keyMsg("/"))
	for _, k := range []string{"s", "b", "space", "0", "0", "0"} {
		noCmd(d, keyMsg(k))
	}
	if d.m.filter != "sb 000" {
		t.Fatalf("typed filter %q", d.m.filter)
	}
	if l := line(d); !strings.HasPrefix(l, "/ sb 000   0 of 3") {
		t.Fatalf("filter line %q", l)
	}
	d.send(keyMsg("backspace"))
	d.send(tea.KeyMsg{Type: tea.KeyCtrlW})
	if d.m.filter != "sb " {
		t.Fatalf("after backspace, ctrl+w: %q", d.m.filter)
	}
	d.send(tea.KeyMsg{Type: tea.KeyCtrlU})
	if d.m.filter != "" {
		t.Fatalf("after ctrl+u: %q", d.m.filter)
	}
	// Text read at once is text, even when it spells a key's name.
	d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("end")})
	if d.m.filter != "end" {
		t.Fatalf("typed %q as one read: filter %q", "end", d.m.filter)
	}
	d.send(tea.KeyMsg{Type: tea.KeyCtrlU})
	long := strings.Repeat("a", 20) + strings.Repeat("b", 50)
	d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(long), Paste: true})
	if d.m.filter != long[:64] {
		t.Fatalf("pasted %d runes: filter %q (limit 64)", len(long), d.m.filter)
	}
	if l, want := line(d), "/ "+long[14:64]+" "; !strings.HasPrefix(l, want) {
		t.Fatalf("long filter line %q, want its tail %q", l, want)
	}
	d.keys("esc")

	noCmd(d, keyMsg("s"))
	if l := line(d); !strings.HasPrefix(l, "target:") || strings.Count(l, "0 to 100") != 1 {
		t.Fatalf("empty prompt line %q: want the range said once", l)
	}
	d.typeText("12345678")
	if v := d.m.prompt.in.Value(); v != "123456" {
		t.Fatalf("prompt holds %q, want 6 runes", v)
	}
	d.keys("esc")
	d.wantCalls()
}

func TestCosmeticDefects(t *testing.T) {
	t.Run("the banner stops counting down once its sandbox is terminated", func(t *testing.T) {
		d := newDriver(t, Options{})
		d.keys("c")
		d.wantScreen("✓ claimed sb-0001", "4:00 left", "URL sent to clipboard")
		d.m.onEvents([]pool.Event{{Kind: pool.EventTerminated, SandboxID: "sb-0001", Reason: pool.ReasonUser, Message: "sb-0001 terminated (user)"}})
		d.wantScreen("✓ claimed sb-0001", "terminated (user)")
		d.wantNotScreen("left ·")
	})
	t.Run("the same target asks the engine nothing", func(t *testing.T) {
		d := newDriver(t, Options{})
		d.keys("s", "3", "enter")
		d.wantCalls()
		d.wantScreen("the target is already 3")
	})
	t.Run("y sends the whole id, and says so without claiming it arrived", func(t *testing.T) {
		long := "sb-000005fakefa1b2c3d4e5f6a7b8c9d0e"
		sb := ready(1, time.Minute)
		sb.ID = long
		d := newDriver(t, Options{}, sb, ready(2, time.Minute))
		d.keys("y")
		if len(d.clip) != 1 || d.clip[0] != long {
			t.Fatalf("clipboard got %q", d.clip)
		}
		d.wantScreen("sent to clipboard")
		d.wantNotScreen("copied")
		// Whole where it fits (the URL column gives way, and says so)...
		d.wantScreen("▸ "+long+" ", "URLs: enter")
		// ...and cut with … where it does not.
		d.send(tea.WindowSizeMsg{Width: 60, Height: 24})
		d.wantScreen("▸ sb-000005fakefa1b… ", "URLs: enter")
		d.send(tea.WindowSizeMsg{Width: 80, Height: 24})
		d.keys("enter")
		d.wantScreen("id        " + long)
	})
	t.Run("at 60 columns the table says where the URLs went", func(t *testing.T) {
		sb := ready(1, time.Minute)
		sb.ID = "sb-0b9e6f13a8c4"
		d := newDriver(t, Options{}, sb)
		d.send(tea.WindowSizeMsg{Width: 60, Height: 24})
		d.wantScreen("▸ sb-0b9e6f13a8c4 ", "URLs: enter")
	})
}

// Issue 10 case 3: a viewer that took over binds the API later; the header
// follows the live status instead of the one at start.
func TestHeaderFollowsTheAPIStatus(t *testing.T) {
	status := "off (127.0.0.1:7780 in use; retrying every 1s)"
	d := newDriver(t, Options{APIAddr: status, APIStatus: func() string { return status }})
	d.wantScreen("api off (127.0.0.1:7780 in use")
	status = "127.0.0.1:7780"
	d.refresh()
	d.wantScreen("api 127.0.0.1:7780")
	d.wantNotScreen("in use")
}

// TestSandboxLeavingThePoolIsShown: a store change that takes a sandbox out
// of the pool (it had ended; another claim holds it) gets its line in the
// event log; a store poll's bare "changed" does not.
func TestSandboxLeavingThePoolIsShown(t *testing.T) {
	d := newDriver(t, Options{})
	d.m.onEvents([]pool.Event{
		{Kind: pool.EventStoreChanged},
		{Kind: pool.EventStoreChanged, SandboxID: "sb-0002", Message: "sb-0002 had ended already: out of the pool"},
	})
	d.wantScreen("sb-0002 had ended already: out of the pool")
	for _, l := range d.m.log {
		if l.id == "" && strings.Contains(l.text, "store") {
			t.Errorf("a bare store change has a line: %q", l.text)
		}
	}
}
