package pool_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/local"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// listCounter is the local backend, noting whether each list of changes
// came back full.
type listCounter struct {
	*local.Backend
	mu    sync.Mutex
	fulls []bool
}

func (l *listCounter) ListChanges(ctx context.Context, since pool.ListCursor) (pool.Listing, error) {
	got, err := l.Backend.ListChanges(ctx, since)
	l.mu.Lock()
	l.fulls = append(l.fulls, got.Full)
	l.mu.Unlock()
	return got, err
}

func (l *listCounter) lastFull() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.fulls) > 0 && l.fulls[len(l.fulls)-1]
}

// TestClaimedSweptByChanges: with a backend that lists changes (the local
// agent), a regular pass carries the unclaimed sandboxes only, yet a
// claimed sandbox that dies leaves the store at the next pass, a claimed
// one still running is never pooled again after the store is lost, and a
// full list still comes every sweepEvery.
func TestClaimedSweptByChanges(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lb, err := local.New(local.Options{Pool: "sweep", StateDir: dir, TermGrace: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	agent, err := lb.AgentPid(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = lb.Shutdown(sctx)
		// Gone before the state dir is removed: it writes there as it exits.
		testkit.Eventually(t, 20*time.Second, "the agent gone", func() bool { return !testkit.Alive(agent) })
	})
	be := &listCounter{Backend: lb}
	st := pooltest.NewStore()
	clk := clockwork.NewFakeClock()
	cfg := pool.DefaultConfig()
	cfg.Pool, cfg.Size, cfg.TTL, cfg.UseDuration = "sweep", 2, time.Hour, time.Minute
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pass := func() {
		t.Helper()
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		c.WaitIdle(ctx)
	}
	pooled := func() []pool.Entry {
		s, _ := st.Load(ctx)
		return s.Pooled()
	}
	claimedIDs := func() []string {
		s, _ := st.Load(ctx)
		var out []string
		for _, e := range s.Entries {
			if e.Claimed() {
				out = append(out, e.ID)
			}
		}
		slices.Sort(out)
		return out
	}
	pass() // a full list, and the fill
	if !be.lastFull() {
		t.Fatal("the first pass did not list in full")
	}
	pass()
	if n := len(pooled()); n != 2 {
		t.Fatalf("%d pooled, want 2", n)
	}
	dies, err := c.Claim(ctx, pool.ClaimOptions{By: "test"})
	if err != nil {
		t.Fatal(err)
	}
	lives, err := c.Claim(ctx, pool.ClaimOptions{By: "test"})
	if err != nil {
		t.Fatal(err)
	}
	pass()
	if be.lastFull() {
		t.Fatal("a regular pass listed every sandbox, claimed ones included")
	}
	if err := lb.Kill(ctx, dies.ID); err != nil {
		t.Fatal(err)
	}
	pass()
	if be.lastFull() {
		t.Fatal("a regular pass listed in full")
	}
	if got := claimedIDs(); !slices.Equal(got, []string{lives.ID}) {
		t.Fatalf("claimed entries %v after %s died, want [%s]", got, dies.ID, lives.ID)
	}
	// The store is lost: the claimed sandbox still running is never pooled.
	st.Lose()
	pass()
	pass()
	for _, e := range pooled() {
		if e.ID == lives.ID {
			t.Fatalf("claimed %s pooled again after the store was lost", lives.ID)
		}
	}
	// A sweep comes in bounded time.
	clk.Advance(10 * cfg.MaintainEvery)
	pass()
	if !be.lastFull() {
		t.Fatal("no full list after 10 maintenance intervals")
	}
}
