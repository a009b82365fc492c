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
	var st *lossyStore
	_, be, lost := passesOverAnUnknownSandbox(t, func(id string) pool.Store {
		st = &lossyStore{Store: pooltest.NewStore(), drop: id}
		return st
	})
	if n := st.puts.Load(); n != 1 {
		t.Fatalf("adopted %d times in 4 passes, want once", n)
	}
	testkit.Eventually(t, waitLong, "the orphan terminated", func() bool { return slices.Contains(be.Terminated(), lost.ID) })
}

// passesOverAnUnknownSandbox runs 4 passes, past the adoption grace, of a
// controller over a live sandbox that the store made by wrap (given its id)
// does not know. observe, when set, sees the controller's events from the
// start.
func passesOverAnUnknownSandbox(t *testing.T, wrap func(id string) pool.Store, observe ...func(pool.Event)) (*pool.Controller, *pooltest.Backend, pool.Ref) {
	t.Helper()
	clk := clockwork.NewFakeClockAt(t0)
	cfg := pool.DefaultConfig()
	cfg.Size = 0
	be := pooltest.NewBackend(clk)
	ctx := context.Background()
	unknown, err := be.Create(ctx, cfg.TTL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: wrap(unknown.ID), Clock: clk, Checker: be.Checker, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	for _, fn := range observe {
		c.Observe(fn)
	}
	clk.Advance(time.Minute) // past the adoption grace
	for range 4 {
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		c.WaitIdle(ctx)
	}
	return c, be, unknown
}

// A claimer killed between its claim and the backend's record of it (on
// Modal, the claim's tags written in the background) leaves the claim in
// the store alone: a pass writes the backend's record, so that a store lost
// later never pools the sandbox again (TestChaosModal seed 203: an API
// claim, its controller killed -9 at once, the queue cleared 12 s later, the
// sandbox handed to a second claimer).
func TestPassRecordsAClaimTheBackendMissed(t *testing.T) {
	clk := clockwork.NewFakeClockAt(t0)
	cfg := pool.DefaultConfig()
	cfg.Size = 0
	be := pooltest.NewBackend(clk)
	ctx := context.Background()
	ref, err := be.Create(ctx, cfg.TTL)
	if err != nil {
		t.Fatal(err)
	}
	st := pooltest.NewStore()
	if err := st.Put(ctx, ref); err != nil {
		t.Fatal(err)
	}
	// Claimed straight on the store, as a claimer that died before telling
	// the backend.
	if e, _, ok, err := st.Take(ctx, pool.TakeRequest{MinExpiresAt: clk.Now(), ClaimedBy: "cli", Now: clk.Now()}); err != nil || !ok || e.ID != ref.ID {
		t.Fatalf("take: %v %v %v", e.ID, ok, err)
	}
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk, Checker: be.Checker, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	clk.Advance(5 * time.Second) // its claimer had time to write it
	if err := c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if by := be.ClaimedBy(ref.ID); by != "cli" {
		t.Fatalf("the backend's record after a pass: claimed by %q, want cli", by)
	}
	st.Lose()
	clk.Advance(time.Minute) // past the adoption grace
	for range 2 {
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		c.WaitIdle(ctx)
	}
	if s, _ := st.Load(ctx); slices.ContainsFunc(s.Pooled(), func(e pool.Entry) bool { return e.ID == ref.ID }) {
		t.Fatalf("%s claimed, then pooled again after the store was lost", ref.ID)
	}
	if slices.Contains(be.Terminated(), ref.ID) {
		t.Fatalf("%s claimed, then terminated", ref.ID)
	}
}

// landedPutStore's Put lands and then fails, as a Modal put whose answer a
// cancellation cut off; claimNext makes a claimer take the sandbox between.
type landedPutStore struct {
	*pooltest.Store
	claimNext atomic.Bool
}

func (s *landedPutStore) Put(ctx context.Context, r pool.Ref) error {
	if err := s.Store.Put(ctx, r); err != nil {
		return err
	}
	if s.claimNext.Swap(false) {
		_, _, _, _ = s.Store.Take(ctx, pool.TakeRequest{ClaimedBy: "cli"})
	}
	return context.Canceled
}

// A creation whose Put landed but failed (its creation cancelled as surplus
// while the put was on its way) never leaves a terminated sandbox pooled,
// and never terminates one a claimer took meanwhile (TestChaosModal seed
// 203: a sandbox terminated as failed was claimed half a second later).
func TestFailedPutThatLandedIsNotLeftPooled(t *testing.T) {
	clk := clockwork.NewFakeClockAt(t0)
	cfg := pool.DefaultConfig()
	cfg.Size = 1
	cfg.CreateTries = 2
	be := pooltest.NewBackend(clk)
	st := &landedPutStore{Store: pooltest.NewStore()}
	st.claimNext.Store(true)
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk, Checker: be.Checker, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx := context.Background()
	if err := c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	// The first try's sandbox is claimed; the retry's lands pooled.
	testkit.Eventually(t, 10*time.Second, "two tries", func() bool {
		clk.Advance(time.Second)
		return be.CreateCalls() >= 2 && len(be.Terminated()) >= 1
	})
	c.WaitIdle(ctx)
	s, _ := st.Load(ctx)
	for _, e := range s.Entries {
		dead := slices.Contains(be.Terminated(), e.ID)
		switch {
		case e.Claimed() && dead:
			t.Errorf("%s claimed by %s, then terminated", e.ID, e.ClaimedBy)
		case !e.Claimed() && dead:
			t.Errorf("%s terminated, still pooled", e.ID)
		}
	}
}

// claimFindingStore records one sandbox claimed when it is Put, as Modal's
// store does for a sandbox whose claim bid (or tags) outlived its lost
// claim record, and says so.
type claimFindingStore struct {
	*pooltest.Store
	claimed string
}

func (s *claimFindingStore) Put(ctx context.Context, r pool.Ref) error {
	if r.ID == s.claimed {
		return pool.ErrAlreadyClaimed
	}
	return s.Store.Put(ctx, r)
}

// A live sandbox unknown to the store whose Put finds it claimed is its
// claimer's: not adopted (the view showed it ready, then unhealthy, in the
// pool: TestChaosModal seed 406), never an orphan terminated.
func TestAdoptionThatFindsAClaimLeavesItAlone(t *testing.T) {
	var adopted atomic.Int32
	c, be, taken := passesOverAnUnknownSandbox(t, func(id string) pool.Store {
		return &claimFindingStore{Store: pooltest.NewStore(), claimed: id}
	}, func(e pool.Event) {
		if e.Kind == pool.EventAdopted {
			adopted.Add(1)
		}
	})
	if n := adopted.Load(); n != 0 {
		t.Errorf("adopted %d times, want never", n)
	}
	if s := stateIn(c, taken.ID); s == pool.StateReady || s == pool.StateUnhealthy {
		t.Errorf("the claimed %s shows %s in the pool", taken.ID, s)
	}
	c.Close() // waits for the terminations it started
	if slices.Contains(be.Terminated(), taken.ID) {
		t.Errorf("the claimed %s was terminated", taken.ID)
	}
}
