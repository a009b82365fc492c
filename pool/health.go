package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jonboulle/clockwork"
)

// Checker runs one health check of a sandbox URL, bounded by ctx.
type Checker func(ctx context.Context, url string) Health

// NewHTTPChecker checks health with a GET: any 2xx or 3xx is healthy
// (SPEC Behaviour 1). A nil client gets one that keeps connections warm and
// does not follow redirects, so a 3xx counts as it is.
func NewHTTPChecker(client *http.Client) Checker {
	return newHTTPChecker(client, clockwork.NewRealClock())
}

func newHTTPChecker(client *http.Client, clk clockwork.Clock) Checker {
	return newHTTPCheckerWith(client, clk, nil)
}

// newHTTPCheckerWith also takes the sandboxes on this machine's loopback
// to loop, when set.
func newHTTPCheckerWith(client *http.Client, clk clockwork.Clock, loop *loopProber) Checker {
	if client == nil {
		client = NewHealthClient(nil)
	}
	return func(ctx context.Context, url string) Health {
		start := clk.Now()
		h := Health{CheckedAt: start}
		if host, uri, ok := loop.target(url); ok {
			err := loop.check(ctx, host, uri, &h)
			h.Latency = clk.Since(start)
			if err != nil {
				h.Error = describeHealthError(ctx, err)
				return h
			}
			h.OK = h.Status >= 200 && h.Status < 400
			if !h.OK {
				h.Error = fmt.Sprintf("%d", h.Status)
			}
			return h
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			h.Error = err.Error()
			return h
		}
		resp, err := client.Do(req)
		h.Latency = clk.Since(start)
		if err != nil {
			h.Error = describeHealthError(ctx, err)
			return h
		}
		// Drain a little so the connection can be reused, but never read a big body.
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		resp.Body.Close()
		h.Status = resp.StatusCode
		h.OK = resp.StatusCode >= 200 && resp.StatusCode < 400
		if !h.OK {
			h.Error = fmt.Sprintf("%d", resp.StatusCode)
		}
		return h
	}
}

// NewHealthClient returns the HTTP client health checks use; transport may
// carry a TLS config (the Modal fake's certificate in tests).
func NewHealthClient(transport *http.Transport) *http.Client {
	if transport == nil {
		transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	// Kept alive: a claim's probe reuses the connection of the last one.
	// Every sandbox is its own host, so the total must cover a big pool.
	transport.MaxIdleConnsPerHost = 2
	transport.MaxIdleConns = 4096
	transport.DisableCompression = true
	return &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// describeHealthError turns a transport error into the short words the
// dashboard shows: timeout, refused, or the error itself.
func describeHealthError(ctx context.Context, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded || (errors.As(err, &ne) && ne.Timeout()):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	}
	return err.Error()
}

// Probe checks one URL once, bounded by the health timeout.
func (c *Controller) probe(ctx context.Context, url string) Health {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HealthTimeout)
	defer cancel()
	start := c.clk.Now()
	h := c.check(ctx, url)
	h.CheckedAt = start // on the controller's clock, whatever the checker's

	c.mu.Lock()
	c.healthCounts[h.OK]++
	c.mu.Unlock()
	return h
}

// setHealthLocked records a probe's result.
func (c *Controller) setHealthLocked(id string, h Health) {
	c.health[id] = h
}

func (c *Controller) dropHealthLocked(id string) {
	delete(c.health, id)
}

// probeParallel bounds how many health checks run at once, so one hung
// sandbox never delays the others and a big pool does not open 1,000 sockets.
const probeParallel = 64

// ProbeAll checks every pooled sandbox once, in parallel, and returns how
// many failed.
func (c *Controller) ProbeAll(ctx context.Context) int {
	now := c.clk.Now()
	c.mu.Lock()
	var pooled []Entry
	for _, e := range c.stored.Pooled() {
		// One with too little time left is the pass's to drop as expired:
		// probing it (the backend may have ended it) would call a normal
		// expiry a health failure.
		if HasTimeLeft(e.ExpiresAt, now, c.useDur()) {
			pooled = append(pooled, e)
		}
	}
	c.mu.Unlock()
	return c.probeEach(ctx, pooled, probeParallel)
}

// probeEach probes entries, at most parallel at once, records what it
// found and returns how many failed.
func (c *Controller) probeEach(ctx context.Context, entries []Entry, parallel int) int {
	var bad atomic.Int64
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for _, e := range entries {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			h := c.probe(ctx, e.URL)
			if ctx.Err() != nil {
				return
			}
			c.mu.Lock()
			prev := c.health[e.ID]
			c.setHealthLocked(e.ID, h)
			c.mu.Unlock()
			if !h.OK {
				bad.Add(1)
				if !prev.Checked() || prev.OK {
					c.emit(Event{Kind: EventHealthFailed, SandboxID: e.ID, Health: h, Err: h.Error})
				}
			} else if prev.Checked() && !prev.OK {
				c.emit(Event{Kind: EventHealthRecovery, SandboxID: e.ID, Health: h})
			}
		}()
	}
	wg.Wait()
	return int(bad.Load())
}

// probeAheadN is how many of the pool's next sandboxes a claim keeps fresh
// when claims come closer together than half of HealthFresh (the next
// claim may come while the probe of its sandbox runs, and only one probe
// ahead runs at a time), one when they come further apart; plus one per
// claim on its way out (a burst), up to probeAheadMax. Two for claims
// 300 ms apart probed every sandbox twice: at second place, then again at
// the head, its first probe being older than HealthFresh/2 by then.
const (
	probeAheadN   = 2
	probeAheadMax = 16
)

// probeAhead probes, in the background, the pooled sandboxes the next
// claims will take (the first good ones in pool order) unless a probe of
// theirs is younger than half of HealthFresh: a claim that follows within
// HealthFresh then skips its own probe. One runs at a time; only a
// controller (its loops on) does it.
func (c *Controller) probeAhead() {
	if !c.looping.Load() || c.cfg.HealthFresh <= 0 {
		return
	}
	now := c.clk.Now()
	spaced := now.Sub(time.Unix(0, c.lastAhead.Swap(now.UnixNano()))) >= c.cfg.HealthFresh/2
	if !c.ahead.CompareAndSwap(false, true) {
		return
	}
	n := probeAheadN
	if spaced {
		n-- // the head's probe is done long before the next claim
	}
	n = min(n+c.takes.inFlight(), probeAheadMax)
	var next []Entry
	c.mu.Lock()
	for _, e := range c.stored.Entries {
		if len(next) == n {
			break
		}
		// As the store's Take goes: claimed ones and ones with too little time left are passed over.
		if e.Claimed() || !HasTimeLeft(e.ExpiresAt, now, c.useDur()) {
			continue
		}
		if h := c.health[e.ID]; !h.OK || now.Sub(h.CheckedAt) >= c.cfg.HealthFresh/2 {
			next = append(next, e)
		}
	}
	c.mu.Unlock()
	if len(next) == 0 {
		c.ahead.Store(false)
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.ahead.Store(false)
		if c.probeEach(c.life, next, len(next)) > 0 {
			c.Kick() // the pass drops it
		}
	}()
}

// waitHealthy retries a new sandbox every 100 ms until it answers or the
// health timeout passes (the seed's wait-for-container-start). With an
// ExitWatcher backend, a workload that exited ends the wait at once, with
// how it ended.
func (c *Controller) waitHealthy(ctx context.Context, ref Ref) (Health, *ExitInfo) {
	deadline := c.clk.Now().Add(c.cfg.HealthTimeout)
	watcher, _ := c.be.(ExitWatcher)
	for {
		remaining := deadline.Sub(c.clk.Now())
		attempt, cancel := context.WithTimeout(ctx, remaining)
		start := c.clk.Now()
		h := c.check(attempt, ref.URL)
		cancel()
		h.CheckedAt = start
		if h.OK || ctx.Err() != nil {
			return h, nil
		}
		if watcher != nil {
			if exited, info, err := watcher.Exited(ctx, ref.ID); err == nil && exited {
				h.Error = fmt.Sprintf("exited (code %d)", info.Code)
				return h, &info
			}
		}
		if !c.clk.Now().Add(100 * time.Millisecond).Before(deadline) {
			if h.Error == "" {
				h.Error = "timeout"
			}
			return h, nil
		}
		select {
		case <-ctx.Done():
			return h, nil
		case <-c.clk.After(100 * time.Millisecond):
		}
	}
}
