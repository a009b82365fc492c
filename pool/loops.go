package pool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// LeaseHolder says who maintains the pool now (the zero record when nobody
// does or the store elects no controller).
func (c *Controller) LeaseHolder(ctx context.Context) (LeaseRecord, error) {
	leaser, ok := c.st.(Leaser)
	if !ok {
		return LeaseRecord{}, nil
	}
	return leaser.LeaseHolder(ctx)
}

// Serve runs the controller until ctx ends: it takes the pool's lease and
// then maintains the pool, probes health and watches the store. When the
// lease is held by another process it returns *LeaseHeldError, unless
// allowViewer, in which case it watches the pool as a viewer and takes over
// when the lease frees up.
func (c *Controller) Serve(ctx context.Context, allowViewer bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // Close also ends Serve.
		select {
		case <-c.life.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	backfillUntil := c.clk.Now().Add(backfillPatience)
	waiting := false // said that it waits for a backfill
	var goneUntil time.Time
	for {
		err := c.acquire(ctx)
		var held *LeaseHeldError
		if errors.As(err, &held) && !allowViewer && held.Holder.Role != RoleBackfill && HolderGone(held.Holder) {
			// The controller named in the lease was a process of this
			// machine that is gone (kill -9, a crash): its heartbeat record stays
			// live until it lapses (Modal: 3 heartbeats). A restart waits
			// that out rather than refuse the pool to a dead process.
			now := c.clk.Now()
			if goneUntil.IsZero() {
				goneUntil = now.Add(goneHolderPatience)
				c.mu.Lock()
				c.role, c.holder = RoleViewer, held.Holder
				c.mu.Unlock()
				c.emit(Event{Kind: EventLeaseWait, Message: fmt.Sprintf("the pool's controller, pid %d on this host, is gone (killed or crashed): taking the pool over once its lease lapses", held.Holder.Pid)})
				// As while waiting for a backfill: the stored target now,
				// and a view for the API's readers meanwhile.
				_, _, _ = c.loadStore(ctx)
			}
			if now.Before(goneUntil) {
				select {
				case <-ctx.Done():
					return nil
				case <-c.clk.After(250 * time.Millisecond):
				}
				continue
			}
		}
		if errors.As(err, &held) && !allowViewer && held.Holder.Role == RoleBackfill && c.clk.Now().Before(backfillUntil) {
			// A claim holds the pool for its own short backfill: wait for it
			// rather than refuse to maintain. Asking for the lease told it
			// that a controller waits (a store that can, Modal, has it hand
			// the pool over at its next heartbeat).
			c.mu.Lock()
			c.role, c.holder = RoleViewer, held.Holder // not maintaining meanwhile
			c.mu.Unlock()
			if !waiting {
				waiting = true
				c.emit(Event{Kind: EventLeaseWait, Message: "waiting for a claim's backfill to hand the pool over: " + held.Holder.String()})
				// Learn the pool's stored target now: a store lost before
				// this controller's first load once it holds the lease (a
				// Modal queue cleared) would leave it the flag's default
				// (chaos seed 404: target 4 kept at 3).
				_, _, _ = c.loadStore(ctx)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-c.clk.After(250 * time.Millisecond):
			}
			continue
		}
		if errors.As(err, &held) && allowViewer {
			c.mu.Lock()
			c.role, c.holder = RoleViewer, held.Holder
			c.mu.Unlock()
			if werr := c.watchUntilLeaseFree(ctx); werr != nil {
				return nil // ctx ended
			}
			continue
		}
		if err != nil {
			return err
		}
		waiting = false
		lost := c.maintainWhileLeased(ctx)
		if ctx.Err() != nil {
			return nil
		}
		// Another controller took the pool over (a heartbeat that went
		// stale): stop maintaining at once, or two would overshoot it.
		c.report(ProblemLease, opLease, "", errors.New("lost the controller lease to "+cmp.Or(lost.String(), "nobody (it lapsed)")))
		if !allowViewer && c.leaseAs.Role != RoleBackfill && (lost.IsZero() || lost.Role == RoleBackfill) {
			// Only another controller (or SIGTERM) ends a controller: a
			// claim's backfill that took the pool meanwhile hands it back,
			// and a lapsed lease is taken back.
			backfillUntil = c.clk.Now().Add(backfillPatience)
			continue
		}
		if !allowViewer {
			return &LeaseHeldError{Holder: lost}
		}
	}
}

// backfillPatience bounds how long Serve waits for claims' backfill leases.
const backfillPatience = 2 * time.Minute

// goneHolderPatience bounds how long Serve waits for the lease of a dead
// controller of this machine to lapse: should its heartbeat still go on
// (it never should: HolderGone checks node and pid), the pool is refused
// after this, as it was at once before.
const goneHolderPatience = time.Minute

// HolderGone reports a lease holder that was a process of this machine (its
// boot and pid namespace: NodeID) and is no more (killed, crashed): its lease
// lapses soon, and a controller started now waits for that rather than
// refuse the pool. A pid now reused by another process counts as alive, and
// a record of another node or without one is never taken for dead.
func HolderGone(r LeaseRecord) bool {
	node := NodeID()
	return node != "" && r.Node == node && r.Pid > 0 && r.Pid != osGetpid() && processGone(r.Pid)
}

// maintainWhileLeased runs the loops until ctx ends or the lease is lost;
// it then releases the lease and says who holds it now.
func (c *Controller) maintainWhileLeased(ctx context.Context) LeaseRecord {
	c.mu.Lock()
	c.role, c.holder = RoleController, LeaseRecord{}
	lease := c.lease
	c.mu.Unlock()
	c.emit(Event{Kind: EventLeaseAcquired})
	c.resolve(ProblemLease, opLease) // taken back
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	if l, ok := lease.(interface{ Lost() <-chan struct{} }); ok {
		go func() {
			select {
			case <-l.Lost():
				stop()
			case <-lctx.Done():
			}
		}()
	}
	c.looping.Store(true)
	c.runLoops(lctx)
	c.looping.Store(false)
	if ctx.Err() != nil {
		return LeaseRecord{}
	}
	c.mu.Lock()
	c.lease = nil
	c.mu.Unlock()
	if lease != nil {
		_ = lease.Release()
	}
	holder, _ := c.LeaseHolder(ctx)
	return holder
}

func (c *Controller) acquire(ctx context.Context) error {
	leaser, ok := c.st.(Leaser)
	if !ok {
		return nil
	}
	rec := c.leaseAs
	rec.Since = c.clk.Now().UTC()
	c.mu.Lock()
	rec.API = cmp.Or(c.apiAddr, rec.API)
	c.mu.Unlock()
	lease, err := leaser.AcquireLease(ctx, rec)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.lease, c.leaseRec = lease, rec
	if c.apiAddr != "" && c.apiAddr != rec.API { // bound meanwhile
		rec.API = c.apiAddr
		c.leaseRec = rec
		c.updateLeaseLocked()
	}
	c.mu.Unlock()
	return nil
}

// LeaseUpdater is a Lease whose record can say more once taken (the API's
// address, bound after the lease was taken). Identity (host, pid, role,
// since) never changes.
type LeaseUpdater interface {
	UpdateHolder(LeaseRecord) error
}

// SetAPI says where this process serves the HTTP API ("" when it does not):
// it goes into the lease record, now if held, so that check and the
// dashboards say where the controller's API is.
func (c *Controller) SetAPI(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.apiAddr = addr
	if c.lease != nil && c.leaseRec.API != addr {
		c.leaseRec.API = addr
		c.updateLeaseLocked()
	}
}

func (c *Controller) updateLeaseLocked() {
	if u, ok := c.lease.(LeaseUpdater); ok {
		_ = u.UpdateHolder(c.leaseRec) // best effort: the record only informs
	}
}

// Watch follows the pool without ever maintaining it (a read-only
// dashboard): it re-reads the store, probes health and notes who holds the
// lease, until ctx ends.
func (c *Controller) Watch(ctx context.Context) error {
	c.mu.Lock()
	c.role = RoleViewer
	c.mu.Unlock()
	_ = c.watch(ctx, false)
	return nil
}

// watchUntilLeaseFree watches as a viewer until the lease can be taken; it
// returns an error only when ctx ends.
func (c *Controller) watchUntilLeaseFree(ctx context.Context) error {
	return c.watch(ctx, true)
}

func (c *Controller) watch(ctx context.Context, untilLeaseFree bool) error {
	tick := c.clk.NewTicker(c.poll)
	defer tick.Stop()
	var probed time.Time
	for first := true; ; first = false {
		c.refreshStore(ctx)
		if now := c.clk.Now(); now.Sub(probed) >= c.cfg.HealthEvery {
			probed = now
			c.ProbeAll(ctx) // a viewer shows health too
		}
		holder, err := c.LeaseHolder(ctx)
		if err == nil {
			if untilLeaseFree && holder.IsZero() {
				return nil
			}
			if untilLeaseFree && !first && holder.Role == RoleBackfill && c.leaseAs.Role != RoleBackfill {
				return nil // ask for it: a backfill hands the pool over to a controller
			}
			c.mu.Lock()
			c.holder = holder
			c.mu.Unlock()
		}
		c.rounds.Add(1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.Chan():
		}
	}
}

func (c *Controller) runLoops(ctx context.Context) {
	var wg sync.WaitGroup
	if w, ok := c.be.(LossWatcher); ok {
		wg.Add(1)
		go func() { defer wg.Done(); w.WatchLoss(ctx, c.backendLost) }()
	}
	wg.Add(3)
	go func() { defer wg.Done(); c.maintainLoop(ctx) }()
	go func() { defer wg.Done(); c.healthLoop(ctx) }()
	go func() { defer wg.Done(); c.storeLoop(ctx) }()
	wg.Wait()
}

// Kick asks for a maintenance pass soon; kicks coalesce.
func (c *Controller) Kick() {
	if !c.looping.Load() {
		return
	}
	select {
	case c.kickCh <- struct{}{}:
	default:
	}
}

// backendLost takes in that every sandbox of the backend created before
// l.Before ended (its local agent died): it is said at once, with how many
// of the pool's went, and the next pass, now, lists the backend in full and
// drops them all, claimed ones included (howEnded says l.Why), rather than
// finding pooled ones by their probes and claimed ones at a sweep.
func (c *Controller) backendLost(l BackendLoss) {
	var pooled, claimed int
	c.mu.Lock()
	c.lost = l
	c.listCursor = ListCursor{} // a full list: claimed entries are judged by it
	for _, e := range c.stored.Entries {
		if e.CreatedAt.Before(l.Before) {
			pooled++
		}
	}
	c.claimedView.each(func(ce claimedEntry) {
		if ce.CreatedAt.Before(l.Before) {
			claimed++
		}
	})
	c.mu.Unlock()
	c.emit(Event{Kind: EventBackend, Message: fmt.Sprintf("%s: every sandbox it ran ended with it (of this pool's, %d pooled and %d claimed)", l.Why, pooled, claimed)})
	c.fullNext.Store(true)
	c.Kick()
}

// maintainLoop runs a full pass at start, at each interval and at rotation
// points, and a quick one (no backend list) on each kick.
func (c *Controller) maintainLoop(ctx context.Context) {
	var nextFull time.Time // kicks must not keep postponing the regular pass
	for {
		full := !c.clk.Now().Before(nextFull)
		if c.fullNext.Swap(false) {
			full = true
		}
		_ = c.pass(ctx, full)
		if full {
			nextFull = c.clk.Now().Add(c.cfg.MaintainEvery)
		}
		timer := c.clk.NewTimer(c.untilNextPass(nextFull))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-c.kickCh:
			timer.Stop()
		case <-timer.Chan():
		}
	}
}

// untilNextPass is the time to the next regular pass, shortened to the moment a sandbox
// stops counting toward the target (rotation) or a backoff ends, so that
// replacements start exactly when they should, and to just after a sandbox
// stops being good, so that it is terminated then: nobody can claim it any
// more, and waiting for the regular pass would keep it running (and paid
// for) up to --maintain-every longer.
func (c *Controller) untilNextPass(next time.Time) time.Duration {
	now := c.clk.Now()
	c.mu.Lock()
	leads := c.leadsLocked()
	for i, e := range c.stored.Entries {
		if e.Claimed() {
			continue
		}
		if end := e.ExpiresAt.Add(-c.useDur()); !end.Before(now) {
			// The first batch boundary strictly after it (the boundary
			// itself is good): one pass for the ends that fall together.
			if at := end.Truncate(expiryBatch).Add(expiryBatch); at.Before(next) {
				next = at
			}
		}
		if c.rotated[e.ID] || !CountsTowardTarget(e.ExpiresAt, now, c.useDur(), leads[i]) {
			continue
		}
		if at := RotationAt(e.ExpiresAt, c.useDur(), leads[i]); at.Before(next) {
			next = at
		}
	}
	if c.backoffUntil.After(now) && c.backoffUntil.Before(next) {
		next = c.backoffUntil
	}
	if c.budget.paused != "" { // wake when the oldest creation leaves the window
		if at := c.budget.resumeAt(BudgetWindow(c.goodLife())); at.After(now) && at.Before(next) {
			next = at
		}
	}
	next = c.autosizeNext(now, next)
	c.nextPass = next
	c.mu.Unlock()
	return max(next.Sub(now), time.Millisecond)
}

// expiryBatch groups the passes that drop sandboxes as they stop being good.
const expiryBatch = 500 * time.Millisecond

func (c *Controller) healthLoop(ctx context.Context) {
	tick := c.clk.NewTicker(c.cfg.HealthEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.Chan():
		}
		if bad := c.ProbeAll(ctx); bad > 0 {
			c.Kick()
		}
	}
}

// storeLoop re-reads the store so that claims made by other processes show
// up at once and get backfilled.
func (c *Controller) storeLoop(ctx context.Context) {
	tick := c.clk.NewTicker(c.poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.Chan():
		}
		if c.refreshStore(ctx) {
			c.Kick()
		}
	}
}

// refreshStore reloads the store and reports whether a pass should follow:
// the pool lost entries (claimed or removed elsewhere) or its target
// changed (another process resized it).
func (c *Controller) refreshStore(ctx context.Context) bool {
	if g, ok := c.st.(generationStore); ok {
		c.mu.Lock()
		last, known := c.storeGen, c.storeGenKnown
		c.mu.Unlock()
		if gen, err := g.Generation(ctx); known && err == nil && gen == last {
			return false // nothing changed: a poll of an idle pool reads no entry
		}
	}
	changed, lost, err := c.loadStore(ctx)
	if err != nil {
		return false
	}
	if changed {
		c.notifyChange()
		c.emit(Event{Kind: EventStoreChanged})
	}
	return lost
}

// generationStore is a Store that tells cheaply whether the pool changed
// since a load (the file store: a lock and a stat), so that the poll of a
// pool nobody touches reads none of its entries.
type generationStore interface {
	// Generation changes whenever the pool does, by any process's doing.
	Generation(ctx context.Context) (uint64, error)
}

var errNoGeneration = errors.New("the store has no generation")

// claimedSinceStore is a Store whose load can leave out the claimed
// entries an earlier load returned (the file store): a poll while claims
// go on then copies the pool and the claims made since, not every claimed
// entry (10,000 of them cost ~4 ms and 1.3 MB a poll).
type claimedSinceStore interface {
	// LoadSince is Load without the claimed entries recorded up to mark
	// (returned by an earlier call; 0 leaves out none); older counts them.
	LoadSince(ctx context.Context, mark uint64) (s Stored, older int, next uint64, err error)
}

// localWrite is a store write of this process (a put, a claim, a removal)
// that a load started before the write finished may not show.
type localWrite struct {
	seq     uint64 // loadSeq when the write finished
	entry   Entry
	removed bool
}

// loadStore reads the store and makes it this controller's view, without a
// lock held across the read: writes this process finished meanwhile are
// laid over what the load saw, and a load that ends after a newer one is
// not applied. It reports how the view changed: changed at all, and lost
// (a pooled entry left, or the target changed), which asks for a pass.
//
// The view keeps pooled entries (c.stored) apart from claimed ones
// (c.claimed). A load walks every entry once, with a map lookup for each
// claimed one; everything else it does is O(pooled). Loads come from the
// store poll and full passes, not from each claim. A claimedSinceStore's
// load holds only the claimed entries recorded since the last one applied
// (the view holds the others): when their count says some left the store,
// the store is loaded in full to tell which.
func (c *Controller) loadStore(ctx context.Context) (changed, lost bool, err error) {
	return c.loadStoreSince(ctx, true)
}

func (c *Controller) loadStoreSince(ctx context.Context, since bool) (changed, lost bool, err error) {
	c.mu.Lock()
	c.loadSeq++
	seq := c.loadSeq
	mark := c.claimedMark
	c.mu.Unlock()
	// The generation is read before the load: the load shows at least it.
	var gen uint64
	genErr := errNoGeneration
	if g, ok := c.st.(generationStore); ok {
		gen, genErr = g.Generation(ctx)
	}
	var (
		s     Stored
		older int // claimed entries left out of s: the view holds them
		next  uint64
	)
	if cs, ok := c.st.(claimedSinceStore); ok {
		if !since {
			mark = 0
		}
		s, older, next, err = cs.LoadSince(ctx, mark)
	} else {
		s, err = c.st.Load(ctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			c.report(ProblemStore, opRead, "", err)
		}
		return false, false, err
	}
	c.resolve(ProblemStore, opRead)
	c.mu.Lock()
	var newer map[string]localWrite // finished after the load started: laid over it
	for id, w := range c.writes {
		if w.seq < seq {
			if seq >= c.appliedSeq {
				delete(c.writes, id) // this load saw it
			}
			continue
		}
		if newer == nil {
			newer = map[string]localWrite{}
		}
		newer[id] = w
	}
	if c.targetSeq >= seq {
		s.Target, s.HasTarget = c.stored.Target, c.stored.HasTarget
	}
	if seq < c.appliedSeq {
		c.mu.Unlock()
		return false, false, nil // a newer load is already applied
	}
	c.appliedSeq = seq
	c.storeGen, c.storeGenKnown = gen, genErr == nil

	// Split the load, the newer writes laid over it. fresh: claimed
	// entries this view did not hold as claimed.
	all := s.Entries
	pooled := make([]Entry, 0, len(c.stored.Entries)+len(newer))
	claimedN := 0
	var fresh []Entry
	splitLoad(all, newer, func(e Entry, written bool) {
		if written {
			pooled = insertByExpiry(pooled, e)
		} else {
			pooled = append(pooled, e) // the store's pool order
		}
	}, func(e Entry) {
		claimedN++
		if !c.claimedView.has(e.ID) {
			fresh = append(fresh, e)
		}
	})
	if claimedN += older; older > 0 && c.claimedView.len()+len(fresh) != claimedN {
		// Claimed entries left the store (removed elsewhere): which ones, only all of them say.
		c.mu.Unlock()
		return c.loadStoreSince(ctx, false)
	}
	c.claimedMark = next
	// A store gone back in time (an old copy put back) lists as pooled
	// sandboxes this process saw claimed, still or until they ended
	// (counted: claims not given back): they stay out of the pool here,
	// and the next pass lists the backend in full, whose record of the
	// claims, or their end, takes them out of the store (passOnce).
	kept := pooled[:0]
	reverted := false
	for _, e := range pooled {
		if _, was := c.reverted[e.ID]; was {
			continue
		}
		ce, ok := c.claimedView.get(e.ID)
		if !ok {
			// Ended since, claimed (counted: claims not given back) or
			// terminated by this process (a Modal queue rebuilt from the
			// tags of what Modal still listed).
			at, was := c.counted[e.ID]
			if !was {
				at, was = c.finished[e.ID]
			}
			if was {
				ce.Entry, ok = e, true
				ce.ClaimedBy, ce.ClaimedAt = "?", at
			}
		}
		if ok {
			if c.reverted == nil {
				c.reverted = map[string]Entry{}
			}
			c.reverted[e.ID] = ce.Entry
			reverted = true
			continue
		}
		kept = append(kept, e)
	}
	pooled = kept
	if reverted {
		c.sweepDue = time.Time{}
	}
	for id := range c.reverted {
		if !slices.ContainsFunc(all, func(e Entry) bool { return e.ID == id && !e.Claimed() }) {
			delete(c.reverted, id) // out of the store's pool now
		}
	}
	s.Entries = pooled

	changed, lost = diffPooled(c.stored, s)
	var said []Event // what this load says (outside mu)
	if c.loaded && s.Epoch != c.stored.Epoch {
		said = append(said, c.storeLostEventLocked(s))
		c.storeLostLocked()
	} else if e, ok := c.retargetedLocked(s); ok {
		said = append(said, e)
	}
	var fromPool []Entry // claimed since the last load, pooled in it
	if c.loaded && len(fresh) > 0 {
		was := make(map[string]bool, len(c.stored.Entries))
		for _, e := range c.stored.Entries {
			was[e.ID] = true
		}
		for _, e := range fresh {
			if was[e.ID] {
				fromPool = append(fromPool, e)
			}
		}
	}
	var seen []Event
	if c.loaded {
		seen = c.claimsSeenLocked(fresh, fromPool)
	}
	if c.claimedView.len()+len(fresh) != claimedN {
		// Claimed entries left the store (removed by another process): rare,
		// so the set is rebuilt from the load rather than diffed on each.
		c.rebuildClaimedLocked(all, newer)
		changed = true
	} else {
		for _, e := range fresh {
			c.claimLocked(e)
		}
		changed = changed || len(fresh) > 0
	}
	c.autosizeSawStoredLocked(s, fromPool)
	c.setStoredLocked(s)
	say := c.adoptTimingLocked(s)
	c.mu.Unlock()
	c.followWorkload(seq, s.Workload)
	if reverted {
		c.Kick()
	}
	for _, e := range said {
		c.emit(e)
	}
	for _, e := range seen {
		c.emit(e)
	}
	if say != "" {
		c.emit(Event{Kind: EventTiming, Message: say})
	}
	return changed, lost, nil
}

// rebuildClaimedLocked makes c.claimed hold the claimed entries of the
// load all with the newer writes laid over it, keeping their health.
func (c *Controller) rebuildClaimedLocked(all []Entry, newer map[string]localWrite) {
	old := c.claimedView
	c.claimedView = claimedSet{}
	splitLoad(all, newer, func(Entry, bool) {}, func(e Entry) {
		if ce, ok := old.get(e.ID); ok {
			c.claimedView.put(e, ce.health)
			return
		}
		c.claimLocked(e)
	})
}

// splitLoad walks a load's entries with the newer writes of this process
// laid over them (a put never replaces what the load holds: it may be
// claimed since), giving each entry to pooled or claimed.
func splitLoad(all []Entry, newer map[string]localWrite, pooled func(e Entry, written bool), claimed func(Entry)) {
	var matched map[string]bool
	give := func(e Entry, written bool) {
		if e.Claimed() {
			claimed(e)
		} else {
			pooled(e, written)
		}
	}
	for _, e := range all {
		if w, ok := newer[e.ID]; ok {
			if matched == nil {
				matched = map[string]bool{}
			}
			matched[e.ID] = true
			switch {
			case w.removed:
				continue
			case w.entry.Claimed():
				e = w.entry
			}
		}
		give(e, false)
	}
	for id, w := range newer {
		if !matched[id] && !w.removed {
			give(w.entry, true)
		}
	}
}

// adoptTimingLocked judges by the pool's stored timing (one pool, one
// timing): a process given other flags would call the controller's fresh
// sandboxes expiring. It returns what to say, once.
func (c *Controller) adoptTimingLocked(s Stored) string {
	if s.TTL <= 0 || s.UseDuration <= 0 || s.UseDuration >= s.TTL {
		return ""
	}
	c.ttlNs.Store(int64(s.TTL))
	c.useNs.Store(int64(s.UseDuration))
	if c.timingSaid || (s.TTL == c.cfg.TTL && s.UseDuration == c.cfg.UseDuration) {
		return ""
	}
	c.timingSaid = true
	return fmt.Sprintf("the pool's timing is ttl %s, use-duration %s (this process was given %s, %s): judging by the pool's",
		s.TTL, s.UseDuration, c.cfg.TTL, c.cfg.UseDuration)
}

// claimsSeenLocked turns claims made by other processes, seen as claimed
// entries new to this view (fresh), into claim events, so that every
// process counts every claim once (its own as it makes them). A claim of a
// sandbox this process saw pooled (fromPool) was served warm.
func (c *Controller) claimsSeenLocked(fresh, fromPool []Entry) []Event {
	warm := make(map[string]bool, len(fromPool))
	for _, e := range fromPool {
		warm[e.ID] = true
	}
	var out []Event
	for _, e := range fresh {
		if c.ownClaimLocked(e) || !c.countClaimOnceLocked(e.ID) {
			continue // this process's own, or already seen through the journal
		}
		if warm[e.ID] {
			c.stats.ClaimsWarm++
		} else {
			c.stats.ClaimsWaited++
		}
		c.guessWarmLocked(e.ID, warm[e.ID])
		c.budget.claimed(c.clk.Now())
		out = append(out, Event{Kind: EventClaimed, SandboxID: e.ID, By: e.ClaimedBy, Warm: warm[e.ID], Remote: true, Time: e.ClaimedAt})
	}
	return out
}

// claimLocked moves e (claimed) out of the pool into c.claimed, with the
// health its sandbox last had.
func (c *Controller) claimLocked(e Entry) {
	h := c.health[e.ID]
	if ce, ok := c.claimedView.get(e.ID); ok && !h.Checked() {
		h = ce.health
	}
	c.claimedView.put(e, h)
	c.dropHealthLocked(e.ID)
}

// wroteLocked records a store write of this process and applies it to the view.
func (c *Controller) wroteLocked(e Entry, removed bool) {
	w := localWrite{seq: c.loadSeq, entry: e, removed: removed}
	c.writes[e.ID] = w
	i := slices.IndexFunc(c.stored.Entries, func(p Entry) bool { return p.ID == e.ID })
	switch {
	case removed:
		if i >= 0 {
			c.stored.Entries = slices.Delete(c.stored.Entries, i, i+1)
		}
		c.claimedView.remove(e.ID)
	case e.Claimed():
		if i >= 0 {
			c.stored.Entries = slices.Delete(c.stored.Entries, i, i+1)
		}
		c.claimLocked(e)
	case i < 0 && !c.claimedView.has(e.ID): // a put never replaces what is recorded
		c.stored.Entries = insertByExpiry(c.stored.Entries, e)
	}
}

// insertByExpiry inserts a pooled entry in pool order: by expiry, as the
// stores keep it.
func insertByExpiry(entries []Entry, e Entry) []Entry {
	at := len(entries)
	for at > 0 && e.ExpiresAt.Before(entries[at-1].ExpiresAt) {
		at--
	}
	return slices.Insert(entries, at, e)
}

// diffPooled compares two views' targets and pooled entries: changed at
// all, and lost (the target changed, or a pooled entry left).
func diffPooled(a, b Stored) (changed, lost bool) {
	if a.Target != b.Target || a.HasTarget != b.HasTarget {
		changed, lost = true, true // a resize elsewhere: act on it within a poll
	}
	if len(a.Entries) != len(b.Entries) {
		changed = true
	}
	inB := make(map[string]bool, len(b.Entries))
	for _, e := range b.Entries {
		inB[e.ID] = true
	}
	for _, e := range a.Entries {
		if !inB[e.ID] {
			changed, lost = true, true
		}
	}
	return changed, lost
}

// storeLostEventLocked says that the store lost what it held (s is the
// first load since), before the view takes s: how many sandboxes were
// pooled in it, and the target if it changed with it (an older copy's).
func (c *Controller) storeLostEventLocked(s Stored) Event {
	what := cmp.Or(s.EpochWhy, "the pool's store was lost (moved away, deleted or cleared)")
	msg := fmt.Sprintf("%s: the %d sandboxes this process knew pooled are adopted again if they still run", what, len(c.stored.Entries))
	if s.HasTarget && s.Target != c.target {
		msg += fmt.Sprintf("; target %d -> %d with it", c.target, s.Target)
	}
	return Event{Kind: EventStoreLost, Message: msg}
}

// retargetedLocked says that another process set the pool's target (a
// viewer's resize, maintain --size, terminate --all), as the one that acts
// on it: the controller. A viewer hears of it from that process's journal.
func (c *Controller) retargetedLocked(s Stored) (Event, bool) {
	if !c.loaded || !s.HasTarget || s.Target == c.target || c.role != RoleController {
		return Event{}, false
	}
	c.auto.mu.Lock()
	_, ours := c.auto.written[s.Target] // autosize's own write, seen by a load begun before it
	c.auto.mu.Unlock()
	if ours {
		return Event{}, false
	}
	return Event{Kind: EventResized, Remote: true,
		Message: fmt.Sprintf("target %d -> %d, set by another process", c.target, s.Target)}, true
}

// storeLostLocked remembers the pooled sandboxes of the store as it was
// before it was lost, for the next pass to adopt again.
func (c *Controller) storeLostLocked() {
	if c.relost == nil {
		c.relost = map[string]bool{}
	}
	for _, e := range c.stored.Entries {
		c.relost[e.ID] = true
	}
}

// setStoredLocked makes s (pooled entries only) the view's pool.
func (c *Controller) setStoredLocked(s Stored) {
	c.stored = s
	c.loaded = true
	if s.HasTarget {
		c.target = s.Target
	}
	// Forget health of sandboxes that left the pool (a claimed one's went
	// with it into c.claimed).
	known := make(map[string]bool, len(s.Entries)+len(c.inflight))
	for _, e := range s.Entries {
		known[e.ID] = true
	}
	for _, cr := range c.inflight {
		known[cr.ref.ID] = true
	}
	for id := range c.health {
		if !known[id] {
			c.dropHealthLocked(id)
		}
	}
	for id := range c.rotated {
		if !known[id] {
			delete(c.rotated, id)
		}
	}
}
