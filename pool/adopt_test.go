package pool_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// lossyStore takes every Put but one sandbox's, which it acknowledges and
// forgets: on Modal, a Put of a sandbox whose bid a claimer won before it
// died, its claim record never written.
type lossyStore struct {
	*pooltest.Store
	drop string
	puts atomic.Int32
}

func (s *lossyStore) Put(ctx context.Context, r pool.Ref) error {
	if r.ID == s.drop {
		s.puts.Add(1)
		return nil
	}
	return s.Store.Put(ctx, r)
}

// A lost sandbox whose adoption does not stick is adopted once, then is an
// orphan: not "adopted" again at every pass, never pooled, until it is too
// short (found by the Modal chaos storm, seed 101).
func TestAdoptionThatDoesNotStickIsNotLooped(t *testing.T) {
	clk := clockwork.NewFakeClockAt(t0)
	cfg := pool.DefaultConfig()
	cfg.Size = 0
	be := pooltest.NewBackend(clk)
	ctx := context.Background()
	lost, err := be.Create(ctx, cfg.TTL)
	if err != nil {
		t.Fatal(err)
	}
	st := &lossyStore{Store: pooltest.NewStore(), drop: lost.ID}
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk, Checker: be.Checker, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	clk.Advance(time.Minute) // past the adoption grace
	for range 4 {
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		c.WaitIdle(ctx)
	}
	if n := st.puts.Load(); n != 1 {
		t.Fatalf("adopted %d times in 4 passes, want once", n)
	}
	testkit.Eventually(t, waitLong, "the orphan terminated", func() bool { return slices.Contains(be.Terminated(), lost.ID) })
}
