package ui

import (
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/pool"
)

// driver runs the model by hand, without a program: it sends a message,
// runs the commands it returns (engine calls answer at once with the fake)
// and feeds their results back. Timers are off and nothing subscribes, so
// every command returns promptly.
type driver struct {
	t    *testing.T
	clk  *clockwork.FakeClock
	f    *fakeEngine
	m    Model
	quit bool
	clip []string
}

func newDriver(t *testing.T, opts Options, rows ...pool.Sandbox) *driver {
	t.Helper()
	clk := clockwork.NewFakeClockAt(t0)
	f := newFakeEngine(clk)
	if rows == nil {
		rows = []pool.Sandbox{ready(1, time.Minute), ready(2, time.Minute), ready(3, time.Minute)}
	}
	f.set(func(s *pool.Snapshot) { s.Sandboxes = rows })
	d := &driver{t: t, clk: clk, f: f}
	opts.Clock = clk
	opts.Clipboard = func(s string) error { d.clip = append(d.clip, s); return nil }
	d.m = NewModel(f, opts)
	d.m.life.noTimers = true
	t.Cleanup(d.m.life.stop)
	d.send(tea.WindowSizeMsg{Width: 80, Height: 24})
	d.send(snapshotMsg{seq: 1, snap: f.Snapshot()})
	return d
}

func (d *driver) send(msg tea.Msg) {
	d.t.Helper()
	next, cmd := d.m.Update(msg)
	d.m = next.(Model)
	d.run(cmd, 0)
}

func (d *driver) run(cmd tea.Cmd, depth int) {
	d.t.Helper()
	if cmd == nil {
		return
	}
	if depth > 50 {
		d.t.Fatal("commands keep producing commands")
	}
	done := make(chan tea.Msg, 1)
	go func() { done <- cmd() }()
	var msg tea.Msg
	select {
	case msg = <-done:
	case <-time.After(5 * time.Second):
		d.t.Fatal("a command blocked")
	}
	switch msg := msg.(type) {
	case nil:
	case tea.BatchMsg:
		for _, c := range msg {
			d.run(c, depth+1)
		}
	case tea.QuitMsg:
		d.quit = true
	default:
		next, c := d.m.Update(msg)
		d.m = next.(Model)
		d.run(c, depth+1)
	}
}

// keys types each key: names like "enter", "esc", "up", or single runes.
func (d *driver) keys(keys ...string) {
	d.t.Helper()
	for _, k := range keys {
		d.send(keyMsg(k))
	}
}

func keyMsg(k string) tea.KeyMsg {
	switch k {
	case "enter":
		return tea.KeyMsg{Type: tea.KeyEnter}
	case "esc":
		return tea.KeyMsg{Type: tea.KeyEsc}
	case "up":
		return tea.KeyMsg{Type: tea.KeyUp}
	case "down":
		return tea.KeyMsg{Type: tea.KeyDown}
	case "backspace":
		return tea.KeyMsg{Type: tea.KeyBackspace}
	case "ctrl+c":
		return tea.KeyMsg{Type: tea.KeyCtrlC}
	case "space":
		return tea.KeyMsg{Type: tea.KeySpace, Runes: []rune{' '}}
	}
	return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(k)}
}

// typeText types s rune by rune.
func (d *driver) typeText(s string) {
	d.t.Helper()
	for _, r := range s {
		d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}})
	}
}

// refresh delivers a new snapshot of the fake, as a tick would.
func (d *driver) refresh() {
	d.t.Helper()
	d.m.seq++
	d.send(snapshotMsg{seq: d.m.seq, snap: d.f.Snapshot()})
}

func (d *driver) view() string { return d.m.View() }

func (d *driver) wantCalls(want ...string) {
	d.t.Helper()
	got := d.f.Calls()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		d.t.Fatalf("engine calls:\n  got  %q\n  want %q", got, want)
	}
}

func (d *driver) wantScreen(subs ...string) {
	d.t.Helper()
	v := d.view()
	for _, s := range subs {
		if !strings.Contains(v, s) {
			d.t.Fatalf("screen lacks %q:\n%s", s, v)
		}
	}
}

func (d *driver) wantNotScreen(subs ...string) {
	d.t.Helper()
	v := d.view()
	for _, s := range subs {
		if strings.Contains(v, s) {
			d.t.Fatalf("screen shows %q:\n%s", s, v)
		}
	}
}
