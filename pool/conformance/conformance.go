// Package conformance is the engine's behaviour suite (SPEC "Behaviour"), run
// with the real clock and short durations against a real pool.Backend and
// pool.Store: the local process backend with the file store, and the Modal
// adapter over the fake control plane. A backend's test calls Run with a
// function that opens a new, empty pool; every rule then runs on it:
//
//	go test -race ./pool/conformance/
//
// The suite never sleeps to let something happen: it polls with deadlines.
package conformance

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Env is one new, empty pool on the backend under test. newEnv registers the
// cleanups of what it opens (t.Cleanup); the suite terminates whatever
// sandboxes of the pool still run before those cleanups.
type Env struct {
	// Pool is the pool's name (store file or queue, tag).
	Pool    string
	Backend pool.Backend
	Store   pool.Store
	// Checker is the health check: it must trust the sandboxes' certificates.
	Checker pool.Checker
	// Kill makes the HTTP server of a sandbox die at once and for good, as a
	// crash does. The backend may go on listing the sandbox as running
	// (Modal) or not (local).
	Kill func(t *testing.T, id string)
	// Reopen opens a second handle on the same pool, as another process
	// would (a CLI claim, a restarted controller). Nil: the suite reuses
	// Backend and Store.
	Reopen func(t *testing.T) (pool.Backend, pool.Store)
}

// Durations of the suite: short, on the real clock.
const (
	healthTimeout = 1500 * time.Millisecond
	waitFor       = 20 * time.Second // deadline of every poll
)

// Config is the suite's base configuration: a long maintenance interval, so
// that every pass the tests see is one they ran or one the engine kicked
// (after a claim, a creation, a failed probe, or at a rotation point).
func Config(poolName string) pool.Config {
	c := pool.DefaultConfig()
	c.Pool = poolName
	c.Size = 3
	c.TTL = 2 * time.Minute
	c.UseDuration = 10 * time.Second
	c.HealthTimeout = healthTimeout
	c.HealthEvery = 500 * time.Millisecond
	c.MaintainEvery = time.Minute
	c.ClaimTimeout = 10 * time.Second
	return c
}

// Run runs every rule of SPEC's Behaviour section, each on a new pool from
// newEnv, in parallel subtests.
func Run(t *testing.T, newEnv func(t *testing.T) Env) {
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			r.fn(t, open(t, newEnv))
		})
	}
}

var rules = []struct {
	name string
	fn   func(t *testing.T, p *rig)
}{
	{"FillToTargetAndPassOnFullPoolTerminatesNothing", testFill},
	{"ClaimTakesOldestGoodAndBackfills", testClaimOldestAndBackfill},
	{"ClaimSkipsAndTerminatesDeadOnes", testClaimSkipsDead},
	{"ConcurrentClaimsNeverShare", testConcurrentClaims},
	{"DeadServerIsDroppedAndReplaced", testDeadServer},
	{"ShrinkTerminatesLeastTimeLeftFirst", testShrink},
	{"ExpiryRotatesAhead", testExpiry},
	{"RestartAdoptsPooledOnes", testRestart},
	{"ReconcileAdoptsLostAndReapsOrphans", testReconcile},
	{"TerminateAllLeavesNothing", testTerminateAll},
	{"ClaimWithNoneGoodTimesOut", testClaimTimeout},
	{"SettingsAreThePools", testSettings},
}

// rig is one test's pool with helpers.
type rig struct {
	t   *testing.T
	env Env
	ctx context.Context
}

func open(t *testing.T, newEnv func(t *testing.T) Env) *rig {
	env := newEnv(t)
	if env.Backend == nil || env.Store == nil || env.Kill == nil {
		t.Fatal("conformance: Env needs a Backend, a Store and Kill")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	p := &rig{t: t, env: env, ctx: ctx}
	// Registered after newEnv's cleanups, so it runs before them (and after
	// the controllers' Close, registered later): leave nothing running.
	t.Cleanup(func() {
		defer cancel()
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		refs, err := env.Backend.List(cctx)
		if err != nil {
			t.Errorf("cleanup: list: %v", err)
		}
		for _, r := range refs {
			if err := env.Backend.Terminate(cctx, r.ID); err != nil {
				t.Errorf("cleanup: terminate %s: %v", r.ID, err)
			}
		}
	})
	return p
}

// events records what one controller reports.
type events struct {
	mu  sync.Mutex
	all []pool.Event
}

func (e *events) add(ev pool.Event) { e.mu.Lock(); e.all = append(e.all, ev); e.mu.Unlock() }

func (e *events) list() []pool.Event { e.mu.Lock(); defer e.mu.Unlock(); return slices.Clone(e.all) }

// dump logs every event, for a failure's story.
func (e *events) dump(t *testing.T) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.all {
		if ev.Kind != pool.EventStoreChanged {
			t.Logf("%s %-14s %s", ev.Time.Format("15:04:05.000"), ev.Kind, ev.Message)
		}
	}
}

// of returns the sandbox ids of the events of one kind (and reason, when given).
func (e *events) of(kind pool.EventKind, reason string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ids []string
	for _, ev := range e.all {
		if ev.Kind == kind && (reason == "" || ev.Reason == reason) {
			ids = append(ids, ev.SandboxID)
		}
	}
	return ids
}

type ctl struct {
	*pool.Controller
	ev *events
	be pool.Backend
	st pool.Store
}

// controller builds a controller on the env's pool (or on other handles).
func (p *rig) controller(mod func(*pool.Config), handles ...any) *ctl {
	p.t.Helper()
	be, st := p.env.Backend, p.env.Store
	for _, h := range handles {
		switch h := h.(type) {
		case pool.Backend:
			be = h
		case pool.Store:
			st = h
		}
	}
	cfg := Config(p.env.Pool)
	if mod != nil {
		mod(&cfg)
	}
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Checker: p.env.Checker,
		StorePollEvery: 100 * time.Millisecond})
	if err != nil {
		p.t.Fatal(err)
	}
	ev := &events{}
	c.Observe(ev.add)
	p.t.Cleanup(c.Close)
	p.t.Cleanup(func() { // a failure's story, whichever check failed
		if p.t.Failed() {
			ev.dump(p.t)
		}
	})
	return &ctl{Controller: c, ev: ev, be: be, st: st}
}

// reopen is a second handle on the pool, or the same one without Reopen.
func (p *rig) reopen() (pool.Backend, pool.Store) {
	if p.env.Reopen == nil {
		return p.env.Backend, p.env.Store
	}
	return p.env.Reopen(p.t)
}

// serve runs the controller's loops until the test ends.
func (p *rig) serve(c *ctl) {
	p.t.Helper()
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, false) }()
	p.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			p.t.Errorf("serve: %v", err)
		}
	})
	p.eventually("the controller holds the lease", func() bool { return c.Snapshot().Role == "controller" })
}

func (p *rig) eventually(what string, cond func() bool) {
	p.t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			p.t.Fatalf("after %s: still waiting for %s", waitFor, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *rig) maintain(c *ctl) {
	p.t.Helper()
	if err := c.Maintain(p.ctx); err != nil {
		p.t.Fatalf("maintain: %v", err)
	}
}

func (p *rig) load(st pool.Store) pool.Stored {
	p.t.Helper()
	s, err := st.Load(p.ctx)
	if err != nil {
		p.t.Fatalf("load: %v", err)
	}
	return s
}

// pooled returns the ids of the pooled entries, in pool order.
func (p *rig) pooled() []string { return entryIDs(p.load(p.env.Store).Pooled()) }

// claimed returns the ids of the claimed entries.
func (p *rig) claimed() []string {
	var ids []string
	for _, e := range p.load(p.env.Store).Entries {
		if e.Claimed() {
			ids = append(ids, e.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// live returns the sorted ids the backend lists as running.
func (p *rig) live() []string {
	p.t.Helper()
	refs, err := p.env.Backend.List(p.ctx)
	if err != nil {
		p.t.Fatalf("list: %v", err)
	}
	return refIDs(refs)
}

// fill runs a pass and waits until the pool holds n ready sandboxes and no
// creation is in flight.
func (p *rig) fill(c *ctl, n int) []string {
	p.t.Helper()
	p.maintain(c)
	p.eventually(fmt.Sprintf("%d pooled", n), func() bool { return len(p.pooled()) == n && c.Creating() == 0 })
	return p.pooled()
}

// answers checks that url serves, through the env's checker.
func (p *rig) answers(url string) pool.Health {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	return p.env.Checker(ctx, url)
}

func entryIDs(es []pool.Entry) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}

func refIDs(refs []pool.Ref) []string {
	ids := make([]string, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	slices.Sort(ids)
	return ids
}

func sorted(ids []string) []string { s := slices.Clone(ids); slices.Sort(s); return s }

func union(a, b []string) []string { return slices.Compact(sorted(append(slices.Clone(a), b...))) }

// ---- the rules ----

// Behaviour 4: a pass fills to exactly the target; a pass on a good, full
// pool terminates nothing and creates nothing (the seed terminates one).
func testFill(t *testing.T, p *rig) {
	c := p.controller(nil)
	ids := p.fill(c, 3)
	if live := p.live(); !slices.Equal(live, sorted(ids)) {
		t.Fatalf("backend runs %v, pool holds %v", live, ids)
	}
	snap := c.Snapshot()
	if snap.Counts[pool.StateReady] != 3 || snap.Target != 3 {
		t.Fatalf("snapshot counts %v target %d, want 3 ready of 3", snap.Counts, snap.Target)
	}
	for _, sb := range snap.Sandboxes {
		if h := p.answers(sb.URL); !h.OK {
			t.Fatalf("ready sandbox %s at %s does not answer: %+v", sb.ID, sb.URL, h)
		}
	}
	// Counted from here: a try that failed its health check during the fill
	// (a slow machine) is terminated, and that is not what is tested here.
	terms0, _, _, created0, failed0 := c.Counters()
	for range 3 {
		if bad := c.ProbeAll(p.ctx); bad != 0 {
			t.Fatalf("%d of a fresh pool failed their probe", bad)
		}
		p.maintain(c)
		c.WaitIdle(p.ctx)
	}
	terms, _, _, created, failed := c.Counters()
	if n := sumCounts(terms) - sumCounts(terms0); n != 0 || created != created0 || failed != failed0 {
		t.Fatalf("passes on a full good pool: %d terminated %v, %d created, %d failed; want none", n, terms, created-created0, failed-failed0)
	}
	if got := p.pooled(); !slices.Equal(got, ids) {
		t.Fatalf("pool %v after passes, want %v unchanged", got, ids)
	}
	if live := p.live(); !slices.Equal(live, sorted(ids)) {
		t.Fatalf("backend runs %v after passes, want %v", live, sorted(ids))
	}
}

func sumCounts(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// Behaviour 3: a claim takes the oldest good sandbox, which answers; a
// backfill starts at once (the loop's interval is a minute: only the claim's
// kick can refill within the deadline). The pool is filled one sandbox at a
// time: pool order is the order sandboxes became ready, which for creations
// running in parallel may differ from their age by a creation's duration.
func testClaimOldestAndBackfill(t *testing.T, p *rig) {
	c := p.controller(func(c *pool.Config) { c.Size = 1 })
	p.serve(c)
	for n := 1; n <= 3; n++ {
		if err := c.Resize(p.ctx, n); err != nil {
			t.Fatal(err)
		}
		p.eventually(fmt.Sprintf("%d pooled", n), func() bool { return len(p.pooled()) == n && c.Creating() == 0 })
	}
	entries := p.load(p.env.Store).Pooled()
	byAge := slices.SortedStableFunc(slices.Values(entries), func(a, b pool.Entry) int { return a.CreatedAt.Compare(b.CreatedAt) })
	if !slices.Equal(entryIDs(entries), entryIDs(byAge)) {
		t.Fatalf("pool order %v, want oldest first %v", entryIDs(entries), entryIDs(byAge))
	}
	oldest := entries[0]
	got, err := c.Claim(p.ctx, pool.ClaimOptions{CheckHealth: true, By: "conformance"})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != oldest.ID || !got.Warm || got.ClaimedBy != "conformance" {
		t.Fatalf("claimed %s (warm %v, by %q), want the oldest %s, warm, by conformance", got.ID, got.Warm, got.ClaimedBy, oldest.ID)
	}
	if h := p.answers(got.URL); !h.OK {
		t.Fatalf("claimed sandbox %s does not answer: %+v", got.URL, h)
	}
	p.eventually("the backfill", func() bool {
		ids := p.pooled()
		return len(ids) == 3 && !slices.Contains(ids, got.ID) && c.Creating() == 0
	})
	if cl := p.claimed(); !slices.Equal(cl, []string{got.ID}) {
		t.Fatalf("claimed entries %v, want [%s]", cl, got.ID)
	}
	if live := p.live(); len(live) != 4 || !slices.Contains(live, got.ID) {
		t.Fatalf("backend runs %v, want 3 pooled and the claimed %s", live, got.ID)
	}
	if n := c.Snapshot().Counts[pool.StateClaimed]; n != 1 {
		t.Fatalf("snapshot shows %d claimed, want 1", n)
	}
}

// Behaviour 3: bad ones met on the way are terminated, not handed out.
func testClaimSkipsDead(t *testing.T, p *rig) {
	// A probe younger than HealthFresh would be trusted: this claim must probe.
	c := p.controller(func(cfg *pool.Config) { cfg.HealthFresh = 0 })
	ids := p.fill(c, 3)
	p.env.Kill(t, ids[0])
	got, err := c.Claim(p.ctx, pool.ClaimOptions{CheckHealth: true, By: "conformance"})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != ids[1] {
		t.Fatalf("claimed %s, want %s: the oldest, %s, is dead", got.ID, ids[1], ids[0])
	}
	if slices.Contains(p.pooled(), ids[0]) || slices.Contains(p.claimed(), ids[0]) {
		t.Fatalf("the dead %s is still in the store", ids[0])
	}
	p.eventually("the dead one gone from the backend", func() bool { return !slices.Contains(p.live(), ids[0]) })
}

// Behaviour 3: concurrent claims, from this controller and from another
// handle on the pool (another process), never get the same sandbox; those
// that find the pool empty wait for the backfill. Nothing overshoots.
func testConcurrentClaims(t *testing.T, p *rig) {
	const target, claims = 3, 8
	c := p.controller(func(c *pool.Config) { c.Size = target })
	p.serve(c)
	p.eventually("pool full", func() bool { return len(p.pooled()) == target && c.Creating() == 0 })
	be2, st2 := p.reopen()
	other := p.controller(nil, be2, st2) // a claimer only: no loop
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		got   = map[string]string{}
		errs  []error
		start = make(chan struct{})
	)
	for i := range claims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, by := c, fmt.Sprintf("here-%d", i)
			if i%2 == 1 {
				cc, by = other, fmt.Sprintf("other-%d", i)
			}
			<-start
			e, err := cc.Claim(p.ctx, pool.ClaimOptions{CheckHealth: true, By: by, Timeout: waitFor})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", by, err))
				return
			}
			if prev, dup := got[e.ID]; dup {
				errs = append(errs, fmt.Errorf("%s handed to both %s and %s", e.ID, prev, by))
			}
			got[e.ID] = by
			if e.ClaimedBy != by {
				errs = append(errs, fmt.Errorf("%s: entry claimed by %q", by, e.ClaimedBy))
			}
		}()
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if len(got) != claims {
		t.Fatalf("%d distinct sandboxes for %d claims", len(got), claims)
	}
	ids := slices.Sorted(maps.Keys(got))
	p.eventually("the pool refilled", func() bool { return len(p.pooled()) == target && c.Creating() == 0 })
	if cl := p.claimed(); !slices.Equal(cl, ids) {
		t.Fatalf("store records claims %v, want %v", cl, ids)
	}
	// Every sandbox made is pooled or claimed: no overshoot, no leak.
	want := union(p.pooled(), ids)
	if live := p.live(); !slices.Equal(live, want) || len(live) != target+claims {
		t.Fatalf("backend runs %d %v, want the %d pooled and claimed %v", len(live), live, target+claims, want)
	}
}

// Behaviours 1 and 4: a pooled sandbox whose server dies fails its probe and
// the next pass drops it and creates its replacement; the good ones stay.
func testDeadServer(t *testing.T, p *rig) {
	c := p.controller(nil)
	ids := p.fill(c, 3)
	victim := ids[1]
	p.env.Kill(t, victim)
	if bad := c.ProbeAll(p.ctx); bad != 1 {
		t.Fatalf("probe found %d bad, want 1", bad)
	}
	var sb pool.Sandbox
	for _, s := range c.Snapshot().Sandboxes {
		if s.ID == victim {
			sb = s
		}
	}
	if sb.State != pool.StateUnhealthy {
		t.Fatalf("the dead one shows as %q, want unhealthy", sb.State)
	}
	p.maintain(c)
	p.eventually("the replacement", func() bool {
		now := p.pooled()
		return len(now) == 3 && !slices.Contains(now, victim) && c.Creating() == 0
	})
	p.eventually("the dead one gone from the backend", func() bool { return !slices.Contains(p.live(), victim) })
	now := p.pooled()
	for _, id := range []string{ids[0], ids[2]} {
		if !slices.Contains(now, id) {
			t.Fatalf("good sandbox %s dropped with the dead one (pool %v)", id, now)
		}
	}
	if live := p.live(); !slices.Equal(live, sorted(now)) {
		t.Fatalf("backend runs %v, pool holds %v", live, now)
	}
	p.eventually("one termination as unhealthy", func() bool {
		return slices.Equal(c.ev.of(pool.EventTerminated, pool.ReasonUnhealthy), []string{victim})
	})
}

// Behaviour 4: shrinking terminates the surplus with the least time left.
func testShrink(t *testing.T, p *rig) {
	c := p.controller(func(c *pool.Config) { c.Size = 2 })
	p.fill(c, 2)
	if err := c.Resize(p.ctx, 4); err != nil {
		t.Fatal(err)
	}
	all := p.fill(c, 4)
	// Expiries are spread (pool.SpreadExpiry): the older fill need not
	// expire first; the sandboxes' own expiries say which go.
	entries := p.load(p.env.Store).Pooled()
	byExpiry := entryIDs(pool.SurplusOrder(entries))
	if err := c.Resize(p.ctx, 2); err != nil {
		t.Fatal(err)
	}
	p.maintain(c)
	keep := sorted(byExpiry[2:])
	p.eventually("the shrink", func() bool { return slices.Equal(p.live(), keep) })
	if got := sorted(p.pooled()); !slices.Equal(got, keep) {
		t.Fatalf("kept %v of %v, want the two with most time left %v", got, all, keep)
	}
	p.eventually("two terminations for the shrink", func() bool {
		return slices.Equal(sorted(c.ev.of(pool.EventTerminated, pool.ReasonShrink)), sorted(byExpiry[:2]))
	})
	if s := p.load(p.env.Store); !s.HasTarget || s.Target != 2 {
		t.Fatalf("stored target %d (%v), want 2", s.Target, s.HasTarget)
	}
}

// Behaviour 4: a sandbox with a short ttl is replaced ahead of its expiry,
// so the pool never runs empty, and then dropped.
func testExpiry(t *testing.T, p *rig) {
	c := p.controller(func(c *pool.Config) {
		c.Size = 1
		c.TTL = 8 * time.Second
		c.UseDuration = 2 * time.Second
	})
	p.serve(c)
	p.eventually("1 pooled", func() bool { return len(p.pooled()) == 1 && c.Creating() == 0 })
	first := p.load(p.env.Store).Pooled()[0]
	var next string
	var nextAt time.Time
	p.eventually("a replacement", func() bool {
		for _, id := range p.pooled() {
			if id != first.ID {
				next, nextAt = id, time.Now()
				return true
			}
		}
		return false
	})
	// Rotation: the replacement starts when the first stops counting (its
	// good time left is less than a creation takes), so it is ready about
	// when the first stops being good. Without rotation it would start only
	// once the first died at its expiry and failed a probe. Asserted: it
	// started before the first expired (a margin of use-duration plus the
	// lead against a slow machine). Logged: how early it was ready.
	var startedAt time.Time
	p.eventually("the replacement's created event", func() bool {
		for _, ev := range c.ev.list() {
			if ev.Kind == pool.EventCreated && ev.SandboxID == next {
				startedAt = ev.Time.Add(-ev.Duration)
				return true
			}
		}
		return false
	})
	t.Logf("first %s expires %s; replacement %s started %s and was pooled %s before", first.ID,
		first.ExpiresAt.Format(time.StampMilli), next, first.ExpiresAt.Sub(startedAt).Round(time.Millisecond),
		first.ExpiresAt.Sub(nextAt).Round(time.Millisecond))
	if !startedAt.Before(first.ExpiresAt) {
		t.Errorf("replacement started at %s, after the first expired at %s: no rotation ahead of expiry",
			startedAt.Format(time.StampMilli), first.ExpiresAt.Format(time.StampMilli))
	}
	p.eventually("the expired one gone", func() bool {
		return !slices.Contains(p.pooled(), first.ID) && !slices.Contains(p.live(), first.ID)
	})
	if !slices.Contains(p.live(), next) {
		t.Fatalf("replacement %s not running", next)
	}
	// The snapshot follows the pass after the expiry (late on a loaded machine).
	p.eventually("the snapshot shows the replacement ready", func() bool {
		return c.Snapshot().Counts[pool.StateReady] >= 1
	})
}

// Behaviour 5: a controller that restarts on the same pool adopts the pooled
// sandboxes: it creates and terminates nothing, and keeps none twice.
func testRestart(t *testing.T, p *rig) {
	c1 := p.controller(nil)
	ids := p.fill(c1, 3)
	if _, err := c1.Claim(p.ctx, pool.ClaimOptions{By: "before"}); err != nil {
		t.Fatal(err)
	}
	claimed := p.claimed()
	ids = ids[1:]
	c1.Close() // sandboxes keep running

	be2, st2 := p.reopen()
	c2 := p.controller(func(c *pool.Config) { c.Size = 2 }, be2, st2)
	for range 2 {
		if err := c2.Maintain(p.ctx); err != nil {
			t.Fatal(err)
		}
		c2.WaitIdle(p.ctx)
	}
	// Putting a pooled sandbox again (a late creation, an adoption) changes nothing.
	for _, e := range p.load(st2).Pooled() {
		if err := st2.Put(p.ctx, e.Ref); err != nil {
			t.Fatal(err)
		}
	}
	terms, _, _, created, _ := c2.Counters()
	if n := sumCounts(terms); n != 0 || created != 0 {
		t.Fatalf("restarted controller terminated %d and created %d; want none", n, created)
	}
	s := p.load(st2)
	seen := map[string]int{}
	for _, e := range s.Entries {
		seen[e.ID]++
	}
	for id, n := range seen {
		if n > 1 {
			t.Fatalf("%s recorded %d times", id, n)
		}
	}
	if got := entryIDs(s.Pooled()); !slices.Equal(got, ids) {
		t.Fatalf("pool after restart %v, want %v", got, ids)
	}
	if got := p.claimed(); !slices.Equal(got, claimed) {
		t.Fatalf("claims after restart %v, want %v", got, claimed)
	}
	if live := p.live(); !slices.Equal(live, union(ids, claimed)) {
		t.Fatalf("backend runs %v, want %v", live, union(ids, claimed))
	}
	got, err := c2.Claim(p.ctx, pool.ClaimOptions{CheckHealth: true, By: "after"})
	if err != nil || got.ID != ids[0] {
		t.Fatalf("claim after restart: %s, %v; want %s", got.ID, err, ids[0])
	}
}

// aged lists the chosen sandboxes as created long ago: the engine leaves an
// unknown sandbox alone while it is younger than its adoption grace
// (CreateTries × HealthTimeout + 10s), and the suite does not wait that long.
// Everything else is the backend's own answer.
type aged struct {
	pool.Backend
	mu  sync.Mutex
	ids map[string]bool
}

func (a *aged) age(id string) { a.mu.Lock(); a.ids[id] = true; a.mu.Unlock() }

func (a *aged) List(ctx context.Context) ([]pool.Ref, error) {
	refs, err := a.Backend.List(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range refs {
		if a.ids[refs[i].ID] {
			refs[i].CreatedAt = refs[i].CreatedAt.Add(-time.Hour)
		}
	}
	return refs, err
}

// Behaviour 4, reconcile: a live good sandbox of the pool that the store
// lost is adopted (it counts toward the target); an orphan that cannot be
// adopted is terminated once two passes in a row find it; a young unknown
// sandbox (maybe another process's creation) is left alone.
func testReconcile(t *testing.T, p *rig) {
	be := &aged{Backend: p.env.Backend, ids: map[string]bool{}}
	c := p.controller(func(c *pool.Config) { c.Size = 1; c.UseDuration = 20 * time.Second }, pool.Backend(be))
	create := func(ttl time.Duration) pool.Ref {
		before := time.Now()
		r, err := p.env.Backend.Create(p.ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		// The grace relies on the backend's creation time.
		if d := r.CreatedAt.Sub(before); d < -2*time.Second || d > 5*time.Second {
			t.Fatalf("sandbox %s says it was created at %s, %s after Create was called", r.ID, r.CreatedAt, d)
		}
		return r
	}
	p.load(p.env.Store)                // the pool exists before it loses track of them
	lost := create(2 * time.Minute)    // good: adopt
	orphan := create(15 * time.Second) // less than use-duration left: terminate
	young := create(2 * time.Minute)   // within the grace: leave alone
	be.age(lost.ID)
	be.age(orphan.ID)
	p.eventually("the lost one answers", func() bool { return p.answers(lost.URL).OK })

	p.maintain(c)
	c.WaitIdle(p.ctx)
	if got := p.pooled(); !slices.Equal(got, []string{lost.ID}) {
		t.Fatalf("pool after a pass %v, want the lost %s adopted (and counted: no creation)", got, lost.ID)
	}
	if !slices.Contains(p.live(), orphan.ID) {
		t.Fatal("an orphan was terminated on the first pass that found it")
	}
	p.maintain(c)
	c.WaitIdle(p.ctx)
	p.eventually("the orphan terminated", func() bool {
		return !slices.Contains(p.live(), orphan.ID) &&
			slices.Equal(c.ev.of(pool.EventTerminated, pool.ReasonOrphan), []string{orphan.ID})
	})
	if got := c.ev.of(pool.EventAdopted, ""); !slices.Equal(got, []string{lost.ID}) {
		t.Fatalf("adopted %v, want [%s]", got, lost.ID)
	}
	if !slices.Contains(p.live(), young.ID) || slices.Contains(p.pooled(), young.ID) {
		t.Fatalf("the young unknown sandbox %s was touched (live %v, pool %v)", young.ID, p.live(), p.pooled())
	}
	_, _, _, created, _ := c.Counters()
	if created != 0 {
		t.Fatalf("%d created: the adopted one should count toward the target of 1", created)
	}
	got, err := c.Claim(p.ctx, pool.ClaimOptions{CheckHealth: true, By: "conformance"})
	if err != nil || got.ID != lost.ID {
		t.Fatalf("claim: %s, %v; want the adopted %s", got.ID, err, lost.ID)
	}
}

// `terminate --all`: every sandbox of the pool, claimed ones included, is
// terminated, the store is emptied and the target is 0, so nothing refills.
func testTerminateAll(t *testing.T, p *rig) {
	c := p.controller(nil)
	p.fill(c, 3)
	if _, err := c.Claim(p.ctx, pool.ClaimOptions{By: "conformance"}); err != nil {
		t.Fatal(err)
	}
	p.fill(c, 3)
	if n := len(p.live()); n != 4 {
		t.Fatalf("backend runs %d, want 4", n)
	}
	n, err := c.TerminateAll(p.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Fatalf("terminated %d, want 4", n)
	}
	if live := p.live(); len(live) != 0 {
		t.Fatalf("backend still runs %v", live)
	}
	s := p.load(p.env.Store)
	if len(s.Entries) != 0 || !s.HasTarget || s.Target != 0 {
		t.Fatalf("store after terminate --all: %d entries, target %d (%v)", len(s.Entries), s.Target, s.HasTarget)
	}
	p.maintain(c)
	c.WaitIdle(p.ctx)
	if live := p.live(); len(live) != 0 {
		t.Fatalf("a pass after terminate --all started %v", live)
	}
}

// Behaviour 3: with no good sandbox a claim waits its timeout, then fails
// with ErrNoSandbox.
func testClaimTimeout(t *testing.T, p *rig) {
	c := p.controller(func(c *pool.Config) { c.Size = 0 })
	p.maintain(c)
	const timeout = time.Second
	start := time.Now()
	_, err := c.Claim(p.ctx, pool.ClaimOptions{CheckHealth: true, By: "conformance", Timeout: timeout})
	took := time.Since(start)
	if !errors.Is(err, pool.ErrNoSandbox) {
		t.Fatalf("claim on an empty pool: %v, want ErrNoSandbox", err)
	}
	if took < timeout || took > timeout+5*time.Second {
		t.Fatalf("claim failed after %s, want about %s", took, timeout)
	}
	if n := c.Snapshot().Stats.ClaimsFailed; n != 1 {
		t.Fatalf("%d failed claims counted, want 1", n)
	}
}

// testSettings: what one process stores of the pool's settings (target,
// timing, what its sandboxes run) every other process reads, so that one
// that takes the pool over or backfills it creates what its controller was
// asked for.
func testSettings(t *testing.T, p *rig) {
	const w = `{"cmd":"exec python3 -m http.server {port}"}`
	st := p.env.Store
	if err := st.SetTarget(p.ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := st.SetTiming(p.ctx, 3*time.Minute, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := st.SetWorkload(p.ctx, w); err != nil {
		t.Fatal(err)
	}
	other := st
	if p.env.Reopen != nil {
		_, other = p.env.Reopen(t)
	}
	got, err := other.Load(p.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Target != 2 || !got.HasTarget || got.TTL != 3*time.Minute || got.UseDuration != 20*time.Second || got.Workload != w {
		t.Errorf("another process reads target %d (%v), timing %s %s, workload %q; want 2, 3m0s 20s, %q",
			got.Target, got.HasTarget, got.TTL, got.UseDuration, got.Workload, w)
	}
}
