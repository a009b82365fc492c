package pool

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
)

// Options wires a Controller. Config, Backend and Store are required.
type Options struct {
	Config  Config
	Backend Backend
	Store   Store
	// Clock defaults to the real one; tests inject a fake.
	Clock clockwork.Clock
	// Checker defaults to an HTTP GET checker.
	Checker Checker
	// Rand returns [0,1) for backoff jitter; defaults to math/rand.
	Rand func() float64
	// StorePollEvery is how often the store is re-read to see other
	// processes' claims (default 1s).
	StorePollEvery time.Duration
	// HolderNote is added to this process's name in the lease, to say what
	// it holds the lease for.
	HolderNote string
}

// ClaimHolderNote marks the lease of a `claim` that backfills the pool
// itself for a moment; a controller starting meanwhile waits for it.
const ClaimHolderNote = " (a claim's backfill)"

// LeaseHolder says who maintains the pool now ("" when nobody does or the
// store elects no controller).
func (c *Controller) LeaseHolder(ctx context.Context) (string, error) {
	leaser, ok := c.st.(Leaser)
	if !ok {
		return "", nil
	}
	return leaser.LeaseHolder(ctx)
}

// Controller keeps one pool at its target. All methods are safe for
// concurrent use; Close stops everything it started.
type Controller struct {
	cfg   Config
	be    Backend
	st    Store
	clk   clockwork.Clock
	check Checker
	rnd   func() float64
	poll  time.Duration

	holderNote string

	// life bounds every goroutine the controller starts; Close cancels it.
	life     context.Context
	stop     context.CancelFunc
	wg       sync.WaitGroup
	passMu   sync.Mutex // one maintenance pass at a time
	kickCh   chan struct{}
	looping  atomic.Bool // a maintenance loop runs in this process
	lease    Lease
	creating atomic.Int64

	mu           sync.Mutex
	stored       Stored
	loaded       bool
	target       int
	health       map[string]Health
	inflight     map[string]*creation
	doomed       map[string]bool // terminated by us: never adopt again
	suspects     map[string]bool // orphans seen by the last pass
	recent       map[string]Sandbox
	failedAt     map[string]time.Time
	readyTimes   []time.Duration
	failures     int
	backoffUntil time.Time
	lastErr      string
	lastCreate   string // last creation error, for maintain's failure line
	stats        Stats
	terminations map[string]int64
	healthCounts map[bool]int64
	creates      map[bool]int64
	nextPass     time.Time
	role         string
	holder       string
	seq          int

	events   eventHub
	waitq    waitQueue
	changeMu sync.Mutex
	changed  chan struct{} // closed and replaced whenever a sandbox becomes ready
}

type creation struct {
	key       string
	ref       Ref // ID set once the backend answered
	state     State
	started   time.Time
	cancel    context.CancelFunc
	cancelled bool
}

// New validates the config and builds a controller; it starts nothing.
func New(o Options) (*Controller, error) {
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	if o.Backend == nil || o.Store == nil {
		return nil, errors.New("pool: a backend and a store are required")
	}
	if o.Clock == nil {
		o.Clock = clockwork.NewRealClock()
	}
	if o.Checker == nil {
		o.Checker = NewHTTPChecker(nil)
	}
	if o.StorePollEvery <= 0 {
		o.StorePollEvery = time.Second
	}
	life, stop := context.WithCancel(context.Background())
	c := &Controller{
		cfg: o.Config, be: o.Backend, st: o.Store, clk: o.Clock, check: o.Checker, rnd: o.Rand,
		poll: o.StorePollEvery, life: life, stop: stop, holderNote: o.HolderNote,
		kickCh:       make(chan struct{}, 1),
		target:       o.Config.Size,
		health:       map[string]Health{},
		inflight:     map[string]*creation{},
		doomed:       map[string]bool{},
		recent:       map[string]Sandbox{},
		failedAt:     map[string]time.Time{},
		terminations: map[string]int64{},
		healthCounts: map[bool]int64{},
		creates:      map[bool]int64{},
		changed:      make(chan struct{}),
	}
	return c, nil
}

// Config returns the controller's configuration.
func (c *Controller) Config() Config { return c.cfg }

// BackendName is the backend's name.
func (c *Controller) BackendName() string { return c.be.Name() }

// Close cancels creations in flight (each terminates its sandbox, so none
// leaks), stops the loops and waits for every goroutine, then releases the
// lease. It does not terminate pooled sandboxes: they keep running.
func (c *Controller) Close() {
	c.stop()
	c.wg.Wait()
	c.mu.Lock()
	lease := c.lease
	c.lease = nil
	c.mu.Unlock()
	if lease != nil {
		_ = lease.Release()
	}
	c.events.closeAll()
}

// Subscribe returns a stream of events; a slow reader misses events rather
// than slowing the pool. cancel stops the stream.
func (c *Controller) Subscribe(buffer int) (events <-chan Event, cancel func()) {
	return c.events.subscribe(buffer)
}

// Observe registers fn to be called synchronously for every event (metrics).
// fn must be quick and must not call back into the controller.
func (c *Controller) Observe(fn func(Event)) { c.events.observe(fn) }

func (c *Controller) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = c.clk.Now()
	}
	if e.Message == "" {
		e.Message = describe(e)
	}
	c.events.publish(e)
}

func (c *Controller) setErr(err error) {
	c.mu.Lock()
	if err == nil {
		c.lastErr = ""
	} else {
		c.lastErr = err.Error()
	}
	c.mu.Unlock()
}

// ---- loops ----

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
	for {
		err := c.acquire(ctx)
		var held *LeaseHeldError
		if errors.As(err, &held) && allowViewer {
			c.mu.Lock()
			c.role, c.holder = "viewer", held.Holder
			c.mu.Unlock()
			if werr := c.watchUntilLeaseFree(ctx); werr != nil {
				return nil // ctx ended
			}
			continue
		}
		if err != nil {
			return err
		}
		lost := c.maintainWhileLeased(ctx)
		if ctx.Err() != nil {
			return nil
		}
		// Another controller took the pool over (a heartbeat that went
		// stale): stop maintaining at once, or two would overshoot it.
		c.emit(Event{Kind: EventError, Err: "lost the controller lease to " + lost})
		if !allowViewer {
			return &LeaseHeldError{Holder: lost}
		}
	}
}

// maintainWhileLeased runs the loops until ctx ends or the lease is lost;
// it then releases the lease and says who holds it now.
func (c *Controller) maintainWhileLeased(ctx context.Context) string {
	c.mu.Lock()
	c.role, c.holder = "controller", ""
	lease := c.lease
	c.mu.Unlock()
	c.emit(Event{Kind: EventLeaseAcquired})
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
		return ""
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
	lease, err := leaser.AcquireLease(ctx, holderName()+c.holderNote)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.lease = lease
	c.mu.Unlock()
	return nil
}

// Watch follows the pool without ever maintaining it (a read-only
// dashboard): it re-reads the store, probes health and notes who holds the
// lease, until ctx ends.
func (c *Controller) Watch(ctx context.Context) error {
	c.mu.Lock()
	c.role = "viewer"
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
	for {
		c.refreshStore(ctx)
		if now := c.clk.Now(); now.Sub(probed) >= c.cfg.HealthEvery {
			probed = now
			c.ProbeAll(ctx) // a viewer shows health too
		}
		holder, err := c.LeaseHolder(ctx)
		if err == nil {
			if untilLeaseFree && holder == "" {
				return nil
			}
			c.mu.Lock()
			c.holder = holder
			c.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.Chan():
		}
	}
}

func (c *Controller) runLoops(ctx context.Context) {
	var wg sync.WaitGroup
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

// maintainLoop runs a full pass at start, at each interval and at rotation
// points, and a quick one (no backend list) on each kick.
func (c *Controller) maintainLoop(ctx context.Context) {
	var nextFull time.Time // kicks must not keep postponing the regular pass
	for {
		full := !c.clk.Now().Before(nextFull)
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
// replacements start exactly when they should.
func (c *Controller) untilNextPass(next time.Time) time.Duration {
	now := c.clk.Now()
	c.mu.Lock()
	lead := c.leadLocked()
	for _, e := range c.stored.Entries {
		if e.Claimed() || !CountsTowardTarget(e.ExpiresAt, now, c.cfg.UseDuration, lead) {
			continue
		}
		if at := RotationAt(e.ExpiresAt, c.cfg.UseDuration, lead); at.Before(next) {
			next = at
		}
	}
	if c.backoffUntil.After(now) && c.backoffUntil.Before(next) {
		next = c.backoffUntil
	}
	c.nextPass = next
	c.mu.Unlock()
	return max(next.Sub(now), time.Millisecond)
}

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

// refreshStore reloads the store and reports whether the pool lost entries
// (claimed or removed elsewhere).
func (c *Controller) refreshStore(ctx context.Context) bool {
	s, err := c.st.Load(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.setErr(err)
			c.emit(Event{Kind: EventError, Err: err.Error()})
		}
		return false
	}
	c.mu.Lock()
	// Compared under the lock: claims and forget edit c.stored.Entries in
	// place, and s is c.stored from here on.
	changed, lost := diffStored(c.stored, s)
	c.setStoredLocked(s)
	c.mu.Unlock()
	if changed {
		c.notifyChange()
		c.emit(Event{Kind: EventStoreChanged})
	}
	return lost
}

func diffStored(a, b Stored) (changed, lost bool) {
	if a.Target != b.Target || len(a.Entries) != len(b.Entries) {
		changed = true
	}
	inB := make(map[string]bool, len(b.Entries))
	for _, e := range b.Entries {
		inB[e.ID+"/"+e.ClaimedBy] = true
	}
	for _, e := range a.Entries {
		if !inB[e.ID+"/"+e.ClaimedBy] {
			changed = true
			if !e.Claimed() {
				lost = true
			}
		}
	}
	return changed, lost
}

func (c *Controller) setStoredLocked(s Stored) {
	c.stored = s
	c.loaded = true
	if s.HasTarget {
		c.target = s.Target
	}
	// Forget health of sandboxes that left the pool.
	known := make(map[string]bool, len(s.Entries))
	for _, e := range s.Entries {
		known[e.ID] = true
	}
	for _, cr := range c.inflight {
		known[cr.ref.ID] = true
	}
	for id := range c.health {
		if !known[id] {
			delete(c.health, id)
		}
	}
}

// ---- health ----

// Probe checks one URL once, bounded by the health timeout.
func (c *Controller) probe(ctx context.Context, url string) Health {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HealthTimeout)
	defer cancel()
	h := c.check(ctx, url)
	if h.CheckedAt.IsZero() {
		h.CheckedAt = c.clk.Now()
	}
	c.mu.Lock()
	c.healthCounts[h.OK]++
	c.mu.Unlock()
	return h
}

// probeParallel bounds how many health checks run at once, so one hung
// sandbox never delays the others and a big pool does not open 1,000 sockets.
const probeParallel = 64

// ProbeAll checks every pooled sandbox once, in parallel, and returns how
// many failed.
func (c *Controller) ProbeAll(ctx context.Context) int {
	c.mu.Lock()
	pooled := c.stored.Pooled()
	c.mu.Unlock()
	var bad atomic.Int64
	sem := make(chan struct{}, probeParallel)
	var wg sync.WaitGroup
	for _, e := range pooled {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			h := c.probe(ctx, e.URL)
			if ctx.Err() != nil {
				return
			}
			c.mu.Lock()
			prev := c.health[e.ID]
			c.health[e.ID] = h
			c.mu.Unlock()
			if !h.OK {
				bad.Add(1)
				if !prev.Checked() || prev.OK {
					c.emit(Event{Kind: EventHealthFailed, SandboxID: e.ID, Health: h, Err: h.Error})
				}
			} else if prev.Checked() && !prev.OK {
				c.emit(Event{Kind: EventHealthRecovery, SandboxID: e.ID, Health: h})
			}
		}()
	}
	wg.Wait()
	return int(bad.Load())
}

// waitHealthy retries a new sandbox every 100 ms until it answers or the
// health timeout passes (the seed's wait-for-container-start).
func (c *Controller) waitHealthy(ctx context.Context, url string) Health {
	deadline := c.clk.Now().Add(c.cfg.HealthTimeout)
	for {
		remaining := deadline.Sub(c.clk.Now())
		attempt, cancel := context.WithTimeout(ctx, remaining)
		h := c.check(attempt, url)
		cancel()
		if h.CheckedAt.IsZero() {
			h.CheckedAt = c.clk.Now()
		}
		if h.OK || ctx.Err() != nil {
			return h
		}
		if !c.clk.Now().Add(100 * time.Millisecond).Before(deadline) {
			if h.Error == "" {
				h.Error = "timeout"
			}
			return h
		}
		select {
		case <-ctx.Done():
			return h
		case <-c.clk.After(100 * time.Millisecond):
		}
	}
}

// ---- snapshot ----

// Snapshot returns the pool as this controller knows it now (no I/O).
func (c *Controller) Snapshot() Snapshot {
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Snapshot{
		Pool: c.cfg.Pool, Backend: c.be.Name(), Target: c.target, Now: now,
		Counts: make(map[State]int, len(States)), NextPass: c.nextPass,
		Role: c.role, LeaseHolder: c.holder, LastError: c.lastErr, Stats: c.stats,
	}
	if c.backoffUntil.After(now) {
		s.BackoffUntil = c.backoffUntil
	}
	s.Sandboxes = make([]Sandbox, 0, len(c.stored.Entries)+len(c.inflight)+len(c.recent))
	seen := make(map[string]bool, len(c.stored.Entries))
	for _, e := range c.stored.Entries {
		h := c.health[e.ID]
		sb := Sandbox{ID: e.ID, URL: e.URL, CreatedAt: e.CreatedAt, ExpiresAt: e.ExpiresAt, Health: h,
			ClaimedBy: e.ClaimedBy, ClaimedAt: e.ClaimedAt, State: StateOf(e, h, now, c.cfg.UseDuration)}
		if r, ok := c.recent[e.ID]; ok && r.State == StateTerminating {
			sb.State = StateTerminating
		}
		if sb.State == StateUnhealthy {
			sb.Err = h.Error
		}
		seen[e.ID] = true
		s.Sandboxes = append(s.Sandboxes, sb)
	}
	for _, cr := range sortedCreations(c.inflight) {
		if cr.ref.ID != "" && seen[cr.ref.ID] {
			continue
		}
		id := cr.ref.ID
		if id == "" {
			id = cr.key
		}
		seen[id] = true
		s.Sandboxes = append(s.Sandboxes, Sandbox{ID: id, URL: cr.ref.URL, State: cr.state,
			CreatedAt: cr.started, ExpiresAt: cr.ref.ExpiresAt, Health: c.health[cr.ref.ID]})
	}
	for _, id := range slices.Sorted(maps.Keys(c.recent)) {
		r := c.recent[id]
		if r.State == StateFailed && now.Sub(c.failedAt[id]) > failedRowFor {
			delete(c.recent, id)
			delete(c.failedAt, id) // a failed row shows for a while, then goes
			continue
		}
		if !seen[id] {
			s.Sandboxes = append(s.Sandboxes, r)
		}
	}
	for _, sb := range s.Sandboxes {
		s.Counts[sb.State]++
	}
	s.Stats.WasteSeconds = c.stats.WasteSeconds
	return s
}

func sortedCreations(m map[string]*creation) []*creation {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b *creation) int { return a.started.Compare(b.started) })
	return out
}

// failedRowFor is how long a failed creation stays on screen.
const failedRowFor = 30 * time.Second

// Creating is the number of creations in flight.
func (c *Controller) Creating() int { return int(c.creating.Load()) }

// Counters returns cumulative counts for metrics: terminations by reason,
// health checks and creations by result.
func (c *Controller) Counters() (terminations map[string]int64, healthOK, healthFailed, createOK, createFailed int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.terminations), c.healthCounts[true], c.healthCounts[false], c.creates[true], c.creates[false]
}

// Refresh reads the store (and, with probe, checks every pooled sandbox once)
// and returns the snapshot: what a one-shot `check` shows.
func (c *Controller) Refresh(ctx context.Context, probe bool) (Snapshot, error) {
	s, err := c.st.Load(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	c.mu.Lock()
	c.setStoredLocked(s)
	c.mu.Unlock()
	if probe {
		c.ProbeAll(ctx)
	}
	return c.Snapshot(), nil
}

// ---- commands ----

// Resize sets the target and starts a pass.
func (c *Controller) Resize(ctx context.Context, n int) error {
	if err := c.cfg.ValidateSize(n); err != nil {
		return err
	}
	// The old target is read before the store is written: a store reload
	// in between (the store loop, a pass) would already show n.
	c.mu.Lock()
	old := c.target
	c.mu.Unlock()
	if err := c.st.SetTarget(ctx, n); err != nil {
		c.setErr(err)
		return fmt.Errorf("set target: %w", err)
	}
	c.mu.Lock()
	c.target = n
	c.stored.Target, c.stored.HasTarget = n, true
	c.mu.Unlock()
	c.emit(Event{Kind: EventResized, Message: fmt.Sprintf("target %d -> %d", old, n)})
	c.Kick()
	return nil
}

// Target is the target as last read or set.
func (c *Controller) Target() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.target
}

// ErrNotFound says that no sandbox of the pool has that id.
var ErrNotFound = errors.New("no such sandbox in the pool")

// Terminate stops one sandbox of the pool: pooled, claimed or being created.
func (c *Controller) Terminate(ctx context.Context, id string) error {
	c.mu.Lock()
	for _, cr := range c.inflight {
		if cr.key == id || cr.ref.ID == id {
			cr.cancelled = true
			cr.cancel()
			c.mu.Unlock()
			return nil
		}
	}
	c.mu.Unlock()
	removed, err := c.st.Remove(ctx, id)
	if err != nil {
		c.setErr(err)
		return fmt.Errorf("remove %s from the store: %w", id, err)
	}
	if len(removed) == 0 {
		live, lerr := c.be.List(ctx)
		if lerr != nil {
			return fmt.Errorf("list sandboxes: %w", lerr)
		}
		if !slices.ContainsFunc(live, func(r Ref) bool { return r.ID == id }) {
			return fmt.Errorf("%s: %w %q", id, ErrNotFound, c.cfg.Pool)
		}
		removed = []Entry{{Ref: Ref{ID: id}}}
	}
	c.forget(removed[0].ID)
	err = c.terminate(ctx, removed[0], ReasonUser)
	c.Kick()
	return err
}

// TerminateAll tears the pool down: the target becomes 0 (so no controller
// refills it), creations in flight are cancelled, and every sandbox of the
// pool, claimed ones included, is terminated. It returns how many it stopped.
func (c *Controller) TerminateAll(ctx context.Context) (int, error) {
	if err := c.st.SetTarget(ctx, 0); err != nil {
		return 0, fmt.Errorf("set target 0: %w", err)
	}
	c.mu.Lock()
	c.target = 0
	c.mu.Unlock()
	return c.terminateEverything(ctx, ReasonUser)
}

// Cleanup terminates every sandbox of the pool but keeps the target: what
// --cleanup does on quit.
func (c *Controller) Cleanup(ctx context.Context) (int, error) {
	return c.terminateEverything(ctx, ReasonCleanup)
}

func (c *Controller) terminateEverything(ctx context.Context, reason string) (int, error) {
	c.mu.Lock()
	for _, cr := range c.inflight {
		cr.cancelled = true
		cr.cancel()
	}
	c.mu.Unlock()
	s, err := c.st.Load(ctx)
	if err != nil {
		return 0, err
	}
	ids := make([]string, 0, len(s.Entries))
	byID := map[string]Entry{}
	for _, e := range s.Entries {
		ids = append(ids, e.ID)
		byID[e.ID] = e
	}
	if _, err := c.st.Remove(ctx, ids...); err != nil {
		return 0, err
	}
	live, err := c.be.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list sandboxes: %w", err)
	}
	for _, r := range live {
		if _, ok := byID[r.ID]; !ok {
			byID[r.ID] = Entry{Ref: r}
		}
	}
	c.waitCreations(ctx)
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, e := range byID {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := c.terminate(ctx, e, reason); err != nil {
				mu.Lock()
				firstErr = cmpErr(firstErr, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	c.refreshStore(ctx)
	return len(byID), firstErr
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// waitCreations waits (bounded by ctx) until no creation is in flight.
func (c *Controller) waitCreations(ctx context.Context) {
	for c.creating.Load() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// WaitIdle waits until no creation is in flight (for one-shot commands).
func (c *Controller) WaitIdle(ctx context.Context) { c.waitCreations(ctx) }

// forget drops what memory holds of a sandbox that left the pool.
func (c *Controller) forget(id string) {
	c.mu.Lock()
	c.stored.Entries = slices.DeleteFunc(c.stored.Entries, func(e Entry) bool { return e.ID == id })
	delete(c.health, id)
	c.mu.Unlock()
}

// terminate asks the backend to stop a sandbox that is already out of the
// store, and accounts for it.
func (c *Controller) terminate(ctx context.Context, e Entry, reason string) error {
	now := c.clk.Now()
	c.mu.Lock()
	c.doomed[e.ID] = true
	c.recent[e.ID] = Sandbox{ID: e.ID, URL: e.URL, State: StateTerminating, CreatedAt: e.CreatedAt, ExpiresAt: e.ExpiresAt}
	if !e.Claimed() && !e.CreatedAt.IsZero() && reason != ReasonFailed {
		c.stats.WasteSeconds += now.Sub(e.CreatedAt).Seconds()
	}
	c.mu.Unlock()
	// A terminate must finish even when the caller's ctx is gone (shutdown),
	// or the sandbox would be out of the store but alive.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := c.be.Terminate(tctx, e.ID)
	c.mu.Lock()
	delete(c.recent, e.ID)
	if err == nil {
		c.terminations[reason]++
	}
	c.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("terminate %s: %w", e.ID, err)
		c.setErr(err)
		c.emit(Event{Kind: EventError, SandboxID: e.ID, Err: err.Error()})
		return err
	}
	c.emit(Event{Kind: EventTerminated, SandboxID: e.ID, Reason: reason})
	return nil
}

// terminateAsync terminates in the background, owned by the controller.
func (c *Controller) terminateAsync(e Entry, reason string) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_ = c.terminate(c.life, e, reason)
	}()
}

func holderName() string {
	return "pid " + strconv.Itoa(osGetpid()) + " on " + hostname()
}
