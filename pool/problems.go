package pool

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// Problem kinds: what Problem.Kind and Event.ErrorKind say, and the kind
// label of sandboxpool_errors_total.
const (
	ProblemStore   = "store"   // the store cannot be read or written
	ProblemBackend = "backend" // the backend cannot list, create or terminate
	ProblemBudget  = "budget"  // creations paused by the creation budget
	ProblemBackoff = "backoff" // creations keep failing; the pool backs off
	ProblemLease   = "lease"   // the controller lease was lost
)

// problemLog keeps the errors that are true now, identical ones folded
// into one with a count, so that an error repeated every second is one
// line, one event per order of magnitude, one Problem.
type problemLog struct {
	mu     sync.Mutex    // guards the fields below; never held across I/O or an emit
	open   []openProblem // by Since
	counts map[string]int64
}

// openProblem is a Problem with the operation whose success resolves it
// (a store that reads but cannot write stays a problem).
type openProblem struct {
	*Problem
	op string
}

// report records one occurrence and returns how many identical ones are
// open now (1 the first time since it was last resolved).
func (p *problemLog) report(kind, op, msg string, now time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counts == nil {
		p.counts = map[string]int64{}
	}
	p.counts[kind]++
	for _, o := range p.open {
		if o.Kind == kind && o.op == op && o.Message == msg {
			o.Count++
			return o.Count
		}
	}
	p.open = append(p.open, openProblem{&Problem{Kind: kind, Message: msg, Count: 1, Since: now}, op})
	return 1
}

// resolve closes the open problems of kind and op (such a call worked).
func (p *problemLog) resolve(kind, op string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = slices.DeleteFunc(p.open, func(o openProblem) bool { return o.Kind == kind && o.op == op })
}

func (p *problemLog) list() []Problem {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Problem, len(p.open))
	for i, o := range p.open {
		out[i] = *o.Problem
	}
	return out
}

func (p *problemLog) totals() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.counts)
}

// sayAgain says whether the n-th identical occurrence is worth an event:
// the first, then the 10th, 100th, ...
func sayAgain(n int) bool {
	for n >= 10 && n%10 == 0 {
		n /= 10
	}
	return n == 1
}

// report records an error of kind and emits it, folded: identical errors
// make one event per order of magnitude of their count.
func (c *Controller) report(kind, op, sandboxID string, err error) {
	msg := err.Error()
	n := c.problems.report(kind, op, msg, c.clk.Now())
	if !sayAgain(n) {
		return
	}
	e := Event{Kind: EventError, ErrorKind: kind, SandboxID: sandboxID, Err: msg, Count: n}
	if n > 1 {
		e.Message = fmt.Sprintf("error (%d times): %s", n, msg)
	}
	c.emit(e)
}

// Operations whose errors are reported, and whose success resolves them.
const (
	opRead      = "read"
	opWrite     = "write"
	opList      = "list"
	opTerminate = "terminate"
	opRecord    = "record"
	opLease     = "lease"
)

// resolve says that calls of kind and op work again.
func (c *Controller) resolve(kind, op string) { c.problems.resolve(kind, op) }

// ErrorCounts is how many errors of each kind occurred, for
// sandboxpool_errors_total{kind} (events are folded; these are not).
func (c *Controller) ErrorCounts() map[string]int64 { return c.problems.totals() }

// Problems lists what is wrong with the pool now (empty when all is well):
// store and backend errors (folded), a creation budget pause, a backoff.
func (c *Controller) Problems() []Problem {
	out := c.problems.list()
	now := c.clk.Now()
	c.mu.Lock()
	if c.failures > 0 {
		msg := "creations are failing: " + c.lastCreate
		if c.backoffUntil.After(now) {
			msg += fmt.Sprintf("; next try in %s", c.backoffUntil.Sub(now).Round(time.Second))
		}
		out = append(out, Problem{Kind: ProblemBackoff, Message: msg, Count: c.failures, Since: c.failingSince})
	}
	if c.budget.paused != "" {
		out = append(out, Problem{Kind: ProblemBudget, Message: c.budget.paused, Count: 1, Since: c.budget.pausedSince})
	}
	c.mu.Unlock()
	return out
}
