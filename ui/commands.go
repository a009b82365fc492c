package ui

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Messages. Results of engine calls carry the sequence number of their
// request: commands finish out of order and stale results are dropped.
type (
	subscribedMsg struct {
		events <-chan pool.Event
		cancel func()
	}
	eventsMsg       struct{ events []pool.Event }
	eventsClosedMsg struct{}
	snapshotMsg     struct {
		seq  int
		snap pool.Snapshot
	}
	claimDoneMsg struct {
		seq     int
		claimed pool.Claimed
		err     error
	}
	resizeDoneMsg struct {
		seq, n int
		err    error
	}
	terminateDoneMsg struct {
		seq int
		id  string
		err error
	}
	maintainDoneMsg struct {
		seq    int
		manual bool // r, rather than the UI's own ticker
		err    error
	}
	copyDoneMsg struct {
		seq int
		id  string // the sandbox id copied; "" for the claim banner's URL
		err error
	}
	clockTickMsg    struct{} // the 1 s countdown tick
	animTickMsg     struct{} // spinner frames, while something is being created
	maintainTickMsg struct{} // the UI's maintenance ticker
)

// eventBuffer is the subscription's buffer; eventBatch is how many buffered
// events one message carries at most, so a burst costs one redraw.
const (
	eventBuffer = 512
	eventBatch  = 256
)

// lifecycle owns what the dashboard starts: the context of its engine calls,
// the event subscription, and a count of engine calls in flight so that Run
// can wait for them before returning. It is shared by every copy of Model.
type lifecycle struct {
	ctx    context.Context
	cancel context.CancelFunc

	// noTimers turns the tickers off, for tests that drive Update by hand.
	noTimers bool
	// suspend is what ctrl+z runs: set by Run (see suspendOnStop); unset,
	// Bubble Tea's own tea.Suspend.
	suspend atomic.Pointer[tea.Cmd]

	mu      sync.Mutex
	stopped bool
	unsub   func()
	calls   sync.WaitGroup
}

func newLifecycle(parent context.Context) *lifecycle {
	ctx, cancel := context.WithCancel(parent)
	return &lifecycle{ctx: ctx, cancel: cancel}
}

func (l *lifecycle) suspendCmd() tea.Cmd {
	if c := l.suspend.Load(); c != nil {
		return *c
	}
	return tea.Suspend
}

// begin registers an engine call; false once stopped (the call is skipped).
func (l *lifecycle) begin() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return false
	}
	l.calls.Add(1)
	return true
}

func (l *lifecycle) end() { l.calls.Done() }

func (l *lifecycle) setUnsub(cancel func()) {
	l.mu.Lock()
	stopped := l.stopped
	if !stopped {
		l.unsub = cancel
	}
	l.mu.Unlock()
	if stopped {
		cancel()
	}
}

// stop cancels calls in flight and the subscription; idempotent.
func (l *lifecycle) stop() {
	l.mu.Lock()
	l.stopped = true
	unsub := l.unsub
	l.unsub = nil
	l.mu.Unlock()
	l.cancel()
	if unsub != nil {
		unsub()
	}
}

// wait waits up to d for engine calls in flight; call after stop.
func (l *lifecycle) wait(d time.Duration) bool {
	done := make(chan struct{})
	go func() { l.calls.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// call runs f as an engine call in a Cmd, tracked by the lifecycle.
func (l *lifecycle) call(f func(ctx context.Context) tea.Msg) tea.Cmd {
	return func() tea.Msg {
		if !l.begin() {
			return nil
		}
		defer l.end()
		return f(l.ctx)
	}
}

// after delivers msg after d (real time), or nothing once the dashboard
// stops. Each ticker is re-armed only in its own handler.
func (l *lifecycle) after(d time.Duration, msg tea.Msg) tea.Cmd {
	if l.noTimers {
		return nil
	}
	ctx := l.ctx
	return func() tea.Msg {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return msg
		case <-ctx.Done():
			return nil
		}
	}
}

// untilNextSecond aligns the countdown tick to the wall clock.
func untilNextSecond() time.Duration {
	now := time.Now()
	return now.Truncate(time.Second).Add(time.Second).Sub(now)
}

func subscribeCmd(l *lifecycle, eng Engine) tea.Cmd {
	return l.call(func(context.Context) tea.Msg {
		ch, cancel := eng.Subscribe(eventBuffer)
		// Registered here, not when the message is handled: a dashboard
		// that quits first never sees it, and the subscription would stay.
		l.setUnsub(cancel)
		return subscribedMsg{events: ch, cancel: cancel}
	})
}

// listenCmd waits for the next events and returns them in one batch; the
// handler re-arms it.
func listenCmd(l *lifecycle, ch <-chan pool.Event) tea.Cmd {
	ctx := l.ctx
	return func() tea.Msg {
		var first pool.Event
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case first, ok = <-ch:
			if !ok {
				return eventsClosedMsg{}
			}
		}
		batch := []pool.Event{first}
		for len(batch) < eventBatch {
			select {
			case e, ok := <-ch:
				if !ok {
					return eventsMsg{events: batch}
				}
				batch = append(batch, e)
			default:
				return eventsMsg{events: batch}
			}
		}
		return eventsMsg{events: batch}
	}
}

func snapshotCmd(l *lifecycle, eng Engine, seq int) tea.Cmd {
	return l.call(func(context.Context) tea.Msg {
		return snapshotMsg{seq: seq, snap: eng.Snapshot()}
	})
}

// dashboardClaim is how the dashboard claims: health checked, as "dashboard".
var dashboardClaim = pool.ClaimOptions{CheckHealth: true, By: "dashboard"}

func claimCmd(l *lifecycle, eng Engine, seq int) tea.Cmd {
	return l.call(func(ctx context.Context) tea.Msg {
		c, err := eng.Claim(ctx, dashboardClaim)
		return claimDoneMsg{seq: seq, claimed: c, err: err}
	})
}

func resizeCmd(l *lifecycle, eng Engine, seq, n int) tea.Cmd {
	return l.call(func(ctx context.Context) tea.Msg {
		return resizeDoneMsg{seq: seq, n: n, err: eng.Resize(ctx, n)}
	})
}

func terminateCmd(l *lifecycle, eng Engine, seq int, id string) tea.Cmd {
	return l.call(func(ctx context.Context) tea.Msg {
		return terminateDoneMsg{seq: seq, id: id, err: eng.Terminate(ctx, id)}
	})
}

func maintainCmd(l *lifecycle, eng Engine, seq int, manual bool) tea.Cmd {
	return l.call(func(ctx context.Context) tea.Msg {
		return maintainDoneMsg{seq: seq, manual: manual, err: eng.Maintain(ctx)}
	})
}

func copyCmd(clip func(string) error, seq int, id, text string) tea.Cmd {
	return func() tea.Msg {
		return copyDoneMsg{seq: seq, id: id, err: clip(text)}
	}
}
