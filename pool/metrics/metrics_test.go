package metrics_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/metrics"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestSource(t *testing.T) {
	for by, want := range map[string]string{
		"api 127.0.0.1:5555": "api", "api": "api", "dashboard": "dashboard", "cli": "cli",
		"cli pid 42": "cli", "": "other", "apiary": "other", "API 1.2.3.4:5": "other", " api": "other",
	} {
		if got := metrics.Source(by); got != want {
			t.Errorf("Source(%q) = %q, want %q", by, got, want)
		}
	}
}

type fixture struct {
	ctrl *pool.Controller
	be   *pooltest.Backend
	clk  *clockwork.FakeClock
	m    *metrics.Metrics
	url  string
}

// newFixture serves the metrics of a pooltest controller on a real
// loopback listener.
func newFixture(t *testing.T, size int) *fixture {
	t.Helper()
	clk := clockwork.NewFakeClock()
	be := pooltest.NewBackend(clk)
	cfg := pool.DefaultConfig()
	cfg.Size, cfg.SizeSet = size, true
	ctrl, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: pooltest.NewStore(), Clock: clk, Checker: be.Checker})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(ctrl)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
		ctrl.Close()
	})
	return &fixture{ctrl: ctrl, be: be, clk: clk, m: m, url: "http://" + ln.Addr().String() + "/metrics"}
}

var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}

func (f *fixture) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get(f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, body)
	}
	for name := range mf {
		if !strings.HasPrefix(name, "sandboxpool_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") &&
			!strings.HasPrefix(name, "promhttp_") {
			t.Errorf("metric %s lacks the sandboxpool_ prefix", name)
		}
	}
	return mf
}

func (f *fixture) fill(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.ctrl.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.ctrl.WaitAtTarget(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

func TestMetricsMove(t *testing.T) {
	f := newFixture(t, 3)
	ctx := context.Background()
	mf := f.scrape(t)
	for _, st := range pool.States { // every state, at zero before anything
		if m := find(mf, "sandboxpool_sandboxes", "state", string(st)); m == nil || m.GetGauge().GetValue() != 0 {
			t.Errorf("sandboxes{state=%s}: %v", st, m)
		}
	}
	expect(t, mf, "sandboxpool_target", 3)
	expect(t, mf, "sandboxpool_claims_total", 0, "source", "api", "result", "ok")
	expect(t, mf, "sandboxpool_warm_hit_ratio", 0)

	f.fill(t)
	mf = f.scrape(t)
	expect(t, mf, "sandboxpool_sandboxes", 3, "state", "ready")
	expect(t, mf, "sandboxpool_creations_total", 3, "result", "ok")
	expect(t, mf, "sandboxpool_health_checks_total", 3, "result", "ok") // first health checks
	if n := histCount(mf, "sandboxpool_create_to_ready_seconds"); n != 3 {
		t.Errorf("create-to-ready observations %d, want 3", n)
	}

	// Warm claims from three sources.
	for _, by := range []string{"api 127.0.0.1:4000", "dashboard", "cli"} {
		if _, err := f.ctrl.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: by}); err != nil {
			t.Fatal(err)
		}
	}
	// A claim that times out, one whose claimer goes away.
	timeoutClaim := make(chan error, 1)
	go func() {
		_, err := f.ctrl.Claim(ctx, pool.ClaimOptions{By: "api 127.0.0.1:4001", Timeout: time.Second})
		timeoutClaim <- err
	}()
	f.clk.BlockUntilContext(ctx, 2) // deadline and poll timers: it waits
	f.clk.Advance(time.Second)
	if err := <-timeoutClaim; !errors.Is(err, pool.ErrNoSandbox) {
		t.Fatalf("claim: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.ctrl.Claim(cctx, pool.ClaimOptions{By: "cli"}); err == nil {
		t.Fatal("claim with a cancelled context succeeded")
	}
	// A claim that waits for a creation: not warm.
	waited := make(chan error, 1)
	go func() {
		_, err := f.ctrl.Claim(ctx, pool.ClaimOptions{By: "weird", Timeout: time.Minute})
		waited <- err
	}()
	f.clk.BlockUntilContext(ctx, 2) // its deadline and poll timers: it waits
	if err := f.ctrl.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}

	mf = f.scrape(t)
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"source", "api", "result", "ok"}, 1},
		{[]string{"source", "dashboard", "result", "ok"}, 1},
		{[]string{"source", "cli", "result", "ok"}, 1},
		{[]string{"source", "api", "result", "timeout"}, 1},
		{[]string{"source", "cli", "result", "cancelled"}, 1},
		{[]string{"source", "other", "result", "ok"}, 1},
	} {
		expect(t, mf, "sandboxpool_claims_total", c.want, c.labels...)
	}
	if n := histCount(mf, "sandboxpool_claim_duration_seconds", "warm", "true"); n != 3 {
		t.Errorf("warm claim latencies %d, want 3", n)
	}
	if n := histCount(mf, "sandboxpool_claim_duration_seconds", "warm", "false"); n != 1 {
		t.Errorf("waited claim latencies %d, want 1", n)
	}
	expect(t, mf, "sandboxpool_warm_hit_ratio", 0.75)
	expect(t, mf, "sandboxpool_pool_claims_total", 3, "outcome", "warm")
	expect(t, mf, "sandboxpool_pool_claims_total", 1, "outcome", "waited")
	expect(t, mf, "sandboxpool_pool_claims_total", 2, "outcome", "failed")
	expect(t, mf, "sandboxpool_sandboxes", 4, "state", "claimed")

	// Terminations by reason, and waste: a ready sandbox that never served.
	f.ctrl.WaitIdle(ctx)                         // the creations of the last pass are pooled
	if err := f.ctrl.Maintain(ctx); err != nil { // refill to 3 ready
		t.Fatal(err)
	}
	f.waitReady(t, 3)
	f.ctrl.WaitIdle(ctx)
	if c := f.ctrl.Snapshot().Counts; c[pool.StateReady] != 3 {
		t.Fatalf("after the refill: %v", c)
	}
	f.clk.Advance(10 * time.Second)
	snap := f.ctrl.Snapshot()
	var readyID, claimedID string
	for _, sb := range snap.Sandboxes {
		switch {
		case sb.State == pool.StateReady && readyID == "":
			readyID = sb.ID
		case sb.State == pool.StateClaimed && claimedID == "":
			claimedID = sb.ID
		}
	}
	for _, id := range []string{readyID, claimedID} {
		if err := f.ctrl.Terminate(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.ctrl.Resize(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.ctrl.Maintain(ctx); err != nil { // one surplus goes
		t.Fatal(err)
	}
	f.be.SetUnhealthy(f.liveReady(t), true)
	f.ctrl.ProbeAll(ctx)
	if err := f.ctrl.Maintain(ctx); err != nil { // the unhealthy one goes, a creation replaces it
		t.Fatal(err)
	}
	f.ctrl.WaitIdle(ctx)
	eventuallyScrape(t, f, func(mf map[string]*dto.MetricFamily) bool {
		return value(mf, "sandboxpool_terminations_total", "reason", "user") == 2 &&
			value(mf, "sandboxpool_terminations_total", "reason", "shrink") == 1 &&
			value(mf, "sandboxpool_terminations_total", "reason", "unhealthy") == 1 &&
			value(mf, "sandboxpool_health_checks_total", "result", "failed") == 1
	})
	mf = f.scrape(t)
	// Waste: three ready sandboxes terminated unclaimed (user, shrink,
	// unhealthy), each ready for at least the 10s the clock moved.
	if w := value(mf, "sandboxpool_waste_sandbox_seconds_total"); w < 30 {
		t.Errorf("waste %v sandbox-seconds, want >= 30", w)
	}
	for _, r := range []string{"expired", "failed", "orphan", "cleanup"} {
		if find(mf, "sandboxpool_terminations_total", "reason", r) == nil {
			t.Errorf("terminations{reason=%s} missing", r)
		}
	}

	// Expiry: everything pooled expires once use-duration is all that is left.
	f.clk.Advance(f.ctrl.Config().TTL - f.ctrl.Config().UseDuration + time.Second)
	if err := f.ctrl.Resize(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.ctrl.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	eventuallyScrape(t, f, func(mf map[string]*dto.MetricFamily) bool {
		return value(mf, "sandboxpool_terminations_total", "reason", "expired") >= 1
	})
	expect(t, f.scrape(t), "sandboxpool_target", 0)
}

func TestCreationFailuresCounted(t *testing.T) {
	f := newFixture(t, 1)
	f.be.FailAll(errors.New("no capacity"))
	ctx := context.Background()
	if err := f.ctrl.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	// Three tries, with pauses on the fake clock between them.
	testkit.Eventually(t, 10*time.Second, "the creation failed", func() bool {
		f.clk.Advance(time.Second)
		return f.ctrl.Snapshot().Counts[pool.StateFailed] > 0
	})
	f.ctrl.WaitIdle(ctx)
	mf := f.scrape(t)
	expect(t, mf, "sandboxpool_creations_total", 1, "result", "failed")
	expect(t, mf, "sandboxpool_creations_total", 0, "result", "ok")
	expect(t, mf, "sandboxpool_sandboxes", 1, "state", "failed")
}

// Each Metrics has its own registry: nothing goes to the global one, and two
// controllers in one process do not collide.
func TestOwnRegistry(t *testing.T) {
	a, b := newFixture(t, 1), newFixture(t, 2)
	if a.m.Registry() == b.m.Registry() {
		t.Fatal("two Metrics share a registry")
	}
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "sandboxpool_") {
			t.Errorf("%s is in the default registry", mf.GetName())
		}
	}
	expect(t, a.scrape(t), "sandboxpool_target", 1)
	expect(t, b.scrape(t), "sandboxpool_target", 2)
	// The registry takes more collectors.
	extra := prometheus.NewCounter(prometheus.CounterOpts{Name: "sandboxpool_test_extra_total", Help: "test"})
	a.m.Registry().MustRegister(extra)
	extra.Add(2)
	expect(t, a.scrape(t), "sandboxpool_test_extra_total", 2)
}

// ---- helpers ----

func (f *fixture) waitReady(t *testing.T, n int) {
	t.Helper()
	if !testkit.Until(5*time.Second, func() bool { return f.ctrl.Snapshot().Counts[pool.StateReady] >= n }) {
		t.Fatalf("not %d ready: %v", n, f.ctrl.Snapshot().Counts)
	}
}

func (f *fixture) liveReady(t *testing.T) string {
	t.Helper()
	for _, sb := range f.ctrl.Snapshot().Sandboxes {
		if sb.State == pool.StateReady {
			return sb.ID
		}
	}
	t.Fatal("no ready sandbox")
	return ""
}

func eventuallyScrape(t *testing.T, f *fixture, cond func(map[string]*dto.MetricFamily) bool) {
	t.Helper()
	var mf map[string]*dto.MetricFamily
	if !testkit.Until(5*time.Second, func() bool { mf = f.scrape(t); return cond(mf) }) {
		var b strings.Builder
		for _, name := range []string{"sandboxpool_terminations_total", "sandboxpool_health_checks_total", "sandboxpool_sandboxes"} {
			for _, m := range mf[name].GetMetric() {
				b.WriteString(name + " " + m.String() + "\n")
			}
		}
		t.Fatalf("metrics did not reach the expected values:\n%s", b.String())
	}
}

func find(mf map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
next:
	for _, m := range mf[name].GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

// value is a counter's or a gauge's value, -1 when the series is missing.
func value(mf map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	m := find(mf, name, labels...)
	switch {
	case m == nil:
		return -1
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	}
	return -1
}

func expect(t *testing.T, mf map[string]*dto.MetricFamily, name string, want float64, labels ...string) {
	t.Helper()
	if got := value(mf, name, labels...); got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func histCount(mf map[string]*dto.MetricFamily, name string, labels ...string) uint64 {
	return find(mf, name, labels...).GetHistogram().GetSampleCount()
}
