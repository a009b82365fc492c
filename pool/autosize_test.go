package pool_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
)

// load is claims per second over [from, to) of a simulated run.
type load struct {
	from, to time.Duration
	rate     float64
}

// simulate feeds an autosizer the claims of loads (evenly spaced) plus
// bursts (n claims at one instant), asks it for the target every 100 ms
// like a busy maintenance loop, and returns the target at each whole second.
func simulate(a *pool.Autosizer, ttr time.Duration, until time.Duration, loads []load, bursts map[time.Duration]int) map[time.Duration]int {
	const step = 100 * time.Millisecond
	out := map[time.Duration]int{}
	next := map[int]time.Duration{}
	for i, l := range loads {
		next[i] = l.from
	}
	for t := time.Duration(0); t <= until; t += step {
		now := t0.Add(t)
		for i, l := range loads {
			for next[i] <= t && next[i] < l.to {
				a.Claimed(t0.Add(next[i]))
				next[i] += time.Duration(float64(time.Second) / l.rate)
			}
		}
		for range bursts[t] {
			a.Claimed(now)
		}
		n := a.Target(now, ttr)
		if t%time.Second == 0 {
			out[t] = n
		}
	}
	return out
}

func TestAutoTargetRule(t *testing.T) {
	for _, tc := range []struct {
		rate     float64
		ttr      time.Duration
		min, max int
		want     int
	}{
		{0, time.Second, 2, 40, 2},                // zero demand: the floor
		{0, time.Second, 0, 40, 1},                // the margin alone
		{3.1, 1400 * time.Millisecond, 1, 100, 8}, // ceil(3.1*1.4*1.5)=7, +1
		{8, 1400 * time.Millisecond, 2, 40, 18},   // ceil(16.8)=17, +1
		{200, 1400 * time.Millisecond, 2, 40, 40}, // capped at max
		{0.1, 100 * time.Millisecond, 3, 40, 3},   // below the floor
		{1, 10 * time.Second, 1, 100, 16},         // slow creations need more
	} {
		if got := pool.AutoTarget(tc.rate, tc.ttr, tc.min, tc.max); got != tc.want {
			t.Errorf("AutoTarget(%v, %v, %d, %d) = %d, want %d", tc.rate, tc.ttr, tc.min, tc.max, got, tc.want)
		}
	}
}

func TestAutosizerFollowsDemand(t *testing.T) {
	ttr := 1400 * time.Millisecond
	high := pool.AutoTarget(8, ttr, 2, 40) // 18
	const sec = time.Second
	for _, tc := range []struct {
		name   string
		window time.Duration
		loads  []load
		bursts map[time.Duration]int
		until  time.Duration
		check  func(t *testing.T, at map[time.Duration]int)
	}{
		{
			name: "zero: stays at the floor", window: 10 * sec, until: 60 * sec,
			check: func(t *testing.T, at map[time.Duration]int) {
				for s, n := range at {
					if n != 2 {
						t.Fatalf("at %v: %d, want 2", s, n)
					}
				}
			},
		},
		{
			name: "steps up at once, down after the window", window: 10 * sec, until: 90 * sec,
			loads: []load{{10 * sec, 40 * sec, 8}},
			check: func(t *testing.T, at map[time.Duration]int) {
				if at[9*sec] != 2 {
					t.Errorf("before the load: %d, want 2", at[9*sec])
				}
				if at[12*sec] != high {
					t.Errorf("2 s into 8/s: %d, want %d", at[12*sec], high)
				}
				for s := 12 * sec; s <= 40*sec; s += sec {
					if at[s] != high {
						t.Errorf("under steady load at %v: %d, want %d", s, at[s], high)
					}
				}
				// The rate reads 8/s for the short window after the last
				// claim; the target holds that for the window, then falls.
				if at[49*sec] != high {
					t.Errorf("within the window after the load: %d, want still %d", at[49*sec], high)
				}
				for s := 40 * sec; s <= 90*sec; s += sec {
					if at[s] > high {
						t.Fatalf("at %v: %d, above %d", s, at[s], high)
					}
				}
				if at[62*sec] != 2 {
					t.Errorf("22 s after the last claim: %d, want 2 (back to the floor)", at[62*sec])
				}
			},
		},
		{
			name: "falls no faster than the window", window: 60 * sec, until: 200 * sec,
			loads: []load{{0, 30 * sec, 8}},
			check: func(t *testing.T, at map[time.Duration]int) {
				for s := 30 * sec; s < 30*sec+60*sec; s += sec {
					if at[s] != high {
						t.Fatalf("at %v: %d, want %d held for the 60 s window", s, at[s], high)
					}
				}
				if at[200*sec] != 2 {
					t.Fatalf("long after: %d, want 2", at[200*sec])
				}
			},
		},
		{
			name: "a burst rises at once and is held for the window", window: 10 * sec, until: 60 * sec,
			bursts: map[time.Duration]int{5 * sec: 20},
			check: func(t *testing.T, at map[time.Duration]int) {
				want := pool.AutoTarget(10, ttr, 2, 40) // 20 claims in the 2 s window
				if at[5*sec] != want {
					t.Errorf("at the burst: %d, want %d", at[5*sec], want)
				}
				if at[14*sec] < want {
					t.Errorf("within the window: %d, want %d held", at[14*sec], want)
				}
				if at[30*sec] != 2 {
					t.Errorf("after rate window + window: %d, want 2", at[30*sec])
				}
			},
		},
		{
			name: "a step down mid-load falls to the lower rate's target", window: 10 * sec, until: 80 * sec,
			loads: []load{{0, 30 * sec, 8}, {30 * sec, 80 * sec, 2}},
			check: func(t *testing.T, at map[time.Duration]int) {
				low := pool.AutoTarget(2, ttr, 2, 40)
				if at[60*sec] != low {
					t.Errorf("long into 2/s: %d, want %d", at[60*sec], low)
				}
				if at[35*sec] != high {
					t.Errorf("5 s after the step down: %d, want %d held", at[35*sec], high)
				}
			},
		},
		{
			name: "never above max", window: 10 * sec, until: 20 * sec,
			loads: []load{{0, 20 * sec, 500}},
			check: func(t *testing.T, at map[time.Duration]int) {
				for s, n := range at {
					if n > 40 {
						t.Fatalf("at %v: %d above max 40", s, n)
					}
				}
				if at[10*sec] != 40 {
					t.Fatalf("at 500/s: %d, want 40", at[10*sec])
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := pool.NewAutosizer(2, 40, tc.window)
			tc.check(t, simulate(a, ttr, tc.until, tc.loads, tc.bursts))
		})
	}
}

func TestAutosizerNextChange(t *testing.T) {
	a := pool.NewAutosizer(1, 10, time.Minute)
	if _, ok := a.NextChange(); ok {
		t.Fatal("an idle autosizer has nothing to wait for")
	}
	a.Claimed(t0)
	a.Target(t0, time.Second)
	next, ok := a.NextChange()
	if !ok || !next.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("next %v %v, want when the claim leaves the rate window", next, ok)
	}
}

func TestAutosizeInTheController(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) {
		c.Autosize, c.MinSize, c.MaxSize, c.AutosizeWindow = true, 2, 40, 10*time.Second
		c.PricePerHour = 0.36
	})
	ctx := context.Background()
	sub, cancel := h.c.Subscribe(1024)
	defer cancel()
	h.be.CreateDelay = 2 * time.Second // time-to-ready p95: 2 s
	h.pass()
	if got := h.c.Target(); got != 2 {
		t.Fatalf("target with no demand: %d, want the floor 2", got)
	}
	h.clk.Advance(2 * time.Second)
	testkit.Eventually(t, waitLong, "2 ready", func() bool { return len(h.pooledIDs()) == 2 })
	for range 2 {
		if _, err := h.c.Claim(ctx, pool.ClaimOptions{By: "cli"}); err != nil {
			t.Fatal(err)
		}
	}
	h.pass()
	snap := h.c.Snapshot()
	// 2 claims in the 2 s window: 1/s x 2 s x 1.5 + 1 = 4.
	if snap.Target != 4 || !snap.Autosize.On || snap.Autosize.Explain() != "auto: 1.0 claims/s x 2.0 s" {
		t.Fatalf("after 2 claims: target %d, autosize %+v (%q)", snap.Target, snap.Autosize, snap.Autosize.Explain())
	}
	if st := h.stored(); st.Target != snap.Target {
		t.Fatalf("stored target %d, want the autosized %d (viewers read it)", st.Target, snap.Target)
	}
	if snap.Cost.PricePerHour != 0.36 || snap.Cost.PerHour() <= 0 {
		t.Fatalf("cost %+v", snap.Cost)
	}

	// A resize by hand turns it off and says so.
	if err := h.c.Resize(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if a := h.c.Autosize(); a.On || !strings.Contains(a.Off, "by hand") {
		t.Fatalf("after a resize by hand: %+v", a)
	}
	said := false
	for !said {
		select {
		case e := <-sub:
			said = strings.HasPrefix(e.Message, "autosize off: target set to 5 by hand")
		case <-time.After(5 * time.Second):
			t.Fatal("no event said autosize went off")
		}
	}
	h.pass()
	if h.c.Target() != 5 {
		t.Fatalf("target %d, want 5 kept by hand", h.c.Target())
	}

	// On again; then another process resizes through the store: off.
	h.c.SetAutosize(true)
	h.pass()
	if h.c.Target() == 5 {
		t.Fatal("autosize back on left the hand-set target")
	}
	if err := h.st.SetTarget(ctx, 7); err != nil {
		t.Fatal(err)
	}
	h.pass()
	if a := h.c.Autosize(); a.On || !strings.Contains(a.Off, "another process") || h.c.Target() != 7 {
		t.Fatalf("after another process resized: %+v, target %d", a, h.c.Target())
	}

	// Also when it sets the target autosize just moved away from (a
	// viewer's + right after the controller started: 3 -> 2 by autosize,
	// then 3 by hand): that value is not autosize's own write.
	h.c.SetAutosize(true)
	h.pass()
	auto := h.c.Target()
	if auto == 7 {
		t.Fatal("autosize back on left the target set elsewhere")
	}
	if err := h.st.SetTarget(ctx, 7); err != nil {
		t.Fatal(err)
	}
	h.pass()
	if a := h.c.Autosize(); a.On || h.c.Target() != 7 {
		t.Fatalf("after another process set back the target autosize moved from (7 -> %d -> 7): %+v, target %d", auto, a, h.c.Target())
	}
}

func TestIdleCost(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size, c.PricePerHour = 2, 3.6 })
	h.pass()
	testkit.Eventually(t, waitLong, "2 ready", func() bool { return len(h.pooledIDs()) == 2 })
	h.c.Snapshot()
	h.clk.Advance(100 * time.Second)
	c := h.c.Snapshot().Cost
	if c.IdleSeconds < 200 || c.IdleSeconds > 201 {
		t.Fatalf("idle %v sandbox-seconds, want 200 (2 ready for 100 s)", c.IdleSeconds)
	}
	if c.IdleCost() < 0.2 || c.IdleCost() > 0.201 || c.PerHour() != 7.2 {
		t.Fatalf("idle cost %v, per hour %v; want 0.2 and 7.2", c.IdleCost(), c.PerHour())
	}
	// A claimed sandbox stops costing idle time.
	if _, err := h.c.Claim(context.Background(), pool.ClaimOptions{By: "cli"}); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(100 * time.Second)
	if c := h.c.Snapshot().Cost; c.IdleSeconds < 300 || c.IdleSeconds > 301 {
		t.Fatalf("idle %v, want 300 (one claimed, one idle 100 s more)", c.IdleSeconds)
	}
}

func TestAutosizeCountsClaimsOfOtherProcesses(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) {
		c.Size, c.Autosize, c.MinSize, c.MaxSize = 4, true, 4, 40
	})
	ctx := context.Background()
	h.pass()
	testkit.Eventually(t, waitLong, "4 ready", func() bool { return len(h.pooledIDs()) == 4 })
	h.pass() // the controller has seen them pooled
	// One claim here, two straight on the store (another process); the
	// one here is counted once although the store shows it claimed too.
	got, err := h.c.Claim(ctx, pool.ClaimOptions{By: "dashboard"})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, _, ok, err := h.st.Take(ctx, pool.TakeRequest{MinExpiresAt: h.clk.Now(), ClaimedBy: "cli", Now: h.clk.Now()}); !ok || err != nil {
			t.Fatalf("take: %v %v", ok, err)
		}
	}
	h.pass()
	if r := h.c.Autosize().Rate; r != 1.5 {
		t.Fatalf("rate %v after 3 claims (%s here, 2 elsewhere) in the 2 s window, want 1.5/s", r, got.ID)
	}
}
