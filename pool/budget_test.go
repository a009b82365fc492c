package pool_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

func TestCreationBudgetRule(t *testing.T) {
	base := pool.BudgetInput{Window: time.Minute, Target: 3, GoodLife: 90 * time.Second}
	for _, tc := range []struct {
		name string
		mod  func(*pool.BudgetInput)
		want int
	}{
		{"fill, rotations rounded up, slack", nil, 3 + 2 + 2},
		{"each claim, loss and failed try explains one", func(in *pool.BudgetInput) { in.Claims, in.Lost, in.Failed = 4, 2, 1 }, 7 + 7},
		{"rotation exactly one life", func(in *pool.BudgetInput) { in.GoodLife = time.Minute }, 3 + 3 + 2},
		{"slack grows with the target", func(in *pool.BudgetInput) { in.Target = 300; in.GoodLife = time.Minute }, 300 + 300 + 32},
		{"target 0 explains nothing but slack", func(in *pool.BudgetInput) { in.Target = 0 }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			if tc.mod != nil {
				tc.mod(&in)
			}
			if got := pool.CreationBudget(in); got != tc.want {
				t.Fatalf("CreationBudget(%+v) = %d, want %d", in, got, tc.want)
			}
		})
	}
	if w := pool.BudgetWindow(30 * time.Second); w != time.Minute {
		t.Fatalf("window %s", w)
	}
	if w := pool.BudgetWindow(3 * time.Minute); w != 3*time.Minute {
		t.Fatalf("window %s", w)
	}
}

// shortBackend hands out sandboxes that expire sooner than asked (a backend
// or clock gone wrong): each is "expiring" as soon as it is pooled.
type shortBackend struct{ *pooltest.Backend }

func (b shortBackend) Create(ctx context.Context, ttl time.Duration) (pool.Ref, error) {
	return b.Backend.Create(ctx, 90*time.Second)
}

// A pool that would create forever (every sandbox judged expiring at once)
// is stopped by the creation budget, and says why.
func TestCreationBudgetStopsARunaway(t *testing.T) {
	h := newHarnessOn(t, nil, func(be *pooltest.Backend) pool.Backend { return shortBackend{be} })
	c := h.c
	ctx := context.Background()
	for range 60 {
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		c.WaitIdle(ctx)
		h.clk.Advance(time.Second)
	}
	window := pool.BudgetWindow(h.cfg.TTL - h.cfg.UseDuration)
	limit := pool.CreationBudget(pool.BudgetInput{Window: window, Target: 3, GoodLife: h.cfg.TTL - h.cfg.UseDuration})
	if h.be.Creates > limit {
		t.Fatalf("%d creations in a minute, budget %d", h.be.Creates, limit)
	}
	var budget *pool.Problem
	for _, p := range c.Problems() {
		if p.Kind == pool.ProblemBudget {
			budget = &p
		}
	}
	if budget == nil {
		t.Fatalf("problems %+v: no budget pause", c.Problems())
	}
	t.Logf("%d creations; %s", h.be.Creates, budget.Message)
}

// Property: over random mixes of claims, deaths, sickness, resizes and
// time, creations in any window stay within what the window explains.
func TestCreationBudgetHoldsUnderRandomLoad(t *testing.T) {
	for seed := range uint64(5) {
		rng := rand.New(rand.NewPCG(seed, 7))
		h := newHarness(t, func(c *pool.Config) { c.Size = 4; c.TTL = 2 * time.Minute; c.UseDuration = 30 * time.Second })
		ctx := context.Background()
		events, cancel := h.c.Subscribe(1 << 16)
		type mark struct {
			at   time.Time
			kind string
		}
		var marks []mark
		targets := []mark{{h.clk.Now(), "4"}}
		target := 4
		for range 150 {
			switch rng.IntN(6) {
			case 0:
				// The claim's timeout is on the fake clock: a claim that finds
				// only dead sandboxes (skipped) would wait for ever.
				cctx, ccancel := context.WithTimeout(ctx, 100*time.Millisecond)
				_, _ = h.c.Claim(cctx, pool.ClaimOptions{By: "cli", Timeout: time.Millisecond})
				ccancel()
			case 1:
				if live := h.be.Live(); len(live) > 0 {
					h.be.Kill(live[rng.IntN(len(live))])
				}
			case 2:
				if live := h.be.Live(); len(live) > 0 {
					h.be.SetUnhealthy(live[rng.IntN(len(live))], true)
					h.c.ProbeAll(ctx)
				}
			case 3:
				target = rng.IntN(8)
				_ = h.c.Resize(ctx, target)
			default:
				h.clk.Advance(time.Duration(1+rng.IntN(20)) * time.Second)
			}
			targets = append(targets, mark{h.clk.Now(), string(rune('0' + target))})
			h.pass()
			h.c.WaitIdle(ctx)
		}
		cancel()
		for e := range events {
			switch {
			case e.Kind == pool.EventClaimed:
				marks = append(marks, mark{e.Time, "claim"})
			case e.Kind == pool.EventTerminated && e.Reason != pool.ReasonExpired && e.Reason != pool.ReasonFailed && e.Reason != pool.ReasonCancelled && e.Reason != pool.ReasonOrphan:
				marks = append(marks, mark{e.Time, "lost"})
			case e.Kind == pool.EventCreateFailed:
				marks = append(marks, mark{e.Time, "failed"})
			}
		}
		life := h.cfg.TTL - h.cfg.UseDuration
		window := pool.BudgetWindow(life)
		created := slices.Clone(h.be.CreatedAt)
		for i, end := range created {
			from := end.Add(-window)
			n := 0
			for _, c := range created[:i+1] {
				if c.After(from) {
					n++
				}
			}
			in := pool.BudgetInput{Window: window, GoodLife: life}
			for j, tm := range targets {
				inWindow := tm.at.After(from) && !tm.at.After(end)
				lastBefore := !tm.at.After(from) && (j+1 == len(targets) || targets[j+1].at.After(from))
				if inWindow || lastBefore {
					in.Target = max(in.Target, int(tm.kind[0]-'0'))
				}
			}
			for _, m := range marks {
				if m.at.After(from) && !m.at.After(end) {
					switch m.kind {
					case "claim":
						in.Claims++
					case "lost":
						in.Lost++
					case "failed":
						in.Failed++
					}
				}
			}
			if budget := pool.CreationBudget(in); n > budget {
				t.Fatalf("seed %d: %d creations in the window ending %s, budget %d (%+v)", seed, n, end, budget, in)
			}
		}
	}
}

// Another process's resize reaches the controller within one store poll
// (1s), not a whole maintenance interval.
func TestTargetSetElsewhereActsWithinAPoll(t *testing.T) {
	h := newHarness(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.c.Serve(ctx, false) }()
	defer func() { cancel(); <-done }()
	testkit.Eventually(t, waitLong, "filled to 3", func() bool { return len(h.pooledIDs()) == 3 && h.c.Creating() == 0 })
	at := h.clk.Now()
	if err := h.st.SetTarget(context.Background(), 5); err != nil { // as `maintain --size 5` would
		t.Fatal(err)
	}
	// Each poll moves the clock on by 100ms: the resize must land within 2s of it.
	testkit.Eventually(t, waitLong, "5 pooled after the store poll", func() bool {
		if len(h.pooledIDs()) == 5 {
			return true
		}
		h.clk.Advance(100 * time.Millisecond)
		if h.clk.Since(at) > 2*time.Second { // a poll is 1s; a maintenance interval 30s
			t.Fatalf("still %d pooled %s after the resize: not within a poll", len(h.pooledIDs()), h.clk.Since(at))
		}
		return false
	})
}

// A claim made by another process (straight on the store) counts here once,
// seen by the store poll, as warm when this process saw it pooled.
func TestClaimsElsewhereAreCounted(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	h.pass()
	h.c.WaitIdle(ctx)
	events, cancel := h.c.Subscribe(64)
	defer cancel()
	now := h.clk.Now()
	got, _, ok, err := h.st.Take(ctx, pool.TakeRequest{MinExpiresAt: now, ClaimedBy: "cli", Now: now})
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	for range 2 { // a second load must not count it again
		if _, err := h.c.Refresh(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	if s := h.c.Snapshot().Stats; s.ClaimsWarm != 1 || s.ClaimsWaited != 0 {
		t.Fatalf("stats %+v, want the claim elsewhere counted once, warm", s)
	}
	for e := range events {
		if e.Kind == pool.EventClaimed {
			if e.SandboxID != got.ID || !e.Remote || e.By != "cli" {
				t.Fatalf("claim event %+v", e)
			}
			break
		}
	}
}

// A claim by another process reaches a controller twice, through the
// pool's journal (Replay) and through the store: it counts, and shows, once.
func TestClaimSeenTwiceCountsOnce(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	h.pass()
	h.c.WaitIdle(ctx)
	now := h.clk.Now()
	got, _, ok, err := h.st.Take(ctx, pool.TakeRequest{MinExpiresAt: now, ClaimedBy: "cli", Now: now})
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	h.c.Replay(pool.Event{Kind: pool.EventClaimed, SandboxID: got.ID, By: "cli", Warm: true})
	h.c.Replay(pool.Event{Kind: pool.EventClaimed, SandboxID: got.ID, By: "cli", Warm: true})
	if _, err := h.c.Refresh(ctx, false); err != nil {
		t.Fatal(err)
	}
	if s := h.c.Snapshot().Stats; s.ClaimsWarm != 1 || s.ClaimsWaited != 0 {
		t.Fatalf("stats %+v, want one warm claim: the journal and the store saw the same one", s)
	}
}

// An error repeated every poll is one Problem with a count and one event
// per order of magnitude, not one a second; it goes when the store heals.
func TestProblemsFoldIdenticalErrors(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	events, cancel := h.c.Subscribe(256)
	defer cancel()
	h.st.SetErr(errors.New("disk on fire"))
	for range 12 {
		_, _ = h.c.Refresh(ctx, false)
	}
	probs := h.c.Problems()
	if len(probs) != 1 || probs[0].Kind != pool.ProblemStore || probs[0].Count != 12 {
		t.Fatalf("problems %+v, want one store problem counted 12 times", probs)
	}
	if n := h.c.ErrorCounts()[pool.ProblemStore]; n != 12 {
		t.Fatalf("error count %d, want 12", n)
	}
	h.st.SetErr(nil)
	if _, err := h.c.Refresh(ctx, false); err != nil {
		t.Fatal(err)
	}
	if probs := h.c.Problems(); len(probs) != 0 {
		t.Fatalf("problems after healing: %+v", probs)
	}
	cancel()
	var counts []int
	for e := range events {
		if e.Kind == pool.EventError {
			if e.ErrorKind != pool.ProblemStore {
				t.Fatalf("error event kind %q", e.ErrorKind)
			}
			counts = append(counts, e.Count)
		}
	}
	if !slices.Equal(counts, []int{1, 10}) {
		t.Fatalf("error events at counts %v, want [1 10]", counts)
	}
}
