package pool

import (
	"context"
	"maps"
	"slices"
	"time"
)

// Snapshot returns the pool as this controller knows it now (no I/O).
func (c *Controller) Snapshot() Snapshot { return c.snapshot(true) }

// Summary is Snapshot without its rows (Sandboxes is nil), Counts
// included: what /metrics needs, at a cost that does not grow with the
// claimed sandboxes (a row each in Snapshot, 10,000 of them on each scrape).
func (c *Controller) Summary() Snapshot { return c.snapshot(false) }

func (c *Controller) snapshot(rows bool) Snapshot {
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Snapshot{
		Pool: c.cfg.Pool, Backend: c.be.Name(), Target: c.target, Now: now,
		Counts: make(map[State]int, len(States)), NextPass: c.nextPass,
		Role: c.role, LeaseHolder: c.holder.String(), Lease: c.holder, Stats: c.stats,
	}
	if c.role == RoleController && c.lease != nil {
		s.Lease = c.leaseRec // this process: its own record
	}
	if c.backoffUntil.After(now) {
		s.BackoffUntil = c.backoffUntil
	}
	if r := &c.roll; r.from != "" {
		s.Rollout = RolloutStatus{From: r.fromDesc, Old: r.old, Replacing: len(r.replacing)}
	}
	if open := c.problems.list(); len(open) > 0 {
		s.LastError = open[len(open)-1].Message
	}
	n := len(c.stored.Entries) + len(c.inflight) + len(c.recent)
	if rows {
		n += c.claimedView.len()
	}
	s.Sandboxes = make([]Sandbox, 0, n)
	seen := make(map[string]bool, len(c.stored.Entries)+len(c.inflight))
	claimedTerminating := 0 // claimed ones shown terminating (counted, not listed, without rows)
	row := func(e Entry, h Health) {
		sb := Sandbox{ID: e.ID, URL: e.URL, CreatedAt: e.CreatedAt, ExpiresAt: e.ExpiresAt, Health: h,
			ClaimedBy: e.ClaimedBy, ClaimedAt: e.ClaimedAt, State: StateOf(e, h, now, c.useDur())}
		if r, ok := c.recent[e.ID]; ok && r.State == StateTerminating {
			sb.State = StateTerminating
		}
		if sb.State == StateUnhealthy {
			sb.Err = h.Error
		}
		s.Sandboxes = append(s.Sandboxes, sb)
	}
	// Claimed ones first, as the store holds them. They are not put in
	// seen (10,000 of them would be a big map per snapshot): the few
	// other rows ask c.claimedView instead.
	if rows {
		c.claimedView.each(func(ce claimedEntry) { row(ce.Entry, ce.health) })
	} else {
		for id, r := range c.recent {
			if r.State == StateTerminating && c.claimedView.has(id) {
				claimedTerminating++
			}
		}
	}
	for _, e := range c.stored.Entries {
		row(e, c.health[e.ID])
		seen[e.ID] = true
	}
	for _, cr := range sortedCreations(c.inflight) {
		if cr.ref.ID != "" && (seen[cr.ref.ID] || c.claimedView.has(cr.ref.ID)) {
			continue
		}
		id := cr.ref.ID
		if id == "" {
			id = cr.key
		}
		seen[id] = true
		s.Sandboxes = append(s.Sandboxes, Sandbox{ID: id, URL: cr.ref.URL, State: cr.state,
			CreatedAt: cr.started, ExpiresAt: cr.ref.ExpiresAt, Health: c.health[cr.ref.ID]})
	}
	for _, id := range slices.Sorted(maps.Keys(c.recent)) {
		r := c.recent[id]
		if r.State == StateFailed && now.Sub(c.failedAt[id]) > failedRowFor {
			delete(c.recent, id)
			delete(c.failedAt, id) // a failed row shows for a while, then goes
			continue
		}
		if !seen[id] && !c.claimedView.has(id) {
			s.Sandboxes = append(s.Sandboxes, r)
		}
	}
	for _, sb := range s.Sandboxes {
		s.Counts[sb.State]++
	}
	if !rows {
		if n := c.claimedView.len() - claimedTerminating; n > 0 {
			s.Counts[StateClaimed] += n
		}
		if claimedTerminating > 0 {
			s.Counts[StateTerminating] += claimedTerminating
		}
		s.Sandboxes = nil
	}
	s.Stats.WasteSeconds = c.stats.WasteSeconds
	s.Autosize, s.Cost = c.Autosize(), c.costLocked(now, s.Counts)
	return s
}

func sortedCreations(m map[string]*creation) []*creation {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b *creation) int { return a.started.Compare(b.started) })
	return out
}

// failedRowFor is how long a failed creation stays on screen.
const failedRowFor = 30 * time.Second

// Creating is the number of creations in flight.
func (c *Controller) Creating() int { return int(c.creating.Load()) }

// Counters returns cumulative counts for metrics: terminations by reason,
// health checks and creations by result.
func (c *Controller) Counters() (terminations map[string]int64, healthOK, healthFailed, createOK, createFailed int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.terminations), c.healthCounts[true], c.healthCounts[false], c.creates[true], c.creates[false]
}

// Refresh reads the store (and, with probe, checks every pooled sandbox once)
// and returns the snapshot: what a one-shot `check` shows.
func (c *Controller) Refresh(ctx context.Context, probe bool) (Snapshot, error) {
	if _, _, err := c.loadStore(ctx); err != nil {
		return Snapshot{}, err
	}
	if probe {
		c.ProbeAll(ctx)
	}
	return c.Snapshot(), nil
}

// Role says what this process is to the pool now, without building a
// snapshot (one holds a row per claimed sandbox).
func (c *Controller) Role() Role {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.role
}
