package modalx

import (
	"context"
	"slices"
	"sync"
	"time"

	modal "github.com/modal-labs/libmodal/modal-go"
	"github.com/sandboxpool/sandboxpool/pool"
)

// Warm claims in one round trip (issue 11).
//
// The process that holds the controller lease reserves a few of the pool's
// oldest good sandboxes ahead of demand, in the background: it pops one from
// the pool partition, wins its bid with op "reserve" (so no claimer of the
// pool partition, this package's or the Python protocol in the README, can
// ever win it), then writes a "reserve" record in the day's log partition,
// where every Load sees it as pooled. A claim through the holder then takes
// a reserved sandbox from memory and writes one record, its claim, in that
// log partition: one round trip. Tags and the refill follow in the background.
//
// Why one unconditional put is enough: for a reserved sandbox the first
// decisive record in the log (claim or remove) wins, and only the holder
// writes claims for it. The holder writes one only while its lease is valid:
// the put must be acknowledged before t0 + 2 heartbeats, where t0 is when it
// last read the lease and found itself current. Another process can take the
// lease over only once the last record is 3 heartbeats old, and then uses an
// inherited reservation only after 3 more heartbeats: whatever the old
// holder got acknowledged is in the log by then, and it gets nothing
// acknowledged later. (Clocks of the hosts must agree within a heartbeat.)
//
// A user's `terminate ID` from another process writes a remove record for a
// reserved sandbox at once; it may race a claim, as terminating a claimed
// sandbox does anyway. Eviction (maintenance) of a reserved sandbox is the
// holder's alone.
//
// kill -9 of the holder: reserved sandboxes stay recorded and the next holder
// inherits them; one popped and bid for but not yet recorded is found by
// reconcile and adopted back as a reservation (Put reads its bid).

const (
	// maxReserved bounds what the holder keeps reserved: a few, so that
	// claimers of the queue (CLI, Python) always find most of the pool.
	maxReserved = 3
	// reserveSlack: a sandbox is reserved only with this much more than the
	// use-duration left, so it does not expire in the reservation at once.
	reserveSlack = 10 * time.Second
)

// holding is the lease holder's state, under Store.rmu.
type holding struct {
	lease     *Lease
	refill    bool                  // this holder reserves ahead (a controller, not a claim's backfill)
	inheritAt time.Time             // reservations of a previous holder are usable from then
	reserved  []pool.Entry          // won and recorded (or being recorded), oldest first
	pending   map[string]pool.Entry // popped and being bid for: shown as pooled meanwhile
	settled   chan struct{}         // closed when pending empties (nil while it is empty)
	claiming  map[string]pool.Entry // claim records in flight: shown as claimed
	decided   map[string]time.Time  // claimed or removed here (value: expiry): never inherit again
	doubt     map[string]pool.Entry // claim put failed: decided by the next Load
	kick      chan struct{}
	stop      context.CancelFunc
	done      chan struct{}
}

// fastOK reports whether claims may be served from reservations now, and
// the deadline by which a claim record must be acknowledged.
func (h *holding) validUntil() (time.Time, bool) {
	if h == nil || h.lease == nil {
		return time.Time{}, false
	}
	until := h.lease.validUntil()
	// Room for one round trip: a put that cannot make it is not tried.
	return until, h.lease.s.c.clk.Until(until) > 200*time.Millisecond
}

// startHolding begins the holder's reservations for a new lease.
func (s *Store) startHolding(l *Lease, holder pool.LeaseRecord, inheritAt time.Time) {
	ctx, cancel := context.WithCancel(context.Background())
	h := &holding{lease: l, inheritAt: inheritAt,
		refill:  holder.Role != pool.RoleBackfill,
		pending: map[string]pool.Entry{}, claiming: map[string]pool.Entry{},
		decided: map[string]time.Time{}, doubt: map[string]pool.Entry{},
		kick: make(chan struct{}, 1), stop: cancel, done: make(chan struct{})}
	s.rmu.Lock()
	old := s.hold
	s.hold = h
	s.rmu.Unlock()
	if old != nil {
		old.stop()
		<-old.done
	}
	go s.refillLoop(ctx, h)
}

// stopHolding ends the reservations of lease l (released or lost): claims
// from memory stop, and those in flight finish first, so that a release
// record comes after every claim record of this holder.
func (s *Store) stopHolding(l *Lease) {
	s.rmu.Lock()
	h := s.hold
	if h == nil || h.lease != l {
		s.rmu.Unlock()
		return
	}
	s.hold = nil
	s.rmu.Unlock()
	h.stop()
	<-h.done
	s.fastMu.Lock() // waits for claim puts in flight
	s.fastMu.Unlock()
}

func (h *holding) poke() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// refillLoop keeps the reservations topped up while the lease is held.
func (s *Store) refillLoop(ctx context.Context, h *holding) {
	defer close(h.done)
	tick := s.c.clk.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.kick:
		case <-tick.Chan():
		}
		if !h.refill {
			continue
		}
		for ctx.Err() == nil && s.reserveOne(ctx, h) {
		}
	}
}

// reserveWant is how many the holder keeps reserved: at most maxReserved and
// never more than half of the good ones, so claimers of the queue find the rest.
func (s *Store) reserveWant(h *holding) int {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	good := len(h.reserved) + len(h.pending) + s.sharedGood
	return min(maxReserved, good/2) - len(h.reserved) - len(h.pending)
}

// reserveOne reserves the pool head when one more is wanted and the head is
// good; it reports whether it reserved one.
func (s *Store) reserveOne(ctx context.Context, h *holding) bool {
	if _, ok := h.validUntil(); !ok || s.reserveWant(h) <= 0 {
		return false
	}
	q := s.queue()
	v, ok, err := s.popFrom(ctx, q, partPool)
	if err != nil || !ok {
		return false
	}
	var r poolRec
	if !decode(v, &r) || r.ID == "" {
		return true // junk item: gone, try the next
	}
	e := pool.Entry{Ref: r.ref()}
	if r.ExpiresAt.Before(s.c.clk.Now().Add(s.useDuration() + reserveSlack)) {
		// Too short to reserve: back in the pool for maintenance to retire.
		s.requeue(ctx, v)
		return false
	}
	s.rmu.Lock()
	if s.hold != h {
		s.rmu.Unlock()
		s.requeue(ctx, v)
		return false
	}
	h.pending[e.ID] = e
	if h.settled == nil {
		h.settled = make(chan struct{})
	}
	s.rmu.Unlock()
	won, _, err := s.bid(ctx, e.ID, "reserve", "")
	if err != nil {
		// Not known whether the bid landed: a requeued copy whose bid did
		// is never handed out by anyone (bids decide), and reconcile
		// adopts it back.
		s.requeue(ctx, v)
	}
	if err == nil && won {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_ = s.put(wctx, logPart(e.ExpiresAt), encode(logRec{Op: "reserve", Entry: e}))
		cancel()
		s.c.markReserved(e.Ref)
	}
	s.rmu.Lock()
	delete(h.pending, e.ID)
	if err == nil && won && s.hold == h && h.decided[e.ID].IsZero() {
		h.reserved = insertByExpiry(h.reserved, e)
	}
	if len(h.pending) == 0 && h.settled != nil {
		close(h.settled)
		h.settled = nil
	}
	s.rmu.Unlock()
	return err == nil
}

// reserving returns a channel closed once the holder's reservations in
// the making are made (or not), and nil when none is: the pool's head is
// one of them, out of the queue and not yet in memory, and a claim that
// popped the queue meanwhile would pass over the oldest sandbox. It waits
// no longer than the lease lets this holder serve claims.
func (s *Store) reserving() (<-chan struct{}, time.Time) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	h := s.hold
	until, ok := h.validUntil()
	if !ok || h.settled == nil {
		return nil, time.Time{}
	}
	return h.settled, until
}

func insertByExpiry(es []pool.Entry, e pool.Entry) []pool.Entry {
	if slices.ContainsFunc(es, func(x pool.Entry) bool { return x.ID == e.ID }) {
		return es
	}
	i, _ := slices.BinarySearchFunc(es, e, func(a, b pool.Entry) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
	return slices.Insert(es, i, e)
}

// takeReserved serves a claim from the holder's reservations: one put of
// the claim record (plus, in parallel, removal records of reserved entries
// too short to hand out when the caller drops those). handled is false when
// this process cannot serve from memory now.
func (s *Store) takeReserved(ctx context.Context, minExpiresAt time.Time, claimedBy string, now time.Time, keepShort bool) (taken pool.Entry, dropped []pool.Entry, handled bool, err error) {
	s.fastMu.RLock()
	defer s.fastMu.RUnlock()
	q := s.queue() // before the pick: see reopen
	s.rmu.Lock()
	h := s.hold
	until, ok := h.validUntil()
	if !ok || len(h.reserved) == 0 {
		s.rmu.Unlock()
		return pool.Entry{}, nil, false, nil
	}
	var got *pool.Entry
	var keep []pool.Entry
	for _, e := range h.reserved {
		switch {
		case got != nil || (keepShort && e.ExpiresAt.Before(minExpiresAt)):
			keep = append(keep, e)
		case e.ExpiresAt.Before(minExpiresAt):
			dropped = append(dropped, e)
		default:
			c := e
			got = &c
		}
	}
	if got == nil {
		if len(dropped) == 0 {
			s.rmu.Unlock()
			return pool.Entry{}, nil, false, nil
		}
	} else {
		got.ClaimedBy, got.ClaimedAt = claimedBy, now
		h.claiming[got.ID] = *got
		h.decided[got.ID] = got.ExpiresAt
	}
	for _, d := range dropped {
		h.decided[d.ID] = d.ExpiresAt
	}
	h.reserved = keep
	s.rmu.Unlock()

	// The records, at once and in parallel: one round trip; into the queue
	// as it was when reserved (one reopened meanwhile lost the reservation).
	pctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	var wg sync.WaitGroup
	dropErrs := make([]error, len(dropped))
	for i, d := range dropped {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dropErrs[i] = s.putTo(pctx, q, logPart(d.ExpiresAt), encode(logRec{Op: "remove", Entry: d}))
		}()
	}
	var claimErr error
	if got != nil {
		claimErr = s.putTo(pctx, q, logPart(got.ExpiresAt), encode(logRec{Op: "claim", Entry: *got}))
	}
	wg.Wait()
	s.rmu.Lock()
	var out []pool.Entry
	for i, d := range dropped {
		if dropErrs[i] == nil {
			out = append(out, d)
		} else if s.hold == h {
			h.doubt[d.ID] = d // decided by the next Load
		}
	}
	if got != nil {
		delete(h.claiming, got.ID)
		if claimErr != nil && s.hold == h {
			h.doubt[got.ID] = pool.Entry{Ref: got.Ref}
		}
	}
	s.rmu.Unlock()
	h.poke()
	if got == nil {
		return pool.Entry{}, out, true, nil
	}
	if claimErr != nil {
		return pool.Entry{}, out, true, storeErr("claiming a sandbox", claimErr)
	}
	s.c.markClaimed(got.Ref, claimedBy, now)
	return *got, out, true, nil
}

// queueLost forgets the holder's reservations with the queue that held them
// (a rebuild pools them again from their tags) and waits before inheriting
// any: another process may hold the empty lease for a moment.
func (s *Store) queueLost() {
	if h := s.forgetReservations(); h != nil {
		h.lease.queueLost()
	}
}

// recordsLost is queueLost for a queue cleared in place, found by the
// holder's heartbeat (which moves its epoch itself): the next Load rebuilds.
func (s *Store) recordsLost() {
	s.lost.Store(true)
	s.forgetReservations()
	s.c.opts.Logger.Warn("the controller lease's records vanished (Modal cleared the queue): the pool is rebuilt from the sandboxes' tags", "queue", QueueName(s.c.opts.Pool))
}

func (s *Store) forgetReservations() *holding {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	h := s.hold
	if h != nil {
		h.reserved, h.doubt = nil, map[string]pool.Entry{}
		h.inheritAt = s.c.clk.Now().Add(s.staleAfter())
	}
	return h
}

// unreserve takes a reservation out of the holder's memory for its removal;
// false when this process does not hold it.
func (s *Store) unreserve(id string) bool {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	h := s.hold
	if h == nil {
		return false
	}
	i := slices.IndexFunc(h.reserved, func(e pool.Entry) bool { return e.ID == id })
	if i < 0 {
		return false
	}
	h.decided[id] = h.reserved[i].ExpiresAt
	h.reserved = slices.Delete(h.reserved, i, i+1)
	return true
}

// overlay folds the holder's memory into a view just loaded: reservations
// being made show as pooled, claims in flight as claimed; reservations that
// another process decided are forgotten, and those of a previous holder
// are inherited once that is safe.
func (s *Store) overlay(v *view) {
	now := s.c.clk.Now()
	s.rmu.Lock()
	defer s.rmu.Unlock()
	good := 0
	for _, e := range v.Entries {
		if !e.Claimed() && !v.reserved[e.ID] && !e.ExpiresAt.Before(now.Add(s.use+reserveSlack)) {
			good++
		}
	}
	s.sharedGood = good
	h := s.hold
	if h == nil {
		return
	}
	for id, exp := range h.decided {
		if exp.Before(now.Add(-time.Minute)) {
			delete(h.decided, id)
		}
	}
	decidedElsewhere := func(id string) bool { return v.claimed[id] || v.removed[id] }
	h.reserved = slices.DeleteFunc(h.reserved, func(e pool.Entry) bool {
		if decidedElsewhere(e.ID) {
			h.decided[e.ID] = e.ExpiresAt
			return true
		}
		return false
	})
	for id, e := range h.doubt {
		switch {
		case v.claimed[id] || v.removed[id]:
			// The failed put landed: nobody got the sandbox. It is
			// claimed (or removed) for good and dies at its expiry.
		case v.reserved[id]:
			h.reserved = insertByExpiry(h.reserved, e)
			delete(h.decided, id)
		}
		delete(h.doubt, id)
	}
	mine := map[string]bool{}
	for _, e := range h.reserved {
		mine[e.ID] = true
	}
	inherit := !now.Before(h.inheritAt)
	for _, e := range v.Entries {
		if v.reserved[e.ID] && !mine[e.ID] && inherit && h.decided[e.ID].IsZero() && h.claiming[e.ID].ID == "" {
			if _, ok := h.validUntil(); ok {
				h.reserved = insertByExpiry(h.reserved, e)
				mine[e.ID] = true
			}
		}
	}
	add := func(e pool.Entry, claimed bool) {
		if v.pooled[e.ID] || v.claimed[e.ID] || v.removed[e.ID] || v.reserved[e.ID] {
			return
		}
		if claimed {
			v.claimed[e.ID] = true
			v.Entries = append(v.Entries, e)
			return
		}
		v.reserved[e.ID] = true
		// Among the reserved ones, which lead the view, by expiry as the
		// load put them: prepended, one being reserved while an older one
		// was already showed ahead of it (pool order [2 1 3]).
		i := 0
		for i < len(v.Entries) && v.reserved[v.Entries[i].ID] && !v.Entries[i].ExpiresAt.After(e.ExpiresAt) {
			i++
		}
		v.Entries = slices.Insert(v.Entries, i, e)
	}
	for _, e := range h.reserved {
		add(e, false)
	}
	for _, e := range h.pending {
		add(e, false)
	}
	for _, e := range h.claiming {
		add(e, true)
	}
}

// ---- tags in the background ----

// markClaimed notes a claim and queues its tags; a worker writes them,
// retrying while the control plane is away, so that a rebuild from tags never
// pools a claimed sandbox again.
func (c *core) markClaimed(ref pool.Ref, by string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ref.URL != "" {
		c.known[ref.ID] = tagged{ref: ref, claimedBy: by, claimedAt: at}
	}
	if c.tagDone[ref.ID] {
		return
	}
	c.tagDone[ref.ID] = true
	c.tagQueue = append(c.tagQueue, tagged{ref: ref, claimedBy: by, claimedAt: at})
	if !c.tagRunning {
		c.tagRunning = true
		c.tagWG.Add(1)
		go c.tagWorker()
	}
}

// markReserved queues a reserved sandbox's tags: a queue cleared while this
// holder may still hand it out from memory is rebuilt with it reserved, out
// of the reach of the pool's other claimers.
func (c *core) markReserved(ref pool.Ref) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tagDone[ref.ID] || ref.URL == "" {
		return // claimed already: its claim tags say more
	}
	c.tagQueue = append(c.tagQueue, tagged{ref: ref, reserved: true})
	if !c.tagRunning {
		c.tagRunning = true
		c.tagWG.Add(1)
		go c.tagWorker()
	}
}

func (c *core) tagWorker() {
	defer c.tagWG.Done()
	backoff := 100 * time.Millisecond
	for {
		c.mu.Lock()
		if len(c.tagQueue) == 0 || c.closing {
			c.tagRunning = false
			c.mu.Unlock()
			return
		}
		t := c.tagQueue[0]
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(c.life, 10*time.Second)
		err := c.writeClaimTags(ctx, t)
		cancel()
		if err != nil && !isNotFound(err) && c.life.Err() == nil {
			c.clk.Sleep(backoff) // the control plane is away: try again
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		c.mu.Lock()
		c.tagQueue = c.tagQueue[1:]
		c.mu.Unlock()
	}
}

// writeClaimTags sets a sandbox's tags with its claim; the tags it has are
// read first when its URL and expiry are not known here (SandboxTagsSet
// replaces them all).
func (c *core) writeClaimTags(ctx context.Context, t tagged) error {
	sb, err := c.handle(ctx, t.ref.ID)
	if err != nil {
		return err
	}
	var tags map[string]string
	if t.reserved {
		tags = tagsFor(c.opts.Pool, t.ref, "", time.Time{})
		tags[TagReserved] = c.clk.Now().UTC().Format(time.RFC3339Nano)
	} else if t.ref.URL != "" {
		tags = tagsFor(c.opts.Pool, t.ref, t.claimedBy, t.claimedAt)
	} else {
		if tags, err = sb.GetTags(ctx); err != nil {
			return err
		}
		tags[TagClaimedBy] = t.claimedBy
		tags[TagClaimedAt] = t.claimedAt.UTC().Format(time.RFC3339Nano)
	}
	return sb.SetTags(ctx, tags)
}

// handle returns a cached SDK handle for a sandbox, looking it up once.
func (c *core) handle(ctx context.Context, id string) (*modal.Sandbox, error) {
	c.mu.Lock()
	sb := c.handles[id]
	c.mu.Unlock()
	if sb != nil {
		return sb, nil
	}
	sb, err := c.client.Sandboxes.FromID(ctx, id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if old := c.handles[id]; old != nil {
		sb = old
	} else {
		c.handles[id] = sb
	}
	c.mu.Unlock()
	return sb, nil
}

// flushTags waits (bounded) for the tags still to write, then stops the worker.
func (c *core) flushTags(wait time.Duration) {
	deadline := c.clk.Now().Add(wait)
	for {
		c.mu.Lock()
		n := len(c.tagQueue)
		c.mu.Unlock()
		if n == 0 || c.clk.Now().After(deadline) {
			break
		}
		c.clk.Sleep(20 * time.Millisecond)
	}
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.lifeStop()
	c.tagWG.Wait()
}
