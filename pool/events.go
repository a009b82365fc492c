package pool

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// eventHub fans events out to observers and subscribers. Its mutex only
// guards its lists: observers run and log lines are written outside it, so
// a slow observer never holds up another publisher (a claim).
type eventHub struct {
	mu        sync.Mutex // guards the fields below; never held while an observer runs
	observers []func(Event)
	subs      map[chan Event]struct{} // buffered; a full one misses the event
	async     *asyncObservers
	closed    bool
}

func (h *eventHub) observe(fn func(Event)) {
	h.mu.Lock()
	h.observers = append(h.observers, fn)
	h.mu.Unlock()
}

// observeAsync registers fn to run on the hub's own goroutine, in order:
// for slow observers such as log writers. keep, when set, runs on the
// publisher's goroutine and says which events fn wants: an event no async
// observer wants never wakes that goroutine.
func (h *eventHub) observeAsync(keep func(Event) bool, fn func(Event), flush func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	if h.async == nil {
		h.async = newAsyncObservers()
	}
	h.async.add(keep, fn, flush)
}

func (h *eventHub) subscribe(buffer int) (<-chan Event, func()) {
	ch := make(chan Event, max(buffer, 1))
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(ch)
		return ch, func() {}
	}
	if h.subs == nil {
		h.subs = map[chan Event]struct{}{}
	}
	h.subs[ch] = struct{}{}
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			if _, ok := h.subs[ch]; ok {
				delete(h.subs, ch)
				close(ch)
			}
		})
	}
}

func (h *eventHub) publish(e Event) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	// observers only grows by append: this header stays valid unlocked.
	observers, async := h.observers, h.async
	for ch := range h.subs { // never blocks: a full subscriber misses it
		select {
		case ch <- e:
		default:
		}
	}
	h.mu.Unlock()
	for _, fn := range observers {
		fn(e)
	}
	if async != nil {
		async.push(e)
	}
}

// closeAll ends every subscription and lets the async observers drain.
func (h *eventHub) closeAll() {
	h.mu.Lock()
	h.closed = true
	for ch := range h.subs {
		delete(h.subs, ch)
		close(ch)
	}
	async := h.async
	h.mu.Unlock()
	if async != nil {
		async.close()
	}
}

// asyncMax bounds the events waiting for slow observers; past it the
// oldest are dropped (and counted) rather than memory growing.
const asyncMax = 1 << 14

// asyncKeep bounds the queue's array kept for the next events: a rare flood
// does not keep its memory.
const asyncKeep = 256

// asyncGather: events that come within this long of the last batch the
// async observers ran wait for the rest of it, and are run as one batch
// (a burst's log lines in one write, not a write and a wake-up each).
// An event after a quiet spell runs at once.
const asyncGather = 10 * time.Millisecond

// asyncObservers runs slow observers on one goroutine, in publish order.
type asyncObservers struct {
	mu      sync.Mutex // guards the fields below; never held while fns run
	fns     []asyncObserver
	queue   []Event
	spare   []Event // the array of the batch being run, for the next queue
	dropped int
	closed  bool
	wake    chan struct{} // 1-buffered
	stop    chan struct{} // closed by close: a gathering wait ends
	done    chan struct{} // closed when the goroutine ended
}

func newAsyncObservers() *asyncObservers {
	a := &asyncObservers{wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go a.run()
	return a
}

type asyncObserver struct {
	keep  func(Event) bool // nil: every event
	fn    func(Event)
	flush func() // nil: none; after each batch fn saw events of
}

func (o asyncObserver) wants(e Event) bool { return o.keep == nil || o.keep(e) }

func (a *asyncObservers) add(keep func(Event) bool, fn func(Event), flush func()) {
	a.mu.Lock()
	a.fns = append(a.fns, asyncObserver{keep, fn, flush})
	a.mu.Unlock()
}

func (a *asyncObservers) push(e Event) {
	a.mu.Lock()
	wanted := false
	for _, o := range a.fns {
		if wanted = o.wants(e); wanted {
			break
		}
	}
	if !wanted {
		a.mu.Unlock()
		return
	}
	if len(a.queue) >= asyncMax {
		a.queue = a.queue[1:]
		a.dropped++
	}
	a.queue = append(a.queue, e)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *asyncObservers) close() {
	a.mu.Lock()
	was := a.closed
	a.closed = true
	a.mu.Unlock()
	if !was {
		close(a.stop)
	}
	select {
	case a.wake <- struct{}{}:
	default:
	}
	<-a.done
}

func (a *asyncObservers) run() {
	defer close(a.done)
	var last time.Time // when the last batch ran
	gather := time.NewTimer(time.Hour)
	gather.Stop()
	for {
		a.mu.Lock()
		queued, closed := len(a.queue) > 0 || a.dropped > 0, a.closed
		a.mu.Unlock()
		if !queued {
			if closed {
				return
			}
			<-a.wake
			continue
		}
		if d := asyncGather - time.Since(last); d > 0 && !closed {
			// Events keep coming (a burst of claims, a fill): gather them.
			gather.Reset(d)
			select {
			case <-gather.C:
			case <-a.stop:
				gather.Stop()
			}
		}
		a.mu.Lock()
		batch, fns, dropped := a.queue, a.fns, a.dropped
		// The last batch's array takes the next events: a burst's events
		// do not grow a new queue each round.
		a.queue, a.spare, a.dropped = a.spare[:0], nil, 0
		a.mu.Unlock()
		last = time.Now()
		if dropped > 0 {
			batch = append([]Event{{Kind: EventError, Time: batch[0].Time,
				Message: fmt.Sprintf("%d events dropped: observers too slow", dropped)}}, batch...)
		}
		var ran uint64 // which observers saw an event (the first 64; others are flushed always)
		for _, e := range batch {
			for i, o := range fns {
				if o.wants(e) {
					o.fn(e)
					ran |= 1 << min(i, 63)
				}
			}
		}
		for i, o := range fns {
			if o.flush != nil && ran&(1<<min(i, 63)) != 0 {
				o.flush()
			}
		}
		if cap(batch) <= asyncKeep {
			clear(batch) // its events' strings are not kept alive
			a.mu.Lock()
			a.spare = batch[:0]
			a.mu.Unlock()
		}
	}
}

// describe is the one-line text of an event, as the dashboard and logs show it.
func describe(e Event) string {
	id := e.SandboxID // whole: a log line's id is copied into commands
	switch e.Kind {
	case EventCreating:
		return "creating a sandbox"
	case EventCreated:
		return fmt.Sprintf("%s created in %s", id, roundDuration(e.Duration))
	case EventCreateFailed:
		return "creation failed: " + e.Err
	case EventHealthFailed:
		return fmt.Sprintf("%s failed health: %s", id, e.Err)
	case EventHealthRecovery:
		return id + " answers again"
	case EventExpired:
		return id + " expired"
	case EventClaimed:
		how := "warm"
		if !e.Warm {
			how = "after " + roundDuration(e.Duration)
		}
		return id + " claimed by " + e.By + " (" + how + ")" // not Sprintf: one a claim
	case EventTerminated:
		if e.By != "" {
			return fmt.Sprintf("%s terminated (%s) by %s", id, e.Reason, byText(e.By))
		}
		return fmt.Sprintf("%s terminated (%s)", id, e.Reason)
	case EventAdopted:
		return id + " adopted"
	case EventBackoff:
		return "creations back off until " + e.Until.Format(time.TimeOnly)
	case EventError:
		return "error: " + e.Err
	case EventClaimTimeout:
		return fmt.Sprintf("claim by %s failed: %s", e.By, e.Err)
	case EventLeaseAcquired:
		return "maintaining the pool"
	case EventStoreChanged:
		return "pool changed"
	}
	return string(e.Kind)
}

// lastLine is the workload's last line of output, "" when it wrote none:
// the local agent's own notes ("sandboxpool: the workload exited ...") are
// not the workload's.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n "), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" && !strings.HasPrefix(l, "sandboxpool: ") {
			return l
		}
	}
	return ""
}

// ShortID is the id as the dashboard shows it.
func ShortID(id string) string {
	if len(id) > 15 {
		return id[:15]
	}
	return id
}

func roundDuration(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

func osGetpid() int { return os.Getpid() }

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown host"
	}
	return h
}
