package ui

import (
	"fmt"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/jonboulle/clockwork"
	"github.com/muesli/termenv"

	"github.com/sandboxpool/sandboxpool/pool"
)

// BenchmarkView draws one frame of a pool of n sandboxes (targets: 1,000 at
// 200x60 within 5 ms, 20 within 0.5 ms). The clock moves a second per frame
// so that every countdown is formatted anew.
func BenchmarkView(b *testing.B) {
	for _, bc := range []struct {
		n, w, h int
		colour  bool
	}{{1000, 200, 60, false}, {1000, 200, 60, true}, {20, 200, 60, false}, {20, 200, 60, true}, {20, 80, 24, true}} {
		profile := "ascii"
		if bc.colour {
			profile = "truecolor"
		}
		b.Run(fmt.Sprintf("%d@%dx%d/%s", bc.n, bc.w, bc.h, profile), func(b *testing.B) {
			if bc.colour { // styles are built in NewModel, with the profile of the moment
				lipgloss.SetColorProfile(termenv.TrueColor)
				defer lipgloss.SetColorProfile(termenv.Ascii)
			}
			mm := benchModel(b, bc.n, bc.w, bc.h)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				mm.now = t0.Add(time.Duration(i%200) * time.Second)
				_ = mm.View()
			}
		})
	}
}

// BenchmarkSnapshot applies a snapshot of 1,000 sandboxes (done at most a
// few times a second: on each tick and after events).
func BenchmarkSnapshot(b *testing.B) {
	mm := benchModel(b, 1000, 200, 60)
	snap := mm.eng.Snapshot()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		next, _ := mm.Update(snapshotMsg{seq: 10 + i, snap: snap})
		mm = next.(Model)
		mm.snapInFlight = false
	}
}

func benchModel(b *testing.B, n, w, h int) Model {
	clk := clockwork.NewFakeClockAt(t0)
	f := newFakeEngine(clk)
	states := []pool.State{pool.StateReady, pool.StateReady, pool.StateClaimed, pool.StateWarming, pool.StateCreating, pool.StateExpiring, pool.StateUnhealthy}
	f.set(func(s *pool.Snapshot) {
		s.Target = n
		for i := range n {
			sb := withState(ready(i+1, time.Duration(i%300)*time.Second), states[i%len(states)])
			sb.ID = fmt.Sprintf("sb-%012x", i*7919)
			s.Sandboxes = append(s.Sandboxes, sb)
		}
	})
	m := NewModel(f, Options{Clock: clk, APIAddr: "127.0.0.1:7780"})
	m.life.noTimers = true
	b.Cleanup(m.life.stop)
	var tm tea.Model = m
	tm, _ = tm.Update(tea.WindowSizeMsg{Width: w, Height: h})
	tm, _ = tm.Update(snapshotMsg{seq: 2, snap: f.Snapshot()})
	tm, _ = tm.Update(keyMsg("j"))
	return tm.(Model)
}
