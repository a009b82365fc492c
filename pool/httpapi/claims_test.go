package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	dto "github.com/prometheus/client_model/go"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// 200 clients claim at once from a pool of 10 that backfills: every answer
// is a sandbox nobody else got, or a 503.
func TestConcurrentClaimsNeverShareASandbox(t *testing.T) {
	// The controller's own loops backfill.
	e := newEnv(t, envOpts{size: 10, fill: true, loops: true,
		createDelay: 40 * time.Millisecond})
	const clients = 200
	type result struct {
		status int
		id     string
		err    error
	}
	results := make(chan result, clients)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req, _ := http.NewRequest("POST", e.base+"/v1/claims?timeout=500ms", nil)
			resp, err := e.http.Do(req)
			if err != nil {
				results <- result{err: err}
				return
			}
			defer resp.Body.Close()
			r := response{status: resp.StatusCode, body: readAll(resp)}
			var v httpapi.ClaimView
			if r.status == 200 {
				r.json(t, &v)
			}
			results <- result{status: r.status, id: v.ID}
		}()
	}
	close(start)
	wg.Wait()
	close(results)
	seen := map[string]bool{}
	var ok, unavailable int
	for r := range results {
		switch {
		case r.err != nil:
			t.Fatalf("request: %v", r.err)
		case r.status == 200:
			if r.id == "" || seen[r.id] {
				t.Fatalf("sandbox %q handed out twice", r.id)
			}
			seen[r.id] = true
			ok++
		case r.status == 503:
			unavailable++
		default:
			t.Fatalf("status %d", r.status)
		}
	}
	t.Logf("%d claimed, %d got 503", ok, unavailable)
	if ok < 10 {
		t.Fatalf("only %d claims succeeded from a pool of 10", ok)
	}
	// The store agrees: each handed-out sandbox is claimed there once, by the API.
	st, err := e.st.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	claimed := 0
	for _, en := range st.Entries {
		if en.Claimed() {
			claimed++
			if !seen[en.ID] || !strings.HasPrefix(en.ClaimedBy, "api 127.0.0.1:") {
				t.Errorf("store entry %+v was not handed out by the API", en)
			}
		}
	}
	if claimed != ok {
		t.Fatalf("store has %d claimed, API handed out %d", claimed, ok)
	}
}

// gateBackend holds each creation until the test releases it.
type gateBackend struct {
	*pooltest.Backend
	release chan struct{}
}

func (g *gateBackend) Create(ctx context.Context, ttl time.Duration) (pool.Ref, error) {
	select {
	case <-g.release:
	case <-ctx.Done():
		return pool.Ref{}, ctx.Err()
	}
	return g.Backend.Create(ctx, ttl)
}

// Claims waiting on an empty pool are served in the order they arrived,
// one per sandbox that gets ready.
func TestWaitingClaimsServedInArrivalOrder(t *testing.T) {
	clk := clockwork.NewFakeClock()
	gate := &gateBackend{release: make(chan struct{})}
	e := newEnv(t, envOpts{size: 0, clock: clk, backend: gate})
	gate.Backend = e.be
	ctx := context.Background()
	const n = 4
	if err := e.ctrl.Resize(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := e.ctrl.Maintain(ctx); err != nil { // n creations, held at the gate
		t.Fatal(err)
	}
	type answer struct {
		client int
		status int
		id     string
	}
	answers := make(chan answer, n)
	for i := range n {
		go func() {
			r, err := e.client().Claim(ctx, true, 0)
			var apiErr *httpapi.APIError
			switch {
			case errors.As(err, &apiErr):
				answers <- answer{i, apiErr.Status, ""}
			case err != nil:
				answers <- answer{i, -1, err.Error()}
			default:
				answers <- answer{i, 200, r.ID}
			}
		}()
		// Each waiting claim sets two timers on the controller's clock (its
		// deadline and its poll); wait for them before the next one arrives.
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := clk.BlockUntilContext(ctx, 2*(i+1))
		cancel()
		if err != nil {
			t.Fatalf("claim %d did not start waiting", i)
		}
	}
	for i := range n {
		select {
		case a := <-answers:
			t.Fatalf("client %d answered before any sandbox was ready: %+v", a.client, a)
		default:
		}
		gate.release <- struct{}{} // one sandbox gets ready
		select {
		case a := <-answers:
			if a.client != i || a.status != 200 || a.id != fmt.Sprintf("sb-%04d", i+1) {
				t.Fatalf("sandbox %d went to %+v, want client %d (arrival order)", i+1, a, i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no claim served after sandbox %d got ready", i+1)
		}
	}
}

// A client that goes away while its claim waits stops waiting and takes
// nothing: the next sandbox to get ready stays in the pool.
func TestDisconnectedClientTakesNothing(t *testing.T) {
	e := newEnv(t, envOpts{size: 0})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := e.client().Claim(ctx, true, 30*time.Second)
		done <- err
	}()
	waitClaimWaiting(t, e)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v", err)
	}
	snap := afterAbandonedClaim(t, e)
	if snap.Counts[pool.StateReady] != 1 || snap.Counts[pool.StateClaimed] != 0 || snap.Stats.ClaimsWarm+snap.Stats.ClaimsWaited != 0 {
		t.Fatalf("after the client left: %v %+v", snap.Counts, snap.Stats)
	}
	// The request's line is written once its handler returned, which may
	// be after the claim counted as failed (a loaded machine).
	testkit.Eventually(t, 5*time.Second, "the abandoned claim logged as 499", func() bool {
		return strings.Contains(e.logs.String(), "status=499")
	})
	m := scrape(t, e)
	if v := counter(m, "sandboxpool_claims_total", "source", "api", "result", "cancelled"); v != 1 {
		t.Errorf("claims cancelled = %v, want 1", v)
	}
	// A claim that had not stopped would be ahead of this one in the queue and
	// take the one sandbox (nothing backfills here).
	if _, err := e.client().Claim(context.Background(), false, 2*time.Second); err != nil {
		t.Fatalf("the next claim after the client left: %v", err)
	}
}

// A client that goes away while its claim health-checks a sandbox must not
// cost the pool its sandboxes: the probe failed because of the claimer, not
// the sandbox. The checker here fails on a cancelled context, as the real
// HTTP checker does.
func TestDisconnectDuringHealthCheckKeepsThePool(t *testing.T) {
	checker := func(be *pooltest.Backend) pool.Checker {
		return func(ctx context.Context, url string) pool.Health {
			if ctx.Err() != nil {
				return pool.Health{CheckedAt: time.Now(), Error: ctx.Err().Error()}
			}
			return be.Checker(ctx, url)
		}
	}
	e := newEnv(t, envOpts{size: 3, fill: true, checker: checker})
	e.be.SetHung(e.ctrl.Snapshot().Sandboxes[0].ID) // the head's probe hangs until the claim's context ends
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := e.client().Claim(ctx, true, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("claim: %v", err)
	}
	testkit.Eventually(t, 5*time.Second, "the claim ends on the server", func() bool {
		return strings.Contains(e.logs.String(), "path=/v1/claims")
	})
	// The claim went back untouched: all 3 alive, none terminated, the
	// hung one pooled again (at the end).
	testkit.Eventually(t, 5*time.Second, "the sandbox given back", func() bool {
		s, err := e.st.Load(context.Background())
		return err == nil && len(s.Pooled()) == 3
	})
	if live := e.be.Live(); len(live) != 3 || len(e.be.Terminated()) != 0 {
		t.Fatalf("a claimer leaving during the health check cost the pool: live %v, terminated %v", live, e.be.Terminated())
	}
}

// A claim whose client goes away while its sandbox is being checked takes
// nothing: the sandbox goes back to the pool, alive.
func TestClaimedAsClientLeftIsGivenBack(t *testing.T) {
	// The first sandbox's probe waits for the claim's context to end, then
	// answers healthy anyway.
	var head atomic.Value // the pool's first sandbox, once filled
	head.Store("")
	checker := func(be *pooltest.Backend) pool.Checker {
		return func(ctx context.Context, url string) pool.Health {
			if url == "fake://"+head.Load().(string) {
				<-ctx.Done()
			}
			return be.Checker(context.WithoutCancel(ctx), url)
		}
	}
	e := newEnv(t, envOpts{size: 2, fill: true, checker: checker})
	id := e.ctrl.Snapshot().Sandboxes[0].ID
	head.Store(id)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := e.client().Claim(ctx, true, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("claim: %v", err)
	}
	testkit.Eventually(t, 5*time.Second, id+" back in the pool", func() bool {
		s, err := e.st.Load(context.Background())
		return err == nil && len(s.Pooled()) == 2 && slices.ContainsFunc(s.Pooled(), func(en pool.Entry) bool { return en.ID == id })
	})
	if !slices.Contains(e.be.Live(), id) {
		t.Fatalf("%s was terminated", id)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	e := newEnv(t, envOpts{size: 2, fill: true})
	before := scrape(t, e)
	for range 2 {
		if r := e.do("POST", "/v1/claims", ""); r.status != 200 {
			t.Fatalf("claim: %d %s", r.status, r.body)
		}
	}
	if r := e.do("POST", "/v1/claims?timeout=20ms", ""); r.status != 503 {
		t.Fatalf("claim from an empty pool: %d", r.status)
	}
	after := scrape(t, e)
	for _, c := range []struct {
		name   string
		labels []string
		delta  float64
	}{
		{"sandboxpool_claims_total", []string{"source", "api", "result", "ok"}, 2},
		{"sandboxpool_claims_total", []string{"source", "api", "result", "timeout"}, 1},
		{"sandboxpool_health_checks_total", []string{"result", "ok"}, 2},
	} {
		if d := counter(after, c.name, c.labels...) - counter(before, c.name, c.labels...); d != c.delta {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, d, c.delta)
		}
	}
	h := after["sandboxpool_claim_duration_seconds"]
	if h == nil {
		t.Fatal("no claim latency histogram")
	}
	for _, m := range h.GetMetric() {
		if label(m, "warm") == "true" && m.GetHistogram().GetSampleCount() != 2 {
			t.Errorf("warm claim latency count %d, want 2", m.GetHistogram().GetSampleCount())
		}
	}
	if v := gauge(after, "sandboxpool_sandboxes", "state", "claimed"); v != 2 {
		t.Errorf("sandboxes{state=claimed} = %v", v)
	}
	if v := gauge(after, "sandboxpool_warm_hit_ratio"); v != 1 {
		t.Errorf("warm hit ratio %v", v)
	}
}

// ---- Prometheus helpers ----

func scrape(t testing.TB, e *env) map[string]*dto.MetricFamily {
	t.Helper()
	r := e.do("GET", "/metrics", "")
	if r.status != 200 {
		t.Fatalf("GET /metrics: %d %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("metrics Content-Type %q", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(strings.NewReader(string(r.body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, r.body)
	}
	return mf
}

func find(mf map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	f := mf[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if label(m, labels[i]) != labels[i+1] {
				continue next
			}
		}
		return m
	}
	return nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func counter(mf map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	return find(mf, name, labels...).GetCounter().GetValue()
}

func gauge(mf map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	return find(mf, name, labels...).GetGauge().GetValue()
}

// gate blocks every write until it is opened (a log that hangs).
type gate struct{ open chan struct{} }

func (g gate) Write(p []byte) (int, error) { <-g.open; return len(p), nil }

// A claim's answer leaves, whole (Content-Length), before the request's log
// line and the claim's event (log, journal, observers) are written.
func TestClaimAnsweredBeforeItsLogAndEvent(t *testing.T) {
	g := gate{open: make(chan struct{})}
	var once sync.Once
	opened := func() { once.Do(func() { close(g.open) }) }
	e := newEnv(t, envOpts{size: 2, fill: true, api: httpapi.Options{Logger: slog.New(slog.NewTextHandler(g, nil))}})
	t.Cleanup(opened) // first: the server's end waits for the request's log line
	e.ctrl.Observe(func(ev pool.Event) {
		if ev.Kind == pool.EventClaimed {
			<-g.open
		}
	})
	answered := make(chan response, 2)
	for _, path := range []string{"/v1/claims", "/claim"} {
		method := http.MethodPost
		if path == "/claim" {
			method = http.MethodGet
		}
		req, err := http.NewRequest(method, e.base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			// A connection of its own: the blocked handler holds its connection.
			resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
			if err != nil {
				t.Error(err)
				answered <- response{}
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.ContentLength != int64(len(body)) {
				t.Errorf("%s: Content-Length %d, body %d bytes", path, resp.ContentLength, len(body))
			}
			answered <- response{status: resp.StatusCode, body: body}
		}()
		select {
		case r := <-answered:
			if r.status != http.StatusOK {
				t.Fatalf("%s: %d %s", path, r.status, r.body)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no answer while its log line and event wait", path)
		}
	}
	opened()
}
