package pool_test

import (
	"context"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Nothing a controller keeps per sandbox or per claim only grows: after
// hours of claims, deaths and expiries (the soak's load, on a fake clock),
// every map and list holds what the last few minutes explain, not all
// history (the soak's controller RSS crept up at each burst).
func TestMemoryStaysBounded(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 5; c.TTL = 2 * time.Minute; c.UseDuration = 30 * time.Second })
	ctx := context.Background()
	h.pass()
	h.c.WaitIdle(ctx)
	const rounds = 1800 // claims, a second apart: 30 minutes
	for i := range rounds {
		// Bounded in real time: the claim's own timeout is on the fake clock.
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		got, err := h.c.Claim(cctx, pool.ClaimOptions{By: "api 127.0.0.1:5555"})
		cancel()
		if err == nil && i%20 == 0 {
			h.be.Kill(got.ID) // a claimed workload killed
		}
		if pooled := h.pooledIDs(); len(pooled) > 0 {
			switch {
			case i%30 == 0:
				h.be.Kill(pooled[0]) // a pooled one dies
			case i%5 == 2:
				_ = h.c.Terminate(ctx, pooled[0]) // a user ends one
			}
		}
		h.clk.Advance(time.Second)
		h.pass() // the claim's backfill (no loop runs here)
		h.c.WaitIdle(ctx)
	}
	// What the last ttl explains, with room: not all 30 minutes. (Counted
	// claims are remembered 10 minutes against a second sighting, and at
	// least the last 4,096.)
	for name, n := range h.c.MemoryCounts() {
		limit := 2*int((2*time.Minute)/time.Second) + 64
		if name == "counted" {
			limit = 4096
		}
		if n > limit {
			t.Errorf("%s holds %d after %d claims (limit %d): it only grows", name, n, rounds, limit)
		}
	}
	t.Logf("%v", h.c.MemoryCounts())
}
