package pool

import (
	"sync"
	"time"
)

// Cost in view (SPEC --price-per-hour): what keeping the pool warm costs.
// Idle time is sandbox-seconds spent in the pool unclaimed (ready,
// unhealthy or expiring), from a sandbox's creation until it is claimed,
// terminated or leaves the pool; claimed sandboxes are their claimers' cost.

// Cost is the pool's cost now. Money fields are zero when no price is set.
type Cost struct {
	// PricePerHour is one sandbox's hourly price (0: not set).
	PricePerHour float64
	// IdleSeconds is sandbox-seconds spent unclaimed in the pool, since this process started.
	IdleSeconds float64
	// Sandboxes is how many the pool pays for now: every one not claimed,
	// being created and warming included.
	Sandboxes int
}

// IdleCost is IdleSeconds in money.
func (c Cost) IdleCost() float64 { return c.IdleSeconds * c.PricePerHour / 3600 }

// PerHour is what the pool costs per hour at its current size.
func (c Cost) PerHour() float64 { return float64(c.Sandboxes) * c.PricePerHour }

// costMeter integrates idle time per sandbox: an interval opens when a
// sandbox is pooled (its CreatedAt) and closes when it leaves (claimed,
// terminated, expired: the event's time; or first seen gone from the store).
type costMeter struct {
	mu     sync.Mutex
	open   map[string]time.Time
	closed float64
}

func (m *costMeter) observe(e Event) {
	switch e.Kind {
	case EventCreated:
		m.start(e.SandboxID, e.Time.Add(-e.Duration))
	case EventClaimed, EventTerminated, EventExpired:
		m.stop(e.SandboxID, e.Time)
	}
}

func (m *costMeter) start(id string, at time.Time) {
	if id == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.open == nil {
		m.open = map[string]time.Time{}
	}
	if _, ok := m.open[id]; !ok {
		m.open[id] = at
	}
}

func (m *costMeter) stop(id string, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if since, ok := m.open[id]; ok {
		m.closed += max(at.Sub(since).Seconds(), 0)
		delete(m.open, id)
	}
}

// sync opens intervals for pooled entries it did not see created (made by
// another process, or before this one started) and closes those no longer
// pooled (claimed elsewhere), then returns the idle seconds as of now.
func (m *costMeter) sync(pooled []Entry, now time.Time) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.open == nil {
		m.open = map[string]time.Time{}
	}
	in := make(map[string]bool, len(pooled))
	for _, e := range pooled {
		in[e.ID] = true
		if _, ok := m.open[e.ID]; !ok {
			at := e.CreatedAt
			if at.IsZero() || at.After(now) {
				at = now
			}
			m.open[e.ID] = at
		}
	}
	idle := m.closed
	for id, since := range m.open {
		if !in[id] {
			m.closed += max(now.Sub(since).Seconds(), 0)
			idle += max(now.Sub(since).Seconds(), 0)
			delete(m.open, id)
			continue
		}
		idle += max(now.Sub(since).Seconds(), 0)
	}
	return idle
}

// costLocked is the snapshot's cost; c.mu is held.
func (c *Controller) costLocked(now time.Time, counts map[State]int) Cost {
	pooled := make([]Entry, 0, len(c.stored.Entries))
	for _, e := range c.stored.Entries {
		if !e.Claimed() {
			pooled = append(pooled, e)
		}
	}
	paying := 0
	for st, n := range counts {
		if st != StateClaimed && st != StateFailed && st != StateTerminating {
			paying += n
		}
	}
	return Cost{PricePerHour: c.cfg.PricePerHour, IdleSeconds: c.cost.sync(pooled, now), Sandboxes: paying}
}
