package pool

import (
	"fmt"
	"slices"
	"time"
)

// creationBudget keeps the pool's recent history that explains creations
// (SPEC Behaviour 4's creation budget) and whether creations are paused
// by it. Guarded by Controller.mu.
type creationBudget struct {
	created, claims, lost, failed []time.Time
	targets                       []targetAt
	paused                        string // why creations are paused, "" when they are not
	pausedSince                   time.Time
}

type targetAt struct {
	at time.Time
	n  int
}

func (b *creationBudget) create(now time.Time)  { b.created = append(b.created, now) }
func (b *creationBudget) claimed(now time.Time) { b.claims = append(b.claims, now) }
func (b *creationBudget) lose(now time.Time)    { b.lost = append(b.lost, now) }
func (b *creationBudget) fail(now time.Time)    { b.failed = append(b.failed, now) }

// prune forgets what left the window, keeping the last target before it
// (it was in force at the window's start).
func (b *creationBudget) prune(now time.Time, window time.Duration) {
	from := now.Add(-window)
	keep := func(ts []time.Time) []time.Time {
		i, _ := slices.BinarySearchFunc(ts, from, func(t, f time.Time) int { return t.Compare(f) })
		return ts[i:]
	}
	b.created, b.claims, b.lost, b.failed = keep(b.created), keep(b.claims), keep(b.lost), keep(b.failed)
	for len(b.targets) > 1 && !b.targets[1].at.After(from) {
		b.targets = b.targets[1:]
	}
}

// allowance is how many creations may start now, given target; when none
// may while some are missing, creations are paused and the returned
// message (non-empty the first time) says why.
func (b *creationBudget) allowance(now time.Time, target, missing int, goodLife time.Duration) (int, string) {
	window := BudgetWindow(goodLife)
	if len(b.targets) == 0 || b.targets[len(b.targets)-1].n != target {
		b.targets = append(b.targets, targetAt{now, target})
	}
	b.prune(now, window)
	highest := 0
	for _, t := range b.targets {
		highest = max(highest, t.n)
	}
	in := BudgetInput{Window: window, Target: highest, Claims: len(b.claims), Lost: len(b.lost),
		Failed: len(b.failed), GoodLife: goodLife}
	left := CreationBudget(in) - len(b.created)
	if left > 0 || missing <= 0 {
		b.paused = ""
		return max(left, 0), ""
	}
	if b.paused != "" {
		return 0, ""
	}
	b.paused = pauseText(len(b.created), in, b.resumeAt(window))
	b.pausedSince = now
	return 0, b.paused
}

// pauseText says why creations paused: what was created in the window
// against what the window explains, every term of the budget named, so
// that the numbers add up ("explain only 13 of 13" read as a contradiction).
func pauseText(created int, in BudgetInput, resume time.Time) string {
	budget := CreationBudget(in)
	how := fmt.Sprintf("all %d that the window explains", budget)
	if created > budget {
		how = fmt.Sprintf("more than the %d that the window explains", budget)
	}
	return fmt.Sprintf("creations paused by the creation budget: %d created in the last %s, %s (a fill to the target of %d, %d claims, %d lost, %d failed tries, %d rotations, slack %d); resumes at %s",
		created, in.Window, how, in.Target, in.Claims, in.Lost, in.Failed, budgetRotations(in), BudgetSlack(in.Target), resume.Format(time.TimeOnly))
}

// resumeAt is when the oldest creation leaves the window.
func (b *creationBudget) resumeAt(window time.Duration) time.Time {
	if len(b.created) == 0 {
		return time.Time{}
	}
	return b.created[0].Add(window)
}
