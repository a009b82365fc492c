package pool_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

func TestRotationLeadAndJitter(t *testing.T) {
	p95 := 2 * time.Second
	for _, tc := range []struct {
		queued, limit int
		want          time.Duration
	}{
		{0, 20, 3 * time.Second},                    // 2s + 0.5s + 0.5s
		{19, 20, 3 * time.Second},                   // less than a round ahead: no wait
		{20, 20, 5 * time.Second},                   // one full round ahead
		{300, 20, 3*time.Second + 15*2*time.Second}, // a whole fill rotating at once
		{10_000, 20, time.Minute},                   // capped
	} {
		if got := pool.RotationLead(p95, tc.queued, tc.limit, time.Minute); got != tc.want {
			t.Errorf("RotationLead(queued %d, limit %d) = %s, want %s", tc.queued, tc.limit, got, tc.want)
		}
	}
}

func TestSpreadExpiry(t *testing.T) {
	latest := t0.Add(20 * time.Second)
	at := func(d time.Duration) time.Time { return latest.Add(d) }
	ms := time.Millisecond
	for _, tc := range []struct {
		name            string
		window, spacing time.Duration
		ends            []time.Time
		want            time.Time
	}{
		{"alone: a full ttl", 2 * time.Second, 5 * time.Second, nil, latest},
		{"no window: a full ttl", 0, 5 * time.Second, []time.Time{latest}, latest},
		{"far from the others: a full ttl", 2 * time.Second, 100 * ms, []time.Time{at(-200 * ms), at(-10 * time.Second)}, latest},
		{"just before one that is too close", 2 * time.Second, 100 * ms, []time.Time{at(-20 * ms)}, at(-70 * ms)},
		{"skips a run of close ones", 2 * time.Second, 100 * ms, []time.Time{at(-20 * ms), at(-90 * ms), at(30 * ms)}, at(-140 * ms)},
		{"small pool, one made: the far edge", 2 * time.Second, 5 * time.Second, []time.Time{latest}, at(-2 * time.Second)},
		{"small pool, two made: between", 2 * time.Second, 5 * time.Second, []time.Time{latest, at(-2 * time.Second)}, at(-time.Second)},
		{"later than latest: the far edge", 2 * time.Second, 10 * time.Second, []time.Time{at(time.Second)}, at(-2 * time.Second)},
		{"equals: the latest", 2 * time.Second, 10 * time.Second, []time.Time{at(-time.Second)}, latest},
		// The edges of the reach (here window+window: 2s either side) count.
		{"at the reach's edges", time.Second, 4 * time.Second, []time.Time{at(-3 * time.Second), at(-3 * time.Second), at(time.Second), at(time.Second), at(-5 * time.Second)}, at(-time.Second)},
	} {
		// In order (the controller's case: a run found by binary search)
		// or not (copied and sorted), the same answer.
		sorted := slices.SortedFunc(slices.Values(tc.ends), func(a, b time.Time) int { return a.Compare(b) })
		reversed := slices.Clone(sorted)
		slices.Reverse(reversed)
		for _, ends := range [][]time.Time{tc.ends, sorted, reversed} {
			if got := pool.SpreadExpiry(latest, tc.window, tc.spacing, ends); !got.Equal(tc.want) {
				t.Errorf("%s: SpreadExpiry(%v) = latest%+v, want latest%+v", tc.name, ends, got.Sub(latest), tc.want.Sub(latest))
			}
		}
	}
}

// Issue 13.6, the small case: at 3 with a ttl of 20s, a fill made in one go
// is spread so that its rotations never double the pool, and the ready
// count never dips below the target.
func TestSmallPoolRotationNeverDoubles(t *testing.T) {
	const target = 3
	h := newHarness(t, func(c *pool.Config) {
		c.Size = target
		c.TTL, c.UseDuration = 20*time.Second, 5*time.Second
		c.TTLJitter = pool.DefaultTTLJitter
	})
	h.be.CreateDelay = 300 * time.Millisecond
	ctx := context.Background()
	filled := false
	minGood, maxLive, expiries := target, 0, map[time.Time]bool{}
	for i := range 800 { // 80 simulated seconds: four generations
		if err := h.c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		h.settle()
		now := h.clk.Now()
		good := 0
		for _, e := range h.stored().Pooled() {
			if pool.HasTimeLeft(e.ExpiresAt, now, h.cfg.UseDuration) {
				good++
			}
			expiries[e.ExpiresAt] = true
		}
		filled = filled || good >= target
		if filled {
			live := good + h.c.Creating()
			minGood, maxLive = min(minGood, good), max(maxLive, live)
			if live >= 2*target || good < target {
				t.Fatalf("at +%s: %d good, %d live (%d creating): want %d good and fewer than %d live",
					time.Duration(i)*100*time.Millisecond, good, live, h.c.Creating(), target, 2*target)
			}
		}
		h.clk.Advance(100 * time.Millisecond)
	}
	t.Logf("after the fill: at least %d good, at most %d live, %d sandboxes made", minGood, maxLive, len(expiries))
	if len(expiries) < 4*target {
		t.Fatalf("only %d sandboxes made in 80s: want four generations of %d", len(expiries), target)
	}
}

// At 300 sandboxes the ready count stays >= 95% of the target through
// rotations, and live sandboxes stay near the target (issue 13.6).
func TestRotationHoldsAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("600 simulated seconds of a pool of 300")
	}
	const target = 300
	var mu sync.Mutex
	var r float64
	h := newHarness(t, func(c *pool.Config) {
		c.Size, c.MaxSize, c.MaxCreating = target, 1000, 20
		c.TTL, c.UseDuration = 5*time.Minute, 2*time.Minute
		c.TTLJitter = pool.DefaultTTLJitter
	})
	// The worst case: a whole fill made in the same second, so it all
	// stops being good in the same second.
	ctx := context.Background()
	for range target {
		ref, err := h.be.Create(ctx, h.cfg.TTL)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.st.Put(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	h.be.CreateDelay = 2 * time.Second
	// Spread jitter like a real random source would.
	c, err := pool.New(pool.Options{Config: h.cfg, Backend: h.be, Store: h.st, Clock: h.clk, Checker: h.be.Checker,
		Rand: func() float64 {
			mu.Lock()
			defer mu.Unlock()
			r += 0.618034
			r -= float64(int(r))
			return r
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h.c = c
	filled := false
	minGood, maxLive := target, 0
	for i := range 2 * 360 {
		h.clk.Advance(time.Second)
		h.settle()
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		h.settle()
		now := h.clk.Now()
		good := 0
		for _, e := range h.stored().Pooled() {
			if pool.HasTimeLeft(e.ExpiresAt, now, h.cfg.UseDuration) {
				good++
			}
		}
		if good >= target {
			filled = true
		}
		if !filled {
			continue
		}
		minGood = min(minGood, good)
		maxLive = max(maxLive, len(h.be.Live()))
		if good < target*95/100 {
			terms := map[string]int{}
			for _, id := range h.be.Terminated() {
				terms[id[:3]]++
			}
			t.Logf("pooled %d, live %d, creating %d, terms %d, snap counts %v", len(h.stored().Pooled()), len(h.be.Live()), c.Creating(), len(h.be.Terminated()), c.Snapshot().Counts)
			t.Fatalf("at +%ds only %d good of %d", i+1, good, target)
		}
	}
	t.Logf("through two ttls: at least %d good, at most %d live, %d created", minGood, maxLive, h.be.Creates)
	// Replacing a fill that expires together needs a whole fill of
	// creations at once: live stays within target + those (+ the ones in flight).
	if want := 2*target + h.cfg.MaxCreating; !filled || maxLive > want {
		t.Fatalf("filled %v, at most %d live: want at most %d", filled, maxLive, want)
	}
}
