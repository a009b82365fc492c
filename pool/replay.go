package pool

// Replay shows an event that another process of the pool caused (read from
// the pool's journal) as if it happened here: subscribers (the dashboard)
// receive it, and its claims count in Stats, so that a viewer's counters and
// warm-hit ratio are the pool's. Observers (metrics) do not see it: each
// process's metrics count what it did itself, or a scrape of two processes
// would count a claim twice.
func (c *Controller) Replay(e Event) {
	if e.Time.IsZero() {
		e.Time = c.clk.Now()
	}
	if e.Message == "" {
		e.Message = describe(e)
	}
	c.mu.Lock()
	switch e.Kind {
	case EventClaimed:
		if e.SandboxID != "" && !c.countClaimOnceLocked(e.SandboxID) {
			c.mu.Unlock()
			return // already seen in the store, and shown then
		}
		// The claim explains a backfill: the store poll that sees it later
		// does not count it again.
		c.budget.claimed(c.clk.Now())
		if e.Warm {
			c.stats.ClaimsWarm++
		} else {
			c.stats.ClaimsWaited++
		}
	case EventClaimTimeout:
		c.stats.ClaimsFailed++
	}
	c.mu.Unlock()

	h := &c.events
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for ch := range h.subs {
		select {
		case ch <- e:
		default:
		}
	}
}
