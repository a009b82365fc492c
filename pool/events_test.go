package pool

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// An async observer gets the events its keep wants, in order; events that
// no async observer wants are not queued at all.
func TestAsyncObserversKeep(t *testing.T) {
	var h eventHub
	var logged, all []EventKind
	h.observeAsync(func(e Event) bool { return e.Kind != EventMaintained }, func(e Event) { logged = append(logged, e.Kind) }, nil)
	for _, k := range []EventKind{EventCreating, EventMaintained, EventCreated, EventMaintained} {
		h.publish(Event{Kind: k})
	}
	h.async.mu.Lock()
	queued := len(h.async.queue)
	h.async.mu.Unlock()
	if queued > 2 {
		t.Errorf("%d events queued, want at most the 2 wanted", queued)
	}
	h.closeAll() // drains
	if want := []EventKind{EventCreating, EventCreated}; !slices.Equal(logged, want) {
		t.Errorf("kept observer got %v, want %v", logged, want)
	}

	var h2 eventHub
	logged = nil
	h2.observeAsync(func(e Event) bool { return e.Kind != EventMaintained }, func(e Event) { logged = append(logged, e.Kind) }, nil)
	h2.observeAsync(nil, func(e Event) { all = append(all, e.Kind) }, nil)
	h2.publish(Event{Kind: EventMaintained})
	h2.publish(Event{Kind: EventClaimed})
	h2.closeAll()
	if want := []EventKind{EventClaimed}; !slices.Equal(logged, want) {
		t.Errorf("kept observer got %v, want %v", logged, want)
	}
	if want := []EventKind{EventMaintained, EventClaimed}; !slices.Equal(all, want) {
		t.Errorf("observer of every event got %v, want %v", all, want)
	}
}

// Events that come a millisecond apart (a burst of claims) reach an async
// observer in batches of asyncGather, each followed by one flush (one
// write of the log), all in order; a close runs what is queued.
func TestAsyncObserversGatherBursts(t *testing.T) {
	var h eventHub
	var mu sync.Mutex
	var seen []string
	flushes := 0
	h.observeAsync(nil, func(e Event) {
		mu.Lock()
		seen = append(seen, e.SandboxID)
		mu.Unlock()
	}, func() {
		mu.Lock()
		flushes++
		mu.Unlock()
	})
	const n = 20
	start := time.Now()
	for i := range n {
		h.publish(Event{Kind: EventClaimed, SandboxID: fmt.Sprint(i)})
		time.Sleep(time.Millisecond) // the burst's pace
	}
	elapsed := time.Since(start)
	h.closeAll()
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n || seen[0] != "0" || seen[n-1] != fmt.Sprint(n-1) || !slices.IsSortedFunc(seen, func(a, b string) int {
		return cmp.Compare(len(a), len(b))*100 + cmp.Compare(a, b)
	}) {
		t.Fatalf("observed %v, want 0..%d in order", seen, n-1)
	}
	// One a 5 ms at most (asyncGather is 10): a flush an event is n.
	if most := int(elapsed/(5*time.Millisecond)) + 2; flushes > most {
		t.Fatalf("%d events over %s: %d flushes, want at most %d (a batch a %s)", n, elapsed.Round(time.Millisecond), flushes, most, asyncGather)
	}
}
