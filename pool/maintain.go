package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"
)

// sweepEvery is how often a pass lists a ChangeLister backend in full, so
// that a claimed sandbox whose end the lists of changes missed (an agent
// that forgot it) still leaves the store in bounded time.
func (c *Controller) sweepEvery() time.Duration {
	return 10 * c.cfg.MaintainEvery
}

// adoptGrace: a running sandbox unknown to the store is left alone while it
// is this young, because another process (a `claim` doing its own backfill)
// may still be warming it up.
func (c *Controller) adoptGrace() time.Duration {
	return time.Duration(c.cfg.CreateTries)*c.cfg.HealthTimeout + 10*time.Second
}

// Maintain runs one maintenance pass (SPEC Behaviour 4): drop expiring,
// unhealthy and dead sandboxes (never a good one), reconcile with what the
// backend runs, then bring ready + creating + warming to exactly the target.
// Creations it starts go on in the background.
func (c *Controller) Maintain(ctx context.Context) error {
	return c.pass(ctx, true)
}

// errNotListed stands for the backend's list in a quick pass, which skips it.
var errNotListed = errors.New("not listed in a quick pass")

// pass is a maintenance pass; a quick one (the backfill after a claim, a
// terminate or a resize) skips listing the backend and reading the store,
// the costly parts that reconciling needs, and leaves them to the regular
// passes and the store poll. Passes run one
// at a time (c.passes), but no lock is held across one: claims and
// creations never wait for a pass's I/O.
func (c *Controller) pass(ctx context.Context, reconcile bool) error {
	return c.passes.run(ctx, c.life, reconcile, c.passOnce)
}

func (c *Controller) passOnce(ctx context.Context, reconcile bool) error {
	if c.life.Err() != nil {
		return c.life.Err()
	}
	defer c.rounds.Add(1)
	if !reconcile {
		// The backfill after a claim: claims on their way out go first.
		c.yieldToClaims(ctx, backfillYield)
	} else {
		// A list taken before this process's pending claim records are made
		// would show their sandboxes as nobody's: with the store lost, they
		// would be adopted and handed out again.
		if err := c.records.wait(ctx); err != nil {
			return err
		}
	}
	// Listing before loading means an entry missing from the list was
	// already stored when the list was taken, unless it was created after it.
	listedAt := c.clk.Now()
	live, listErr := []Ref(nil), errNotListed
	var (
		knownBefore map[string]bool
		listing     = Listing{Full: true}
		// The backend listed in full when a list of changes was asked:
		// claimed entries were left out of knownBefore and cannot be
		// judged by it (the next pass sweeps them).
		unjudged bool
	)
	if reconcile {
		lister, changes := c.be.(ChangeLister)
		// Only entries known before the list can be judged dead by it: one
		// pooled meanwhile (no lock is held across the pass) may have been
		// created after the list was taken. Claimed ones are judged by a
		// full list only, now and then (sweep); in between, the backend
		// says which ended.
		c.mu.Lock()
		cursor := c.listCursor
		sweep := !changes || cursor == (ListCursor{}) || !listedAt.Before(c.sweepDue)
		if sweep {
			cursor = ListCursor{}
		}
		knownBefore = make(map[string]bool, len(c.stored.Entries))
		for _, e := range c.stored.Entries {
			knownBefore[e.ID] = true
		}
		if sweep {
			c.claimedView.each(func(ce claimedEntry) { knownBefore[ce.ID] = true })
		}
		c.mu.Unlock()
		if changes {
			listing, listErr = lister.ListChanges(ctx, cursor)
			live, unjudged = listing.Refs, listing.Full && !sweep
		} else {
			live, listErr = c.be.List(ctx)
		}
		if _, _, err := c.loadStore(ctx); err != nil {
			return err
		}
	}
	// A quick pass reads neither the backend nor the store: it judges by
	// this process's view, which its own writes keep current, while the
	// store poll brings other processes' changes (and kicks a pass).
	// Reading the store after each claim would walk every claimed entry.
	c.mu.Lock()
	relist := !reconcile && len(c.relost) > 0
	c.mu.Unlock()
	if relist {
		// The store was lost: what it held still runs. Listed now, it is
		// adopted before this pass would create replacements for it.
		reconcile = true
		live, listErr = c.be.List(ctx)
	}
	c.mu.Lock()
	// A store without a target (new, or lost and replaced) keeps the target
	// this process last knew: c.target starts at the configured size and
	// follows every stored target seen since, so a lost store never resizes
	// the pool back to a flag's default.
	target := c.target
	c.mu.Unlock()
	now := c.clk.Now()
	target = c.autosizeTarget(ctx, target, now)

	if wb, ok := c.be.(WorkloadBackend); ok && listErr == nil && reconcile {
		cur := c.listedWorkload(wb)
		c.mu.Lock()
		c.roll.listedLocked(live, cur)
		c.mu.Unlock()
	}

	// 1. Expiring, unhealthy and dead pooled sandboxes go; claimed ones that
	// died leave the record.
	liveSet := make(map[string]Ref, len(live))
	for _, r := range live {
		liveSet[r.ID] = r
	}
	type drop struct {
		e      Entry
		reason string
	}
	var drops []drop
	var unmarked []Entry // claimed in the store, not in the backend's record
	c.mu.Lock()
	dead := func(e Entry) bool {
		_, alive := liveSet[e.ID]
		return listErr == nil && !alive && knownBefore[e.ID] && e.CreatedAt.Before(listedAt)
	}
	switch {
	case listErr != nil || unjudged:
	case listing.Full:
		c.claimedView.each(func(ce claimedEntry) {
			if dead(ce.Entry) {
				drops = append(drops, drop{ce.Entry, ""})
			}
		})
	default:
		for _, id := range listing.Ended {
			if ce, ok := c.claimedView.get(id); ok {
				drops = append(drops, drop{ce.Entry, ""})
			}
		}
	}
	if listErr == nil {
		for _, r := range live {
			// A claim younger than claimRecordGrace may be its claimer's,
			// writing that record now.
			if ce, ok := c.claimedView.get(r.ID); ok && !r.Claimed && now.Sub(ce.ClaimedAt) > claimRecordGrace {
				unmarked = append(unmarked, ce.Entry)
			}
		}
	}
	for _, e := range c.stored.Entries {
		r, alive := liveSet[e.ID]
		h := c.health[e.ID]
		switch {
		case alive && r.Claimed:
			// The backend's own record says it was handed out (a store
			// lost or replaced): it leaves the pool and keeps running.
			drops = append(drops, drop{e, reasonClaimedElsewhere})
		case dead(e) && !e.ExpiresAt.After(listedAt):
			drops = append(drops, drop{e, ReasonExpired}) // the backend ended it on time
		case dead(e):
			drops = append(drops, drop{e, ReasonUnhealthy})
		case !HasTimeLeft(e.ExpiresAt, now, c.useDur()):
			drops = append(drops, drop{e, ReasonExpired})
		case h.Checked() && !h.OK:
			drops = append(drops, drop{e, ReasonUnhealthy})
		}
	}
	if listErr == nil {
		// Pooled in a store gone back in time, claimed as this process saw
		// them (loadStore keeps them out of the view): the backend's record
		// of the claim, or their end, takes them out of the store. One the
		// backend lists unclaimed past the claim record's grace was given
		// back (or never recorded): the next load pools it again.
		for id, ce := range c.reverted {
			r, alive := liveSet[id]
			e := ce
			e.ClaimedBy, e.ClaimedAt = "", time.Time{} // pooled in the store: evicted, not removed
			_, terminated := c.finished[id]
			switch {
			case terminated, alive && r.Claimed, !alive && listing.Full && e.CreatedAt.Before(listedAt):
				drops = append(drops, drop{e, reasonStaleStore})
			case alive && now.Sub(ce.ClaimedAt) > claimRecordGrace:
				delete(c.reverted, id)
				delete(c.counted, id) // given back: a claim of it again is news
			}
		}
	}
	c.mu.Unlock()
	c.markUnmarked(unmarked)
	if len(drops) > 0 {
		var pooledIDs, claimedIDs []string
		for _, d := range drops {
			if d.e.Claimed() {
				claimedIDs = append(claimedIDs, d.e.ID)
			} else {
				pooledIDs = append(pooledIDs, d.e.ID)
			}
		}
		// Only what Evict really removed is ours to terminate: a claimer
		// may have taken one meanwhile.
		removed, err := c.st.Evict(ctx, pooledIDs...)
		if err == nil && len(claimedIDs) > 0 {
			var gone []Entry
			gone, err = c.st.Remove(ctx, claimedIDs...)
			removed = append(removed, gone...)
		}
		if err != nil {
			c.report(ProblemStore, opWrite, "", fmt.Errorf("drop sandboxes from the store: %w", err))
			return err
		}
		// The store takes writes again: a write error said before (by a
		// pass, when no claim of this process wrote since) is over.
		c.resolve(ProblemStore, opWrite)
		gone := make(map[string]bool, len(removed))
		for _, e := range removed {
			gone[e.ID] = true
		}
		for _, d := range drops {
			if !gone[d.e.ID] {
				continue
			}
			c.forget(d.e.ID)
			switch {
			case d.reason == "":
				c.saySandboxEnded(ctx, d.e, listedAt)
			case d.reason == reasonClaimedElsewhere:
				c.emit(Event{Kind: EventStoreChanged, SandboxID: d.e.ID,
					Message: d.e.ID + " is claimed (the backend says so): left out of the pool"})
			case d.reason == reasonStaleStore:
				msg := d.e.ID + " is claimed (the backend says so): left out of the pool"
				c.mu.Lock()
				_, terminated := c.finished[d.e.ID]
				c.mu.Unlock()
				if _, alive := liveSet[d.e.ID]; !alive || terminated {
					msg = d.e.ID + " had ended already: out of the pool"
				}
				c.mu.Lock()
				delete(c.reverted, d.e.ID)
				c.mu.Unlock()
				c.emit(Event{Kind: EventStoreChanged, SandboxID: d.e.ID, Message: msg})
			case d.reason == ReasonExpired:
				c.emit(Event{Kind: EventExpired, SandboxID: d.e.ID})
				c.terminateAsync(d.e, d.reason, ByController)
			default:
				if _, alive := liveSet[d.e.ID]; !alive && listErr == nil {
					c.mu.Lock()
					c.stats.WasteSeconds += now.Sub(d.e.CreatedAt).Seconds()
					c.terminations[d.reason]++
					c.budget.lose(now)
					c.mu.Unlock()
					c.emit(Event{Kind: EventTerminated, SandboxID: d.e.ID, Reason: d.reason,
						Message: d.e.ID + " died: " + c.howEnded(ctx, d.e, listedAt)})
					continue
				}
				c.terminateAsync(d.e, d.reason, ByController)
			}
		}
	}

	if listErr == nil {
		// What this listing said is applied: the next lists changes since
		// (a zero cursor, after one that could not be judged: a sweep).
		c.mu.Lock()
		c.listCursor = listing.Next
		if unjudged {
			c.listCursor = ListCursor{}
		} else if listing.Full {
			c.sweepDue = listedAt.Add(c.sweepEvery())
		}
		c.mu.Unlock()
	}

	// 2. Reconcile: live sandboxes of this pool that nobody knows.
	switch {
	case listErr == errNotListed:
	case listErr != nil:
		c.report(ProblemBackend, opList, "", fmt.Errorf("list sandboxes: %w", listErr))
	default:
		c.reconcile(ctx, live, now)
	}

	// 3. Size.
	c.resize(target, now)
	c.rollOn(target, now)
	if listErr == nil {
		c.resolve(ProblemBackend, opList)
	}
	return nil
}

// howEnded says how a sandbox that the backend no longer lists ended: at
// its expiry, or as the backend saw its workload end (exit code, signal).
func (c *Controller) howEnded(ctx context.Context, e Entry, listedAt time.Time) string {
	if !e.ExpiresAt.After(listedAt) {
		return "expired"
	}
	c.mu.Lock()
	lost := c.lost
	c.mu.Unlock()
	if e.CreatedAt.Before(lost.Before) {
		return lost.Why
	}
	const unknown = "how is unknown"
	w, ok := c.be.(ExitWatcher)
	if !ok {
		return unknown
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	exited, info, err := w.Exited(ctx, e.ID)
	switch {
	case err != nil || !exited:
		return unknown
	case info.Unknown:
		return unknown + " (the backend no longer knows it)"
	case info.Code > 0 && lastLine(info.Tail) != "":
		return ExitText(info.Code) + ": " + lastLine(info.Tail)
	}
	return ExitText(info.Code)
}

// saySandboxEnded logs the end of a claimed sandbox, which left the pool
// when it was claimed: no event of the pool (SPEC has no kind for it). Its
// expiry is routine (debug: one a claim, every few seconds under load); an
// early end (its workload exited, something killed it) is news to its
// claimer's operator, with how.
func (c *Controller) saySandboxEnded(ctx context.Context, e Entry, listedAt time.Time) {
	how := c.howEnded(ctx, e, listedAt)
	level := slog.LevelInfo
	if how == ReasonExpired {
		level = slog.LevelDebug
	}
	if !c.log.Enabled(ctx, level) {
		return
	}
	msg := fmt.Sprintf("claimed sandbox %s ended: %s", e.ID, how)
	if e.ClaimedBy != "" {
		msg = fmt.Sprintf("%s, claimed by %s, ended: %s", e.ID, e.ClaimedBy, how)
	}
	c.log.Log(ctx, level, msg, "sandbox", e.ID)
}

// claimRecordGrace is how long a claimer has to write the backend's record
// of its claim before a pass writes it in its stead.
const claimRecordGrace = 3 * time.Second

// markUnmarked writes the backend's record of claims it lacks: a claimer
// killed between its claim and that record leaves the claim in the store
// alone, and a store lost then would pool the sandbox again (on Modal the
// tags are what a lost queue is rebuilt from).
func (c *Controller) markUnmarked(es []Entry) {
	for _, e := range es {
		c.recordClaim(e)
	}
}

func (c *Controller) reconcile(ctx context.Context, live []Ref, now time.Time) {
	c.mu.Lock()
	relost := c.relost
	c.relost = nil
	known := make(map[string]bool, len(c.stored.Entries)+len(c.inflight))
	for _, e := range c.stored.Entries {
		known[e.ID] = true
	}
	for _, cr := range c.inflight {
		known[cr.ref.ID] = true
	}
	var unknown []Ref
	for _, r := range live {
		if known[r.ID] || r.Claimed || c.claimedView.has(r.ID) {
			// A claimed sandbox is its claimer's: never adopted, never reaped.
			continue
		}
		if at, doomed := c.doomed[r.ID]; doomed {
			// Terminated by us and still listed well after: finish it. A
			// list taken while its termination ran is no news (terminating
			// it again said "terminated" twice, the second time as orphan).
			if now.Sub(at) > terminateTimeout {
				unknown = append(unknown, r)
			}
			continue
		}
		// A young one may be another process's creation still warming up,
		// unless this process knew it pooled before the store was lost.
		if !relost[r.ID] && !r.CreatedAt.IsZero() && now.Sub(r.CreatedAt) < c.adoptGrace() {
			continue
		}
		unknown = append(unknown, r)
	}
	suspects := c.suspects
	if c.adopted == nil {
		c.adopted = map[string]time.Time{}
	}
	liveIDs := make(map[string]bool, len(live))
	for _, r := range live {
		liveIDs[r.ID] = true
	}
	for id := range c.adopted { // forget what no longer runs
		if !liveIDs[id] {
			delete(c.adopted, id)
		}
	}
	for id, at := range c.doomed { // ended for good, not listed again
		if !liveIDs[id] && now.Sub(at) > c.adoptGrace() {
			delete(c.doomed, id)
		}
	}
	for id, at := range c.finished {
		if !liveIDs[id] && now.Sub(at) > c.adoptGrace() {
			delete(c.finished, id)
		}
	}
	c.mu.Unlock()
	next := map[string]bool{}
	for _, r := range unknown {
		c.mu.Lock()
		_, doomed := c.doomed[r.ID]
		c.mu.Unlock()
		// An orphan is terminated only when a second pass still finds it
		// unknown: a claim in another process may be between taking it and
		// recording it (the Modal store needs one RPC for that). A good one
		// is adopted at once; if the store would not take it, the next pass
		// finds it unknown again and terminates it, so it never lingers.
		if doomed || suspects[r.ID] {
			c.terminateAsync(Entry{Ref: r}, ReasonOrphan, ByController)
			continue
		}
		next[r.ID] = true
		c.mu.Lock()
		at, was := c.adopted[r.ID]
		c.mu.Unlock()
		// Adopted lately and unknown again: a claimer's (its claim record
		// in flight), or a Put that does not stick (on Modal, a bid won by
		// a claimer that died before its record). Adopting it again would
		// loop, "adopted" every pass, never pooled: it is a suspect now,
		// an orphan if the next pass still finds it unknown. (A store lost
		// again re-adopts it: it was pooled there.)
		if (was && now.Sub(at) < c.adoptGrace() && !relost[r.ID]) || !HasTimeLeft(r.ExpiresAt, now, c.useDur()) {
			continue
		}
		if h := c.probe(ctx, r.URL); h.OK {
			err := c.st.Put(ctx, r)
			if errors.Is(err, ErrAlreadyClaimed) {
				// A claim whose record was lost (Modal: its bid or tags
				// outlived it): recorded claimed again, its claimer's. Not
				// adopted, and no suspect: the next load shows it claimed.
				delete(next, r.ID)
				c.emit(Event{Kind: EventStoreChanged, SandboxID: r.ID,
					Message: r.ID + " is claimed (its claim's record was lost, and found again): not pooled"})
				continue
			}
			if err == nil {
				c.mu.Lock()
				c.setHealthLocked(r.ID, h)
				c.adopted[r.ID] = now
				c.wroteLocked(Entry{Ref: r}, false)
				c.mu.Unlock()
				c.emit(Event{Kind: EventAdopted, SandboxID: r.ID})
				c.notifyChange()
				// Known again: if it goes missing from the store now, it is
				// a claimer's (taken, its claim record not yet written), and
				// only two more passes that find it unknown make it an orphan.
				delete(next, r.ID)
			}
		}
	}
	c.mu.Lock()
	c.suspects = next
	c.mu.Unlock()
}

// resize starts or cancels creations and terminates surplus so that the
// sandboxes counting toward the target (good ready ones that will stay good
// longer than a replacement takes, plus creations in flight) equal target.
func (c *Controller) resize(target int, now time.Time) {
	c.mu.Lock()
	// Counted by index: the entries themselves (big structs) are copied only
	// to pick the surplus, not on every pass.
	leads := c.leadsLocked()
	counted := c.countedIdx[:0]
	for i, e := range c.stored.Entries {
		if !e.Claimed() && c.countsLocked(e, now, leads[i]) && !c.roll.replacing[e.ID] {
			counted = append(counted, i)
		}
	}
	c.countedIdx = counted[:0]
	active := 0
	for _, cr := range c.inflight {
		if c.flyingLocked(cr) {
			active++
		}
	}
	have := len(counted) + active
	switch {
	case have < target:
		paused := c.growLocked(target, target-have, active, now)
		c.mu.Unlock()
		c.announcePause(paused)
	case have > target:
		surplus := have - target
		var flying []*creation
		for _, cr := range c.inflight {
			if c.flyingLocked(cr) {
				flying = append(flying, cr)
			}
		}
		// Creations in flight are worth least: cancel the newest first.
		slices.SortFunc(flying, func(a, b *creation) int { return b.started.Compare(a.started) })
		for _, cr := range flying {
			if surplus == 0 {
				break
			}
			cr.cancelled = true
			cr.cancel()
			surplus--
		}
		var victims []Entry
		if surplus > 0 {
			entries := make([]Entry, len(counted))
			for k, i := range counted {
				entries[k] = c.stored.Entries[i]
			}
			victims = SurplusOrder(entries)[:surplus]
		}
		c.mu.Unlock()
		c.shrink(victims, target)
	default:
		c.mu.Unlock()
	}
}

// growLocked starts up to missing creations, within the creation limit and
// the backoff.
func (c *Controller) growLocked(target, missing, active int, now time.Time) (paused string) {
	room := c.limit.now() - len(c.inflight)
	allowed, paused := c.budget.allowance(now, target, missing, c.goodLife())
	room = min(room, allowed)
	if c.failures > 0 {
		// After failures, probe with one creation at a time: never hammer.
		room = min(room, 1-active)
		if now.Before(c.backoffUntil) {
			room = 0
		}
	}
	for range min(missing, room) {
		c.startCreationLocked()
	}
	return paused
}

// announcePause says once that the creation budget paused creations.
func (c *Controller) announcePause(paused string) {
	if paused != "" {
		c.emit(Event{Kind: EventError, ErrorKind: ProblemBudget, Err: paused, Count: 1})
	}
}

// topUp starts the creations the pool misses, as a pass would, without any
// I/O: what a finished creation does with the slot it frees.
func (c *Controller) topUp() {
	if c.life.Err() != nil {
		return
	}
	now := c.clk.Now()
	c.mu.Lock()
	if !c.loaded {
		c.mu.Unlock()
		return
	}
	paused := ""
	counted, active := c.countedLocked(now)
	if have := counted + active; have < c.target {
		paused = c.growLocked(c.target, c.target-have, active, now)
	}
	c.mu.Unlock()
	c.announcePause(paused)
}

// countedLocked counts what stands toward the target: good pooled
// sandboxes that stay good past the lead, and creations not cancelled.
func (c *Controller) countedLocked(now time.Time) (counted, active int) {
	leads := c.leadsLocked()
	for i, e := range c.stored.Entries {
		if !e.Claimed() && c.countsLocked(e, now, leads[i]) {
			counted++
		}
	}
	for _, cr := range c.inflight {
		if c.flyingLocked(cr) {
			active++
		}
	}
	return counted, active
}

// flyingLocked says whether a creation in flight counts toward the target:
// not cancelled, and its sandbox not in this view yet. Its Put lands in the
// store before it leaves c.inflight (under c.mu, after the Put): a load in
// between shows the sandbox pooled, or claimed already, and counting the
// creation as well would make the pool look one over target, so that a
// pass cancels a creation that then has to be made again.
func (c *Controller) flyingLocked(cr *creation) bool {
	if cr.cancelled {
		return false
	}
	if !cr.putting {
		return true
	}
	id := cr.ref.ID
	return !c.claimedView.has(id) && !slices.ContainsFunc(c.stored.Entries, func(e Entry) bool { return e.ID == id })
}

func (c *Controller) shrink(victims []Entry, target int) {
	reason := ReasonShrink
	if target == 0 {
		reason = ReasonUser // a target of 0 is a teardown someone asked for
	}
	c.evictAndTerminate(victims, "surplus", reason)
}

// evictAndTerminate takes victims out of the store's pool and terminates
// what it removed: one a claimer took meanwhile stays its.
func (c *Controller) evictAndTerminate(victims []Entry, what, reason string) {
	if len(victims) == 0 {
		return
	}
	ids := make([]string, len(victims))
	for i, v := range victims {
		ids[i] = v.ID
	}
	removed, err := c.st.Evict(c.life, ids...)
	if err != nil {
		c.report(ProblemStore, opWrite, "", fmt.Errorf("drop %s sandboxes from the store: %w", what, err))
		return
	}
	for _, e := range removed {
		c.forget(e.ID)
		c.terminateAsync(e, reason, ByController)
	}
}

// countsLocked says whether a pooled sandbox counts toward the target: good
// and not rotated out. Once rotated out (its replacement started) it never
// counts again, even if the lead shrinks as the queue drains: counting it
// again would make its replacement surplus, and churn.
func (c *Controller) countsLocked(e Entry, now time.Time, lead time.Duration) bool {
	if !IsGood(e.ExpiresAt, c.health[e.ID], now, c.useDur()) || c.rotated[e.ID] {
		return false
	}
	if !CountsTowardTarget(e.ExpiresAt, now, c.useDur(), lead) {
		c.rotated[e.ID] = true
		return false
	}
	return true
}

// leadsLocked gives each pooled sandbox its rotation lead: how long before
// it stops being good its replacement must start, including the wait
// behind the replacements of the sandboxes that stop being good about when
// it does (RotationLeads), so that a whole fill expiring together is
// replaced in time. The answer is indexed as c.stored.Entries (claimed
// entries get 0): it is asked on every pass and every creation's end, so it
// builds no map, and sorts only when the entries are not in expiry order
// already (the stores and applyWrite keep them so).
func (c *Controller) leadsLocked() []time.Duration {
	p95 := P95(c.readyTimes, c.cfg.HealthTimeout)
	use, maxLead := c.useDur(), (c.ttlDur()-c.useDur())/2
	entries := c.stored.Entries
	pooled := make([]int, 0, len(entries)) // indexes of unclaimed entries, by good-end
	for i, e := range entries {
		if !e.Claimed() {
			pooled = append(pooled, i)
		}
	}
	byEnd := func(a, b int) int { return entries[a].ExpiresAt.Compare(entries[b].ExpiresAt) }
	if !slices.IsSortedFunc(pooled, byEnd) {
		slices.SortStableFunc(pooled, byEnd)
	}
	at := make([]time.Time, len(pooled))
	for k, i := range pooled {
		at[k] = entries[i].ExpiresAt.Add(-use)
	}
	leads := RotationLeads(at, p95, len(c.inflight), c.limit.now(), maxLead)
	out := make([]time.Duration, len(entries))
	for k, i := range pooled {
		out[i] = leads[k]
	}
	return out
}

// creationTTLLocked is the ttl asked of the backend for cr: the pool's,
// shortened by up to TTLJitter so that the sandbox stops being good apart
// from the others (SpreadExpiry), pooled or being made.
func (c *Controller) creationTTLLocked(cr *creation, now time.Time) time.Duration {
	ttl := c.ttlDur()
	latest := now.Add(ttl)
	cr.expires = latest
	if c.cfg.TTLJitter <= 0 {
		return ttl
	}
	// The pooled ones come in expiry order (the stores keep them so); the
	// few in flight are merged in, so that SpreadExpiry finds them in order
	// and neither copies nor sorts them. The buffers are kept: this runs
	// for every creation.
	buf := c.spreadFlying[:0]
	for _, o := range c.inflight {
		if o != cr && !o.cancelled && o.tries > 0 {
			buf = append(buf, o.expires)
		}
	}
	slices.SortFunc(buf, func(a, b time.Time) int { return a.Compare(b) })
	flying := buf
	ends := c.spreadEnds[:0]
	for _, e := range c.stored.Entries {
		if e.Claimed() {
			continue
		}
		for len(flying) > 0 && flying[0].Before(e.ExpiresAt) {
			ends, flying = append(ends, flying[0]), flying[1:]
		}
		ends = append(ends, e.ExpiresAt)
	}
	ends = append(ends, flying...)
	c.spreadEnds, c.spreadFlying = ends, buf[:0]
	window := time.Duration(c.cfg.TTLJitter * float64(ttl))
	spacing := (ttl - c.useDur()) / time.Duration(max(c.target, 1))
	cr.expires = SpreadExpiry(latest, window, spacing, ends)
	return ttl - latest.Sub(cr.expires)
}

// goodLife is the shortest time a sandbox can count as good by design (its
// ttl spread shortened, less use-duration): what the creation budget
// explains rotations by.
func (c *Controller) goodLife() time.Duration {
	ttl := c.ttlDur()
	return ttl - time.Duration(c.cfg.TTLJitter*float64(ttl)) - c.useDur()
}

func (c *Controller) startCreationLocked() {
	c.seq++
	ctx, cancel := context.WithCancel(c.life)
	cr := &creation{key: "new-" + strconv.Itoa(c.seq), state: StateCreating, started: c.clk.Now(), cancel: cancel}
	c.inflight[cr.key] = cr
	c.budget.create(cr.started)
	c.creating.Add(1)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.notifyChange() // WaitIdle waits for the count to reach 0
		defer c.creating.Add(-1)
		defer cancel()
		c.create(ctx, cr)
	}()
}

// create makes one sandbox ready, with up to CreateTries tries (SPEC
// Behaviour 2). A sandbox that never gets healthy is terminated, never leaked.
func (c *Controller) create(ctx context.Context, cr *creation) {
	c.emit(Event{Kind: EventCreating, SandboxID: cr.key})
	var lastErr error
	for try := 1; try <= c.cfg.CreateTries; try++ {
		if try > 1 {
			select {
			case <-ctx.Done():
			case <-c.clk.After(RetryDelay(try - 1)):
			}
		}
		if ctx.Err() != nil {
			break
		}
		ref, err := c.createOnce(ctx, cr)
		if err == nil {
			c.finishCreation(cr, &ref, nil)
			return
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		c.mu.Lock()
		c.budget.fail(c.clk.Now()) // a failed try explains the next one
		c.mu.Unlock()
		ev := Event{Kind: EventCreateFailed, SandboxID: cr.key, Err: err.Error(),
			Message: fmt.Sprintf("creation failed (try %d of %d): %v", try, c.cfg.CreateTries, err)}
		if ee, ok := err.(*exitError); ok {
			ev.Tail = ee.info.Tail
			if l := lastLine(ee.info.Tail); l != "" && !ee.info.Unknown {
				ev.Message += ": " + l
			}
		}
		c.emit(ev)
	}
	if ctx.Err() != nil {
		c.finishCreation(cr, nil, nil) // cancelled: not a failure
		return
	}
	c.finishCreation(cr, nil, lastErr)
}

// createOnce is one try: create, wait until healthy, put in the store.
func (c *Controller) createOnce(ctx context.Context, cr *creation) (Ref, error) {
	start := c.clk.Now()
	c.mu.Lock()
	if cr.tries > 0 { // a retry: the first try was counted when it started
		c.budget.create(start)
	}
	cr.tries++
	cr.state, cr.ref, cr.putting = StateCreating, Ref{}, false
	ttl := c.creationTTLLocked(cr, start)
	c.mu.Unlock()
	c.yieldToClaims(ctx, backfillYield)
	if err := ctx.Err(); err != nil {
		return Ref{}, err // cancelled meanwhile (surplus): nothing asked of the backend
	}
	askedAt := c.clk.Now()
	ref, err := c.be.Create(ctx, ttl)
	if err != nil {
		if ctx.Err() == nil {
			c.mu.Lock()
			c.limit.done(0, false, 0) // the backend refused: ask for less at once
			c.mu.Unlock()
		}
		return Ref{}, err
	}
	// The limit follows the backend's own answer time, not the workload's
	// start (a slow workload says nothing about the machine or backend).
	asked := c.clk.Since(askedAt)
	c.mu.Lock()
	c.createTimes = append(c.createTimes, asked)
	if len(c.createTimes) > 20 {
		c.createTimes = c.createTimes[len(c.createTimes)-20:]
	}
	grew := c.limit.now()
	c.limit.done(asked, true, slices.Min(c.createTimes))
	grew = c.limit.now() - grew
	c.mu.Unlock()
	if grew > 0 {
		c.topUp() // slow start: a quick answer lets the next creation start now
	}
	c.setCreation(cr, StateWarming, ref)
	h, exit := c.waitHealthy(ctx, ref)
	c.mu.Lock()
	c.setHealthLocked(ref.ID, h)
	c.healthCounts[h.OK]++
	c.mu.Unlock()
	if !h.OK || ctx.Err() != nil {
		if ctx.Err() != nil {
			_ = c.terminate(ctx, Entry{Ref: ref}, ReasonCancelled, ByController)
			return Ref{}, ctx.Err()
		}
		_ = c.terminate(ctx, Entry{Ref: ref}, ReasonFailed, ByController)
		if exit != nil {
			return Ref{}, &exitError{id: ref.ID, info: *exit}
		}
		return Ref{}, fmt.Errorf("sandbox %s never got healthy within %s: %s", ref.ID, c.cfg.HealthTimeout, h.Error)
	}
	// Claims taking from the store go first: a burst of creations must not
	// queue its writes ahead of them.
	c.yieldToClaims(ctx, putYield)
	c.mu.Lock()
	cr.putting = true
	c.mu.Unlock()
	if err := c.st.Put(ctx, ref); err != nil {
		if c.putLanded(ctx, ref) {
			return Ref{}, fmt.Errorf("store sandbox %s: %w", ref.ID, err)
		}
		_ = c.terminate(ctx, Entry{Ref: ref}, ReasonFailed, ByController)
		return Ref{}, fmt.Errorf("store sandbox %s: %w", ref.ID, err)
	}
	took := c.clk.Now().Sub(start)
	// Pooled and no longer in flight in one step under c.mu, so that a
	// pass never counts it twice or not at all.
	c.mu.Lock()
	c.readyTimes = append(c.readyTimes, took)
	if len(c.readyTimes) > 20 {
		c.readyTimes = c.readyTimes[len(c.readyTimes)-20:]
	}
	c.wroteLocked(Entry{Ref: ref}, false)
	delete(c.inflight, cr.key)
	c.mu.Unlock()
	c.emit(Event{Kind: EventCreated, SandboxID: ref.ID, Duration: took, Health: h})
	return ref, nil
}

// putLanded says, after a failed Put, whether the sandbox is a claimer's
// now: a Put cut short (its creation cancelled as surplus, a timeout) may
// have landed all the same (on Modal, its answer lost), and a claimer may
// have taken the sandbox at once. One still pooled is taken back out, to be
// terminated with one that never went in.
func (c *Controller) putLanded(ctx context.Context, ref Ref) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if removed, err := c.st.Evict(ctx, ref.ID); err != nil || len(removed) > 0 {
		return false
	}
	s, err := c.st.Load(ctx)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(s.Entries, func(e Entry) bool { return e.ID == ref.ID && e.Claimed() })
}

// yieldToClaims lets the claims on their way out (c.takes) go first, for at
// most d, while the pool is well stocked: with few ready sandboxes left, or
// claims waiting for one, this backfill is what they need.
func (c *Controller) yieldToClaims(ctx context.Context, d time.Duration) {
	if !c.waitq.empty() || !c.takes.busy() {
		return
	}
	now := c.clk.Now()
	c.mu.Lock()
	ready, enough := 0, max(2, c.target/4)
	for _, e := range c.stored.Entries {
		if !e.Claimed() && HasTimeLeft(e.ExpiresAt, now, c.useDur()) {
			if ready++; ready > enough {
				break
			}
		}
	}
	c.mu.Unlock()
	if ready > enough {
		c.takes.waitIdle(ctx, c.clk, d)
	}
}

// createKickEvery spaces the passes that creations ask for while more are
// in flight.
const createKickEvery = 50 * time.Millisecond

// putYield bounds how long a creation's store write waits for claims;
// backfillYield how long a quick pass or a creation's start does.
const (
	putYield      = 20 * time.Millisecond
	backfillYield = 20 * time.Millisecond
)

// exitError is a try whose workload exited before it got healthy.
type exitError struct {
	id   string
	info ExitInfo
}

func (e *exitError) Error() string {
	switch {
	case e.info.Unknown:
		return fmt.Sprintf("sandbox %s went away before it got healthy: how is unknown (the backend no longer knows it)", e.id)
	case e.info.Code < 0:
		return fmt.Sprintf("sandbox %s was killed by %s before it got healthy", e.id, ExitText(e.info.Code))
	}
	return fmt.Sprintf("sandbox %s exited with code %d before it got healthy", e.id, e.info.Code)
}

func (c *Controller) setCreation(cr *creation, st State, ref Ref) {
	c.mu.Lock()
	cr.state, cr.ref = st, ref
	c.mu.Unlock()
}

func (c *Controller) finishCreation(cr *creation, ref *Ref, err error) {
	now := c.clk.Now()
	c.mu.Lock()
	delete(c.inflight, cr.key)
	switch {
	case ref != nil:
		c.failures = 0
		c.backoffUntil = time.Time{}
		c.creates[true]++
		c.lastCreate = ""
	case err != nil:
		c.creates[false]++
		c.failures++
		c.backoffUntil = now.Add(BackoffDelay(c.failures, c.rnd))
		c.lastCreate = err.Error()
		if c.failures == 1 {
			c.failingSince = now
		}
		c.recent[cr.key] = Sandbox{ID: cr.key, State: StateFailed, CreatedAt: cr.started, Err: err.Error()}
		c.failedAt[cr.key] = now
	}
	until := c.backoffUntil
	// A pass after a creation re-judges the pool and re-times the next
	// rotation; while others are still being made, one such pass per
	// createKickEvery does (a pass per sandbox was most of a creation's CPU
	// in the controller), and the last creation of a batch always kicks.
	kick := ref != nil && (len(c.inflight) == 0 || !now.Before(c.createKickAt))
	if kick {
		c.createKickAt = now.Add(createKickEvery)
	}
	c.mu.Unlock()
	if ref != nil {
		c.notifyChange()
		c.topUp() // the freed slot goes to the next missing sandbox at once
		if kick {
			c.Kick()
		}
	}
	if err != nil {
		c.emit(Event{Kind: EventBackoff, Until: until, Err: err.Error(),
			Message: fmt.Sprintf("creation failed: %v; next try in %s", err, until.Sub(now).Round(time.Second))})
		c.Kick()
	}
}

// ErrCreateFailed is returned by WaitAtTarget when creations keep failing.
var ErrCreateFailed = errors.New("creations are failing")

// WaitAtTarget waits until the pool holds target good sandboxes and nothing
// is being created; it fails as soon as a creation fails for good. progress,
// when set, gets a snapshot at each change.
func (c *Controller) WaitAtTarget(ctx context.Context, progress func(Snapshot)) error {
	sub, cancel := c.Subscribe(256)
	defer cancel()
	tick := c.clk.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		// Taken before the check: a creation's end (creating back to 0)
		// comes after its last event, and is signalled only here.
		changed := c.changeSignal()
		c.mu.Lock()
		failed, lastCreate, loaded := c.failures > 0, c.lastCreate, c.loaded
		c.mu.Unlock()
		// Before the first load the view is empty: "ready 0" would be
		// shown, and a target of 0 met, before the store was read.
		if loaded {
			snap := c.Snapshot()
			if progress != nil {
				progress(snap)
			}
			if failed {
				return fmt.Errorf("%w: %s", ErrCreateFailed, lastCreate)
			}
			if snap.Counts[StateReady] >= snap.Target && c.creating.Load() == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sub:
		case <-changed:
		case <-tick.Chan():
		}
	}
}
