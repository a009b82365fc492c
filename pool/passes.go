package pool

import (
	"context"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// passRunner runs maintenance passes one at a time without a lock held
// across a pass: a pass asked for while one runs joins the one after it
// (coalesced), and the caller that runs a pass runs that follow-up too.
type passRunner struct {
	mu      sync.Mutex // guards the fields below; never held across a pass
	running bool
	next    *passWait // callers waiting for the pass after the running one
}

type passWait struct {
	full bool
	done chan struct{}
	err  error
}

// run runs fn now, or waits for the pass after the running one. Follow-up
// passes run with life, since the callers they serve are not this one.
func (p *passRunner) run(ctx, life context.Context, full bool, fn func(context.Context, bool) error) error {
	p.mu.Lock()
	if p.running {
		w := p.next
		if w == nil {
			w = &passWait{done: make(chan struct{})}
			p.next = w
		}
		w.full = w.full || full
		p.mu.Unlock()
		select {
		case <-w.done:
			return w.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.running = true
	p.mu.Unlock()
	err := fn(ctx, full)
	for {
		p.mu.Lock()
		w := p.next
		p.next = nil
		if w == nil {
			p.running = false
			p.mu.Unlock()
			return err
		}
		p.mu.Unlock()
		w.err = fn(life, w.full)
		close(w.done)
	}
}

// Rounds counts the maintenance passes this process finished and, as a
// viewer, its rounds of watching the store and the lease: a test showing
// that nothing happened waits for a few more rounds instead of sleeping.
func (c *Controller) Rounds() int64 { return c.rounds.Load() }

// takeGate counts claims taking from the store, so that creations' store
// writes can let them go first. A burst of claims has gaps between them
// (each client's next claim is a round trip away): the gate counts as busy
// until takeQuiet after the last claim left, so a burst's backfill waits
// for its end instead of taking the CPU between its claims. That quiet is
// about the machine's CPU, not the pool's time: it is read on the real
// clock (an injected fake one would hold a backfill until a test moves it).
type takeGate struct {
	mu   sync.Mutex    // guards n, idle and last
	n    int           // takes in flight
	idle chan struct{} // closed while n == 0
	last time.Time     // when the last take left (real clock)
}

// takeQuiet is how long after a claim a burst counts as over. Claims
// further apart than this (200/s is 5 ms) see no change.
const takeQuiet = 2 * time.Millisecond

func (g *takeGate) enter() {
	g.mu.Lock()
	if g.n == 0 {
		g.idle = make(chan struct{})
	}
	g.n++
	g.mu.Unlock()
}

func (g *takeGate) leave() {
	now := time.Now()
	g.mu.Lock()
	g.n--
	g.last = now
	if g.n == 0 {
		close(g.idle)
	}
	g.mu.Unlock()
}

// busy reports whether a take is in flight or one left within takeQuiet.
func (g *takeGate) busy() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n > 0 || time.Since(g.last) < takeQuiet
}

// inFlight is the number of takes in flight.
func (g *takeGate) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

// waitIdle returns once no take is in flight and none left within
// takeQuiet, or after at most d (on clk while takes are in flight, and on
// the real clock for the quiet), or at ctx's end.
func (g *takeGate) waitIdle(ctx context.Context, clk clockwork.Clock, d time.Duration) {
	var bound clockwork.Timer // made only when there is something to wait for
	defer func() {
		if bound != nil {
			bound.Stop()
		}
	}()
	realBound := time.Now().Add(d)
	for {
		g.mu.Lock()
		n, idle, last := g.n, g.idle, g.last
		g.mu.Unlock()
		if n > 0 {
			if bound == nil {
				bound = clk.NewTimer(d)
			}
			select {
			case <-idle:
				continue
			case <-bound.Chan():
			case <-ctx.Done():
			}
			return
		}
		rest := min(takeQuiet-time.Since(last), time.Until(realBound))
		if rest <= 0 {
			return
		}
		t := time.NewTimer(rest)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// claimRecords are this process's claims between the store's take and the
// end of the backend's record of them (ClaimRecorder), which is made beside
// the claim's answer rather than before it. A reader of the backend's list
// that would adopt a live sandbox unknown to the store (a store lost or
// replaced) waits for the records pending when it starts, so a claimed
// sandbox is never listed as nobody's and re-pooled.
type claimRecords struct {
	mu      sync.Mutex // guards pending
	pending map[*claimRecord]struct{}
}

type claimRecord struct{ done chan struct{} }

func (r *claimRecords) open() *claimRecord {
	x := &claimRecord{done: make(chan struct{})}
	r.mu.Lock()
	if r.pending == nil {
		r.pending = map[*claimRecord]struct{}{}
	}
	r.pending[x] = struct{}{}
	r.mu.Unlock()
	return x
}

func (r *claimRecords) close(x *claimRecord) {
	r.mu.Lock()
	delete(r.pending, x)
	r.mu.Unlock()
	close(x.done)
}

// wait returns once every record pending now is done (those opened later
// are not waited for: a steady stream of claims cannot starve the caller),
// or at ctx's end.
func (r *claimRecords) wait(ctx context.Context) error {
	r.mu.Lock()
	var now []*claimRecord
	for x := range r.pending {
		now = append(now, x)
	}
	r.mu.Unlock()
	for _, x := range now {
		select {
		case <-x.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// creationLimit paces creations to what the backend and the machine can
// do (a concurrency limit in the style of TCP slow start): it starts small,
// grows by one per creation that stays quick, and is cut when one is slow
// or fails; never above max. Guarded by Controller.mu.
type creationLimit struct {
	limit, most int
}

func newCreationLimit(most int) creationLimit {
	// Start at the cap: a creation costs the local agent ~1-3 ms of CPU and
	// Modal a second of waiting, so holding back only slows a fill; slow
	// or refused answers cut the limit from there.
	return creationLimit{limit: most, most: most}
}

func (l *creationLimit) now() int { return l.limit }

// done accounts for one creation that took took (ok) or failed; best is
// the quickest recent creation.
func (l *creationLimit) done(took time.Duration, ok bool, best time.Duration) {
	l.limit = NextCreationLimit(l.limit, l.most, took, best, ok)
}
