// Package claimload drives a running sandboxpool's claim API (POST
// /v1/claims over keep-alive HTTP) the way users do, and measures what they
// see: latency percentiles, errors, and the share of claims served warm, read
// from the controller's own counters in GET /metrics before and after. It is
// a development tool (testdata/perf.sh, README's figures), not part of the
// shipped binary.
package claimload

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Client claims from one sandboxpool API.
type Client struct {
	// Base is the API's URL, such as http://127.0.0.1:7780.
	Base string
	// Token, when set, is sent as a bearer token.
	Token string
	// NoHealthCheck sends check_health=false.
	NoHealthCheck bool
	// Timeout is the claim's server-side wait (the timeout parameter); 0 leaves the server's default.
	Timeout time.Duration
	// Every is WaitReady's poll interval; 0 is 5 ms. Each poll is a scrape
	// that costs the controller CPU, so a phase whose CPU is measured polls
	// less often.
	Every time.Duration
	// CPUPid, when set, is a process (the controller) whose CPU time a run
	// reads right before and right after its claims (its live threads'
	// schedstat): Result.CPU, without the /metrics scrapes around them.
	CPUPid int
	// Spans, when set, gets one line per run, "START END", the instants
	// (CLOCK_MONOTONIC, seconds) its claims began and ended: `perf record
	// -k CLOCK_MONOTONIC` samples of those spans alone are the claims'.
	Spans io.Writer

	fast  *fasthttp.HostClient // keeps connections alive across claims; NewClient sets it
	dials *atomic.Int64        // connections opened (NewClient's dialer counts them)
}

// MaxConns caps the connections the tool opens: the API lets one client
// hold a quarter of its 1024 (sandboxpool_api_rejected_total{reason="client_limit"}
// beyond). Claims over the cap wait in the tool, and an open-loop run
// counts that wait in their latency.
const MaxConns = 200

// NewClient returns a client for base whose connections are kept alive for
// the next claims, up to MaxConns at once. It is a lean
// HTTP/1.1 client (fasthttp's: the request is written and its answer read
// on the caller's goroutine): on a machine of 2 cores the tool shares the
// CPU with the pool it measures, and Go's net/http client (three goroutines
// a request) took about half of what the controller took in a burst.
func NewClient(base string) *Client {
	base = strings.TrimRight(base, "/")
	u, err := url.Parse(base)
	addr, tls := base, false
	if err == nil && u.Host != "" {
		addr, tls = u.Host, u.Scheme == "https"
	}
	dials := new(atomic.Int64)
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	fast := &fasthttp.HostClient{
		Addr:  addr,
		IsTLS: tls,
		Dial: func(addr string) (net.Conn, error) {
			conn, err := d.Dial("tcp", addr)
			if err == nil {
				dials.Add(1)
			}
			return conn, err
		},
		// Beyond MaxConns at once, a request waits for a free one.
		MaxConns:            MaxConns,
		MaxConnWaitTimeout:  requestSlack,
		MaxIdleConnDuration: 5 * time.Minute,
		// Each answer's body whole, as a user's client reads it.
		MaxResponseBodySize: 64 << 20,
	}
	return &Client{Base: base, fast: fast, dials: dials}
}

// requestSlack is how long past its server-side wait a request may take.
const requestSlack = 30 * time.Second

// do sends one request and returns its status and body. A request is
// bounded by ctx's deadline, or the claim's wait plus requestSlack.
func (c *Client) do(ctx context.Context, method, uri string) (int, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI(c.Base + uri)
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(cmp.Or(c.Timeout, 10*time.Second) + requestSlack)
	}
	if err := c.fast.DoDeadline(req, resp, deadline); err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, uri, err)
	}
	return resp.StatusCode(), slices.Clone(resp.Body()), nil
}

// Close closes the client's idle connections.
func (c *Client) Close() { c.fast.CloseIdleConnections() }

func (c *Client) claimURL() string {
	q := url.Values{}
	if c.NoHealthCheck {
		q.Set("check_health", "false")
	}
	if c.Timeout > 0 {
		q.Set("timeout", c.Timeout.String())
	}
	u := "/v1/claims"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// Claim makes one claim and returns how long it took; a non-200 answer is an
// error carrying its status and body.
func (c *Client) Claim(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	status, body, err := c.do(ctx, fasthttp.MethodPost, c.claimURL())
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	if status != fasthttp.StatusOK {
		return took, fmt.Errorf("claim: %d %s", status, strings.TrimSpace(string(body)))
	}
	return took, nil
}

// Metrics reads GET /metrics into a map keyed by the series as written
// (`sandboxpool_target`, `sandboxpool_sandboxes{state="ready"}`).
func (c *Client) Metrics(ctx context.Context) (Metrics, error) {
	status, body, err := c.do(ctx, fasthttp.MethodGet, "/metrics")
	if err != nil {
		return nil, err
	}
	if status != fasthttp.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %d", status)
	}
	return ParseMetrics(bytes.NewReader(body))
}

// Metrics is one scrape: series to value.
type Metrics map[string]float64

// ParseMetrics reads the Prometheus text format, keeping only sandboxpool's series.
func ParseMetrics(r io.Reader) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "sandboxpool_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// Series names read from /metrics.
const (
	SeriesWarm     = `sandboxpool_pool_claims_total{outcome="warm"}`
	SeriesWaited   = `sandboxpool_pool_claims_total{outcome="waited"}`
	SeriesFailed   = `sandboxpool_pool_claims_total{outcome="failed"}`
	SeriesTarget   = `sandboxpool_target`
	SeriesReady    = `sandboxpool_sandboxes{state="ready"}`
	SeriesCreating = `sandboxpool_sandboxes{state="creating"}`
	SeriesWarming  = `sandboxpool_sandboxes{state="warming"}`
	SeriesClaimed  = `sandboxpool_sandboxes{state="claimed"}`
	SeriesCreated  = `sandboxpool_creations_total{result="ok"}`
)

// WaitReady polls /metrics until at least want sandboxes are ready (the API
// may not be up yet: connection errors are retried) and returns the moment it saw them.
func (c *Client) WaitReady(ctx context.Context, want int) (time.Time, error) {
	var last error
	for {
		m, err := c.Metrics(ctx)
		if err == nil && m[SeriesReady] >= float64(want) {
			return time.Now(), nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return time.Time{}, fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
			}
			return time.Time{}, ctx.Err()
		case <-time.After(cmp.Or(c.Every, 5*time.Millisecond)):
		}
	}
}

// Result is what one load run saw.
type Result struct {
	Claims   int
	Errors   int
	FirstErr string
	Latency  []time.Duration // of successful claims
	Elapsed  time.Duration
	// Warm and Waited are the controller's own counts over the run.
	Warm, Waited float64
	// CPU is Client.CPUPid's CPU time over the claims (0 without it).
	CPU time.Duration
}

// P returns the q-quantile (0..1) of the successful claims' latency (nearest rank).
func (r Result) P(q float64) time.Duration { return Quantile(r.Latency, q) }

// Quantile is the nearest-rank quantile of d (0 when empty).
func Quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// WarmShare is the share of successful claims the controller served warm (NaN when none).
func (r Result) WarmShare() float64 {
	if r.Warm+r.Waited == 0 {
		return math.NaN()
	}
	return r.Warm / (r.Warm + r.Waited)
}

// Line is the result as key=value pairs on one line, for scripts.
func (r Result) Line(mode string) string {
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 3, 64) }
	var max time.Duration
	for _, d := range r.Latency {
		max = maxDur(max, d)
	}
	s := fmt.Sprintf("mode=%s claims=%d ok=%d errors=%d p50_ms=%s p99_ms=%s max_ms=%s warm=%.0f waited=%.0f warm_pct=%.1f secs=%.2f",
		mode, r.Claims, len(r.Latency), r.Errors, ms(r.P(.5)), ms(r.P(.99)), ms(max), r.Warm, r.Waited, 100*r.WarmShare(), r.Elapsed.Seconds())
	if r.CPU > 0 && r.Claims > 0 {
		s += fmt.Sprintf(" cpu_ms=%.1f cpu_ms_per_claim=%.3f", float64(r.CPU)/1e6, float64(r.CPU)/1e6/float64(r.Claims))
	}
	if r.FirstErr != "" {
		s += " first_error=" + strconv.Quote(r.FirstErr)
	}
	return s
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// recorder collects claim outcomes from many goroutines.
type recorder struct {
	mu  sync.Mutex
	res Result
}

func (r *recorder) add(d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Claims++
	if err != nil {
		r.res.Errors++
		if r.res.FirstErr == "" {
			r.res.FirstErr = err.Error()
		}
		return
	}
	r.res.Latency = append(r.res.Latency, d)
}

// run wraps a load with the controller's counters before and after.
func (c *Client) run(ctx context.Context, load func(rec *recorder)) (Result, error) {
	before, err := c.Metrics(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("read counters before: %w", err)
	}
	rec := &recorder{}
	cpu0 := c.cpu()
	mono0 := monotonic()
	start := time.Now()
	load(rec)
	rec.res.Elapsed = time.Since(start)
	mono1 := monotonic()
	if cpu1 := c.cpu(); cpu0 > 0 && cpu1 > cpu0 {
		rec.res.CPU = cpu1 - cpu0
	}
	if c.Spans != nil {
		fmt.Fprintf(c.Spans, "%.6f %.6f\n", mono0, mono1)
	}
	after, err := c.Metrics(ctx)
	if err != nil {
		return rec.res, fmt.Errorf("read counters after: %w", err)
	}
	rec.res.Warm = after[SeriesWarm] - before[SeriesWarm]
	rec.res.Waited = after[SeriesWaited] - before[SeriesWaited]
	return rec.res, nil
}

// cpu is CPUPid's CPU time so far, 0 without one (or when unreadable).
func (c *Client) cpu() time.Duration {
	if c.CPUPid <= 0 {
		return 0
	}
	ns, _ := threadsRunNS(c.CPUPid)
	return time.Duration(ns)
}

// Paced is one client making n claims, gap apart (from one start to the next).
func (c *Client) Paced(ctx context.Context, n int, gap time.Duration) (Result, error) {
	return c.run(ctx, func(rec *recorder) {
		next := time.Now()
		for i := 0; i < n && ctx.Err() == nil; i++ {
			sleepUntil(ctx, next)
			next = next.Add(gap)
			rec.add(c.Claim(ctx))
		}
	})
}

// Alternate is one client making n claims from each of two APIs in turn
// (a, b, a, b...), gap apart from one start to the next: two pools compared
// in the same minutes, so that what the machine does meanwhile weighs on
// both alike (measured one after the other, minutes apart, the same pool's
// p50 moved by 20%).
func Alternate(ctx context.Context, a, b *Client, n int, gap time.Duration) (ra, rb Result, err error) {
	recA, recB := &recorder{}, &recorder{}
	start := time.Now()
	next := start
	for i := 0; i < 2*n && ctx.Err() == nil; i++ {
		sleepUntil(ctx, next)
		next = next.Add(gap)
		if i%2 == 0 {
			recA.add(a.Claim(ctx))
		} else {
			recB.add(b.Claim(ctx))
		}
	}
	recA.res.Elapsed, recB.res.Elapsed = time.Since(start), time.Since(start)
	return recA.res, recB.res, ctx.Err()
}

// BackToBack is one client making n claims, each as soon as the last returned.
func (c *Client) BackToBack(ctx context.Context, n int) (Result, error) {
	return c.Paced(ctx, n, 0)
}

// Connect opens conns keep-alive connections to the API before a measured
// burst, as long-lived clients hold theirs: concurrent GETs of path (one that
// costs the server nothing, /healthz) until conns new connections were made.
// Without it, a first burst pays a TCP handshake and the server's
// per-connection setup on every client, which neither a claim nor its
// floor is about (run both with and without it to see that cost).
func (c *Client) Connect(ctx context.Context, conns int, path string) error {
	conns = min(conns, MaxConns)
	if c.dials == nil {
		return errors.New("connect: a client made by NewClient counts its connections")
	}
	// Rounds of concurrent GETs: a request that finds no idle connection
	// dials one, and a dial that loses the race to a freed connection still
	// lands in the idle set, so each round adds connections.
	start := c.dials.Load()
	for round := 0; c.dials.Load()-start < int64(conns); round++ {
		if round == 50 {
			return fmt.Errorf("connect: %d of %d connections opened in %d rounds", c.dials.Load()-start, conns, round)
		}
		var wg sync.WaitGroup
		errs := make([]error, conns)
		for i := range conns {
			wg.Go(func() { errs[i] = c.get(ctx, path) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("connect: %w", err)
		}
	}
	return nil
}

// get is one GET of path, its body read to the end (the connection is kept).
func (c *Client) get(ctx context.Context, path string) error {
	_, _, err := c.do(ctx, fasthttp.MethodGet, path)
	return err
}

// Burst is clients concurrent clients sharing n claims, started together.
func (c *Client) Burst(ctx context.Context, clients, n int) (Result, error) {
	return c.run(ctx, func(rec *recorder) { c.burst(ctx, rec, clients, n, c.Claim) })
}

// burst runs n calls of one over clients concurrent goroutines.
func (c *Client) burst(ctx context.Context, rec *recorder, clients, n int, one func(context.Context) (time.Duration, error)) {
	work := make(chan struct{}, n)
	for range n {
		work <- struct{}{}
	}
	close(work)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range work {
				if ctx.Err() != nil {
					return
				}
				rec.add(one(ctx))
			}
		})
	}
	wg.Wait()
}

// Rate makes claims at rate per second for d, open loop: each claim starts
// on schedule whether or not earlier ones returned, so a slow pool shows as
// latency and errors, not as a lower rate. Latency counts from the
// scheduled start.
func (c *Client) Rate(ctx context.Context, rate float64, d time.Duration) (Result, error) {
	return c.run(ctx, func(rec *recorder) {
		c.openLoop(ctx, rate, d, func(sched time.Time, err error) {
			rec.add(time.Since(sched), err)
		})
	})
}

// openLoop starts claims on schedule at rate per second for d and waits for
// every claim it started; done gets each claim's scheduled start and result.
func (c *Client) openLoop(ctx context.Context, rate float64, d time.Duration, done func(sched time.Time, err error)) {
	if rate <= 0 {
		sleepUntil(ctx, time.Now().Add(d))
		return
	}
	start := time.Now()
	n := int(math.Round(rate * d.Seconds()))
	var wg sync.WaitGroup
	for i := range n {
		sched := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		sleepUntil(ctx, sched)
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			_, err := c.Claim(ctx)
			done(sched, err)
		})
	}
	sleepUntil(ctx, start.Add(d))
	wg.Wait()
}

func sleepUntil(ctx context.Context, t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

// ErrNoSteps is returned for an empty step profile.
var ErrNoSteps = errors.New("no steps")
