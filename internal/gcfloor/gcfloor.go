// Package gcfloor keeps a process's garbage collections at least a heap
// floor apart: while the live heap is small, GOGC is raised so that the
// heap may grow to the floor before the next cycle; once twice the live
// heap is over the floor, GOGC is 100 again (the default, as if untouched).
//
// `run` serves bursts of claims from a live heap of a few MiB: at GOGC=100 a
// cycle came every ~4 MiB allocated, every burst or two, and its marking and
// the stacks it shrinks (which the next burst's handlers grow again) were
// ~10% of the controller's CPU in a burst.
package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Start keeps the heap goal at least floor bytes from now on, unless GOGC is
// set in the environment (the user's choice stands). stop ends it and puts
// GOGC back to 100.
func Start(floor uint64) (stop func()) {
	if _, set := os.LookupEnv("GOGC"); set {
		return func() {}
	}
	t := &tuner{floor: floor, percent: 100}
	t.adjust()
	t.arm()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.stopped {
			t.stopped = true
			debug.SetGCPercent(100)
		}
	}
}

type tuner struct {
	floor   uint64
	mu      sync.Mutex // guards the fields below
	percent int        // the GOGC last set
	stopped bool
}

// arm sets a finalizer on a new object: it runs after the next cycle that
// finds the object unreachable, that is once per cycle, and arms again.
func (t *tuner) arm() {
	sentinel := new([16]byte) // not tiny-allocated: its own finalizer
	runtime.SetFinalizer(sentinel, func(*[16]byte) {
		if t.adjust() {
			t.arm()
		}
	})
}

// adjust sets GOGC from the live heap as of the last cycle, and reports
// false once stopped. SetGCPercent stops the world for a moment, so it is
// called only on a real change.
func (t *tuner) adjust() bool {
	p := Percent(liveHeap(), t.floor)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	if p != t.percent {
		t.percent = p
		debug.SetGCPercent(p)
	}
	return true
}

// Percent is the GOGC that puts the next cycle at max(2 x live, floor):
// 100 for a live heap of half the floor or more, more below it, in steps of
// 50 (a heap that moves a little does not change it).
func Percent(live, floor uint64) int {
	live = max(live, 1<<20)
	if 2*live >= floor {
		return 100
	}
	p := int((floor-live)*100/live) / 50 * 50
	return max(100, p)
}

var liveSample = []metrics.Sample{{Name: "/gc/heap/live:bytes"}}

func liveHeap() uint64 {
	s := make([]metrics.Sample, 1)
	copy(s, liveSample)
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
