package httpapi

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/later"
)

// requestLog writes the line per claim request of the fast routes a little
// after its answer, a burst's lines together: formatting a line (slog takes
// its caller's stack, then formats six attributes) was about a tenth of a
// claim's CPU in a burst, on the way of the connection's next request.
// Each line keeps the time its answer was sent.
type requestLog struct {
	log   *slog.Logger
	mu    sync.Mutex // guards the fields below
	lines []requestLine
	later *later.Flush // writes what lines holds
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

func newRequestLog(log *slog.Logger, delay time.Duration) *requestLog {
	r := &requestLog{log: log}
	r.later = later.New(delay, r.flush)
	return r
}

// add queues l, unless the logger drops lines at info.
func (r *requestLog) add(l requestLine) {
	if !r.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, l)
	if len(r.lines) >= requestLogMax {
		r.flushLocked()
		return
	}
	r.later.Arm()
}

// flush writes the lines queued so far.
func (r *requestLog) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushLocked()
}

func (r *requestLog) flushLocked() {
	r.later.Ran()
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
