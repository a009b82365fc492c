package ui

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"

	"github.com/sandboxpool/sandboxpool/pool"
)

// darkBackground guesses the terminal's background without asking it: the
// OSC 11 query lipgloss would send blocks the first frame for seconds on a
// terminal that never answers. COLORFGBG ("15;0") says it when set; dark
// is the common case otherwise.
func darkBackground() bool {
	v := os.Getenv("COLORFGBG")
	if i := strings.LastIndexByte(v, ';'); i >= 0 {
		if bg, err := strconv.Atoi(v[i+1:]); err == nil {
			return bg < 7 || bg == 8
		}
	}
	return true
}

// setBackground fixes lipgloss's idea of the background before any style
// is built, so that no style ever queries the terminal.
func setBackground() { lipgloss.SetHasDarkBackground(darkBackground()) }

// plainEvery is how often the plain dashboard looks at the pool.
const plainEvery = time.Second

// runPlain is the dashboard for a terminal that cannot take a full screen
// (TERM=dumb, or output that is not a terminal): the pool's state in one
// line whenever it changes, and its events as lines, until ctx ends. It
// changes nothing.
func runPlain(ctx context.Context, eng Engine, opts Options, out io.Writer) error {
	clk := opts.Clock
	events, cancel := eng.Subscribe(eventBuffer)
	defer cancel()
	tick := time.NewTicker(plainEvery)
	defer tick.Stop()
	last := ""
	summary := func() {
		s := eng.Snapshot()
		var b strings.Builder
		fmt.Fprintf(&b, "sandboxpool %s/%s: target %d", s.Backend, s.Pool, s.Target)
		for _, st := range pool.States {
			if n := s.Counts[st]; n > 0 || st == pool.StateReady {
				fmt.Fprintf(&b, ", %s %d", st, n)
			}
		}
		c := s.Stats
		fmt.Fprintf(&b, "; claims %d warm, %d waited, %d failed", c.ClaimsWarm, c.ClaimsWaited, c.ClaimsFailed)
		switch {
		case s.Role == "viewer" && s.LeaseHolder != "":
			b.WriteString("; maintained by " + oneLine(s.LeaseHolder))
		case s.Role == "viewer":
			b.WriteString("; no controller runs")
		}
		if s.LastError != "" {
			b.WriteString("; error: " + oneLine(s.LastError))
		}
		if l := b.String(); l != last {
			last = l
			fmt.Fprintln(out, clockTime(clk.Now())+"  "+l)
		}
	}
	summary()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-events:
			if !ok {
				return nil
			}
			if e.Routine() {
				continue
			}
			if e.Time.IsZero() {
				e.Time = clk.Now()
			}
			fmt.Fprintln(out, clockTime(e.Time)+"  "+oneLine(eventText(e)))
		case <-tick.C:
			summary()
		}
	}
}
