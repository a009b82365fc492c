package pool

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// eventHub fans events out to observers (synchronous) and subscribers
// (buffered channels that drop when full, so a slow screen never stalls the pool).
type eventHub struct {
	mu        sync.Mutex
	observers []func(Event)
	subs      map[chan Event]struct{}
	closed    bool
}

func (h *eventHub) observe(fn func(Event)) {
	h.mu.Lock()
	h.observers = append(h.observers, fn)
	h.mu.Unlock()
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
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for _, fn := range h.observers {
		fn(e)
	}
	for ch := range h.subs {
		select {
		case ch <- e:
		default:
		}
	}
}

func (h *eventHub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for ch := range h.subs {
		delete(h.subs, ch)
		close(ch)
	}
}

// describe is the one-line text of an event, as the dashboard and logs show it.
func describe(e Event) string {
	id := ShortID(e.SandboxID)
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
		return fmt.Sprintf("%s claimed by %s (%s)", id, e.By, how)
	case EventTerminated:
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
