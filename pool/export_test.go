package pool

// MemoryCounts sizes what a controller keeps per sandbox or per claim, for
// tests that prove none of it only grows.
func (c *Controller) MemoryCounts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{
		"health": len(c.health), "rotated": len(c.rotated), "doomed": len(c.doomed),
		"killing": len(c.killing), "adopted": len(c.adopted), "recent": len(c.recent),
		"failedAt": len(c.failedAt), "writes": len(c.writes), "counted": len(c.counted),
		"claiming": len(c.claiming), "guessed": len(c.guessed), "inflight": len(c.inflight), "entries": len(c.stored.Entries),
		"budget": len(c.budget.created) + len(c.budget.claims) + len(c.budget.lost) + len(c.budget.failed) + len(c.budget.targets),
	}
	c.auto.mu.Lock()
	out["autosize.seen"], out["autosize.meter"] = len(c.auto.sizer.seen), len(c.auto.sizer.meter.at)
	out["autosize.written"] = len(c.auto.written)
	c.auto.mu.Unlock()
	c.cost.mu.Lock()
	out["cost.open"] = len(c.cost.open)
	c.cost.mu.Unlock()
	return out
}

// ProbingAhead says a probe ahead of claims runs (probeAhead).
func (c *Controller) ProbingAhead() bool { return c.ahead.Load() }
