package pool

import (
	"math/rand/v2"
	"slices"
	"time"
)

// This file holds the pool's rules, each in one place, as pure functions of
// their inputs so that the boundaries can be tested exactly.

// IsGood says whether a pooled sandbox can still be handed out: it has at
// least use-duration left (the boundary itself is good) and did not fail its
// last health check.
func IsGood(expiresAt time.Time, h Health, now time.Time, use time.Duration) bool {
	return HasTimeLeft(expiresAt, now, use) && (!h.Checked() || h.OK)
}

// HasTimeLeft is the expiry half of IsGood: expires_at >= now + use-duration.
func HasTimeLeft(expiresAt, now time.Time, use time.Duration) bool {
	return !expiresAt.Before(now.Add(use))
}

// CountsTowardTarget says whether a good pooled sandbox still counts toward
// the target: it must stay good for longer than a replacement takes to get
// ready (lead), otherwise its replacement starts now (rotation ahead of expiry).
func CountsTowardTarget(expiresAt time.Time, now time.Time, use, lead time.Duration) bool {
	return HasTimeLeft(expiresAt, now.Add(lead), use)
}

// RotationAt is when a sandbox stops counting toward the target.
func RotationAt(expiresAt time.Time, use, lead time.Duration) time.Time {
	return expiresAt.Add(-use - lead)
}

// StateOf derives the state of a stored entry.
func StateOf(e Entry, h Health, now time.Time, use time.Duration) State {
	switch {
	case e.Claimed():
		return StateClaimed
	case !HasTimeLeft(e.ExpiresAt, now, use):
		return StateExpiring
	case h.Checked() && !h.OK:
		return StateUnhealthy
	}
	return StateReady
}

// BackoffDelay is the pool-wide pause after `failures` creations in a row
// failed: exponential from 2s, capped at 2m, with ±20% jitter so that many
// pools do not retry in step.
func BackoffDelay(failures int, rnd func() float64) time.Duration {
	if failures <= 0 {
		return 0
	}
	const base, maxDelay = 2 * time.Second, 2 * time.Minute
	d := base
	for i := 1; i < failures && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	if rnd == nil {
		rnd = rand.Float64
	}
	jitter := 0.8 + 0.4*rnd()
	return time.Duration(float64(d) * jitter)
}

// RetryDelay is the pause between the tries of one creation.
func RetryDelay(try int) time.Duration {
	return time.Duration(try) * 500 * time.Millisecond
}

// P95 of recent create-to-ready durations, or fallback with none.
func P95(durations []time.Duration, fallback time.Duration) time.Duration {
	if len(durations) == 0 {
		return fallback
	}
	s := slices.Clone(durations)
	slices.Sort(s)
	idx := (len(s)*95 + 99) / 100 // ceil(0.95 n)
	return s[max(idx-1, 0)]
}

// SurplusOrder sorts candidates for termination: least time left first.
func SurplusOrder(entries []Entry) []Entry {
	out := slices.Clone(entries)
	slices.SortStableFunc(out, func(a, b Entry) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
	return out
}

// initialCreationLimit is the floor that slow answers never cut the
// creation limit below (only refusals go lower).
const initialCreationLimit = 10

// NextCreationLimit is the creation concurrency after the backend answered
// one Create in took: a refusal (!ok) halves it, down to 1; an answer as
// quick as the best recent one (within twice it, plus 250ms of noise on a
// busy machine) adds one, up to max; a slow one (over four times the best,
// plus a second) takes a quarter off, but not below the initial limit:
// only refusals go lower. Creations slow down when too many run at once on
// a busy machine or backend: the limit settles where they stay quick.
func NextCreationLimit(limit, maxLimit int, took, best time.Duration, ok bool) int {
	switch {
	case !ok:
		limit = max(1, limit/2)
	case took <= 2*best+250*time.Millisecond:
		limit++
	case took > 4*best+time.Second:
		limit = max(min(initialCreationLimit, limit), limit-max(limit/4, 1))
	}
	return min(maxLimit, max(1, limit))
}

// BudgetInput is what one window of a pool's history explains.
type BudgetInput struct {
	Window time.Duration
	// Target is the highest target during the window.
	Target int
	// Claims made in the window, by every process.
	Claims int
	// Lost counts pooled sandboxes that left the pool in the window other
	// than by expiry: died, failed health, terminated by a user or as surplus.
	Lost int
	// Failed counts creation tries that failed in the window.
	Failed int
	// GoodLife is how long one sandbox counts toward the target (ttl minus
	// use-duration): expiries are explained by the rotations it implies,
	// not one by one, so a pool that judged fresh sandboxes expiring would
	// still be stopped.
	GoodLife time.Duration
}

// CreationBudget is how many creations a window explains: a fill to the
// target, one per claim, lost sandbox and failed try, the rotations that
// the target needs in the window (target x window / good life, rounded
// up), and BudgetSlack. Past it, creations pause (SPEC Behaviour 4).
func CreationBudget(in BudgetInput) int {
	return in.Target + in.Claims + in.Lost + in.Failed + budgetRotations(in) + BudgetSlack(in.Target)
}

// budgetRotations is how many rotations of the target a window explains.
func budgetRotations(in BudgetInput) int {
	if in.GoodLife <= 0 || in.Target <= 0 {
		return 0
	}
	return int((int64(in.Target)*int64(in.Window) + int64(in.GoodLife) - 1) / int64(in.GoodLife))
}

// BudgetSlack is the creation budget's margin: 2, and a tenth of the target.
func BudgetSlack(target int) int { return 2 + target/10 }

// BudgetWindow is the window the creation budget counts over: a minute, or
// one good life of a sandbox when that is longer (so that a window always
// explains at least one rotation of the whole pool).
func BudgetWindow(goodLife time.Duration) time.Duration { return max(time.Minute, goodLife) }

// RotationLead is how long before a sandbox stops being good its
// replacement must start: one creation (p95), a quarter more and half a
// second for the pass that starts it, and one more p95 for each full round
// of creations queued ahead of it behind the creation limit. Capped at
// maxLead (half a sandbox's good life): a lead as long as that life would
// make no sandbox ever count, and the pool create forever.
func RotationLead(p95 time.Duration, queued, limit int, maxLead time.Duration) time.Duration {
	lead := p95 + p95/4 + 500*time.Millisecond
	if limit > 0 {
		lead += time.Duration(queued/limit) * p95
	}
	return min(lead, maxLead)
}

// RotationLeads gives each good-end (when a sandbox stops being good,
// sorted) its lead: RotationLead with the creations queued ahead of its
// replacement: those in flight, and the replacements of the sandboxes whose
// good-ends fall within its own lead before it. The lead grows with the
// queue it reveals, a few rounds at most.
func RotationLeads(goodEnds []time.Time, p95 time.Duration, inflight, limit int, maxLead time.Duration) []time.Duration {
	leads := make([]time.Duration, len(goodEnds))
	for i, end := range goodEnds {
		lead := RotationLead(p95, inflight, limit, maxLead)
		for range 4 {
			from := end.Add(-lead)
			j, _ := slices.BinarySearchFunc(goodEnds[:i], from, func(t, f time.Time) int { return t.Compare(f) })
			next := RotationLead(p95, inflight+i-j, limit, maxLead)
			if next <= lead {
				break
			}
			lead = next
		}
		leads[i] = lead
	}
	return leads
}

// SpreadExpiry is when a sandbox created now should expire so that it stops
// being good apart from the pool's others: sandboxes that stop being good
// together are rotated together, so a small pool made in one go would double
// at each rotation and a large one queue its whole fill behind the creation
// limit (HikariCP varies maxLifetime for the same reason; a spread by design
// is even where a random one clusters). latest is the expiry of a full ttl;
// the answer lies in [latest-window, latest]: the latest time there that is
// at least spacing/2 from every other expiry (ends, any order), or, when
// there is none, the time there farthest from them (the latest of equals).
// spacing is the pool's even gap: a good life over the target.
func SpreadExpiry(latest time.Time, window, spacing time.Duration, ends []time.Time) time.Time {
	if window <= 0 {
		return latest
	}
	lo, half := latest.Add(-window), spacing/2
	reach := max(half, window) // farther ends are never the nearest to a point of the window
	from, to := lo.Add(-reach), latest.Add(reach)
	var near []time.Time
	if byTime := func(a, b time.Time) int { return a.Compare(b) }; slices.IsSortedFunc(ends, byTime) {
		// In order already (the controller keeps them so): the near ones
		// are a run of them, found without a copy or a sort.
		i, _ := slices.BinarySearchFunc(ends, from, byTime)
		j, found := slices.BinarySearchFunc(ends, to, byTime)
		for found && j < len(ends) && ends[j].Equal(to) {
			j++
		}
		near = ends[i:j]
	} else {
		for _, e := range ends {
			if !e.Before(from) && !e.After(to) {
				near = append(near, e)
			}
		}
		slices.SortFunc(near, byTime)
	}
	if len(near) == 0 {
		return latest
	}
	dist := func(p time.Time) time.Duration {
		i, _ := slices.BinarySearchFunc(near, p, func(e, p time.Time) int { return e.Compare(p) })
		d := time.Duration(1<<63 - 1)
		if i < len(near) {
			d = near[i].Sub(p)
		}
		if i > 0 {
			d = min(d, p.Sub(near[i-1]))
		}
		return d
	}
	// The latest time far enough from all: latest itself, or just before one
	// of the others.
	if dist(latest) >= half {
		return latest
	}
	for i := len(near) - 1; i >= 0; i-- {
		if p := near[i].Add(-half); !p.After(latest) && !p.Before(lo) && dist(p) >= half {
			return p
		}
	}
	// None: the farthest time, between two others or at an edge.
	best, bestD := latest, dist(latest)
	for i := len(near) - 1; i > 0; i-- {
		p := near[i-1].Add(near[i].Sub(near[i-1]) / 2)
		if p.After(latest) || p.Before(lo) {
			continue
		}
		if d := dist(p); d > bestD {
			best, bestD = p, d
		}
	}
	if d := dist(lo); d > bestD {
		best = lo
	}
	return best
}
