// Package later arms a flush to run a little after the first of a run of
// additions, so that a burst's additions are flushed together: the API's
// lines per request are formatted, and written, a burst at a time.
package later

import "time"

// Flush runs its function delay after an Arm, once for all the Arms made
// until it runs. Its user guards it with the lock its function takes: Arm
// with that lock held, and the function calls Ran with it held.
type Flush struct {
	delay time.Duration
	fn    func()
	t     *time.Timer // made at the first Arm
	armed bool        // fn will run
}

// New returns a Flush that runs fn delay after an Arm.
func New(delay time.Duration, fn func()) *Flush {
	return &Flush{delay: delay, fn: fn}
}

// Arm has fn run within delay, unless it is due already.
func (f *Flush) Arm() {
	switch {
	case f.t == nil:
		f.t, f.armed = time.AfterFunc(f.delay, f.fn), true
	case !f.armed:
		f.t.Reset(f.delay)
		f.armed = true
	}
}

// Ran says fn ran (on time or called early): the next Arm arms it again.
func (f *Flush) Ran() { f.armed = false }
