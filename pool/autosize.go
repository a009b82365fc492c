package pool

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// Autosize: the target follows demand (SPEC --autosize). The rule is pure
// (AutoTarget, rateMeter, windowMax, all on an injected now); the
// controller's part is a few hooks that feed it claims, ask it for the
// target at each pass, and turn it off on a manual resize.

// Little's law: while claims arrive at rate λ and a replacement takes W to
// get ready, λ·W sandboxes are being replaced at any time, so a pool whose
// target is λ·W has nothing ready left to hand out. The target keeps
// AutosizeHeadroom times that (arrivals bunch up: for Poisson arrivals the
// count over W exceeds λ·W + 2·sqrt(λ·W) only ~2% of the time, and 1.5·λ·W
// covers that from λ·W ≈ 16 up; below, the margin does) plus AutosizeMargin
// (one sandbox for the claim that arrives first after a quiet spell).
const (
	AutosizeHeadroom = 1.5
	AutosizeMargin   = 1
)

// Claim rate windows: the short one makes the target rise within a second
// or two of a step up; the long one keeps a slow trickle of claims (one
// every few seconds) from reading as zero between claims.
const (
	rateShort = 2 * time.Second
	rateLong  = 10 * time.Second
)

// timeToReadyUnknown stands in for time-to-ready before any creation was
// timed. Low on purpose: an underestimate corrects itself as soon as the
// first creations finish (the target rises at once), an overestimate would
// be held for the whole window.
const timeToReadyUnknown = time.Second

// AutoTarget is the rule: enough ready sandboxes to serve rate claims per
// second through one time-to-ready, with headroom, within [min, max].
func AutoTarget(rate float64, timeToReady time.Duration, min, max int) int {
	n := int(math.Ceil(rate*timeToReady.Seconds()*AutosizeHeadroom)) + AutosizeMargin
	if rate <= 0 || math.IsNaN(rate) {
		n = AutosizeMargin
	}
	return clampInt(n, min, max)
}

func clampInt(n, lo, hi int) int {
	if n < lo {
		n = lo
	}
	if n > hi {
		n = hi
	}
	return n
}

// rateMeter counts claims over the last rateLong.
type rateMeter struct {
	at []time.Time // claim instants, oldest first
}

func (m *rateMeter) add(t time.Time) {
	// Claims seen in the store may arrive a little out of order: keep it sorted.
	i := len(m.at)
	for i > 0 && m.at[i-1].After(t) {
		i--
	}
	m.at = slices.Insert(m.at, i, t)
}

// rate is claims per second now: the larger of the short and the long
// window's rate, so that it rises fast and a trickle still counts.
func (m *rateMeter) rate(now time.Time) float64 {
	m.prune(now)
	var short int
	for i := len(m.at) - 1; i >= 0 && now.Sub(m.at[i]) < rateShort; i-- {
		short++
	}
	return max(float64(short)/rateShort.Seconds(), float64(len(m.at))/rateLong.Seconds())
}

func (m *rateMeter) prune(now time.Time) {
	i := 0
	for i < len(m.at) && now.Sub(m.at[i]) >= rateLong {
		i++
	}
	if i > 0 {
		m.at = append(m.at[:0], m.at[i:]...)
	}
}

// oldest is when the meter would next read lower without new claims.
func (m *rateMeter) nextDrop() (time.Time, bool) {
	if len(m.at) == 0 {
		return time.Time{}, false
	}
	return m.at[0].Add(rateLong), true
}

// windowMax is the largest value recorded over the last window: a
// Kubernetes HPA's scale-down stabilization. A new high shows at once; a
// fall shows only once every higher value is older than the window.
type windowMax struct {
	window time.Duration
	q      []sample // values strictly decreasing, times increasing
}

type sample struct {
	at time.Time
	n  int
}

func (w *windowMax) add(now time.Time, n int) int {
	for len(w.q) > 0 && w.q[len(w.q)-1].n <= n {
		w.q = w.q[:len(w.q)-1]
	}
	w.q = append(w.q, sample{now, n})
	i := 0
	for i < len(w.q)-1 && now.Sub(w.q[i].at) >= w.window {
		i++
	}
	w.q = w.q[i:]
	return w.q[0].n
}

// nextFall is when the held maximum would next give way, if it will.
func (w *windowMax) nextFall() (time.Time, bool) {
	if len(w.q) < 2 {
		return time.Time{}, false
	}
	return w.q[0].at.Add(w.window), true
}

// Autosizer turns claims into a target with the rule above. Not safe for
// concurrent use: the controller guards it.
type Autosizer struct {
	Min, Max  int
	Window    time.Duration
	meter     rateMeter
	held      windowMax
	rec       int
	seen      map[string]time.Time // claims counted lately, by sandbox id
	seenSwept time.Time            // when seen last lost its old ids
}

// NewAutosizer sizes between min and max, falling no faster than window.
func NewAutosizer(min, max int, window time.Duration) *Autosizer {
	return &Autosizer{Min: min, Max: max, Window: window, held: windowMax{window: window}}
}

// Claimed records one claim at t.
func (a *Autosizer) Claimed(t time.Time) { a.meter.add(t) }

// ClaimedID records the claim of sandbox id at t once, however often it is
// reported (by this process's claim and by the store showing it claimed).
func (a *Autosizer) ClaimedID(id string, t time.Time) {
	if a.seen == nil {
		a.seen = map[string]time.Time{}
	}
	if _, dup := a.seen[id]; dup {
		return
	}
	a.seen[id] = t
	a.meter.add(t)
	// Pruned here too, not only when the rate is asked (autosize off, no
	// snapshot taken: they grew by a claim each), the seen ids once per
	// window (a sweep per claim would cost O(claims in the window)).
	a.meter.prune(t)
	if t.Sub(a.seenSwept) >= rateLong {
		a.seenSwept = t
		for k, at := range a.seen {
			if t.Sub(at) >= 2*rateLong {
				delete(a.seen, k)
			}
		}
	}
}

// Rate is the recent claim rate, per second.
func (a *Autosizer) Rate(now time.Time) float64 { return a.meter.rate(now) }

// Target records this instant's recommendation and returns the target:
// the largest recommendation of the last window.
func (a *Autosizer) Target(now time.Time, timeToReady time.Duration) int {
	a.rec = AutoTarget(a.meter.rate(now), timeToReady, a.Min, a.Max)
	return a.held.add(now, a.rec)
}

// Reset forgets what the target was held at (autosize turned back on).
func (a *Autosizer) Reset() { a.held.q = nil }

// NextChange is when the target could next change with no new claim (the
// rate falling, a held maximum giving way), or false when it cannot.
func (a *Autosizer) NextChange() (time.Time, bool) {
	var next time.Time
	ok := false
	for _, f := range []func() (time.Time, bool){a.meter.nextDrop, a.held.nextFall} {
		if t, o := f(); o && (!ok || t.Before(next)) {
			next, ok = t, true
		}
	}
	return next, ok
}

// AutosizeStatus is what autosize does now, for the dashboard, the API and metrics.
type AutosizeStatus struct {
	// On is true while the target follows demand.
	On bool
	// Rate is the recent claim rate (claims per second).
	Rate float64
	// TimeToReady is the p95 of recent creations the rule uses.
	TimeToReady time.Duration
	// Min, Max and Window are the bounds it sizes within.
	Min, Max int
	Window   time.Duration
	// Off says why it was turned off ("" while on, or when never on).
	Off string
}

// Explain is the dashboard's "auto: 3.1 claims/s x 1.4 s" ("" when off).
func (s AutosizeStatus) Explain() string {
	if !s.On {
		return ""
	}
	return fmt.Sprintf("auto: %.1f claims/s x %.1f s", s.Rate, s.TimeToReady.Seconds())
}

// autosizeState is the controller's autosize, guarded by its own mutex
// (never held across I/O) so that claims can feed it without c.mu.
type autosizeState struct {
	mu      sync.Mutex
	on      bool
	off     string
	sizer   *Autosizer
	written map[int]time.Time // targets this process is storing, until the view holds them
	ttr     time.Duration
	// announce is an "autosize off" to emit at the next pass (it was
	// noticed under c.mu, where no event is emitted).
	announce string
}

func (c *Controller) initAutosize() {
	a := &c.auto
	a.sizer = NewAutosizer(c.cfg.MinSize, c.cfg.MaxSize, c.cfg.AutosizeWindow)
	a.on = c.cfg.Autosize
	a.written = map[int]time.Time{}
	c.Observe(func(e Event) {
		if e.Kind == EventClaimed {
			// Demand is when a claim came, not when a cold one was served.
			a.mu.Lock()
			a.sizer.ClaimedID(e.SandboxID, e.Time.Add(-e.Duration))
			a.mu.Unlock()
		}
		c.cost.observe(e)
	})
}

// SetAutosize turns autosize on (the dashboard's `a`) or off.
func (c *Controller) SetAutosize(on bool) {
	a := &c.auto
	a.mu.Lock()
	was := a.on
	a.on, a.off = on, ""
	if on && !was {
		a.sizer.Reset()
	}
	if !on && was {
		a.off = "turned off"
	}
	a.mu.Unlock()
	if on != was {
		msg := "autosize on: the target follows demand"
		if !on {
			msg = "autosize off"
		}
		c.emit(Event{Kind: EventResized, Message: msg})
		c.Kick()
	}
}

// autosizeOff turns autosize off for a manual resize and says so.
func (c *Controller) autosizeOff(why string) {
	a := &c.auto
	a.mu.Lock()
	was := a.on
	if was {
		a.on, a.off = false, why
	}
	a.mu.Unlock()
	if was {
		c.emit(Event{Kind: EventResized, Message: "autosize off: " + why + " (press a in the dashboard to turn it back on)"})
	}
}

// autosizeTarget is the pass's hook: with autosize on it returns the
// target the rule gives now and stores it when it changed (so that viewers
// and `check` see it); otherwise target as it is.
func (c *Controller) autosizeTarget(ctx context.Context, target int, now time.Time) int {
	a := &c.auto
	a.mu.Lock()
	msg, on := a.announce, a.on
	a.announce = ""
	a.mu.Unlock()
	if msg != "" {
		c.emit(Event{Kind: EventResized, Message: msg})
	}
	if !on { // the common case costs one uncontended lock: passes follow every claim
		return target
	}
	c.mu.Lock()
	ttr := P95(c.readyTimes, timeToReadyUnknown)
	c.mu.Unlock()
	a.mu.Lock()
	if !a.on {
		a.mu.Unlock()
		return target
	}
	a.ttr = ttr
	n := a.sizer.Target(now, ttr)
	rate := a.sizer.Rate(now)
	if n != target {
		// A load that read the store after this write landed but is
		// applied before the view takes n shows n: not a resize by hand.
		// (One begun before the write keeps the view's target: targetSeq.
		// The old value is not marked: another process setting it back,
		// a viewer's + right after autosize moved off it, is a resize.)
		a.written[n] = now
	}
	for v, at := range a.written {
		if now.Sub(at) > time.Minute {
			delete(a.written, v)
		}
	}
	a.mu.Unlock()
	if n == target {
		return n
	}
	if err := c.st.SetTarget(ctx, n); err != nil {
		c.report(ProblemStore, opWrite, "", fmt.Errorf("set target: %w", err))
		return target
	}
	c.resolve(ProblemStore, opWrite)
	c.mu.Lock()
	c.target = n
	c.stored.Target, c.stored.HasTarget = n, true
	c.targetSeq = c.loadSeq
	a.mu.Lock()
	delete(a.written, n) // the view holds it now: a later n is someone's
	a.mu.Unlock()
	c.mu.Unlock()
	c.emit(Event{Kind: EventResized, Message: fmt.Sprintf("target %d -> %d (auto: %.1f claims/s x %.1f s)", target, n, rate, ttr.Seconds())})
	return n
}

// autosizeSawStored counts claims made by other processes (entries that
// were pooled and are claimed now) and turns autosize off when the store
// shows a target this process did not write lately: another process
// resized the pool by hand. Called with c.mu held, before c.stored is s;
// fromPool are the entries claimed since the last load that it held pooled.
func (c *Controller) autosizeSawStoredLocked(s Stored, fromPool []Entry) {
	a := &c.auto
	a.mu.Lock()
	defer a.mu.Unlock()
	// A viewer neither sizes nor counts: the controller's target changes
	// in the store are not resizes by hand.
	if !a.on || !c.loaded || c.role == RoleViewer {
		return
	}
	for _, e := range fromPool {
		a.sizer.ClaimedID(e.ID, e.ClaimedAt)
	}
	if !s.HasTarget || s.Target == c.target {
		return
	}
	if _, ours := a.written[s.Target]; a.on && !ours {
		a.on = false
		a.off = fmt.Sprintf("target set to %d by another process", s.Target)
		a.announce = "autosize off: " + a.off + " (press a in the dashboard to turn it back on)"
		c.Kick()
	}
}

// autosizeNext is when the maintenance loop should look again for the
// target to fall (hook of untilNextPass).
func (c *Controller) autosizeNext(now, next time.Time) time.Time {
	a := &c.auto
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.on {
		return next
	}
	if t, ok := a.sizer.NextChange(); ok {
		// Look at least a second apart: the rate falls claim by claim.
		t = maxTime(t, now.Add(time.Second))
		if t.Before(next) {
			return t
		}
	}
	return next
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Autosize says what autosize does now.
func (c *Controller) Autosize() AutosizeStatus {
	now := c.clk.Now()
	a := &c.auto
	a.mu.Lock()
	defer a.mu.Unlock()
	ttr := a.ttr
	if ttr == 0 {
		ttr = timeToReadyUnknown
	}
	return AutosizeStatus{On: a.on, Rate: a.sizer.Rate(now), TimeToReady: ttr,
		Min: a.sizer.Min, Max: a.sizer.Max, Window: a.sizer.Window, Off: a.off}
}
