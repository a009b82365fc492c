package httpapi

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// requestLog writes the line per claim request of the fast routes a little
// after its answer, a burst's lines together: formatting a line (slog takes
// its caller's stack, then formats six attributes) was about a tenth of a
// claim's CPU in a burst, on the way of the connection's next request.
// Each line keeps the time its answer was sent.
type requestLog struct {
	log   *slog.Logger
	delay time.Duration
	mu    sync.Mutex // guards the fields below
	lines []requestLine
	timer *time.Timer // made at the first line
	armed bool        // the timer will write what lines holds
}

// requestLogDelay is how long a request's line waits for the rest of its burst.
const requestLogDelay = 5 * time.Millisecond

// requestLogMax is how many lines wait at most: more are written at once.
const requestLogMax = 1024

// requestLine is one request's line, as ServeHTTP's: never its headers (the
// Authorization header carries the token).
type requestLine struct {
	at       time.Time
	method   string
	path     string
	status   int
	duration time.Duration
	remote   string
	bytes    int
}

func newRequestLog(log *slog.Logger) *requestLog {
	return &requestLog{log: log, delay: requestLogDelay}
}

// add queues l, unless the logger drops lines at info.
func (r *requestLog) add(l requestLine) {
	if !r.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, l)
	switch {
	case len(r.lines) >= requestLogMax:
		r.flushLocked()
	case r.timer == nil:
		r.timer, r.armed = time.AfterFunc(r.delay, r.flush), true
	case !r.armed:
		r.timer.Reset(r.delay)
		r.armed = true
	}
}

// flush writes the lines queued so far.
func (r *requestLog) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushLocked()
}

func (r *requestLog) flushLocked() {
	r.armed = false
	h, ctx := r.log.Handler(), context.Background()
	for _, l := range r.lines {
		// A record without a caller (pc 0): the line Logger.LogAttrs writes.
		rec := slog.NewRecord(l.at, slog.LevelInfo, "http request", 0)
		rec.AddAttrs(slog.String("method", l.method), slog.String("path", l.path),
			slog.Int("status", l.status), slog.Duration("duration", l.duration),
			slog.String("remote", l.remote), slog.Int("bytes", l.bytes))
		_ = h.Handle(ctx, rec)
	}
	clear(r.lines) // their strings are not kept alive
	if cap(r.lines) > requestLogMax {
		r.lines = nil
	} else {
		r.lines = r.lines[:0]
	}
}
