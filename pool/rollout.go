package pool

import (
	"fmt"
	"slices"
	"time"
)

// rollout replaces, a few at a time, the pooled sandboxes that run a
// workload the pool no longer runs (its controller started with another
// --cmd, --warmup, --image, --port): each is left out of the target while
// its replacement is made, and terminated only once that replacement is
// ready, so the pool keeps its ready count and serves claims throughout
// (the old ones stay claimable until then). Guarded by Controller.mu.
type rollout struct {
	workloadOf map[string]string // pooled sandbox -> what it runs, as the backend lists it
	replacing  map[string]bool   // old-workload sandboxes whose replacement is under way
	from       string            // the workload being replaced, "" when none is
	anyOld     bool              // the last listing had a sandbox that runs another workload
	// What the last pass saw, for Snapshot.Rollout: from as users read it,
	// and how many good pooled sandboxes still ran it.
	fromDesc string
	old      int
}

// rollSurge is how many old-workload sandboxes are replaced at once, for
// a target of n: a quarter of the pool, at least one.
func rollSurge(n int) int { return max(1, n/4) }

// listedLocked notes what each listed sandbox runs, cur being what the
// pool runs now.
func (r *rollout) listedLocked(live []Ref, cur string) {
	r.anyOld = false
	for _, ref := range live {
		if ref.Workload == "" {
			continue
		}
		r.anyOld = r.anyOld || ref.Workload != cur
		if r.workloadOf == nil {
			r.workloadOf = map[string]string{}
		}
		r.workloadOf[ref.ID] = ref.Workload
	}
}

func (r *rollout) forgetLocked(id string) {
	delete(r.workloadOf, id)
	delete(r.replacing, id)
}

// rollOn moves the rolling replacement on, after a pass sized the pool:
// old-workload sandboxes whose replacement is ready go, and the next ones
// are left out of the target, up to rollSurge at once (the next pass, or
// the creation's end, starts their replacements).
func (c *Controller) rollOn(target int, now time.Time) {
	wb, ok := c.be.(WorkloadBackend)
	if !ok {
		return
	}
	c.mu.Lock()
	idle := !c.roll.anyOld && c.roll.from == ""
	c.mu.Unlock()
	if idle {
		return // the common case, on every pass: no walk, no workload encoded
	}
	cur := c.listedWorkload(wb)
	describe := func(w string) string {
		if _, keyed := wb.(WorkloadKeyer); keyed {
			return "workload " + w // a key: the workload itself is gone
		}
		return wb.DescribeWorkload(w)
	}
	var (
		victims []Entry
		started bool
		said    string
		done    bool
	)
	c.mu.Lock()
	r := &c.roll
	var old, ready []Entry // pooled and good: old-workload ones; all
	for _, e := range c.stored.Entries {
		if e.Claimed() || !IsGood(e.ExpiresAt, c.health[e.ID], now, c.useDur()) || c.rotated[e.ID] {
			continue
		}
		ready = append(ready, e)
		if w := r.workloadOf[e.ID]; w != "" && w != cur {
			old = append(old, e)
		}
	}
	// Replaced ones whose replacement is ready: the pool has more good
	// sandboxes than its target without them.
	var rep []Entry
	for _, e := range old {
		if r.replacing[e.ID] {
			rep = append(rep, e)
		}
	}
	if excess := len(ready) - target; excess > 0 && len(rep) > 0 {
		slices.SortFunc(rep, func(a, b Entry) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
		victims = rep[:min(excess, len(rep))]
		for _, v := range victims {
			delete(r.replacing, v.ID)
		}
	}
	// The next ones, least time left first, up to the surge.
	n := len(rep) - len(victims)
	if len(old) > 0 && r.from == "" {
		r.from = r.workloadOf[old[0].ID]
		said = fmt.Sprintf("rolling replacement: %d pooled sandboxes run the pool's old workload (%s), not %s: each is replaced once its replacement is ready, %d at a time",
			len(old), describe(r.from), wb.DescribeWorkload(wb.Workload()), rollSurge(target))
	}
	for _, e := range old {
		if n >= rollSurge(target) {
			break
		}
		if r.replacing[e.ID] || slices.ContainsFunc(victims, func(v Entry) bool { return v.ID == e.ID }) {
			continue
		}
		if r.replacing == nil {
			r.replacing = map[string]bool{}
		}
		r.replacing[e.ID] = true
		c.budget.lose(now) // its replacement is explained
		started = true
		n++
	}
	if len(old) == len(victims) && r.from != "" {
		r.from, done = "", true
	}
	r.old, r.fromDesc = 0, ""
	if r.from != "" {
		r.old, r.fromDesc = len(old)-len(victims), describe(r.from)
	}
	c.mu.Unlock()
	if said != "" {
		c.emit(Event{Kind: EventWorkload, Message: said})
	}
	c.evictAndTerminate(victims, "replaced", ReasonReplaced) // their replacements are ready
	if done {
		c.emit(Event{Kind: EventWorkload, Message: "rolling replacement done: every pooled sandbox runs " + wb.DescribeWorkload(wb.Workload())})
	}
	if started {
		c.Kick() // their replacements start now, not at the next pass
	}
}

// listedWorkload is what the pool runs now as the backend's List says a
// sandbox runs it (Ref.Workload).
func (c *Controller) listedWorkload(wb WorkloadBackend) string {
	if k, ok := wb.(WorkloadKeyer); ok {
		return k.WorkloadKey(wb.Workload())
	}
	return wb.Workload()
}
