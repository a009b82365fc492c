package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ClaimOptions shapes one claim.
type ClaimOptions struct {
	// CheckHealth probes the sandbox once before handing it out (the seed's default).
	CheckHealth bool
	// Timeout bounds the wait for a good sandbox; 0 means the configured claim timeout.
	Timeout time.Duration
	// By says who claims: "dashboard", "cli", "api 127.0.0.1:5555".
	By string
	// AnnounceLater leaves the claim's event and backfill to the caller's
	// Claimed.Announce, once its answer is on its way (the HTTP API): the
	// claimer waits for neither. The claim is counted and stored before
	// Claim returns either way.
	AnnounceLater bool
}

// Claimed is a sandbox handed out by a claim.
type Claimed struct {
	Entry
	// Warm is true when a ready sandbox was there at once.
	Warm bool
	// Waited is how long the claim took.
	Waited time.Duration

	announce *sync.Once // set for a claim made with AnnounceLater
	c        *Controller
	rest     func()
}

// Announce emits the event of a claim made with ClaimOptions.AnnounceLater
// and starts its backfill; once, however often it is called. It does
// nothing for other claims (Claim announced them).
func (cl Claimed) Announce() {
	if cl.announce != nil {
		cl.announce.Do(func() {
			cl.rest()
			cl.c.announce(cl)
		})
	}
}

// Claim takes the first good sandbox in pool order (SPEC Behaviour 3):
// entries with too little time left and, with CheckHealth, ones that do not
// answer are terminated on the way; a backfill starts at once. With none
// good it waits, in arrival order with other waiting claims, up to the
// timeout and then fails with ErrNoSandbox. The store's atomic Take is what
// guarantees that no sandbox is ever handed to two claimers.
func (c *Controller) Claim(ctx context.Context, o ClaimOptions) (Claimed, error) {
	start := c.clk.Now()
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = c.cfg.ClaimTimeout
	}
	// Fast path: with nobody waiting, claims take concurrently (the store's
	// Take is atomic); waiting claims queue up so they are served in order.
	if c.waitq.empty() {
		got, rest, ok, err := c.tryTake(ctx, o)
		if err != nil {
			return Claimed{}, c.takeFailed(ctx, o, err)
		}
		if ok {
			return c.claimed(got, start, true, o, rest), nil
		}
	}
	if err := c.sizedToZero(ctx); err != nil {
		return Claimed{}, c.claimFailed(o, err)
	}
	c.Kick() // backfill
	deadline := c.clk.After(timeout)
	ticket := c.waitq.join()
	defer c.waitq.leave(ticket)
	for {
		// Taken before trying, so a sandbox that gets ready meanwhile wakes us.
		changed := c.changeSignal()
		if c.waitq.isHead(ticket) {
			got, rest, ok, err := c.tryTake(ctx, o)
			if err != nil {
				return Claimed{}, c.takeFailed(ctx, o, err)
			}
			if ok {
				return c.claimed(got, start, false, o, rest), nil
			}
		}
		select {
		case <-ctx.Done():
			return Claimed{}, c.claimFailed(o, ctx.Err())
		case <-deadline:
			return Claimed{}, c.claimFailed(o, fmt.Errorf("%w within %s in pool %q", ErrNoSandbox, timeout, c.cfg.Pool))
		case <-changed:
		case <-c.waitq.turn(ticket):
		case <-c.clk.After(c.poll): // another process may have filled the pool
		}
	}
}

// rest is what is left of the claim's way out (its record, the end of its
// turn ahead of the backfill): run first by its announcement.
func (c *Controller) claimed(got Entry, start time.Time, warm bool, o ClaimOptions, rest func()) Claimed {
	waited := c.clk.Now().Sub(start)
	c.mu.Lock()
	// Counted as seen when the take returned (tryTake): this is its one
	// count and its one event.
	if warm {
		c.stats.ClaimsWarm++
	} else {
		c.stats.ClaimsWaited++
	}
	c.budget.claimed(c.clk.Now())
	c.wroteLocked(got, false)
	c.mu.Unlock()
	cl := Claimed{Entry: got, Warm: warm, Waited: waited}
	if o.AnnounceLater {
		cl.announce, cl.c, cl.rest = new(sync.Once), c, rest
		return cl
	}
	rest()
	c.announce(cl)
	return cl
}

// announce says a claim (its event: the log, the journal, observers) and
// starts its backfill and the probes ahead of the next claims.
func (c *Controller) announce(cl Claimed) {
	c.emit(Event{Kind: EventClaimed, SandboxID: cl.ID, By: cl.ClaimedBy, Duration: cl.Waited, Warm: cl.Warm})
	c.Kick() // backfill at once
	c.probeAhead()
}

// takeFailed accounts a claim whose claimer left like one that timed out;
// a store error is returned as it is.
func (c *Controller) takeFailed(ctx context.Context, o ClaimOptions, err error) error {
	if ctx.Err() != nil {
		return c.claimFailed(o, ctx.Err())
	}
	return err
}

func (c *Controller) claimFailed(o ClaimOptions, err error) error {
	c.mu.Lock()
	c.stats.ClaimsFailed++
	c.mu.Unlock()
	c.emit(Event{Kind: EventClaimTimeout, By: o.By, Err: err.Error()})
	return err
}

// tryTake takes entries until one is good, terminating bad ones met on the way.
// While it runs, the backfill's passes, creations and store writes hold back
// (c.takes): a burst of claims is served ahead of the work it causes. A
// claim taken comes with rest, to be run once its answer is on its way: it
// ends the claim's turn ahead of the backfill and starts its backend record
// when that is made beside the answer (neither is the claimer's wait).
func (c *Controller) tryTake(ctx context.Context, o ClaimOptions) (_ Entry, rest func(), _ bool, _ error) {
	// A claim may take from memory (takeQuick), its store record after its
	// answer. After a quiet spell the record is written right after the
	// answer, while the claimer reads it. A claim back to back or in a
	// burst leaves its record to the store (RecordSoon): the next change,
	// or one within a few ms, writes every take of the burst at once; a
	// record of its own in the handler held up the next request on its
	// connection, and a burst's takes from the file were a transaction
	// (flock, stat, append) for every 1.5 claims.
	burst := c.takes.busy()
	fromFile := false
	c.takes.enter()
	taken := false
	defer func() {
		if !taken {
			c.takes.leave()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return Entry{}, nil, false, err
		}
		now := c.clk.Now()
		tr := TakeRequest{MinExpiresAt: now.Add(c.useDur()), ClaimedBy: o.By, Now: now, KeepShort: !c.looping.Load()}
		key := claimKey{by: tr.ClaimedBy, at: now.UnixNano()}
		c.mu.Lock()
		if c.claiming == nil {
			c.claiming = map[claimKey]int{}
		}
		c.claiming[key]++
		c.mu.Unlock()
		// Opened before the take: a pass that lists the backend after it
		// waits until the backend's record of this claim is made.
		rec := c.records.open()
		var (
			got     Entry
			pend    PendingTake
			ok      bool
			dropped []Entry
			err     error
		)
		if !fromFile {
			got, pend, ok = c.takeQuick(tr)
		}
		if !ok {
			got, dropped, ok, err = c.st.Take(ctx, tr)
		}
		if err != nil || !ok {
			c.records.close(rec)
		}
		c.mu.Lock()
		if c.claiming[key]--; c.claiming[key] <= 0 {
			delete(c.claiming, key)
		}
		if ok && err == nil {
			// Ours from now on: a load that sees it claimed skips it, and
			// claimed() gives it its one event.
			c.countClaimOnceLocked(got.ID)
		}
		c.mu.Unlock()
		if err != nil {
			err = fmt.Errorf("claim from the store: %w", err)
			if ctx.Err() == nil {
				c.report(ProblemStore, opWrite, "", err)
			}
			return Entry{}, nil, false, err
		}
		if pend == nil { // a take from memory wrote nothing yet
			c.resolve(ProblemStore, opWrite)
		}
		for _, d := range dropped {
			c.forget(d.ID)
			c.emit(Event{Kind: EventExpired, SandboxID: d.ID})
			c.terminateAsync(d, ReasonExpired, ClaimBy(o.By))
		}
		if !ok {
			return Entry{}, nil, false, nil
		}
		fresh := o.CheckHealth && c.freshlyHealthy(got.ID, now)
		if pend != nil {
			if fresh || !o.CheckHealth {
				done, recorded, gone, elsewhere := c.gateQuick(ctx, got, pend)
				switch {
				case done && recorded:
					taken = true
					c.records.close(rec)
					return got, func() {
						c.recordTake(got, pend, burst)
						c.takes.leave()
					}, true, nil
				case done:
					taken = true
					return got, func() {
						c.recordTake(got, pend, burst)
						c.takes.leave()
						c.recordClaimAsync(got, rec)
					}, true, nil
				case elsewhere:
					c.records.close(rec)
					continue
				case gone:
					c.emit(Event{Kind: EventHealthFailed, SandboxID: got.ID, Err: "gone (the backend says it is not running)"})
					c.dropTaken(ctx, got, o.By)
					c.records.close(rec)
					continue
				}
			}
			// The gate could not decide at once, or a probe comes first:
			// the file's take, as ever (it claims only what the file
			// holds pooled), unless a compaction wrote this one already.
			if !pend.Cancel() {
				c.records.close(rec)
				c.mu.Lock()
				delete(c.counted, got.ID)
				c.mu.Unlock()
				fromFile = true
				continue
			}
		}
		if o.CheckHealth && !fresh {
			h := c.probe(ctx, got.URL)
			if err := ctx.Err(); err != nil {
				// The claimer left during the check: the sandbox is not to
				// blame. It goes back to the pool (at its end) untouched,
				// and a later claim of it is news again.
				c.giveBack(got, o.By)
				c.mu.Lock()
				delete(c.counted, got.ID)
				c.mu.Unlock()
				c.records.close(rec)
				return Entry{}, nil, false, err
			}
			c.mu.Lock()
			c.setHealthLocked(got.ID, h)
			c.mu.Unlock()
			if !h.OK {
				c.emit(Event{Kind: EventHealthFailed, SandboxID: got.ID, Health: h, Err: h.Error})
				c.dropTaken(ctx, got, o.By)
				c.records.close(rec)
				continue
			}
		}
		taken = true
		if c.recordLater(fresh) {
			return got, func() { c.takes.leave(); c.recordClaimAsync(got, rec) }, true, nil
		}
		gone, elsewhere, later := c.recordClaim(got)
		if later {
			return got, func() { c.takes.leave(); c.recordClaimAsync(got, rec) }, true, nil
		}
		c.records.close(rec)
		if elsewhere {
			// The store handed out a sandbox another claim holds (it lost
			// that claim): it is not ours to hand out, nor to terminate.
			taken = false
			c.withdraw(ctx, got, true)
			c.forget(got.ID)
			c.emit(Event{Kind: EventStoreChanged, SandboxID: got.ID,
				Message: got.ID + " is claimed elsewhere (the backend says so): not handed out again"})
			continue
		}
		if gone {
			// Its workload ended since its last probe (a fresh probe was
			// trusted): never hand out a dead sandbox.
			c.emit(Event{Kind: EventHealthFailed, SandboxID: got.ID, Err: "gone (the backend says it is not running)"})
			taken = false
			c.dropTaken(ctx, got, o.By)
			continue
		}
		return got, c.takes.leave, true, nil
	}
}

// takeQuick serves a take from the store's memory (QuickTaker) when the
// backend's gate can decide the claim before its answer (QuickClaimGate),
// in the controller that holds the pool's lease: no lock and no write of
// the store before the answer, the gate keeps claimers apart, and the
// store's record follows the answer (recordTake).
func (c *Controller) takeQuick(tr TakeRequest) (Entry, PendingTake, bool) {
	q, ok := c.st.(QuickTaker)
	if !ok || !c.looping.Load() {
		return Entry{}, nil, false
	}
	if _, ok := c.be.(QuickClaimGate); !ok {
		return Entry{}, nil, false
	}
	return q.TakeQuick(tr)
}

// gateQuick asks the gate about a take served from memory: done, the claim
// is ours (the gate says so, whoever reads it after a kill -9 of this
// process), and recorded, its backend record made with it; gone or
// elsewhere, the take is withdrawn and its entry dealt with as a Take's
// would be (the caller drops a gone one); none of them, the gate could not
// decide and the take is still pending.
func (c *Controller) gateQuick(ctx context.Context, got Entry, pend PendingTake) (done, recorded, gone, elsewhere bool) {
	decided, recorded, err := c.be.(QuickClaimGate).TryClaimOnce(got)
	switch {
	case !decided:
		return false, false, false, false
	case err == nil:
		if recorded {
			c.resolve(ProblemBackend, opRecord)
		}
		return true, recorded, false, false
	case errors.Is(err, ErrNotFound):
		pend.Cancel()
		return false, false, true, false
	case errors.Is(err, ErrAlreadyClaimed):
		// Another claim holds it. The store may be about to say so (that
		// claim's record on its way), or be an old copy put back: it
		// leaves the pool, and a claim's record in the store stays.
		c.withdraw(ctx, got, pend.Cancel())
		c.mu.Lock()
		delete(c.counted, got.ID)
		c.mu.Unlock()
		c.forget(got.ID)
		c.emit(Event{Kind: EventStoreChanged, SandboxID: got.ID,
			Message: got.ID + " is claimed elsewhere (the backend says so): not handed out again"})
		return false, false, false, true
	}
	// Another answer of the gate: as undecided, the record decides.
	return false, false, false, false
}

// withdraw takes a claim the gate refused out of the store: the entry
// leaves it unless another claim's record holds it by now (a take from
// memory that won the gate, its record written since). recorded says the
// store holds this claim's take; if not, only a pooled entry goes.
func (c *Controller) withdraw(ctx context.Context, got Entry, recorded bool) {
	var err error
	if w, ok := c.st.(Withdrawer); ok {
		err = w.Withdraw(ctx, got)
	} else if recorded {
		_, err = c.st.Remove(ctx, got.ID)
	} else {
		_, err = c.st.Evict(ctx, got.ID)
	}
	if err != nil {
		c.report(ProblemStore, opWrite, got.ID, fmt.Errorf("remove %s from the store: %w", got.ID, err))
	}
}

// recordTake writes the store's record of a take served from memory, once
// its answer is on its way; a failure is reported (the gate holds the
// claim, and the next change of the store writes it). In a burst it is
// left to the store (soon: see tryTake).
func (c *Controller) recordTake(got Entry, pend PendingTake, burst bool) {
	if burst {
		pend.RecordSoon()
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.life), recordTimeout)
	defer cancel()
	if err := pend.Record(ctx); err != nil {
		c.report(ProblemStore, opWrite, got.ID, fmt.Errorf("record the claim of %s in the store: %w", got.ID, err))
		return
	}
	c.resolve(ProblemStore, opWrite)
}

// ErrTargetZero is returned at once by a claim on a pool whose stored
// target is 0 (sized to 0, or torn down): waiting could not help.
var ErrTargetZero = errors.New("the pool's target is 0")

// sizedToZero fails a claim that could only time out: the pool was sized
// to 0 and nothing is being created.
func (c *Controller) sizedToZero(ctx context.Context) error {
	c.mu.Lock()
	loaded := c.loaded
	c.mu.Unlock()
	if !loaded {
		_, _, _ = c.loadStore(ctx)
	}
	c.mu.Lock()
	zero := c.stored.HasTarget && c.stored.Target == 0 && len(c.inflight) == 0
	c.mu.Unlock()
	if zero {
		return fmt.Errorf("%w: %w in pool %q: resize it to claim", ErrNoSandbox, ErrTargetZero, c.cfg.Pool)
	}
	return nil
}

// freshlyHealthy says a sandbox passed a probe less than HealthFresh ago,
// so a claim need not probe it again (HikariCP's aliveBypassWindowMs).
func (c *Controller) freshlyHealthy(id string, now time.Time) bool {
	if c.cfg.HealthFresh <= 0 {
		return false
	}
	c.mu.Lock()
	h := c.health[id]
	c.mu.Unlock()
	return h.OK && now.Sub(h.CheckedAt) < c.cfg.HealthFresh
}

// dropTaken removes a taken sandbox that turned out bad from the store and
// terminates it for the claim (it was never really handed out).
func (c *Controller) dropTaken(ctx context.Context, got Entry, by string) {
	if _, err := c.st.Remove(ctx, got.ID); err != nil {
		c.report(ProblemStore, opWrite, got.ID, fmt.Errorf("remove %s from the store: %w", got.ID, err))
	}
	c.forget(got.ID)
	unpooled := got
	unpooled.ClaimedBy = "" // count it as waste
	c.terminateAsync(unpooled, ReasonUnhealthy, ClaimBy(by))
}

// recordClaim tells a backend that keeps its own record of claims (the
// local agent, Modal tags) that e was handed out, so that losing or
// replacing the store never puts it back in the pool. The store's record
// is the one that counts: a failure here is reported, not fatal, unless
// the backend says the sandbox is not running (gone). A QuickClaimGate that
// decided at once made the record with its decision, or leaves it to be
// made beside the answer (later).
func (c *Controller) recordClaim(e Entry) (gone, elsewhere, later bool) {
	var err error
	if q, ok := c.be.(QuickClaimGate); ok {
		var decided, recorded bool
		if decided, recorded, err = q.TryClaimOnce(e); decided {
			if recorded {
				c.resolve(ProblemBackend, opRecord)
			}
			return errors.Is(err, ErrNotFound), errors.Is(err, ErrAlreadyClaimed), err == nil && !recorded
		}
	}
	ctx, cancel := context.WithTimeout(c.life, 5*time.Second)
	defer cancel()
	if g, ok := c.be.(ClaimGate); ok {
		err = g.MarkClaimedOnce(ctx, e)
	} else if rec, ok := c.be.(ClaimRecorder); ok {
		err = rec.MarkClaimed(ctx, e.ID, e.ClaimedBy)
	} else {
		return false, false, false
	}
	switch {
	case err == nil:
		c.resolve(ProblemBackend, opRecord)
	case errors.Is(err, ErrNotFound):
		return true, false, false
	case errors.Is(err, ErrAlreadyClaimed):
		return false, true, false
	case ctx.Err() == nil:
		c.report(ProblemBackend, opRecord, e.ID, fmt.Errorf("record the claim in the backend: %w", err))
	}
	return false, false, false
}

// recordLater says whether a claim's backend record may be made beside its
// answer rather than before it: unless the claim trusted a fresh probe
// (trustedFresh) on a backend whose sandboxes may end on their own between
// probes, where the record's "not running" is what keeps a dead sandbox
// from being handed out.
func (c *Controller) recordLater(trustedFresh bool) bool {
	if _, gate := c.be.(ClaimGate); gate {
		return false // it may refuse the claim: recordClaim decides before the answer
	}
	if !trustedFresh {
		return true
	}
	s, ok := c.be.(SelfContained)
	return ok && s.SandboxesEndOnlyWithBackend()
}

// recordClaimAsync tells a backend that keeps its own record of claims (the
// local agent, Modal tags) that e was handed out, so that losing or
// replacing the store never puts it back in the pool. The store's record
// is the one that counts: a failure here is reported, not fatal. It runs
// beside the answer, not before it (the agent's round trip is a
// cross-process wake-up, ~0.3-0.5 ms): what reads the backend's record to
// adopt or tear down waits for the pending ones (c.records), and so does
// Close. rec is closed when it is done.
func (c *Controller) recordClaimAsync(e Entry, rec *claimRecord) {
	r, ok := c.be.(ClaimRecorder)
	if !ok {
		c.records.close(rec)
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.records.close(rec)
		// Not cut short by Close: it waits for the record (a `claim`
		// process must not exit before it is made).
		ctx, cancel := context.WithTimeout(context.WithoutCancel(c.life), recordTimeout)
		defer cancel()
		var err error
		if g, ok := c.be.(ClaimGate); ok {
			err = g.MarkClaimedOnce(ctx, e) // its record names the claim's instant too
		} else {
			err = r.MarkClaimed(ctx, e.ID, e.ClaimedBy)
		}
		switch {
		case err == nil:
			c.resolve(ProblemBackend, opRecord)
		case errors.Is(err, ErrNotFound):
			// It died right after its probe, in its claimer's hands: no
			// backend fault (soak: a WARN error and a 503 /healthz); the
			// next pass says it ended.
		default:
			c.report(ProblemBackend, opRecord, e.ID, fmt.Errorf("record the claim in the backend: %w", err))
		}
	}()
}

// recordTimeout bounds one claim record, and so how long a pass or Close
// may wait for it.
const recordTimeout = 5 * time.Second

// giveBack returns a taken sandbox to the pool. A store that cannot take an
// id back (Modal records every claim, and its tags say claimed, so reconcile
// would never reap it) says ErrNotPooled: it is nobody's, and terminated for
// the claimer that left (a pooled sandbox gone: it explains its replacement,
// which starts at once).
func (c *Controller) giveBack(e Entry, by string) {
	ctx, cancel := context.WithTimeout(c.life, 10*time.Second)
	defer cancel()
	if _, err := c.st.Remove(ctx, e.ID); err != nil {
		c.report(ProblemStore, opWrite, e.ID, fmt.Errorf("give %s back: %w", e.ID, err))
		return
	}
	// Not claimed any more: pooled again, it is no stale store's entry.
	c.mu.Lock()
	c.claimedView.remove(e.ID)
	c.mu.Unlock()
	err := c.st.Put(ctx, e.Ref)
	switch {
	case errors.Is(err, ErrNotPooled):
		c.forget(e.ID)
		unpooled := e
		unpooled.ClaimedBy = "" // never really handed out
		c.terminateAsync(unpooled, ReasonUser, ClaimBy(by))
		c.Kick()
	case err != nil:
		c.report(ProblemStore, opWrite, e.ID, fmt.Errorf("give %s back: %w", e.ID, err))
	}
}

// changeSignal is closed the next time a sandbox becomes ready here or the
// store is seen to change.
func (c *Controller) changeSignal() <-chan struct{} {
	c.changeMu.Lock()
	defer c.changeMu.Unlock()
	return c.changed
}

func (c *Controller) notifyChange() {
	c.changeMu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.changeMu.Unlock()
}

// waitQueue serves waiting claims in arrival order: only the head may take.
type waitQueue struct {
	mu      sync.Mutex
	next    uint64
	tickets []*ticket
}

type ticket struct {
	n    uint64
	head chan struct{} // closed when the ticket becomes the head
}

func (q *waitQueue) join() *ticket {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.next++
	t := &ticket{n: q.next, head: make(chan struct{})}
	q.tickets = append(q.tickets, t)
	if len(q.tickets) == 1 {
		close(t.head)
	}
	return t
}

func (q *waitQueue) leave(t *ticket) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, x := range q.tickets {
		if x == t {
			q.tickets = append(q.tickets[:i], q.tickets[i+1:]...)
			if i == 0 && len(q.tickets) > 0 {
				close(q.tickets[0].head)
			}
			return
		}
	}
}

func (q *waitQueue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.tickets) == 0
}

func (q *waitQueue) isHead(t *ticket) bool {
	select {
	case <-t.head:
		return true
	default:
		return false
	}
}

// turn is closed once t is the head; a head's channel stays closed, so a
// head must not select on it (it would spin): it gets a nil channel.
func (q *waitQueue) turn(t *ticket) <-chan struct{} {
	if q.isHead(t) {
		return nil
	}
	return t.head
}

// claimKey names a claim as a store records it (ClaimedBy, ClaimedAt), so
// that a load can tell this process's claims still taking from the store
// from other processes' claims before the id is known here.
type claimKey struct {
	by string
	at int64 // ClaimedAt in Unix ns
}

// ownClaimLocked says that e, seen claimed in the store, is this process's
// claim on its way out: claimed() counts and says it, not the load.
func (c *Controller) ownClaimLocked(e Entry) bool {
	return c.claiming[claimKey{by: e.ClaimedBy, at: e.ClaimedAt.UnixNano()}] > 0
}

// countClaimOnceLocked reports whether the claim of id is news here. A claim
// by another process reaches a controller twice, through the store (a pooled
// entry turned claimed) and through the pool's journal; this process's own
// claims are marked when their take returns: each counts and is said once.
func (c *Controller) countClaimOnceLocked(id string) bool {
	now := c.clk.Now()
	if c.counted == nil {
		c.counted = map[string]time.Time{}
	}
	if _, seen := c.counted[id]; seen {
		return false
	}
	// Claims counted over 10 minutes ago are forgotten oldest first, each
	// looked at once: a scan of the whole map on each claim once it held
	// 4,096 cost O(claims in 10 minutes) under c.mu, on every claim.
	for len(c.counted) >= 4096 && len(c.countedOrder) > 0 && now.Sub(c.countedOrder[0].at) > 10*time.Minute {
		old := c.countedOrder[0]
		c.countedOrder = c.countedOrder[1:]
		if at, ok := c.counted[old.id]; ok && at.Equal(old.at) {
			delete(c.counted, old.id)
		}
	}
	c.counted[id] = now
	c.countedOrder = append(c.countedOrder, countedClaim{id, now})
	return true
}

// countedClaim is one claim counted, in Controller.countedOrder.
type countedClaim struct {
	id string
	at time.Time
}
