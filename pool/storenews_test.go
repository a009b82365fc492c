package pool_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
)

// eventsOf collects the controller's events of some kinds.
func eventsOf(t *testing.T, c *pool.Controller, kinds ...pool.EventKind) func() []pool.Event {
	t.Helper()
	ch, cancel := c.Subscribe(1024)
	t.Cleanup(cancel)
	var got []pool.Event
	return func() []pool.Event {
		for {
			select {
			case e, ok := <-ch:
				if !ok {
					return got
				}
				for _, k := range kinds {
					if e.Kind == k {
						got = append(got, e)
					}
				}
			default:
				return got
			}
		}
	}
}

// TestStoreNewsIsSaid: what another process, or a person, does to the
// pool's store reaches the controller's events (run's log) in one line
// each: a target set elsewhere (the controller acts on it silently
// otherwise), a store lost with how many sandboxes it held; and once only.
func TestStoreNewsIsSaid(t *testing.T) {
	h := newHarness(t, nil)
	seen := eventsOf(t, h.c, pool.EventResized, pool.EventStoreLost)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.c.Serve(ctx, false) }()
	defer func() { cancel(); <-done }()
	testkit.Eventually(t, waitLong, "filled to 3", func() bool { return len(h.pooledIDs()) == 3 && h.c.Creating() == 0 })
	if err := h.st.SetTarget(context.Background(), 5); err != nil { // as a viewer's + would
		t.Fatal(err)
	}
	var said []pool.Event
	testkit.Eventually(t, waitLong, "the resize said", func() bool {
		h.clk.Advance(100 * time.Millisecond)
		said = seen()
		return len(said) > 0
	})
	if e := said[0]; e.Kind != pool.EventResized || e.Message != "target 3 -> 5, set by another process" || !e.Remote {
		t.Fatalf("event %+v, want the resize set elsewhere", e)
	}
	testkit.Eventually(t, waitLong, "5 pooled", func() bool { h.clk.Advance(100 * time.Millisecond); return len(h.pooledIDs()) == 5 })

	h.st.Lose()
	testkit.Eventually(t, waitLong, "the loss said", func() bool {
		h.clk.Advance(100 * time.Millisecond)
		said = seen()
		return len(said) > 1
	})
	if e := said[1]; e.Kind != pool.EventStoreLost || !strings.HasPrefix(e.Message, "the pool's store was lost (moved away, deleted or cleared): the 5 sandboxes this process knew pooled are adopted again") {
		t.Fatalf("event %+v, want the loss", e)
	}
	testkit.Eventually(t, waitLong, "5 pooled again", func() bool { h.clk.Advance(100 * time.Millisecond); return len(h.pooledIDs()) == 5 })
	for range 20 {
		h.clk.Advance(100 * time.Millisecond)
	}
	h.c.WaitIdle(context.Background())
	if got := seen(); len(got) != 2 {
		t.Fatalf("events %+v: each said once", got)
	}
}

// TestResizeSaysTheStoredTargetItChanged: a resize before anything was
// read (maintain --size 3 on a pool at 2) says the pool's old target, not
// the flag's ("target 3 -> 3" was journaled, and shown by every viewer).
func TestResizeSaysTheStoredTargetItChanged(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 3 })
	if err := h.st.SetTarget(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	seen := eventsOf(t, h.c, pool.EventResized)
	if err := h.c.Resize(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	if got := seen(); len(got) != 1 || got[0].Message != "target 2 -> 3" {
		t.Fatalf("events %+v, want one saying target 2 -> 3", got)
	}
}
