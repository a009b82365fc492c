package pool

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
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
	// Role is what this process holds the lease for when it takes it:
	// RoleController (the default) or RoleBackfill (a claim refilling the
	// pool while no controller runs).
	Role Role
	// Command and API go into the lease record, so others can say who
	// maintains the pool and where its API is.
	Command string
	API     string
	// Logger takes what is worth a log line but is no event of the pool
	// (SPEC's kinds): a claimed sandbox's end. Nil discards it.
	Logger *slog.Logger
}

// Controller keeps one pool at its target. All methods are safe for
// concurrent use; Close stops everything it started.
type Controller struct {
	// Set by New, read-only after.
	cfg     Config
	be      Backend
	st      Store
	clk     clockwork.Clock // every time read and wait of the pool's rules goes through it (the few-ms batching of log observers and a burst's quiet pace CPU work and keep to the real clock)
	check   Checker
	loop    *loopProber // the default Checker's kept connections, closed by Close
	rnd     func() float64
	poll    time.Duration
	log     *slog.Logger
	leaseAs LeaseRecord // what this process writes in the lease (Since set when taken)

	// Lifetime: life bounds every goroutine the controller starts; Close cancels it.
	life context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	// Coordination without a lock held across I/O, each with its own guard.
	passes    passRunner    // one maintenance pass at a time (its own mutex, never held across a pass)
	takes     takeGate      // claims on their way out now: take, probe (its own mutex)
	records   claimRecords  // claims whose backend record is not made yet (its own mutex)
	ahead     atomic.Bool   // a probe ahead of claims runs (probeAhead)
	lastAhead atomic.Int64  // when the last claim asked for probes ahead (Unix ns)
	waitq     waitQueue     // waiting claims in arrival order (its own mutex)
	kickCh    chan struct{} // asks the maintenance loop for a pass; kicks coalesce
	fullNext  atomic.Bool   // the next pass lists the backend in full (a loss of the backend)
	looping   atomic.Bool   // a maintenance loop runs in this process
	creating  atomic.Int64  // creations in flight, read without mu
	rounds    atomic.Int64  // passes and viewer watch rounds finished (Rounds)
	// The pool's timing, as stored (one pool, one timing): what "good"
	// means here even when this process was given other flags.
	ttlNs, useNs atomic.Int64
	changeMu     sync.Mutex    // guards changed
	changed      chan struct{} // closed and replaced whenever a sandbox becomes ready or the store changes

	// mu guards every group below. Long running operations (backend, store,
	// network, emitting events) are not allowed while it is held.
	mu sync.Mutex

	// The store as this process sees it (guarded by mu).
	stored      Stored     // pooled entries only, in pool order
	claimedView claimedSet // the claimed entries, apart: the hot paths never walk them
	loaded      bool
	// storeGen is the store's generation read before the load applied to
	// the view (generationStore), when storeGenKnown.
	storeGen      uint64
	storeGenKnown bool
	// claimedMark is where the load applied to the view left off in the
	// store's claimed entries (claimedSinceStore): the next load leaves
	// out those before it, which the view holds.
	claimedMark uint64
	loadSeq     uint64                // store loads started
	appliedSeq  uint64                // the newest load applied to stored
	targetSeq   uint64                // loadSeq when this process last set the target
	writes      map[string]localWrite // this process's store writes a load in flight may miss
	target      int
	timingSaid  bool // the pool's timing differs from this process's and that was said

	// Listing a ChangeLister backend (guarded by mu): where the last list
	// of changes ended, and when a pass lists in full next.
	listCursor ListCursor
	sweepDue   time.Time
	// Pooled in the store, claimed as this process saw it (loadStore):
	// the claimed entry, kept out of the view until a pass judges it.
	reverted map[string]Entry

	// Sandboxes (guarded by mu).
	health   map[string]Health
	rotated  map[string]bool      // pooled sandboxes whose replacement started (rotation)
	doomed   map[string]time.Time // terminated by us (when): never adopt again
	finished map[string]time.Time // terminated by us, the backend said done (when): said and counted once
	killing  map[string]bool      // a Terminate call in flight: a second one waits for nothing
	suspects map[string]bool      // orphans seen by the last pass
	adopted  map[string]time.Time // when this controller last adopted a live sandbox
	// relost: pooled sandboxes this process knew when the store was lost
	// (Stored.Epoch changed); the next pass lists the backend and adopts
	// the live ones at once, before it sizes the pool.
	relost map[string]bool
	// The rolling replacement of pooled sandboxes that run a workload the
	// pool no longer runs (rollout.go).
	roll     rollout
	recent   map[string]Sandbox
	failedAt map[string]time.Time

	// Creations (guarded by mu).
	inflight     map[string]*creation
	seq          int
	limit        creationLimit   // adaptive concurrency
	budget       creationBudget  // what explains creations; the pause
	readyTimes   []time.Duration // create-to-ready, for the rotation lead
	createTimes  []time.Duration // backend Create answer times, for the creation limit
	failures     int             // creations failed in a row (backoff)
	backoffUntil time.Time
	lastCreate   string    // last creation error, for maintain's failure line
	failingSince time.Time // first of the creation failures in a row
	createKickAt time.Time // a creation done before it kicks no pass unless it is the last
	// Scratch buffers of creationTTLLocked and resize, kept between calls.
	spreadEnds, spreadFlying []time.Time
	countedIdx               []int

	// Counters (guarded by mu).
	stats        Stats
	counted      map[string]time.Time // claims counted in stats, by sandbox: each once, however it is seen
	countedOrder []countedClaim       // counted's claims, oldest first (a removed one may linger)
	guessed      map[string]bool      // claims counted from the store, warm or not by a guess (guessWarmLocked)
	// claiming holds this process's claims whose store take is under way:
	// a load that sees one of them claimed must not take it for another
	// process's claim (its id is not known here yet).
	claiming     map[claimKey]int
	terminations map[string]int64
	healthCounts map[bool]int64
	creates      map[bool]int64

	// The backend's last loss (guarded by mu): how its sandboxes created
	// before it ended.
	lost BackendLoss

	// Lease and loop (guarded by mu).
	lease    Lease
	leaseRec LeaseRecord // what the lease held now says (Since and API set)
	apiAddr  string      // the API as bound (SetAPI), for the lease record
	nextPass time.Time
	role     Role
	holder   LeaseRecord

	workload workloadFollow // its own lock; never taken with mu held
	auto     autosizeState  // its own lock; taken after mu, never before
	cost     costMeter

	problems problemLog // its own mutex; taken after mu, never before
	events   eventHub   // its own mutex; never held while observers run
}

type creation struct {
	key       string
	ref       Ref // ID set once the backend answered
	state     State
	started   time.Time
	cancel    context.CancelFunc
	cancelled bool
	putting   bool // its sandbox is being put in the store (or is there)
	tries     int
	expires   time.Time // the expiry asked of the backend (SpreadExpiry)
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
	var loop *loopProber
	if o.Checker == nil {
		loop = newLoopProber(o.Clock)
		o.Checker = newHTTPCheckerWith(nil, o.Clock, loop)
	}
	if o.StorePollEvery <= 0 {
		o.StorePollEvery = time.Second
	}
	life, stop := context.WithCancel(context.Background())
	c := &Controller{
		cfg: o.Config, be: o.Backend, st: o.Store, clk: o.Clock, check: o.Checker, loop: loop, rnd: o.Rand,
		poll: o.StorePollEvery, life: life, stop: stop, log: cmp.Or(o.Logger, slog.New(slog.DiscardHandler)),
		leaseAs:      LeaseRecord{Host: hostname(), Pid: osGetpid(), Role: cmp.Or(o.Role, RoleController), Command: o.Command, API: o.API, Node: NodeID()},
		kickCh:       make(chan struct{}, 1),
		target:       o.Config.Size,
		health:       map[string]Health{},
		inflight:     map[string]*creation{},
		writes:       map[string]localWrite{},
		rotated:      map[string]bool{},
		limit:        newCreationLimit(o.Config.MaxCreating),
		doomed:       map[string]time.Time{},
		finished:     map[string]time.Time{},
		killing:      map[string]bool{},
		recent:       map[string]Sandbox{},
		failedAt:     map[string]time.Time{},
		terminations: map[string]int64{},
		healthCounts: map[bool]int64{},
		creates:      map[bool]int64{},
		changed:      make(chan struct{}),
	}
	if n, ok := o.Backend.(BackendNotifier); ok {
		n.NotifyTo(func(m string) { c.emit(Event{Kind: EventBackend, Message: m}) })
	}
	c.ttlNs.Store(int64(o.Config.TTL))
	c.useNs.Store(int64(o.Config.UseDuration))
	c.initAutosize()
	return c, nil
}

// ttlDur and useDur are the pool's ttl and use-duration.
func (c *Controller) ttlDur() time.Duration { return time.Duration(c.ttlNs.Load()) }
func (c *Controller) useDur() time.Duration { return time.Duration(c.useNs.Load()) }

// Timing is the pool's ttl and use-duration as this controller judges by
// them: the stored ones once the store was read, else the configured ones.
func (c *Controller) Timing() (ttl, use time.Duration) { return c.ttlDur(), c.useDur() }

// Config returns the controller's configuration.
func (c *Controller) Config() Config { return c.cfg }

// BackendName is the backend's name.
func (c *Controller) BackendName() string { return c.be.Name() }

// Close waits for the backend's records of the claims made here, cancels
// creations in flight (each terminates its sandbox, so none leaks), stops
// the loops and waits for every goroutine, then releases the lease. It does
// not terminate pooled sandboxes: they keep running.
func (c *Controller) Close() {
	_ = c.records.wait(context.Background()) // each bounded by recordTimeout
	c.stop()
	c.wg.Wait()
	c.mu.Lock()
	lease := c.lease
	c.lease = nil
	c.mu.Unlock()
	if lease != nil {
		_ = lease.Release()
	}
	if c.loop != nil {
		c.loop.closeIdle()
	}
	c.events.closeAll()
}

// Subscribe returns a stream of events; a slow reader misses events rather
// than slowing the pool. cancel stops the stream.
func (c *Controller) Subscribe(buffer int) (events <-chan Event, cancel func()) {
	return c.events.subscribe(buffer)
}

// Observe registers fn to be called synchronously for every event (metrics),
// by the goroutine that caused it, outside any lock. fn must be quick and
// must not call back into the controller; slow ones use ObserveAsync.
func (c *Controller) Observe(fn func(Event)) { c.events.observe(fn) }

// ObserveAsync registers fn to be called for every event in order on a
// goroutine of its own (log writers): a slow fn delays nothing else. Close
// waits until fn has seen every event published before it.
func (c *Controller) ObserveAsync(fn func(Event)) { c.events.observeAsync(nil, fn, nil) }

// ObserveAsyncIf is ObserveAsync for the events keep wants. keep runs
// synchronously, by the goroutine that caused the event, and must be quick:
// an event it turns down costs the async goroutine nothing (a log that
// drops debug events is not woken for each creation's start and each
// pass's end).
func (c *Controller) ObserveAsyncIf(keep func(Event) bool, fn func(Event)) {
	c.events.observeAsync(keep, fn, nil)
}

// ObserveAsyncBatch is ObserveAsyncIf with flush called after each batch of
// events fn saw: events that come within a few milliseconds of each other
// (a burst of claims) are one batch, so a log can write them in one write.
func (c *Controller) ObserveAsyncBatch(keep func(Event) bool, fn func(Event), flush func()) {
	c.events.observeAsync(keep, fn, flush)
}

func (c *Controller) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = c.clk.Now()
	}
	if e.Message == "" {
		e.Message = describe(e)
	}
	c.events.publish(e)
}
