package ui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/aymanbagabas/go-osc52/v2"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Options shapes the dashboard.
type Options struct {
	// ReadOnly drops every key that changes the pool (claim, +, -, s, t, r)
	// and says so in the header. The dashboard then never calls Claim,
	// Resize, Terminate or Maintain.
	ReadOnly bool
	// APIAddr is the address the HTTP API listens on, shown in the header;
	// empty shows "api off".
	APIAddr string
	// APIStatus, when set, is the API's address or why it is off now, read
	// at each redraw instead of APIAddr: a dashboard whose port was in use
	// binds it later (a viewer taking over) and the header must say so.
	APIStatus func() string
	// Clock is where "now" comes from (countdowns, ages, spinner frames);
	// nil means the real clock. Redraws are still scheduled in real time
	// (1 s countdown tick, the maintenance ticker): with a fake clock the
	// screen stands still until the clock is advanced.
	Clock clockwork.Clock
	// Clipboard receives the URL of a claimed sandbox. nil means an OSC 52
	// escape sequence written to Output (the terminal's clipboard).
	Clipboard func(text string) error
	// Input and Output default to the terminal (stdin and stdout).
	Input  io.Reader
	Output io.Writer
	// Logs reads a sandbox's log for the l view (the backend's
	// pool.LogReader); nil says "no log for this backend".
	Logs pool.LogReader
	// Plain prints the pool's state and events as lines instead of drawing
	// a screen: for TERM=dumb, or output that is not a terminal. It changes
	// nothing and ends with ctx.
	Plain bool
	// Inline keeps the dashboard in the normal screen instead of the
	// alternate screen.
	Inline bool
}

// shutdownWait bounds how long Run waits, after the program ends, for engine
// calls still in flight (their context is cancelled by then).
const shutdownWait = 3 * time.Second

// Run shows the dashboard over an engine that is already serving and
// returns when the user quits (q or ctrl+c), when ctx ends, or on a terminal
// error. A quit or a cancelled ctx returns nil. By the time Run returns, no
// engine call made by the dashboard is still running (bounded by a few
// seconds), so the caller may close the engine right after. Sandboxes keep
// running.
//
// Maintenance: when the engine runs its own loop (Snapshot().Role is
// "controller", as after pool.Controller.Serve) the header counts down to
// its NextPass and the dashboard never runs passes of its own; as a viewer
// it leaves them to the holder. Only when no loop runs in this process (Role
// "") does the dashboard's ticker call Maintain every MaintainEvery. r always
// asks for a pass now (except as a viewer).
//
//	go ctl.Serve(ctx, true) // takes the lease, or watches as a viewer
//	err := ui.Run(ctx, ctl, ui.Options{ReadOnly: ro, APIAddr: listen})
//	ctl.Close()
func Run(ctx context.Context, eng Engine, opts Options) error {
	out := opts.Output
	if out == nil {
		out = os.Stdout
	}
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Plain {
		return runPlain(ctx, eng, opts, out)
	}
	if opts.Clipboard == nil {
		opts.Clipboard = osc52Clipboard(out)
	}
	setBackground() // before any style: no terminal query delays the first frame
	m := newModel(ctx, eng, opts)
	popts := []tea.ProgramOption{tea.WithContext(ctx), tea.WithOutput(out)}
	if opts.Input != nil {
		popts = append(popts, tea.WithInput(opts.Input))
	}
	if !opts.Inline {
		popts = append(popts, tea.WithAltScreen())
	}
	p := tea.NewProgram(m, popts...)
	suspend, stopSuspend := suspendOnStop(p)
	m.life.suspend.Store(&suspend)
	_, err := p.Run()
	stopSuspend()
	m.life.stop()
	m.life.wait(shutdownWait)
	switch {
	case err == nil, errors.Is(err, tea.ErrInterrupted):
		return nil
	case ctx.Err() != nil && errors.Is(err, tea.ErrProgramKilled):
		return nil
	}
	return fmt.Errorf("dashboard: %w", err)
}

// osc52Clipboard copies text to the terminal's clipboard with an OSC 52
// escape sequence, which works over SSH too.
func osc52Clipboard(w io.Writer) func(string) error {
	return func(text string) error {
		_, err := osc52.New(text).WriteTo(w)
		return err
	}
}
