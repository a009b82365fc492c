package pool

// Replay shows an event that another process of the pool caused (read from
// the pool's journal) as if it happened here: subscribers (the dashboard)
// receive it, and its claims count in Stats, so that a viewer's counters and
// warm-hit ratio are the pool's. Observers see only a claim that this
// process hears of here first, marked Remote, as they would have from the
// store's sighting of it (claimsSeenLocked), which then counts nothing new:
// each claim of another process reaches run's log, autosize's demand and
// the cost once, whichever comes first.
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
			c.correctGuessLocked(e.SandboxID, e.Warm)
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
		if e.SandboxID != "" {
			c.mu.Unlock()
			e.Remote = true // the journal keeps it out: its claimer wrote it there
			c.events.publish(e)
			return
		}
	case EventClaimTimeout:
		c.stats.ClaimsFailed++
	case EventResized:
		if c.role == RoleController {
			c.mu.Unlock()
			return // the controller said it as it acted on it (retargetedLocked)
		}
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

// guessWarmLocked notes that a claim seen in the store was counted warm or
// waited by a guess (whether this process had seen the sandbox pooled): a
// claimer that waited for a sandbox pooled a moment before, or one this
// process had not loaded yet, is guessed wrong. The claimer's own event,
// replayed from the journal a moment later, corrects it.
func (c *Controller) guessWarmLocked(id string, warm bool) {
	if c.guessed == nil || len(c.guessed) >= 1024 {
		// A journal line comes within a second or not at all (another
		// machine): old guesses are never corrected, and dropped.
		c.guessed = map[string]bool{}
	}
	c.guessed[id] = warm
}

// correctGuessLocked counts a claim as its claimer says (warm or waited)
// when the store's sighting guessed otherwise.
func (c *Controller) correctGuessLocked(id string, warm bool) {
	guess, ok := c.guessed[id]
	if !ok {
		return
	}
	delete(c.guessed, id)
	switch {
	case guess && !warm:
		c.stats.ClaimsWarm--
		c.stats.ClaimsWaited++
	case !guess && warm:
		c.stats.ClaimsWaited--
		c.stats.ClaimsWarm++
	}
}
