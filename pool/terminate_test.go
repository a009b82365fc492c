package pool_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// slowTerminate holds every Terminate until gate closes, counting the calls.
type slowTerminate struct {
	*pooltest.Backend
	calls atomic.Int32
	gate  chan struct{}
}

func (b *slowTerminate) Terminate(ctx context.Context, id string) error {
	b.calls.Add(1)
	<-b.gate
	return b.Backend.Terminate(ctx, id)
}

// A sandbox still listed while its termination is in flight is not
// terminated again by each pass (on Modal two concurrent Terminate calls of
// one sandbox raced inside the SDK), nor counted twice.
func TestOneTerminateCallPerSandbox(t *testing.T) {
	clk := clockwork.NewFakeClockAt(t0)
	cfg := pool.DefaultConfig()
	cfg.Size = 1
	be := &slowTerminate{Backend: pooltest.NewBackend(clk), gate: make(chan struct{})}
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: pooltest.NewStore(), Clock: clk, Checker: be.Checker, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	var terminated atomic.Int32
	c.Observe(func(e pool.Event) {
		if e.Kind == pool.EventTerminated {
			terminated.Add(1)
		}
	})
	ctx := context.Background()
	if err := c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, waitLong, "one ready", func() bool { return len(be.Live()) == 1 && c.Creating() == 0 })
	id := be.Live()[0]
	done := make(chan error, 1)
	go func() { done <- c.Terminate(ctx, id) }()
	testkit.Eventually(t, waitLong, "the termination in flight", func() bool { return be.calls.Load() == 1 })
	for range 2 { // each pass finds it still listed, ours and doomed
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	again := make(chan error, 1)
	go func() { again <- c.TerminateAs(ctx, id, "cli") }() // a user asking again meanwhile
	testkit.Eventually(t, waitLong, "the user's terminate answered or waiting", func() bool { return len(again) == 1 || be.calls.Load() > 1 })
	close(be.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-again; err != nil {
		t.Fatalf("a second terminate of a sandbox on its way out: %v", err)
	}
	c.Close() // waits for every termination started
	if n := be.calls.Load(); n != 1 {
		t.Fatalf("Terminate called %d times for one sandbox, want 1", n)
	}
	if n := terminated.Load(); n != 1 {
		t.Fatalf("%d terminated events for one sandbox, want 1", n)
	}
}

// A store that loses its target (moved away, a Modal queue cleared) keeps
// the pool at the target last known, not the configured size (chaos seed
// 208 on Modal: back to the default 3 from 2).
func TestLostStoreKeepsTheTarget(t *testing.T) {
	h := newHarness(t, nil) // configured size 3
	h.pass()
	testkit.Eventually(t, waitLong, "3 ready", func() bool { return len(h.pooledIDs()) == 3 })
	if err := h.st.SetTarget(context.Background(), 2); err != nil { // another process
		t.Fatal(err)
	}
	h.pass()
	if got := h.c.Target(); got != 2 {
		t.Fatalf("target %d after another process set 2", got)
	}
	h.st.Lose()
	before := h.be.CreateCalls()
	h.pass()
	if got := h.c.Target(); got != 2 {
		t.Fatalf("target %d after the store was lost, want 2 as last known", got)
	}
	// The 2 it held still run: adopted again, nothing created (a fallback
	// to the configured 3 would create one).
	if n := h.be.CreateCalls() - before; n != 0 {
		t.Fatalf("%d creations after the store was lost, want 0: its 2 live sandboxes are adopted again", n)
	}
	if got := len(h.pooledIDs()); got != 2 {
		t.Fatalf("%d pooled after the store was lost, want its 2 adopted again", got)
	}
	h.st.Lose() // again, at once: what was just adopted was pooled there too
	h.pass()
	if n := h.be.CreateCalls() - before; n != 0 || len(h.pooledIDs()) != 2 {
		t.Fatalf("after a second loss: %d created, %d pooled; want 0 and 2", n, len(h.pooledIDs()))
	}
}
