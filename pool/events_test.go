package pool

import (
	"slices"
	"testing"
)

// An async observer gets the events its keep wants, in order; events that
// no async observer wants are not queued at all.
func TestAsyncObserversKeep(t *testing.T) {
	var h eventHub
	var logged, all []EventKind
	h.observeAsync(func(e Event) bool { return e.Kind != EventMaintained }, func(e Event) { logged = append(logged, e.Kind) })
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
	h2.observeAsync(func(e Event) bool { return e.Kind != EventMaintained }, func(e Event) { logged = append(logged, e.Kind) })
	h2.observeAsync(nil, func(e Event) { all = append(all, e.Kind) })
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
